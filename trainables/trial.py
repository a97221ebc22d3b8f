"""The Tune trial side: one Tune trial runs one Ray Train `TorchTrainer.fit()`.

Ray 2.60 uses Ray Train V2, so the Tune trainable is a plain function (`run_trial`) that
builds a `TorchTrainer` (`make_trainer`, workers run `trainables.train_worker.train_worker`)
and calls `fit()`. `TuneReportCallback` forwards rank 0's reports to Tune, so every validation
round is one Tune iteration that ASHA and Optuna see. When `fit` returns or raises, the trial's
fate is read from its journal (`trainables.journal.TrialJournal`, the reader the searcher and
the analysis use too) and written to Tune's trial folder as `trial_summary.json`.

Files per trial (in the study folder):
    runs/<trial_id>/journal.jsonl  the trial's journal: attempts, validation rounds,
                               checkpoints, reports, how the loop ended, the evaluation
    runs/<trial_id>/           the trainer's run folder (metrics.jsonl, pictures, checkpoints,
                               eval/, wandb_logs/)
    train/<study>-<trial_id>/checkpoint_*/   Ray Train's reported checkpoints: hard links to the
                               run's own files (one copy on disk; copied only across filesystems)
    tune-<id>/<trial>/trial_summary.json  status, error, steps_run (the trainer's last step),
                               wall_s and gpu_s (summed over attempts; a killed attempt counts
                               the span of its logged steps), fit_s, restarts, evaluation,
                               seed, code version, full config
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.gslrm.atomic import write_json_atomic
from trainables.gslrm.config import (
    TrainerConfig,
    apply_overrides,
    config_to_dict,
    flat_config,
    load_config,
)
from trainables.gslrm.version import code_version
from trainables.journal import (
    ERROR_MAX_CHARS,
    Outcome,
    TrialJournal,
    append_event,
    metric_records,
)
from trainables.train_worker import train_worker, with_tune_step

SUMMARY_FILE = "trial_summary.json"


@dataclass
class TrialSettings:
    """What the study fixes for every trial (plain data, shipped to the trial by Tune)."""

    study: str
    study_dir: str
    tune_dir: str  # the study's Tune experiment folder (STUDY_DIR/tune-<id>)
    base_config: str
    overrides: dict[str, Any] = field(
        default_factory=dict
    )  # applied before the trial's sampled values
    linked: dict[str, str] = field(
        default_factory=dict
    )  # follower key -> key whose value it copies
    objective: str = "val/psnr_bal"  # a cover-all render cannot win it (gslrm/metrics.py)
    mode: str = "max"
    # every metric the study's scheduler and searcher read (the objectives); a trial's last report
    # must hold each, NaN where it has no value
    metrics: tuple[str, ...] = ()
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    keep_checkpoints: int = 2
    worker_start_timeout_s: int = 120


def trial_config(settings: TrialSettings, sampled: dict[str, Any]):
    """Base YAML + study overrides + this trial's sampled values (all dotted keys), then each
    linked key copies its leader's value (e.g. masked SSIM follows masked L2)."""
    values = {**settings.overrides, **sampled}
    config = load_config(settings.base_config)
    flat = flat_config(apply_overrides(config, values))
    values.update({follower: flat[leader] for follower, leader in settings.linked.items()})
    return apply_overrides(config, values)


def _root_cause(exc: BaseException) -> str:
    """The innermost message of a Ray error chain, one line."""
    text = str(exc).strip()
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "~", "Traceback")):
            return line[:500]
    return type(exc).__name__


def train_run_name(settings: TrialSettings, trial_id: str) -> str:
    """The trial's Ray Train run folder under STUDY_DIR/train/ (named after the Tune trial, so a
    restarted trial finds its own run)."""
    return f"{settings.study}-{trial_id}"


def wandb_tags(sampled: dict[str, Any]) -> list[str]:
    """A trial's searched values as W&B tags, "<last key part>=<value>", e.g.
    {"training.losses.ssim_loss_weight": 0.5} -> ["ssim_loss_weight=0.5"] (W&B caps a tag at
    64 characters)."""
    tags = []
    for key, value in sorted(flat_config_values(sampled).items()):
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        tags.append(f"{key.rsplit('.', 1)[-1]}={shown}"[:64])
    return tags


def flat_config_values(sampled: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune's sampled config (dotted keys, or nested dicts) -> {dotted key: value}."""
    flat: dict[str, Any] = {}
    for key, value in sampled.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flat_config_values(value, name))
        else:
            flat[name] = value
    return flat


def make_trainer(
    settings: TrialSettings, config, trial_id: str, run_dir: Path, sampled: dict[str, Any]
):
    """The trial's TorchTrainer: its workers run `train_worker`; rank 0's reports go to Tune."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    return TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config_to_dict(config),
            "trial_id": trial_id,
            "run_dir": str(run_dir),
            "train_run_dir": str(
                Path(settings.study_dir) / "train" / train_run_name(settings, trial_id)
            ),
            "run_info": {
                "trial_id": trial_id,
                "study": settings.study,
                "seed": config.training.runtime.seed,
                "code_version": code_version(),
                "wandb": {
                    "group": settings.study,
                    "tags": wandb_tags(sampled),
                    "job_type": "trial",
                },
            },
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={
                "CPU": settings.cpus_per_worker,
                **({"GPU": settings.gpus_per_worker} if settings.use_gpu else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=train_run_name(settings, trial_id),
            storage_path=str(Path(settings.study_dir) / "train"),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(
                max_failures=settings.max_failures, controller_failure_limit=settings.max_failures
            ),
            # Ray Train keeps the best by the objective and the latest.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=settings.keep_checkpoints,
                checkpoint_score_attribute=settings.objective,
                checkpoint_score_order=settings.mode,
            ),
        ),
    )


def stopped_by_tune(exc: BaseException) -> bool:
    """True for the errors Ray raises in a trial that Tune stops mid-fit (ASHA, the study
    ending): the trial's Train controller or workers are torn down under it. Any other
    exception (a configuration error, a bug, a Ray Train failure) is the trial's own error."""
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError) and not isinstance(
        exc, ray.exceptions.RayTaskError
    )


def fit(trainer) -> tuple[str | None, str | None]:
    """Run trainer.fit(); returns (error message or None, stop note or None)."""
    import ray.train

    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:  # wraps the worker's own exception
        return _root_cause(exc), None
    except Exception as exc:  # noqa: BLE001 - every exception becomes the trial's record
        if stopped_by_tune(exc):
            return None, f"{type(exc).__name__}: {_root_cause(exc)}"
        return f"{type(exc).__name__}: {_root_cause(exc)}", None
    return None, None


def run_trial(sampled: dict[str, Any], settings: TrialSettings) -> None:
    """Tune function trainable: one trial = one TorchTrainer.fit(), then its summary (the
    journal's outcome and compute, plus what Tune told `fit`)."""
    from ray import tune

    context = tune.get_context()
    trial_id = context.get_trial_id()
    trial_dir = Path(context.get_trial_dir())
    run_dir = Path(settings.study_dir) / "runs" / trial_id
    config = trial_config(settings, sampled)
    os.environ.setdefault(
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(settings.worker_start_timeout_s)
    )
    trainer = make_trainer(settings, config, trial_id, run_dir, sampled)
    start = time.perf_counter()
    error, stop_note = fit(trainer)
    fit_s = time.perf_counter() - start
    if error:
        append_event(run_dir, "training_failed", error=error[:ERROR_MAX_CHARS])

    journal = TrialJournal.read(run_dir)
    outcome = journal.outcome(config.training.schedule.max_steps, error)
    summary = trial_summary(settings, config, trial_id, run_dir, journal, outcome, fit_s)
    summary["stop_note"] = stop_note
    # get_trial_dir() is Tune's local staging folder, synced to storage only on reports, so the
    # summary goes straight to the trial's folder in the study's storage as well.
    for folder in {trial_dir, Path(settings.tune_dir) / trial_dir.name}:
        write_json_atomic(folder / SUMMARY_FILE, summary)
    trained = journal.last("trained")
    if outcome.status == "finished" and trained is not None and trained.get("steps_this_call") == 0:
        # The trainer resumed at its last step (the driver died after the final checkpoint but
        # before Tune kept the last report): it trained and reported nothing, and a trial that
        # ends without a report fails Tune's metric check, so its recorded summary goes instead.
        # Last, after the summary: a scheduler may stop the trial on this report.
        tune.report(recorded_summary(run_dir))
    if outcome.status in ("errored", "diverged"):
        # The trial's own end (its settings diverged, or its training failed after Ray Train's
        # own restarts): its journal and summary record it (Optuna: FAIL) and this last report
        # says it; nothing is raised. Tune's ERROR, which Tune retries (FailureConfig) and
        # --resume restarts, is left to what the cluster does to a trial: a lost driver.
        tune.report(failure_report(run_dir, outcome.status, outcome.error, settings))


def failure_report(
    run_dir: Path, status: str, error: str | None, settings: TrialSettings
) -> dict[str, Any]:
    """The last report of a trial that diverged or failed: what its run recorded last (steps,
    metrics), its status and error, and NaN for every study metric it never logged (Tune checks
    that a trial's last result holds the scheduler's and searcher's metrics)."""
    report = recorded_summary(run_dir)
    for metric in dict.fromkeys([settings.objective, *settings.metrics]):
        value = report.get(metric)
        report[metric] = value if isinstance(value, int | float) else math.nan
    report.update(trial_status=status, trial_error=error or status)
    return report


def trial_summary(
    settings: TrialSettings,
    config: TrainerConfig,
    trial_id: str,
    run_dir: Path,
    journal: TrialJournal,
    outcome: Outcome,
    fit_s: float,
) -> dict[str, Any]:
    """trial_summary.json: the outcome, compute summed over the journal's attempts (wall_s and
    gpu_s; fit_s is this call's fit, start-up included), restarts, the evaluation's fate, seed,
    code version and the full config."""
    compute = journal.compute()
    evaluation = journal.evaluation or {}
    return {
        "trial_id": trial_id,
        "study": settings.study,
        "status": outcome.status,
        "error": outcome.error,
        "diverged_step": outcome.diverged_step,
        "steps_run": outcome.last_step,  # the trainer's last step (resumes included)
        "wall_s": compute.wall_s if compute.attempts else fit_s,
        "gpu_s": compute.gpu_s,
        "fit_s": fit_s,
        "restarts": compute.restarts,
        "evaluation": evaluation.get("event"),  # evaluated | evaluation_failed | None
        "evaluation_error": evaluation.get("error"),
        "seed": config.training.runtime.seed,
        "code_version": code_version(),
        "config": flat_config(config),
        "run_dir": str(run_dir),
    }


def recorded_summary(run_dir: Path) -> dict[str, Any]:
    """The last report a run made, rebuilt from its metrics.jsonl: every logged record merged in
    order (the last training window and the last validation round, as the loop's report holds
    them), with `step` and Tune's `timesteps_total` at the last logged step. Torn lines (a kill
    mid-write) are skipped."""
    summary: dict[str, Any] = {}
    for record in metric_records(run_dir):
        summary.update(record)
    return with_tune_step(summary)
