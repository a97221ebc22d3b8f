"""Pruning spares the checkpoint the `best` evaluation rule will choose; an objective that is
never logged (val/lpips without LPIPS weights) protects nothing instead of crashing."""

from __future__ import annotations

from pathlib import Path

from tests.test_train import CPU, data, tiny  # noqa: F401 - `data` is a fixture
from trainables.gslrm.checkpoint import checkpoint_name, prune_checkpoints
from trainables.gslrm.config import TrainerConfig
from trainables.gslrm.train import Hooks, best_checkpoint, train
from trainables.journal import TrialJournal, append_event


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


def test_best_checkpoint_uses_the_journal_among_kept_files(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    make_checkpoints(ckpts, [20, 30])  # step 10's file was pruned
    for step, psnr in ((10, 25.0), (20, 21.0), (30, 19.0)):
        append_event(tmp_path, "validated", step=step, metrics={"val/psnr_fg": psnr}, gpu_s=0.0)
    config = TrainerConfig()
    config.evaluation.objective = "val/psnr_fg"  # the journal logs this one
    journal = TrialJournal.read(tmp_path)
    assert best_checkpoint(ckpts, journal, config) == ckpts / checkpoint_name(20)
    config.evaluation.objective_mode = "min"
    assert best_checkpoint(ckpts, journal, config) == ckpts / checkpoint_name(30)
    config.evaluation.objective = "val/lpips"
    assert best_checkpoint(ckpts, journal, config) is None


def test_an_objective_never_logged_does_not_break_pruning(tmp_path: Path, data) -> None:  # noqa: F811
    """Defect 9: with evaluation.objective val/lpips (never logged without LPIPS weights)
    best_checkpoint found nothing and pruning raised TypeError at the first round that had a
    checkpoint to prune. Now training runs through and keeps the newest checkpoint."""
    config = tiny(
        data,
        "evaluation.objective=val/lpips",
        "evaluation.objective_mode=min",
        "validation.val_every=1",
        "training.checkpointing.checkpoint_every=1",
        "training.checkpointing.keep_last=1",
    )
    result = train(config, tmp_path / "run", Hooks(device=CPU))
    assert result.final_step == 4
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))
    assert kept == [checkpoint_name(4)]
    journal = TrialJournal.read(tmp_path / "run")
    assert [e["step"] for e in journal.of("checkpointed")] == [1, 2, 3, 4]
    assert journal.outcome(max_steps=4).status == "finished"
