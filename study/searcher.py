"""`StudySearcher`: Ray Tune's OptunaSearch, made to leave an Optuna storage a user can read.

What it changes against Ray 2.60's OptunaSearch:

- Objectives are named (`Study.set_metric_names`), so optuna-dashboard labels its axes and
  Pareto front `val/psnr_fg` / `val/mask_iou` instead of "Objective 0".
- Intermediate values are indexed by the trainer's step (`result["step"]`: 10, 20, ...), the
  index W&B, TensorBoard and curves.parquet use, not by Tune's iteration (1, 2, ...). Optuna
  has no intermediate values for multi-objective studies (Trial.report refuses them), so there
  every objective's values by step go into the user attribute `intermediate_values`.
- A trial ends in Optuna with the state of the one outcome rule (`trainables.journal`, read
  from the trial's journal runs/<trial id>/journal.jsonl):
  finished -> COMPLETE with its final values; stopped early (ASHA) -> PRUNED, keeping its
  intermediate values (Ray's version tells COMPLETE with the last value, so the sampler takes a
  trial stopped at step 10 for a finished one); diverged or errored -> FAIL.
- Each Optuna trial carries user attributes that lead from the dashboard to the files:
  `tune_trial_id`, `run_folder` (relative to the study folder: runs/<trial id>), `status`, and
  `final/val/mask_iou` (plus `final/<objective>` for every objective).
- `on_trial_end(study_dir, trial)` runs as a trial ends, after its user attributes and before
  `tell`: the last moment Optuna accepts anything on the trial (the study's trial pictures,
  `study.artifacts`). Its failure is logged and the trial is still told.

The module imports Ray at the top; `study.search` imports it only when it builds a Tuner.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from trainables.journal import TrialJournal

logger = logging.getLogger(__name__)

RUNS_FOLDER = "runs"
# Final values recorded on every Optuna trial besides the objectives (the issue's "final
# val/mask_iou": it shows collapse in the dashboard even when the objective is PSNR).
RECORDED_FINALS = ("val/mask_iou",)
OPTUNA_STATE = {
    "finished": optuna.trial.TrialState.COMPLETE,
    "stopped_early": optuna.trial.TrialState.PRUNED,
    "diverged": optuna.trial.TrialState.FAIL,
    "errored": optuna.trial.TrialState.FAIL,
}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def result_step(result: dict[str, Any]) -> int | None:
    """The trainer step of a Tune result (None when the result has none)."""
    step = result.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class StudySearcher(OptunaSearch):
    """OptunaSearch over one or more objectives (all in one `mode`) with the study's run folders.

    metrics: the objectives, e.g. ["val/psnr_fg"] or ["val/psnr_fg", "val/mask_iou"].
    study_dir: the study folder (trial run folders are study_dir/runs/<trial id>).
    max_steps: the trainer's max_steps, for telling a stopped trial from a finished one.
    on_trial_end: called with (study_dir, the Optuna trial) as each trial ends, before `tell`.
    """

    def __init__(
        self,
        *,
        space: Any,
        metrics: list[str],
        mode: str,
        sampler: optuna.samplers.BaseSampler,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        study_dir: str,
        max_steps: int,
        on_trial_end: Callable[[Path, optuna.Trial], Any] | None = None,
    ) -> None:
        if not metrics:
            raise ValueError("StudySearcher needs at least one objective metric")
        self._metrics = list(metrics)
        self._study_dir = str(study_dir)
        self._max_steps = int(max_steps)
        self._on_trial_end = on_trial_end
        self._intermediate: dict[str, dict[str, list[float | None]]] = {}
        multi = len(self._metrics) > 1
        super().__init__(
            space=space,
            metric=self._metrics if multi else self._metrics[0],
            mode=[mode] * len(self._metrics) if multi else mode,
            sampler=sampler,
            storage=storage,
            study_name=study_name,
        )

    @property
    def multi_objective(self) -> bool:
        return len(self._metrics) > 1

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged through 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(list(self._metrics))

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if params is not None and ot_trial is not None:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            ot_trial.set_user_attr("run_folder", f"{RUNS_FOLDER}/{trial_id}")
            ot_trial.set_user_attr("status", "running")
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        try:
            self._record_intermediate(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._already_finished(trial_id)

    def _already_finished(self, trial_id: str) -> None:
        """A driver killed after Optuna recorded a trial but before Tune saved the searcher:
        the restored searcher still sees the trial running. Optuna's record stands."""
        logger.info("optuna: trial %s was already recorded before the restart", trial_id)
        self._completed_trials.add(trial_id)

    def _record_intermediate(self, trial_id: str, result: dict) -> None:
        step = result_step(result)
        values = [_finite(result.get(metric)) for metric in self._metrics]
        if step is None or all(v is None for v in values):
            return  # a result without a validation round (or without a step) has nothing to say
        by_step = self._intermediate.setdefault(trial_id, {})
        # A trial resumed from its checkpoint after a worker crash reports a step again: the
        # first value stays (Optuna ignores a repeated step with a warning).
        if str(step) in by_step:
            return
        by_step[str(step)] = values  # JSON object keys are strings
        ot_trial = self._ot_trials[trial_id]
        if not self.multi_objective:
            if values[0] is not None:
                ot_trial.report(values[0], step)
            return
        ot_trial.set_user_attr("intermediate_values", dict(by_step))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        try:
            self._complete(trial_id, result or {}, error)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._already_finished(trial_id)

    def _complete(self, trial_id: str, result: dict, error: bool) -> None:
        ot_trial = self._ot_trials[trial_id]
        # The result that made ASHA stop a trial reaches the searcher only here (Tune skips
        # on_trial_result for it), so a trial stopped at its first rung would keep no values.
        self._record_intermediate(trial_id, result)
        journal = TrialJournal.read(Path(self._study_dir) / RUNS_FOLDER / trial_id)
        outcome = journal.outcome(
            self._max_steps,
            error="the trial raised an error (see its Tune folder's error.txt)" if error else None,
            last_step=result_step(result),
        )
        values = [_finite(result.get(metric)) for metric in self._metrics]
        state = OPTUNA_STATE.get(outcome.status, optuna.trial.TrialState.FAIL)
        if state == optuna.trial.TrialState.COMPLETE and any(v is None for v in values):
            state = optuna.trial.TrialState.FAIL  # finished without a final objective value
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        ot_trial.set_user_attr("run_folder", f"{RUNS_FOLDER}/{trial_id}")
        ot_trial.set_user_attr("status", outcome.status)
        ot_trial.set_user_attr("last_step", outcome.last_step)
        for metric in dict.fromkeys([*self._metrics, *RECORDED_FINALS]):
            ot_trial.set_user_attr(f"final/{metric}", _finite(result.get(metric)))
        self._trial_ended(trial_id, ot_trial)
        told = None
        if state == optuna.trial.TrialState.COMPLETE:
            told = values if self.multi_objective else values[0]
        try:
            self._ot_study.tell(ot_trial, told, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. a trial Optuna already finished
            logger.warning("optuna: could not record trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _trial_ended(self, trial_id: str, ot_trial: optuna.Trial) -> None:
        # getattr: a searcher saved by an older version (restored by --resume) has no hook
        hook = getattr(self, "_on_trial_end", None)
        if hook is None:
            return
        try:
            hook(Path(self._study_dir), ot_trial)
        except Exception as exc:  # noqa: BLE001 - the trial's record in Optuna comes first
            logger.warning("optuna: trial %s: on_trial_end failed: %s", trial_id, exc)
