"""The Ray adapter's trial and worker sides without a cluster: compute summed over attempts in
the trial summary (defect 8), an end-of-trial evaluation that fails without failing the
trial (defect 5), and a resume that reads Ray's checkpoint in place (defect 10)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_train import CPU, data, tiny  # noqa: F401 - `data` is a fixture
from trainables.gslrm.config import TrainerConfig, save_config
from trainables.journal import JOURNAL_FILE, TrialJournal, append_line

TRIAL_ID = "abc_00000"


def journal_line(run_dir: Path, event: str, time: float, **fields) -> None:
    append_line(run_dir / JOURNAL_FILE, {"event": event, "time": time, **fields})


class TwoAttemptTrainer:
    """What the trainer journals when Train restarts a killed worker: attempt 1 validated at
    step 10 (20 GPU-s, 30 s in) and was killed; attempt 2 resumed there and finished."""

    def __init__(self, run_dir: Path, max_steps: int) -> None:
        self.run_dir, self.max_steps = run_dir, max_steps

    def fit(self) -> None:
        run = self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        journal_line(run, "attempt_started", 1000.0, world_size=2, resumed_from_step=0)
        journal_line(run, "validated", 1030.0, step=10, metrics={"val/psnr_fg": 11.0}, gpu_s=20.0)
        journal_line(run, "attempt_started", 2000.0, world_size=2, resumed_from_step=10)
        journal_line(
            run,
            "trained",
            2050.0,
            final_step=self.max_steps,
            steps_this_call=self.max_steps - 10,
            wall_s=50.0,
            gpu_s=45.0,
        )


def test_the_trial_summary_sums_compute_over_attempts(tmp_path: Path, monkeypatch) -> None:
    """Defect 8: gpu_s covered the last attempt only (train_result.json) and a restarted trial
    lost what its killed attempt spent."""
    from ray import tune

    from trainables import ray_trainable, trial

    base = tmp_path / "base.yaml"
    config = TrainerConfig()
    save_config(config, base)
    trial_dir = tmp_path / "tune" / "trial_0"
    context = SimpleNamespace(get_trial_id=lambda: TRIAL_ID, get_trial_dir=lambda: str(trial_dir))
    monkeypatch.setattr(tune, "get_context", lambda: context)
    run_dir = tmp_path / "runs" / TRIAL_ID
    max_steps = config.training.schedule.max_steps
    monkeypatch.setattr(trial, "make_trainer", lambda *args: TwoAttemptTrainer(run_dir, max_steps))
    settings = ray_trainable.TrialSettings(
        study="s", study_dir=str(tmp_path), tune_dir=str(tmp_path / "tune"), base_config=str(base)
    )
    ray_trainable.run_trial({}, settings)
    summary = json.loads((trial_dir / "trial_summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps_run"] == max_steps
    assert (summary["wall_s"], summary["gpu_s"], summary["restarts"]) == (80.0, 65.0, 1)


def broken_test_split(tmp_path: Path, data: dict) -> Path:  # noqa: F811
    """A copy of two validation samples whose first opencv_cameras.json is cut short."""
    source = Path(data["val_list"])
    names = source.read_text().split()[:2]
    folder = tmp_path / "broken_test"
    for name in names:
        shutil.copytree(source.parent / name, folder / name)
    cameras = folder / names[0] / "opencv_cameras.json"
    cameras.write_text(cameras.read_text()[:40])
    (folder / "data_test.txt").write_text("".join(f"{name}\n" for name in names))
    return folder / "data_test.txt"


def test_a_finished_trial_survives_a_failing_evaluation(tmp_path: Path, data, capsys) -> None:  # noqa: F811
    """Defect 5: a test sample with a broken opencv_cameras.json raised DataError out of the
    end-of-trial evaluation; Train restarted the workers twice and the trial was recorded
    errored after full training. Now the failure is journaled, the trial stays finished, and
    `python -m analysis.evaluate` redoes the evaluation once the split is fixed."""
    from analysis.evaluate import main as evaluate_main
    from trainables.gslrm.train import Hooks, train
    from trainables.ray_trainable import evaluate_at_end

    broken = broken_test_split(tmp_path, data)
    config = tiny(data, f"evaluation.dataset_path={broken}")
    run = tmp_path / "run"
    train(config, run, Hooks(device=CPU))

    evaluate_at_end(run, config, CPU)  # must not raise
    journal = TrialJournal.read(run)
    failed = journal.evaluation
    assert failed["event"] == "evaluation_failed" and "opencv_cameras.json" in failed["error"]
    assert journal.outcome(max_steps=4).status == "finished"
    assert not (run / "eval" / "protocol.json").exists()

    good = data["val_list"]  # the split, fixed
    assert evaluate_main([str(run), "--dataset", str(good), "--device", "cpu"]) == 0
    evaluated = TrialJournal.read(run).evaluation
    assert evaluated["event"] == "evaluated" and evaluated["step"] in (2, 4)
    assert (run / evaluated["path"]).is_file()  # relative to the run folder, which may move
    assert (run / "eval" / "protocol.json").is_file()


class FakeContext:
    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1


def test_resume_reads_the_restored_checkpoint_in_place(tmp_path: Path, monkeypatch) -> None:
    """Defect 10: every rank copied the restored checkpoint into run_dir/.resume_* (1.2 GB at
    full size) and a killed worker left the copy behind. Now the file in Ray's storage is
    resumed from directly, and a copy an older worker left is removed."""
    import ray.train
    import ray.train.torch
    import torch

    from trainables.gslrm import evaluate, train
    from trainables.gslrm.config import config_to_dict
    from trainables.ray_trainable import train_worker

    stored = tmp_path / "train" / "run-x" / "checkpoint_1"
    stored.mkdir(parents=True)
    (stored / "ckpt_0000000000000010.pt").write_bytes(b"weights")
    run_dir = tmp_path / "runs" / TRIAL_ID
    (run_dir / ".resume_stale" / "ckpt_0000000000000005.pt").parent.mkdir(parents=True)
    (run_dir / ".resume_stale" / "ckpt_0000000000000005.pt").write_bytes(b"old copy")
    seen: dict = {}

    def fake_train(config, out_dir, hooks):
        seen["resume"] = hooks.resume_checkpoint
        seen["copies"] = sorted(p.name for p in Path(out_dir).glob(".resume_*"))
        return train.TrainResult(0, 10, 0.0, 0.0)

    monkeypatch.setattr(ray.train, "get_context", lambda: FakeContext())
    monkeypatch.setattr(
        ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(stored))
    )
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(evaluate, "evaluate_trial", lambda *args, **kwargs: None)
    train_worker(
        {"config": config_to_dict(TrainerConfig()), "trial_id": TRIAL_ID, "run_dir": str(run_dir)}
    )
    assert seen["copies"] == []
    assert seen["resume"] is not None
    assert seen["resume"].samefile(stored / "ckpt_0000000000000010.pt")
    assert not list(run_dir.glob(".resume_*"))


@pytest.mark.parametrize("restored", [None])
def test_nothing_restored_means_no_resume_file(restored) -> None:
    from trainables.ray_trainable import resume_checkpoint_file

    with resume_checkpoint_file(restored) as path:
        assert path is None
