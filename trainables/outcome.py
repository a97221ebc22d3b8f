"""How a trial ended: one rule, used by the Ray adapter and by `analysis.load`.

The adapter (`trainables.ray_trainable.run_trial`) applies it when the trial's `fit()` returns
or raises and writes the result into `trial_summary.json`; the analysis applies the same rule
to the files a trial left when that summary is missing or was written before the end (a driver
killed mid-trial). Both read the trainer's run folder (`runs/<trial>/`):

    diverged.json       {"step", "error"}: the loss became non-finite (written by rank 0)
    train_result.json   {"final_step", ...}: the loop returned normally
    metrics.jsonl       one JSON object per log / validation step, with "step"

Imports only the standard library, so `analysis/` reads it without Ray or torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DIVERGED_FILE = "diverged.json"
RESULT_FILE = "train_result.json"
METRICS_FILE = "metrics.jsonl"
# Every status a trial can end with; a summary stating anything else (e.g. "running", written
# before the end) is not a final word and the rule decides instead.
STATUSES = ("finished", "diverged", "errored", "stopped_early")
ERROR_MAX_CHARS = 500


@dataclass(frozen=True)
class Outcome:
    """status: one of STATUSES; error: one line or None; last_step: the trainer's newest step
    (0 when nothing is known); diverged_step: the step whose loss was non-finite, or None."""

    status: str
    error: str | None
    last_step: int
    diverged_step: int | None = None


def _json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def metric_records(run_dir: Path) -> list[dict]:
    """The JSON objects of run_dir/metrics.jsonl in order; [] when there is no readable log.

    A line cut short by a killed writer is skipped, not fatal.
    """
    try:
        text = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def last_logged_step(run_dir: Path) -> int:
    """The newest "step" in run_dir/metrics.jsonl; 0 when nothing readable was logged."""
    steps = [record.get("step") for record in metric_records(run_dir)]
    return max((s for s in steps if isinstance(s, int) and not isinstance(s, bool)), default=0)


def classify_outcome(
    run_dir: Path | None,
    max_steps: int | None,
    error: str | None = None,
    last_step: int | None = None,
) -> Outcome:
    """The trial's status, first matching rule wins.

    1. `run_dir/diverged.json` exists: "diverged", with its message and step (a non-finite loss
       is a result of the settings, not a crash: it wins over the error it also raised).
    2. `error` (the failure's message, e.g. the root cause of Train's error or error.txt's last
       line) is given: "errored" with that message.
    3. `run_dir/train_result.json` exists: "finished" at its final step.
    4. Otherwise the trial was stopped from outside (ASHA, the study ending): "finished" when its
       newest step (`last_step`, else metrics.jsonl's) reached `max_steps`, else "stopped_early".
       With `max_steps` unknown, "finished".

    run_dir: the trainer's run folder, or None when it is not known (rules 1 and 3 then skip).
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    logged = last_step
    if logged is None:
        logged = last_logged_step(run_dir) if run_dir is not None else 0
    if run_dir is not None:
        diverged = _json_object(run_dir / DIVERGED_FILE)
        if diverged is not None:
            step = diverged.get("step")
            step = step if isinstance(step, int) else None
            message = str(diverged.get("error") or "diverged")[:ERROR_MAX_CHARS]
            return Outcome("diverged", message, step if step is not None else logged, step)
    if error:
        return Outcome("errored", error.strip()[:ERROR_MAX_CHARS], logged)
    if run_dir is not None:
        result = _json_object(run_dir / RESULT_FILE)
        if result is not None and isinstance(result.get("final_step"), int):
            return Outcome("finished", None, result["final_step"])
    if max_steps is not None and logged < max_steps:
        return Outcome("stopped_early", None, logged)
    return Outcome("finished", None, logged)
