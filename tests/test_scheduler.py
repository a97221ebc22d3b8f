"""ASHA keyed by trainer step (study.scheduler): rungs, repeated reports, the last report."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from ray.tune.schedulers import TrialScheduler  # noqa: E402

from study.scheduler import STEP_ATTR, TrainerStepASHA, may_reuse_actors, rung_steps  # noqa: E402

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def scheduler(max_steps: int = 40, grace_steps: int = 10) -> TrainerStepASHA:
    asha = TrainerStepASHA(max_steps=max_steps, grace_steps=grace_steps)
    asha.set_search_properties(metric="val/psnr_fg", mode="max")
    return asha


def add(asha: TrainerStepASHA, trial_id: str) -> SimpleNamespace:
    trial = SimpleNamespace(trial_id=trial_id)
    asha.on_trial_add(None, trial)
    return trial


def report(asha, trial, step: int, value: float) -> str:
    return asha.on_trial_result(None, trial, {STEP_ATTR: step, "val/psnr_fg": value})


def test_rungs_are_trainer_steps_below_the_last_step() -> None:
    assert rung_steps(scheduler(40, 10)) == [10, 20]
    assert rung_steps(scheduler(3000, 1000)) == [1000, 2000]
    # max_steps not a multiple of the validation interval: still no rung at the end
    assert rung_steps(scheduler(45, 10)) == [10, 20, 40]
    assert rung_steps(scheduler(40, 40)) == []


def test_a_weak_trial_is_stopped_at_a_rung() -> None:
    asha = scheduler()
    strong, weak = add(asha, "a"), add(asha, "b")
    assert report(asha, strong, 10, 20.0) == CONTINUE
    assert report(asha, weak, 10, 10.0) == STOP


def test_reports_repeated_after_a_worker_restart_change_nothing() -> None:
    """Train re-reports the steps since the last checkpoint after a restart. Counted by reports
    (the old time_attr), the repeats pushed the trial's last report past max_t and ASHA stopped it
    before its evaluation; by step they land on rungs the trial has passed."""
    asha = scheduler()
    leader, trial = add(asha, "a"), add(asha, "b")
    for step in (10, 20):
        report(asha, leader, step, 30.0)
    # a trial as good as the leader, restarted from its step-20 checkpoint twice
    steps = (10, 20, 30, 20, 30, 20, 30, 40)
    assert [report(asha, trial, step, 30.0) for step in steps] == [CONTINUE] * len(steps)
    # a repeated report with a worse value does not re-open a rung the trial passed
    assert report(asha, trial, 20, 1.0) == CONTINUE


def test_the_last_report_is_never_a_stop() -> None:
    asha = scheduler(max_steps=40, grace_steps=10)
    best, worst = add(asha, "a"), add(asha, "b")
    for step in (10, 20, 30, 40):
        report(asha, best, step, 30.0)
    # a worst trial that survived its rungs (it was alone there) is not cut at its final step
    assert report(asha, worst, 40, 1.0) == CONTINUE


def test_actors_are_reused_only_where_no_trial_is_stopped_from_outside() -> None:
    assert may_reuse_actors("fifo") is True
    assert may_reuse_actors("asha") is False
