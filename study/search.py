"""The Tuner of a study: its search algorithm (Optuna or a grid), scheduler and progress line.

Ray is imported inside the functions, so importing this module (e.g. from `study.run`'s CLI
checks) stays cheap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from search_spaces import define_by_run, get_space
from study.plan import StudyPlan
from study.studies import StudySpec
from trainables.ray_trainable import TrialSettings, run_trial


def grid_param_space(spec: StudySpec, seeds: tuple[int, ...] | None) -> dict[str, Any]:
    from ray import tune

    grid = dict(spec.grid)
    if seeds is not None and "training.runtime.seed" in grid:
        grid["training.runtime.seed"] = list(seeds)
    # Linked keys are applied inside the trial (TrialSettings.linked), not with tune.sample_from:
    # Tune saves functions in the search state as placeholders that a restored study cannot resolve.
    return {key: tune.grid_search(values) for key, values in grid.items()}


class Progress:
    """Prints one line whenever a trial reports or ends: done / running / failed, best so far."""

    def __new__(cls, objective: str, mode: str):
        from ray.tune import Callback

        class _Progress(Callback):
            def __init__(self) -> None:
                self.best: tuple[float, str] | None = None
                self.last_print = 0.0
                self.failed: set[str] = set()  # trials whose last report says they failed

            def _line(self, trials: list, force: bool = False) -> None:
                now = time.monotonic()
                if not force and now - self.last_print < 10:
                    return
                self.last_print = now
                status = [t.status for t in trials]
                failed = status.count("ERROR") + len(self.failed)
                done = sum(
                    t.status == "TERMINATED" and t.trial_id not in self.failed for t in trials
                )
                best = (
                    f"best {objective} {self.best[0]:.3f} ({self.best[1]})"
                    if self.best
                    else f"no {objective} yet"
                )
                print(
                    f"[study] trials: {done} done, {status.count('RUNNING')} running, "
                    f"{status.count('PENDING')} pending, {failed} failed; {best}",
                    flush=True,
                )

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if result.get("trial_status") in ("errored", "diverged"):
                    self.failed.add(trial.trial_id)
                value = result.get(objective)
                if isinstance(value, int | float) and value == value:
                    better = self.best is None or (
                        value > self.best[0] if mode == "max" else value < self.best[0]
                    )
                    if better:
                        self.best = (float(value), trial.trial_id)
                self._line(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._line(trials, force=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._line(trials, force=True)

        return _Progress()


def make_sampler(seed: int, num_samples: int):
    """TPE, for one objective and for several.

    Why TPE's multi-objective mode and not NSGA-II for the Pareto study (Optuna 5): NSGA-II
    breeds generations of `population_size` (default 50) trials, so a study of 32 trials is its
    random first generation and nothing else; and its crossover only knows the parameters all
    parents share, so a define-by-run space whose keys are sampled conditionally (masked SSIM
    only with SSIM on, the mask threshold only with a masked loss) gets those keys from its
    independent random fallback. TPE (MOTPE when the study has several directions) models each
    parameter as it is sampled, conditional ones included, and learns from trial
    `n_startup_trials` on, which fits small GPU budgets. One sampler for both keeps the two
    studies comparable.
    """
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, num_samples))


def make_searcher(plan: StudyPlan):
    """The study's StudySearcher (Optuna) over its space, objectives named in the storage."""
    import optuna

    from study.artifacts import upload_trial_pictures
    from study.searcher import StudySearcher

    spec = plan.spec
    return StudySearcher(
        space=define_by_run(get_space(spec.space), {}),
        metrics=list(spec.objectives or (spec.objective,)),
        mode=spec.mode,
        sampler=make_sampler(plan.sampler_seed, plan.num_samples),
        storage=optuna.storages.RDBStorage(f"sqlite:///{plan.study_dir / 'optuna.db'}"),
        study_name=spec.name,
        study_dir=str(plan.study_dir),
        max_steps=plan.config.training.schedule.max_steps,
        on_trial_end=upload_trial_pictures,  # trial pictures for optuna-dashboard
    )


def build_tuner(
    plan: StudyPlan, settings: TrialSettings, restore: bool, resources: dict, concurrency: int
):
    """A new Tuner writing to settings.tune_dir, or the earlier one restored from it.

    resources: one trial's own bundle; concurrency: trials at once (a restored Tuner keeps the
    one it started with)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from study.artifacts import picture_callbacks
    from study.scheduler import TrainerStepASHA, may_reuse_actors

    spec = plan.spec
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), resources)
    if restore:
        return tune.Tuner.restore(
            settings.tune_dir,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            # Tune's ERROR is only ever a lost trial driver (a trial that diverged or failed in
            # training ends normally, recorded by its journal), so each restarts: its Train run
            # resumes from its last checkpoint
            restart_errored=True,
        )

    config = plan.config
    if spec.scheduler == "asha":
        # Rungs at trainer steps: a report Train repeats after a worker restart lands on a rung
        # the trial already passed, and the trial's last step is never a rung.
        scheduler = TrainerStepASHA(
            max_steps=config.training.schedule.max_steps,
            grace_steps=plan.grace_period_rounds * config.validation.val_every,
            reduction_factor=2,
        )
    else:
        scheduler = FIFOScheduler()
    search_alg, param_space, num_samples = None, {}, plan.num_samples
    if spec.search == "optuna":
        search_alg = make_searcher(plan)
    elif plan.until_decided:  # seeds added look by look (study/sequential.py)
        from study.seed_searcher import make_sequential_searcher
        from study.sequential import trial_cap

        search_alg, num_samples = make_sequential_searcher(plan), trial_cap(plan)
    else:
        param_space = grid_param_space(spec, plan.grid_seeds)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.objective,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=concurrency,
            # A trial that ended by itself leaves its actor to the next (a process start saved
            # per trial); never under ASHA, whose stopped trials must take their actor down
            # (study.scheduler.may_reuse_actors says why). Train workers are new either way.
            reuse_actors=may_reuse_actors(spec.scheduler),
        ),
        run_config=tune.RunConfig(
            name=Path(settings.tune_dir).name,
            storage_path=str(plan.study_dir),
            verbose=0,
            callbacks=[
                Progress(spec.objective, spec.mode),
                *picture_callbacks(spec.search, plan.study_dir),
            ],
            # Retries of a trial whose driver was lost (its node died): the retried trial's
            # Train run resumes from its last checkpoint. Never a diverged or failed trial:
            # those end without an error (trainables.trial.run_trial)
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        ),
    )
