"""The per-trial journal (trainables.journal): newline-guarded writes, the one tolerant reader,
the outcome rule, the curve, the best step and compute summed over attempts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainables.journal import (
    JOURNAL_FILE,
    TrialJournal,
    append_event,
    append_line,
    read_json_lines,
)


def test_a_torn_tail_stays_its_own_line_and_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_line(path, {"step": 10})
    with path.open("a") as handle:
        handle.write('{"step": 20, "val/ps')  # a writer killed mid-line
    append_line(path, {"step": 20, "val/psnr": 12.5})
    assert path.read_text().splitlines()[1] == '{"step": 20, "val/ps'
    assert read_json_lines(path) == [{"step": 10}, {"step": 20, "val/psnr": 12.5}]
    assert read_json_lines(tmp_path / "missing.jsonl") == []


def test_a_resumed_run_with_a_torn_metrics_line_still_finds_its_best_round(tmp_path) -> None:
    """Defect 6, in one process: the trainer's log is cut mid-line by a kill, the resumed
    attempt logs its next validation round through the real MetricsLog, and the checkpoint
    rule reads the log. Before: the new record merged into the fragment and
    `validation_history` raised EvaluationError at every checkpoint round (rank 0 crashed
    until the trial errored)."""
    from trainables.gslrm.config import TrainerConfig
    from trainables.gslrm.evaluate import validation_history
    from trainables.gslrm.train import Hooks, MetricsLog

    config = TrainerConfig()
    config.training.logging.wandb.mode = "disabled"
    first = MetricsLog(tmp_path, config, Hooks())
    first.log({"val/psnr_fg": 18.0}, 10)
    with first.path.open("a") as handle:
        handle.write('{"step": 20, "val/psnr_fg": 1')  # killed mid-write
    resumed = MetricsLog(tmp_path, config, Hooks())
    resumed.log({"val/psnr_fg": 21.0}, 20)
    resumed.log({"val/psnr_fg": 19.5}, 30)
    assert validation_history(tmp_path / "metrics.jsonl", "val/psnr_fg") == {
        10: 18.0,
        20: 21.0,
        30: 19.5,
    }


def attempt(run: Path, time0: float, **started) -> None:
    append_line(
        run / JOURNAL_FILE,
        {"event": "attempt_started", "time": time0, "world_size": 1, **started},
    )


def event(run: Path, name: str, time: float, **fields) -> None:
    append_line(run / JOURNAL_FILE, {"event": name, "time": time, **fields})


def test_compute_is_summed_over_attempts_a_killed_one_counting_its_logged_span(
    tmp_path: Path,
) -> None:
    """Defect 8: a killed attempt (no trained event) counts from its start to its last logged
    event, with the GPU seconds of its last validation round; the finished one its own."""
    attempt(tmp_path, 1000.0, resumed_from_step=0)
    event(tmp_path, "validated", 1030.0, step=10, metrics={"val/psnr_fg": 12.0}, gpu_s=20.0)
    event(tmp_path, "checkpointed", 1031.0, step=10, path="checkpoints/ckpt_10.pt")
    event(tmp_path, "reported", 1032.0, step=10)
    attempt(tmp_path, 2000.0, resumed_from_step=10)  # the worker was killed; Train restarted
    event(tmp_path, "validated", 2030.0, step=20, metrics={"val/psnr_fg": 13.0}, gpu_s=19.0)
    event(tmp_path, "trained", 2040.0, final_step=20, steps_this_call=10, wall_s=39.0, gpu_s=25.0)
    journal = TrialJournal.read(tmp_path)
    compute = journal.compute()
    assert (compute.wall_s, compute.gpu_s) == (32.0 + 39.0, 20.0 + 25.0)
    assert (compute.attempts, compute.restarts) == (2, 1)
    outcome = journal.outcome(max_steps=20)
    assert (outcome.status, outcome.last_step) == ("finished", 20)


def test_a_stopped_trial_keeps_the_compute_it_spent(tmp_path: Path) -> None:
    attempt(tmp_path, 100.0, resumed_from_step=0)
    event(tmp_path, "validated", 150.0, step=10, metrics={"val/psnr_fg": 9.0}, gpu_s=40.0)
    journal = TrialJournal.read(tmp_path)
    assert (journal.compute().wall_s, journal.compute().gpu_s) == (50.0, 40.0)
    assert journal.outcome(max_steps=40).status == "stopped_early"
    assert not journal.loop_ended


def test_outcome_rule_order(tmp_path: Path) -> None:
    attempt(tmp_path, 1.0)
    event(tmp_path, "validated", 2.0, step=10, metrics={"val/psnr_fg": 9.0}, gpu_s=0.0)
    journal = TrialJournal.read(tmp_path)
    assert journal.outcome(40, error="ValueError: bad").status == "errored"
    assert journal.outcome(40).status == "stopped_early"
    assert journal.outcome(10).status == "finished"
    assert journal.outcome(None).status == "finished"
    append_event(tmp_path, "diverged", step=13, error="diverged at step 13")
    diverged = TrialJournal.read(tmp_path).outcome(40, error="RuntimeError: diverged")
    assert (diverged.status, diverged.diverged_step, diverged.error) == (
        "diverged",
        13,
        "diverged at step 13",
    )
    assert TrialJournal.read(tmp_path).loop_ended
    assert TrialJournal.read(tmp_path / "missing").outcome(40).status == "stopped_early"


def test_curve_and_best_step_are_none_safe(tmp_path: Path) -> None:
    attempt(tmp_path, 1.0)
    for step, psnr in ((10, 18.0), (20, 21.0), (30, float("nan")), (40, 21.0)):
        event(tmp_path, "validated", 2.0, step=step, metrics={"val/psnr_fg": psnr}, gpu_s=0.0)
    journal = TrialJournal.read(tmp_path)
    assert list(journal.curve) == [10, 20, 30, 40]
    assert math.isnan(journal.curve[30]["val/psnr_fg"])
    assert journal.best_step("val/psnr_fg", "max") == 20  # ties: the earliest
    assert journal.best_step("val/psnr_fg", "min") == 10
    assert journal.best_step("val/psnr_fg", "max", among={10, 40}) == 40
    assert journal.best_step("val/lpips", "min") is None  # never logged


@pytest.mark.parametrize("tail", ['{"event": "valid', "\x00\xff garbage", "[1, 2]"])
def test_the_reader_skips_what_is_not_an_event(tmp_path: Path, tail: str) -> None:
    attempt(tmp_path, 1.0, info={"trial_id": "t1"}, seed=3, code_version="abc")
    with (tmp_path / JOURNAL_FILE).open("a") as handle:
        handle.write(tail)
    append_event(tmp_path, "reported", step=10)
    journal = TrialJournal.read(tmp_path)
    assert [e["event"] for e in journal.events] == ["attempt_started", "reported"]
    assert journal.info == {"trial_id": "t1", "seed": 3, "code_version": "abc"}
    assert json.loads((tmp_path / JOURNAL_FILE).read_text().splitlines()[-1])["step"] == 10


def test_the_trainer_keeps_the_journal_of_a_run_that_diverges(tmp_path: Path) -> None:
    """Rank 0's events, written by the real loop: the attempt, its rounds, and the divergence
    (which the outcome rule reads instead of the old diverged.json)."""
    from tests.test_train import CPU, smoke
    from trainables.gslrm.data.synthetic import generate_dataset
    from trainables.gslrm.train import Hooks, TrainingDiverged, train

    data = generate_dataset(tmp_path / "data", samples=4, size=32, rig="mouse6", seed=1)
    config = smoke(
        data,
        "model.image_tokenizer.image_size=32",
        "model.transformer.n_layer=1",
        "model.transformer.d=64",
        "training.schedule.max_steps=6",
        "training.schedule.warmup=1",
        "validation.val_every=2",
        "validation.max_items=1",
        "training.checkpointing.checkpoint_every=2",
        "training.runtime.inject_nan_loss_at_step=3",
    )
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged):
        train(config, run, Hooks(device=CPU, run_info={"trial_id": "t9"}))
    journal = TrialJournal.read(run)
    assert [e["event"] for e in journal.events] == [
        "attempt_started",
        "validated",
        "checkpointed",
        "diverged",
    ]
    assert journal.info["trial_id"] == "t9" and journal.info["seed"] == config.training.runtime.seed
    outcome = journal.outcome(max_steps=6, error="RuntimeError: diverged at step 3")
    assert (outcome.status, outcome.diverged_step) == ("diverged", 3)
    assert list(journal.curve) == [2] and journal.loop_ended


def test_a_trial_tune_stopped_while_its_loop_finished_is_stopped_early(tmp_path: Path) -> None:
    """ASHA decides on the step-10 report while the worker runs on to its last step and
    journals `trained`: Tune's record of the trial ends at step 10, so the searcher (PRUNED)
    and the analysis both say stopped_early; without Tune's step the loop's end counts."""
    attempt(tmp_path, 1.0)
    event(tmp_path, "validated", 2.0, step=10, metrics={"val/psnr_fg": 9.0}, gpu_s=0.0)
    event(tmp_path, "trained", 3.0, final_step=20, steps_this_call=20, wall_s=2.0, gpu_s=0.0)
    journal = TrialJournal.read(tmp_path)
    assert journal.outcome(20, last_step=10).status == "stopped_early"
    assert journal.outcome(20, last_step=20).status == "finished"
    assert journal.outcome(20).status == "finished"


def test_the_best_rule_reads_the_journal_and_falls_back_to_metrics(
    tmp_path: Path, monkeypatch
) -> None:
    """The evaluator's `best` checkpoint comes from the record the trainer's pruning used (the
    journal); a run without a journal (FaceLift's, or older) still has its metrics.jsonl."""
    import trainables.gslrm.evaluate as evaluate
    from trainables.gslrm.checkpoint import checkpoint_name

    (tmp_path / "checkpoints").mkdir()
    for step in (10, 20):
        (tmp_path / "checkpoints" / checkpoint_name(step)).write_bytes(b"x")
    # the files are stand-ins: the rule is what is tested, not the checkpoint reader
    monkeypatch.setattr(evaluate, "read_checkpoint", lambda path: None)
    lines = [{"step": 10, "val/psnr_fg": 30.0}, {"step": 20, "val/psnr_fg": 20.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    # the objective is named: the rule is what is tested, not the default objective
    assert evaluate.choose_checkpoint(tmp_path, "best", "val/psnr_fg").step == 10
    for step, psnr in ((10, 18.0), (20, 21.0)):
        append_event(tmp_path, "validated", step=step, metrics={"val/psnr_fg": psnr}, gpu_s=0)
    assert evaluate.choose_checkpoint(tmp_path, "best", "val/psnr_fg").step == 20
