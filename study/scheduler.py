"""Early stopping keyed by the trainer's step, and the rule for when Tune may reuse trial actors.

Ray's ASHA counts whatever `time_attr` says. Counting Tune reports (`training_iteration`) breaks
twice: a worker restart makes Train re-report the steps since its last checkpoint, so one
duplicate pushes the final report to `max_t` and ASHA stops the trial before its end-of-trial
evaluation (two cut it short and it is recorded PRUNED); and a run whose `max_steps` is not a
multiple of `val_every` makes one report more than `max_steps // val_every`. Keyed by the
trainer's step (`timesteps_total`, which every report carries), a duplicate report lands on a
rung it has already passed and changes nothing, and the trial's last report is never a rung.

Imports Ray at module level: `study.search` imports this module inside `build_tuner`.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

STEP_ATTR = "timesteps_total"  # the trainer's step, set on every report (with_tune_step)


class TrainerStepASHA(ASHAScheduler):
    """ASHA whose rungs are trainer steps, and which never stops a trial at its last step.

    max_steps: the trainer's last step; a report at (or past) it is the trial's own end (it
        still evaluates its chosen checkpoint and writes its summary), so it is not a rung.
    grace_steps: steps before a trial can be stopped (ASHA's first rung).
    Rungs sit at grace_steps * reduction_factor**k below max_steps, e.g. grace 10, max 40:
    rungs at 10 and 20.
    """

    def __init__(
        self, max_steps: int, grace_steps: int, reduction_factor: float = 2, **kwargs: Any
    ):
        grace_steps = max(1, min(grace_steps, max_steps))
        super().__init__(
            time_attr=STEP_ATTR,
            max_t=max_steps,
            grace_period=grace_steps,
            reduction_factor=reduction_factor,
            **kwargs,
        )
        self.max_steps = max_steps

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        step = result.get(STEP_ATTR)
        if isinstance(step, int | float) and step >= self.max_steps:
            # the trial's final report: it ends by itself (evaluation, summary) right after
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def rung_steps(scheduler: TrainerStepASHA) -> list[int]:
    """The steps at which `scheduler` may stop a trial, ascending (below max_steps)."""
    milestones = {int(m) for bracket in scheduler._brackets for m, _ in bracket._rungs}
    return sorted(m for m in milestones if m < scheduler.max_steps)


def may_reuse_actors(scheduler_name: str) -> bool:
    """Whether the next trial may run in a finished trial's Tune actor.

    Only when no trial is ever stopped from outside (FIFO). A trial that ASHA stops mid-fit
    leaves its thread inside `TorchTrainer.fit()`: Tune keeps the actor for reuse instead of
    killing it, so the trial's Train controller lives on, blocked forever putting its next report
    into the Tune session's one-slot queue that nobody reads. The next trial's `reset_config`
    then waits 2 s for that thread, fails ("Trainable runner reuse requires reset_config() ..."),
    and Tune hangs stopping the trial on that actor (the README's smoke sweep hung 3 times in 3).
    Without reuse Tune kills a stopped trial's actor, which takes its controller and workers
    with it. A trial that ends by itself returns from fit() first, so reusing its actor is safe
    and saves a process start per trial.
    """
    return scheduler_name == "fifo"
