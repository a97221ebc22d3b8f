"""Checkpoints: FaceLift-format files in, our own files out, one loader for both.

File format (FaceLift's, which we also write): a `torch.save`d dict
    {"model": state_dict, "optimizer": ..., "lr_scheduler": ..., "fwdbwd_pass_step": int,
     "param_update_step": int}
Ours add "rng" (torch RNG states) and "format". Files are always read with
`torch.load(weights_only=True)`: no pickled code runs, whatever the file holds.

Our parameter names are FaceLift's (same modules, same order), so a FaceLift state_dict loads
as it is. Keys of the frozen loss networks (`loss_calculator.*`: VGG19 of the
perceptual loss, LPIPS) are dropped by `DROPPED_PREFIXES` and counted in the load report.
Any other name the model does not have, any missing parameter and any shape mismatch stops the load
with one `CheckpointError` listing them: never a silent strict=False.

CLI: `python -m trainables.gslrm.checkpoint inspect PATH [--config CFG] [--set k=v ...]`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.gslrm.atomic import atomic_path

# (FaceLift state_dict name pattern, our name template). Our modules carry FaceLift's names,
# so every template is the identity; a renamed module would change its row here and nowhere else.
# Frozen weights of FaceLift's loss networks: stored in its model state_dict, not model parameters.
DROPPED_PREFIXES = ("loss_calculator.",)
# DDP-wrapped models save with this prefix; it is stripped before mapping.
WRAPPER_PREFIX = "module."
FORMAT = "mouse-gslrm-ckpt-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    path: str
    loaded: int
    dropped: int
    step: int

    def __str__(self) -> str:
        return (
            f"loaded {self.loaded} tensors from {self.path} (step {self.step}); "
            f"dropped {self.dropped} loss-network tensors ({', '.join(DROPPED_PREFIXES)})"
        )


def map_state_dict(source: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """FaceLift/our state_dict -> (model tensors under our names, number of loss-network
    tensors dropped). Names are shared, so only the DDP prefix and the frozen loss networks go;
    anything that is not a model parameter is caught by check_fits."""
    mapped, dropped = {}, 0
    for name, tensor in source.items():
        key = name.removeprefix(WRAPPER_PREFIX)
        if key.startswith(DROPPED_PREFIXES):
            dropped += 1
            continue
        mapped[key] = tensor
    return mapped, dropped


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(weights_only=True) with a clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(
            f"{path}: not a GS-LRM checkpoint (expected a dict with a 'model' state_dict)"
        )
    return data


def checkpoint_step(data: dict[str, Any]) -> int:
    return int(data.get("param_update_step", data.get("fwdbwd_pass_step", 0)))


def check_fits(model: nn.Module, mapped: dict[str, torch.Tensor], path: str) -> None:
    """Raise one CheckpointError listing every key or shape problem."""
    expected = model.state_dict()
    problems = []
    mismatched = [
        k for k in expected if k in mapped and tuple(mapped[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        first = mismatched[0]
        problems.append(
            f"shape mismatch at {first}: checkpoint {list(mapped[first].shape)} vs model "
            f"{list(expected[first].shape)} ({len(mismatched)} mismatching tensors: "
            f"{', '.join(mismatched[:8])}{' ...' if len(mismatched) > 8 else ''})"
        )
    missing = [k for k in expected if k not in mapped]
    if missing:
        problems.append(
            f"missing in checkpoint ({len(missing)}): {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}"
        )
    unexpected = [k for k in mapped if k not in expected]
    if unexpected:
        problems.append(
            f"unexpected in checkpoint ({len(unexpected)}): {', '.join(unexpected[:8])}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    if problems:
        raise CheckpointError(f"{path} does not fit the model config: " + "; ".join(problems))


def load_weights(model: nn.Module, path: str | Path) -> tuple[LoadReport, dict[str, Any]]:
    """Load a FaceLift or our checkpoint's weights into `model` (strictly).

    Returns the report and the raw checkpoint dict (for optimizer / step state)."""
    data = read_checkpoint(path)
    mapped, dropped = map_state_dict(data["model"])
    check_fits(model, mapped, str(path))
    model.load_state_dict(mapped, strict=True)
    return LoadReport(str(path), len(mapped), dropped, checkpoint_step(data)), data


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:016d}.pt"


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temp file + rename): a crash leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "fwdbwd_pass_step": step,
        "param_update_step": step,
        "rng": {"torch": torch.get_rng_state()},
        "format": FORMAT,
        **(extra or {}),
    }
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(state, handle)
    return path


def prune_checkpoints(
    folder: str | Path, keep_last: int, protect: Collection[str | Path] = ()
) -> list[Path]:
    """Delete all but the newest `keep_last` ckpt_*.pt files in folder (0 keeps every one),
    never one named in `protect` (the checkpoint the `best` evaluation rule will pick).

    Called right after a checkpoint was written whole, so the newest kept file is readable.
    Returns the deleted paths.
    """
    if keep_last <= 0:
        return []
    kept = {Path(path).name for path in protect}
    older = sorted(Path(folder).glob("ckpt_*.pt"), reverse=True)[keep_last:]
    older = [path for path in older if path.name not in kept]
    for path in older:
        path.unlink(missing_ok=True)
    return older


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Newest readable ckpt_*.pt in folder (a truncated newest file falls back to the one before)."""
    folder = Path(folder)
    for candidate in sorted(folder.glob("ckpt_*.pt"), reverse=True):
        try:
            read_checkpoint(candidate)
            return candidate
        except CheckpointError:
            continue
    return None


# ---------------------------------------------------------------------------------------
# inspect CLI


def implied_shape(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Model sizes that the weights determine (d_head and image_size do not show in shapes)."""
    mapped, _ = map_state_dict(state)
    embed = mapped["patch_embedder.1.weight"]
    layers = {int(m.group(1)) for k in mapped if (m := re.match(r"transformer_layers\.(\d+)\.", k))}
    return {
        "d": int(embed.shape[0]),
        "n_layer": len(layers),
        "patch_size": int(math.isqrt(embed.shape[1] // 9)),
        "n_gaussians": int(mapped["gaussian_position_embeddings"].shape[0]),
    }


@dataclass(frozen=True)
class Inspection:
    """What `inspect` found: the printed lines, and whether the checkpoint loads into the
    given config (None when no config was given)."""

    lines: tuple[str, ...]
    loads: bool | None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def inspect(
    path: str | Path, config_path: str | None = None, overrides: list[str] | None = None
) -> Inspection:
    from trainables.gslrm.config import load_config
    from trainables.gslrm.model import GSLRM

    start = time.perf_counter()
    data = read_checkpoint(path)
    seconds = time.perf_counter() - start
    mapped, dropped = map_state_dict(data["model"])
    lines = [
        f"checkpoint: {path}",
        f"read in {seconds:.2f} s",
        f"step: {checkpoint_step(data)}",
        f"model tensors: {len(mapped)} ({sum(t.numel() for t in mapped.values()):,} parameters); "
        f"dropped loss-network tensors: {dropped}",
    ]
    try:
        shape = implied_shape(data["model"])
        lines.append("implied model: " + ", ".join(f"{k}={v}" for k, v in shape.items()))
    except KeyError as exc:
        lines.append(f"implied model: unknown (no {exc} tensor)")
    lines.append(
        "not readable from weights: d_head (any divisor of d gives the same shapes) and image_size"
    )
    lines.append(f"has optimizer state: {'optimizer' in data}")
    loads = None
    if config_path:
        config = load_config(config_path, overrides or [])
        with torch.device("meta"):
            model = GSLRM(config.model)
        try:
            check_fits(model, mapped, str(path))
            lines.append(f"loads into {config_path}: yes")
            loads = True
        except CheckpointError as exc:
            lines.append(f"loads into {config_path}: NO: {exc}")
            loads = False
    return Inspection(tuple(lines), loads)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the checkpoint reads (and loads into --config when given), 1 when it reads
    but does not load into --config, 2 for an unreadable checkpoint or a bad config."""
    from trainables.gslrm.config import ConfigError

    parser = argparse.ArgumentParser(
        prog="python -m trainables.gslrm.checkpoint",
        description="Inspect GS-LRM checkpoints (FaceLift's or ours).",
        epilog="exit status: 0 ok; 1 the checkpoint does not load into --config; "
        "2 the checkpoint or the config cannot be read",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("inspect", help="print step, parameter count, implied model shape")
    cmd.add_argument("path")
    cmd.add_argument("--config", help="trainer YAML to test loading against")
    cmd.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    try:
        report = inspect(args.path, args.config, args.set)
    except (CheckpointError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.text)
    return 1 if report.loads is False else 0


if __name__ == "__main__":
    sys.exit(main())
