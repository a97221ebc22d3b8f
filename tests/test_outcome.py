"""How a trial ended, without Ray: the one rule (trainables.journal) on hand-made journals,
the analysis applying the same rule, the Ray adapter recording a non-Train exception as an
error with its message, and checkpoints staged for Ray across two filesystems."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis.load import TrialFiles, trial_status
from trainables.journal import JOURNAL_FILE, TrialJournal, append_event, classify_outcome

SHM = Path("/dev/shm")


def run_folder(tmp_path: Path, steps: list[int], *events: dict) -> Path:
    """A run whose journal validated `steps`, then holds `events` ({"event": ..., ...})."""
    run = tmp_path / "run"
    run.mkdir()
    append_event(run, "attempt_started", world_size=1, resumed_from_step=0)
    for step in steps:
        append_event(run, "validated", step=step, metrics={"val/psnr_fg": 10.0}, gpu_s=0.0)
    for event in events:
        append_event(run, **event)
    return run


def test_diverged_wins_over_the_error_it_raised(tmp_path: Path) -> None:
    run = run_folder(
        tmp_path, [10, 20], {"event": "diverged", "step": 23, "error": "diverged at step 23"}
    )
    outcome = classify_outcome(run, 40, error="RuntimeError: diverged at step 23")
    assert (outcome.status, outcome.diverged_step, outcome.last_step) == ("diverged", 23, 23)
    assert outcome.error == "diverged at step 23"


def test_error_then_result_then_steps(tmp_path: Path) -> None:
    run = run_folder(tmp_path, [10, 20])
    assert classify_outcome(run, 40, error="ValueError: bad").status == "errored"
    assert classify_outcome(run, 40).status == "stopped_early"
    assert classify_outcome(run, 20).status == "finished"  # stopped, but at the last step
    assert classify_outcome(run, None).status == "finished"
    append_event(run, "trained", final_step=40, steps_this_call=40, wall_s=1.0, gpu_s=0.0)
    finished = classify_outcome(run, 40)
    assert (finished.status, finished.last_step) == ("finished", 40)


def test_a_half_written_journal_line_is_skipped(tmp_path: Path) -> None:
    run = run_folder(tmp_path, [10, 20])
    with (run / JOURNAL_FILE).open("a") as handle:
        handle.write('{"event": "validated", "step": 30, "metr')
    assert TrialJournal.read(run).last_step == 20
    assert TrialJournal.read(tmp_path / "missing").last_step == 0


def trial_files(summary: dict | None, error_text: str | None = None) -> TrialFiles:
    return TrialFiles(folder="t", params={}, reports=[], summary=summary, error_text=error_text)


def test_the_analysis_applies_the_same_rule(tmp_path: Path) -> None:
    """A summary written before the end ("running", the driver was killed) does not decide; the
    run folder it names does: here the loss diverged, which the old rule called stopped_early."""
    run = run_folder(tmp_path, [10], {"event": "diverged", "step": 12, "error": "diverged"})
    running = trial_files({"status": "running", "run_dir": str(run)})
    assert trial_status(running, 10, 40) == "diverged"
    assert trial_status(trial_files({"status": "finished"}), 10, 40) == "finished"
    assert trial_status(trial_files(None, "Traceback...\nValueError: x\n"), 10, 40) == "errored"
    assert trial_status(trial_files(None), 10, 40) == "stopped_early"
    assert trial_status(trial_files(None), 40, 40) == "finished"


class FailingTrainer:
    def fit(self) -> None:
        raise ValueError("resources_per_worker: GPU requested but use_gpu is false")


def test_a_non_train_exception_is_an_error_with_its_message(tmp_path, monkeypatch) -> None:
    """Before: any exception other than Train's own failure was taken for "Tune stopped me" and
    the trial was recorded stopped_early with no error text."""
    from ray import tune

    from trainables import ray_trainable, trial
    from trainables.gslrm.config import TrainerConfig, save_config

    trial_dir = tmp_path / "tune" / "trial_0"
    base = tmp_path / "base.yaml"
    save_config(TrainerConfig(), base)
    context = SimpleNamespace(
        get_trial_id=lambda: "abc_00000", get_trial_dir=lambda: str(trial_dir)
    )
    monkeypatch.setattr(tune, "get_context", lambda: context)
    monkeypatch.setattr(trial, "make_trainer", lambda *args: FailingTrainer())
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", reports.append)
    settings = ray_trainable.TrialSettings(
        study="s",
        study_dir=str(tmp_path),
        tune_dir=str(tmp_path / "tune"),
        base_config=str(base),
        metrics=("val/psnr_fg", "val/mask_iou"),
    )
    ray_trainable.run_trial({}, settings)  # the trial's own failure is reported, not raised
    message = "ValueError: resources_per_worker: GPU requested but use_gpu is false"
    summary = json.loads((trial_dir / "trial_summary.json").read_text())
    assert summary["status"] == "errored" and summary["error"] == message
    # its last report carries the status and NaN for each study metric (Tune's metric check)
    (report,) = reports
    assert report["trial_status"] == "errored" and report["trial_error"] == message
    assert math.isnan(report["val/psnr_fg"]) and math.isnan(report["val/mask_iou"])
    # the journal says it too, so the searcher and the analysis read the same outcome
    journal = TrialJournal.read(tmp_path / "runs" / "abc_00000")
    assert journal.outcome(max_steps=100).status == "errored"


@pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (a tmpfs)")
def test_checkpoint_is_staged_on_its_own_filesystem_or_copied(tmp_path: Path) -> None:
    """A study on a cluster share: hard-linking the checkpoint into $TMPDIR (another filesystem)
    was "Invalid cross-device link" at the first validation."""
    from trainables.ray_trainable import link_or_copy, staged_for_report

    shm_run = SHM / f"outcome_test_{os.getpid()}"
    (shm_run / "checkpoints").mkdir(parents=True)
    try:
        ckpt = shm_run / "checkpoints" / "ckpt_0000000000000010.pt"
        ckpt.write_bytes(b"weights" * 1000)
        if os.stat(ckpt).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm and tmp_path are on one filesystem here")
        copied = tmp_path / ckpt.name
        assert link_or_copy(ckpt, copied) == "copied"
        assert copied.read_bytes() == ckpt.read_bytes()
        with staged_for_report(ckpt) as folder:
            staged = folder / ckpt.name
            assert os.stat(folder).st_dev == os.stat(ckpt).st_dev  # beside the checkpoint
            assert os.path.samefile(staged, ckpt)  # a link, not a 1.2 GB copy
            assert [p.name for p in folder.iterdir()] == [ckpt.name]
        assert not folder.exists() and ckpt.is_file()
    finally:
        for path in sorted(shm_run.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        shm_run.rmdir()


class ResumedAtTheEndTrainer:
    """A trainer that finds its run already at the last step (the driver died after the final
    checkpoint, before Tune kept the last report) or that trains the steps itself."""

    def __init__(self, run_dir: Path, max_steps: int, steps_this_call: int) -> None:
        self.run_dir, self.max_steps, self.steps_this_call = run_dir, max_steps, steps_this_call

    def fit(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rows = [
            {"step": self.max_steps - 10, "train/loss": 0.5},
            {"step": self.max_steps - 10, "val/psnr_fg": 11.0, "val/mask_iou": 0.2},
            {"step": self.max_steps, "train/loss": 0.25, "epoch": 3},
            {"step": self.max_steps, "val/psnr_fg": 12.5, "val/mask_iou": 0.3},
        ]
        lines = [json.dumps(row) for row in rows] + ['{"step": 99, "val/ps']  # a torn last line
        (self.run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        append_event(self.run_dir, "attempt_started", world_size=1, resumed_from_step=0)
        append_event(
            self.run_dir,
            "trained",
            final_step=self.max_steps,
            steps_this_call=self.steps_this_call,
            wall_s=1.0,
            gpu_s=0.0,
        )


@pytest.mark.parametrize("steps_this_call", [0, 10])
def test_a_trial_resumed_at_its_last_step_reports_its_recorded_summary(
    tmp_path: Path, monkeypatch, steps_this_call: int
) -> None:
    """Before: a trial whose trainer resumed at max_steps trained and reported nothing, and Tune
    failed the whole study ("Trial returned a result which did not include the specified
    metric(s) `val/psnr_fg`"), the red CI of the driver-killed-twice test. Now such a trial
    reports the summary its metrics.jsonl records, after writing its trial summary (a scheduler
    may stop it on that report); one that trained reports nothing extra (its loop's reports
    reached Tune)."""
    from ray import tune

    from trainables import ray_trainable, trial
    from trainables.gslrm.config import TrainerConfig, save_config

    base = tmp_path / "base.yaml"
    config = TrainerConfig()
    save_config(config, base)
    max_steps = config.training.schedule.max_steps
    trial_dir = tmp_path / "tune" / "trial_0"
    context = SimpleNamespace(
        get_trial_id=lambda: "abc_00000", get_trial_dir=lambda: str(trial_dir)
    )
    reported: list[dict] = []

    def report(metrics: dict) -> None:
        # a scheduler may stop the trial on this report: its summary must already be written
        assert (trial_dir / "trial_summary.json").is_file()
        reported.append(metrics)

    monkeypatch.setattr(tune, "get_context", lambda: context)
    monkeypatch.setattr(tune, "report", report)
    run_dir = tmp_path / "runs" / "abc_00000"
    monkeypatch.setattr(
        trial,
        "make_trainer",
        lambda *args: ResumedAtTheEndTrainer(run_dir, max_steps, steps_this_call),
    )
    settings = ray_trainable.TrialSettings(
        study="s", study_dir=str(tmp_path), tune_dir=str(tmp_path / "tune"), base_config=str(base)
    )
    ray_trainable.run_trial({}, settings)

    summary = json.loads((trial_dir / "trial_summary.json").read_text())
    assert summary["status"] == "finished"
    if steps_this_call:
        assert reported == []
        return
    assert reported == [
        {
            "step": max_steps,
            "train/loss": 0.25,
            "epoch": 3,
            "val/psnr_fg": 12.5,
            "val/mask_iou": 0.3,
            "timesteps_total": max_steps,
        }
    ]
