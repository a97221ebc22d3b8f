"""Runs the GS-LRM training loop under Ray Train inside one Tune trial: the public names.

The adapter is split by the process each part runs in:

    trainables.trial         the Tune trial (run_trial, make_trainer, fit, the trial summary)
    trainables.train_worker  each Ray Train worker (train_worker, evaluate_at_end, reports)
    trainables.recovery      the driver after the study (rebuild_wandb_run)

and a trial's fate is in one journal per trial, `runs/<trial>/journal.jsonl`, read by
`trainables.journal.TrialJournal`. This module re-exports the names study/, benchmarks and
tests import from it.
"""

from __future__ import annotations

from trainables.recovery import rebuild_wandb_run
from trainables.train_worker import (
    evaluate_at_end,
    link_or_copy,
    resume_checkpoint_file,
    staged_for_report,
    train_worker,
    with_tune_step,
)
from trainables.trial import (
    SUMMARY_FILE,
    TrialSettings,
    fit,
    make_trainer,
    recorded_summary,
    run_trial,
    stopped_by_tune,
    train_run_name,
    trial_config,
    trial_summary,
    wandb_tags,
)

__all__ = [
    "SUMMARY_FILE",
    "TrialSettings",
    "evaluate_at_end",
    "fit",
    "link_or_copy",
    "make_trainer",
    "rebuild_wandb_run",
    "recorded_summary",
    "resume_checkpoint_file",
    "run_trial",
    "staged_for_report",
    "stopped_by_tune",
    "train_run_name",
    "train_worker",
    "trial_config",
    "trial_summary",
    "wandb_tags",
    "with_tune_step",
]
