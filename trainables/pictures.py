"""Where a run folder's pictures are: its last validation picture and its evaluation picture.

    runs/<trial>/pictures/val_<step:08d>.png   the trainer, at every validation round
    runs/<trial>/eval/picture.png              the evaluator, for the first evaluation item,
                                               rendered with the evaluated checkpoint

The evaluation picture counts only when the evaluation is complete and vouches for it: its
protocol.json (written last) names it under "picture". A picture left by an evaluation that
was redone and crashed before its protocol is therefore never shown as the checkpoint's.

The one lookup for the driver's Optuna uploads (`study.artifacts`) and the report's links
(`analysis.report`). Standard library only, so both read it without torch or Ray.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PICTURES_DIR = "pictures"
EVAL_DIR = "eval"
PROTOCOL_FILE = "protocol.json"
EVAL_PICTURE = "picture.png"
_VALIDATION_NAME = re.compile(r"val_(\d+)\.png")


@dataclass(frozen=True)
class Picture:
    """One picture of a run: its file and the trainer step it shows."""

    path: Path
    step: int | None


@dataclass(frozen=True)
class RunPictures:
    """The pictures a run folder holds now (None: not there)."""

    validation: Picture | None
    evaluation: Picture | None


def last_validation_picture(run_dir: str | Path) -> Picture | None:
    """The validation picture of the highest step (None when the run wrote none)."""
    found = []
    for path in (Path(run_dir) / PICTURES_DIR).glob("val_*.png"):
        match = _VALIDATION_NAME.fullmatch(path.name)
        if match and path.is_file():
            found.append(Picture(path, int(match.group(1))))
    return max(found, key=lambda picture: picture.step or 0, default=None)


def evaluation_picture(run_dir: str | Path) -> Picture | None:
    """The evaluation picture, when a complete evaluation's protocol.json names it."""
    folder = Path(run_dir) / EVAL_DIR
    try:
        protocol = json.loads((folder / PROTOCOL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no evaluation, or one still being written
        return None
    if not isinstance(protocol, dict) or protocol.get("picture") != EVAL_PICTURE:
        return None  # an evaluation from before pictures, or one that drew none
    path = folder / EVAL_PICTURE
    if not path.is_file():
        return None
    step = protocol.get("checkpoint_step")
    return Picture(path, step if isinstance(step, int) and not isinstance(step, bool) else None)


def run_pictures(run_dir: str | Path) -> RunPictures:
    """Both pictures of a run folder, as they are on disk now."""
    return RunPictures(last_validation_picture(run_dir), evaluation_picture(run_dir))
