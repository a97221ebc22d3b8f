"""study.searcher.StudySearcher driven as Tune drives it (suggest, results, completion), against a
real SQLite Optuna storage, without a Ray cluster: objective names, trainer-step intermediate
values, PRUNED for a trial ASHA stopped, FAIL for a diverged one, and the user attributes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search_spaces import define_by_run, get_space
from trainables.journal import append_event

pytest.importorskip("ray.tune.search.optuna")
from study.searcher import StudySearcher  # noqa: E402 - needs Ray's Optuna integration

MAX_STEPS = 40
State = optuna.trial.TrialState


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make(tmp_path: Path, metrics: list[str], name: str = "s") -> StudySearcher:
    return StudySearcher(
        space=define_by_run(get_space("mouse_pareto"), {}),
        metrics=metrics,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"),
        study_name=name,
        study_dir=str(tmp_path),
        max_steps=MAX_STEPS,
    )


def result(step: int, psnr: float, iou: float) -> dict:
    # Tune's own counter runs 1, 2, 3; the trainer's step is what Optuna must see.
    return {
        "step": step,
        "training_iteration": step // 10,
        "val/psnr_fg": psnr,
        "val/mask_iou": iou,
    }


def finish_run_folder(study_dir: Path, trial_id: str, event: str, payload: dict) -> None:
    """The trial's journal: one attempt that ended with `event` (trained, diverged)."""
    run = study_dir / "runs" / trial_id
    append_event(run, "attempt_started", world_size=1, resumed_from_step=0)
    append_event(run, event, **payload)


def load(tmp_path: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def test_single_objective_states_steps_and_attributes(tmp_path: Path) -> None:
    searcher = make(tmp_path, ["val/psnr_fg"])
    for ident in ("done", "stopped", "diverged"):
        assert searcher.suggest(ident) is not None
    # finished: 4 rounds to max_steps, the loop's own result file
    for step in (10, 20, 30, 40):
        searcher.on_trial_result("done", result(step, 10.0 + step / 10, 0.5))
    finish_run_folder(tmp_path, "done", "trained", {"final_step": 40})
    searcher.on_trial_complete("done", result(40, 14.0, 0.71))
    # stopped by ASHA after 2 rounds: no trained event, last step 20 < 40. As Tune does,
    # the result that stops it goes to on_trial_complete only, never to on_trial_result.
    searcher.on_trial_result("stopped", result(10, 9.0, 0.2))
    searcher.on_trial_complete("stopped", result(20, 10.0, 0.2))
    # diverged: the trainer's diverged event wins over the error Tune reports
    searcher.on_trial_result("diverged", result(10, 5.0, 0.1))
    finish_run_folder(tmp_path, "diverged", "diverged", {"step": 13, "error": "nan loss"})
    searcher.on_trial_complete("diverged", None, error=True)

    study = load(tmp_path)
    assert study.metric_names == ["val/psnr_fg"]
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    done, stopped, diverged = by_id["done"], by_id["stopped"], by_id["diverged"]
    assert done.state == State.COMPLETE and done.value == 14.0
    assert done.intermediate_values == {10: 11.0, 20: 12.0, 30: 13.0, 40: 14.0}
    assert done.user_attrs["run_folder"] == "runs/done"
    assert done.user_attrs["status"] == "finished"
    assert done.user_attrs["final/val/mask_iou"] == 0.71
    assert stopped.state == State.PRUNED
    assert stopped.intermediate_values == {10: 9.0, 20: 10.0}
    assert stopped.user_attrs["status"] == "stopped_early"
    assert stopped.user_attrs["last_step"] == 20
    assert diverged.state == State.FAIL and diverged.user_attrs["status"] == "diverged"


def test_a_repeated_step_keeps_its_first_value(tmp_path: Path) -> None:
    """A trial resumed from its checkpoint after a worker crash reports step 10 again."""
    searcher = make(tmp_path, ["val/psnr_fg"])
    searcher.suggest("t")
    searcher.on_trial_result("t", result(10, 9.0, 0.2))
    searcher.on_trial_result("t", result(10, 9.5, 0.2))
    searcher.on_trial_result("t", {"step": 15, "train/loss": 0.3})  # no validation: ignored
    searcher.on_trial_complete("t", result(10, 9.5, 0.2))
    assert load(tmp_path).trials[0].intermediate_values == {10: 9.0}


def test_multi_objective_names_directions_and_values(tmp_path: Path) -> None:
    searcher = make(tmp_path, ["val/psnr_fg", "val/mask_iou"], name="p")
    searcher.suggest("a")
    searcher.suggest("b")
    for step in (10, 20, 30, 40):
        searcher.on_trial_result("a", result(step, step / 2, step / 100))
    finish_run_folder(tmp_path, "a", "trained", {"final_step": 40})
    searcher.on_trial_complete("a", result(40, 20.0, 0.4))
    searcher.on_trial_result("b", result(10, 3.0, 0.05))
    searcher.on_trial_complete("b", result(10, 3.0, 0.05))  # stopped at step 10 of 40

    study = load(tmp_path, "p")
    assert study.metric_names == ["val/psnr_fg", "val/mask_iou"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    a, b = sorted(study.trials, key=lambda t: t.user_attrs["tune_trial_id"])
    assert a.state == State.COMPLETE and a.values == [20.0, 0.4]
    assert a.user_attrs["intermediate_values"] == {
        "10": [5.0, 0.1],
        "20": [10.0, 0.2],
        "30": [15.0, 0.3],
        "40": [20.0, 0.4],
    }
    assert a.user_attrs["final/val/psnr_fg"] == 20.0
    assert b.state == State.PRUNED and b.user_attrs["status"] == "stopped_early"
    assert b.user_attrs["intermediate_values"] == {"10": [3.0, 0.05]}


def test_finished_without_an_objective_value_is_a_failure(tmp_path: Path) -> None:
    searcher = make(tmp_path, ["val/psnr_fg", "val/mask_iou"])
    searcher.suggest("t")
    finish_run_folder(tmp_path, "t", "trained", {"final_step": 40})
    searcher.on_trial_complete("t", {"step": 40, "val/psnr_fg": 12.0, "val/mask_iou": float("nan")})
    trial = load(tmp_path).trials[0]
    assert trial.state == State.FAIL and trial.user_attrs["final/val/mask_iou"] is None


def test_a_trial_recorded_before_a_driver_restart_is_left_as_recorded(tmp_path: Path) -> None:
    """Killed after Optuna recorded a trial but before Tune saved the searcher, a restored
    driver still sees the trial running and reports it again: Optuna's record stands."""
    searcher = make(tmp_path, ["val/psnr_fg"])
    searcher.suggest("t")
    finish_run_folder(tmp_path, "t", "trained", {"final_step": 40})
    searcher.on_trial_complete("t", result(40, 14.0, 0.7))
    searcher._completed_trials.discard("t")  # the state the restored searcher was saved in
    searcher.on_trial_result("t", result(50, 1.0, 0.1))
    searcher.on_trial_complete("t", result(40, 1.0, 0.1))
    (trial,) = load(tmp_path).trials
    assert trial.state == State.COMPLETE and trial.value == 14.0
    assert trial.user_attrs["final/val/mask_iou"] == 0.7
