"""Pruning spares the checkpoint the `best` evaluation rule will choose."""

from __future__ import annotations

import json
from pathlib import Path

from trainables.gslrm.checkpoint import checkpoint_name, prune_checkpoints
from trainables.gslrm.config import TrainerConfig
from trainables.gslrm.train import best_checkpoint


def make_checkpoints(folder: Path, steps: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        (folder / checkpoint_name(step)).write_bytes(b"x")


def test_prune_keeps_newest_and_protected(tmp_path: Path) -> None:
    make_checkpoints(tmp_path, [10, 20, 30, 40])
    deleted = prune_checkpoints(tmp_path, 2, protect=[tmp_path / checkpoint_name(10)])
    assert sorted(p.name for p in deleted) == [checkpoint_name(20)]
    left = sorted(p.name for p in tmp_path.glob("ckpt_*.pt"))
    assert left == [checkpoint_name(s) for s in (10, 30, 40)]


def test_best_checkpoint_uses_the_log_and_this_round(tmp_path: Path) -> None:
    ckpts, log = tmp_path / "checkpoints", tmp_path / "metrics.jsonl"
    make_checkpoints(ckpts, [10, 20, 30])
    lines = [{"step": 10, "val/psnr_fg": 18.0}, {"step": 20, "val/psnr_fg": 21.0}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = TrainerConfig()
    # step 30's metrics are not logged yet: they count through `metrics`
    best = best_checkpoint(ckpts, log, {"val/psnr_fg": 19.0}, 30, config)
    assert best == ckpts / checkpoint_name(20)
    assert best_checkpoint(ckpts, log, {"val/psnr_fg": 25.0}, 30, config).name == (
        checkpoint_name(30)
    )
    config.evaluation.objective_mode = "min"
    assert best_checkpoint(ckpts, log, {"val/psnr_fg": 19.0}, 30, config).name == (
        checkpoint_name(10)
    )
