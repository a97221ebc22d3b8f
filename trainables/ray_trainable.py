"""Runs the GS-LRM training loop under Ray Train (TorchTrainer) inside one Tune trial.

Ray 2.60 uses Ray Train V2, so the Tune trainable is a plain function (`run_trial`) that
builds a `TorchTrainer` and calls `fit()`. Each worker runs `train_worker`, which drives the
plain loop in `trainables.gslrm.train` through its hooks: `prepare_model` (DDP),
`prepare_data_loader` (distributed sampling), `ray.train.report` with a `Checkpoint` at every
validation round, and resume from `ray.train.get_checkpoint()` after a worker failure.
`TuneReportCallback` forwards rank 0's reports to Tune, so every validation round is one
Tune iteration that ASHA and Optuna see.

How a trial ended is decided by `trainables.outcome.classify_outcome`, the rule the analysis
applies to the same files.

Files per trial (in the study folder):
    runs/<trial_id>/           the trainer's run folder (metrics.jsonl, pictures, checkpoints, wandb)
    runs/<trial_id>/attempts.jsonl   one line per worker-group start (restarts = lines - 1)
    runs/<trial_id>/train_result.json / diverged.json   how the loop ended (rank 0)
    runs/<trial_id>/run_info.json   trial id, study, seed, code version (at each start)
    train/<study>-<trial_id>/checkpoint_*/   Ray Train's reported checkpoints: hard links to the
                               run's own files (one copy on disk; copied only across filesystems)
    tune-<id>/<trial>/trial_summary.json  status, error, steps_run (the trainer's last step),
                               wall_s (the trial's fit), gpu_s (GPU time of the training steps,
                               CUDA events; 0 on CPU), restarts, seed, code version, full config
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.gslrm.atomic import write_json_atomic
from trainables.gslrm.config import (
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flat_config,
    load_config,
)
from trainables.gslrm.version import code_version
from trainables.outcome import DIVERGED_FILE, RESULT_FILE, classify_outcome, metric_records

SUMMARY_FILE = "trial_summary.json"
EVAL_ERROR_FILE = "eval_error.json"  # why a finished run has no eval/ (see evaluate_at_end)
ATTEMPTS_FILE = "attempts.jsonl"
RUN_INFO_FILE = "run_info.json"  # trial id, study, seed, code version, W&B grouping
# rank 0 touches this when the loop returns or raises (it then finished its W&B run itself);
# a worker killed mid-fit (Tune stopping the trial) leaves it absent
LOOP_ENDED_FILE = "loop_ended"


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
    objective: str = "val/psnr_fg"
    mode: str = "max"
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    keep_checkpoints: int = 2
    worker_start_timeout_s: int = 120


@contextmanager
def staged_for_report(checkpoint_file: Path) -> Iterator[Path]:
    """A folder holding only `checkpoint_file`, for `Checkpoint.from_directory`; removed after.

    The folder is made beside the checkpoint (the run folder), so the file is hard-linked on
    its own filesystem instead of copied (1.2 GB at full size). Where a link is refused (a
    filesystem without hard links, or one that answers EXDEV), the file is copied.
    """
    with tempfile.TemporaryDirectory(
        prefix=".report_", dir=checkpoint_file.parent.parent
    ) as folder:
        link_or_copy(checkpoint_file, Path(folder) / checkpoint_file.name)
        yield Path(folder)


def link_or_copy(source: Path, target: Path) -> str:
    """Hard-link `source` to `target`, or copy it when the filesystem refuses the link.

    Returns "linked" or "copied".
    """
    try:
        os.link(source, target)
        return "linked"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copy2(source, target)
    return "copied"


# ---------------------------------------------------------------------------------------
# worker side


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point: one rank of one trial."""
    import ray.train
    import ray.train.torch

    from trainables.gslrm.train import Hooks, TrainingDiverged, train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = config_from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    # run_info (study, seed, code version, W&B grouping) comes from run_trial; a caller driving
    # train_worker directly (the DDP and two-node tests) may leave it out.
    run_info = loop_config.get("run_info") or {"trial_id": loop_config["trial_id"]}
    grouping = run_info.get("wandb", {})
    if rank == 0:
        with (run_dir / ATTEMPTS_FILE).open("a") as handle:
            handle.write(json.dumps({"time": time.time(), "world_size": world}) + "\n")
        # What a trial stopped mid-fit (no trial_summary.json) still tells the analysis.
        write_json_atomic(run_dir / RUN_INFO_FILE, run_info)
        (run_dir / LOOP_ENDED_FILE).unlink(missing_ok=True)

    resume_dir = None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        # beside the run folder, not in $TMPDIR: a full-size checkpoint is 1.2 GB
        resume_dir = Path(tempfile.mkdtemp(prefix=".resume_", dir=run_dir))
        restored.to_directory(str(resume_dir))
    resume_file = next(iter(sorted(resume_dir.glob("ckpt_*.pt"))), None) if resume_dir else None

    # Where Ray Train keeps reported checkpoints (STUDY/train/<run>): linked there, one copy on
    # disk. Without it (a caller driving train_worker directly) Ray copies as usual.
    train_run_dir = Path(loop_config["train_run_dir"]) if "train_run_dir" in loop_config else None

    def upload(checkpoint, dir_name: str):
        # Ray would copy the staged file into train/ (a second 1.2 GB copy of the run's own
        # file); a hard link there keeps one copy on disk under both names.
        target = train_run_dir / dir_name
        target.mkdir(parents=True, exist_ok=True)
        for source in Path(checkpoint.path).iterdir():
            link_or_copy(source, target / source.name)
        return ray.train.Checkpoint.from_directory(str(target))

    def report(metrics: dict[str, float], checkpoint_file: Path | None) -> None:
        metrics = with_tune_step(metrics)
        if checkpoint_file is None:
            ray.train.report(metrics)
            return
        with staged_for_report(checkpoint_file) as folder:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                **({"checkpoint_upload_fn": upload} if train_run_dir else {}),
            )

    hooks = Hooks(
        device=ray.train.torch.get_device(),
        rank=rank,
        world_size=world,
        wrap_model=ray.train.torch.prepare_model,
        wrap_loader=ray.train.torch.prepare_data_loader,
        report=report,
        resume_checkpoint=resume_file,
        wandb_run_name=loop_config["trial_id"],
        wandb_group=grouping.get("group", ""),
        wandb_tags=tuple(grouping.get("tags", ())),
        wandb_job_type=grouping.get("job_type", ""),
    )
    try:
        result = train(config, run_dir, hooks)
    except TrainingDiverged as exc:
        # Not a crash to retry from a checkpoint: the same data and weights diverge again.
        if rank == 0:
            write_json_atomic(run_dir / DIVERGED_FILE, {"step": exc.step, "error": str(exc)})
        return
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)
        if rank == 0:  # the loop returned or raised, so it finished its W&B run itself
            (run_dir / LOOP_ENDED_FILE).touch()
    if rank == 0:
        write_json_atomic(
            run_dir / RESULT_FILE,
            {
                "steps_this_call": result.steps_this_call,
                "final_step": result.final_step,
                "wall_s": result.wall_s,
                "gpu_s": result.gpu_s,
                "resumed_from_step": result.resumed_from_step,
            },
        )
        evaluate_at_end(run_dir, config, hooks.device)


def evaluate_at_end(run_dir: Path, config: TrainerConfig, device: Any) -> None:
    """Rank 0, after training: score the study's chosen checkpoint on every evaluation item
    (run_dir/eval/). A run that cannot be evaluated (e.g. no checkpoint) keeps its training
    result; the reason goes to run_dir/eval_error.json and the report counts it unevaluated."""
    from trainables.gslrm.evaluate import EvaluationError, evaluate_trial

    evaluation = config.evaluation
    try:
        evaluate_trial(
            run_dir, config, evaluation.objective, evaluation.objective_mode, device=device
        )
    except EvaluationError as exc:
        write_json_atomic(run_dir / EVAL_ERROR_FILE, {"error": str(exc)})


# ---------------------------------------------------------------------------------------
# Tune side


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
    """Tune function trainable: one trial = one TorchTrainer.fit(), then its summary."""
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
    wall_s = time.perf_counter() - start

    outcome = classify_outcome(run_dir, config.training.schedule.max_steps, error)
    result = _read_json(run_dir / RESULT_FILE)
    attempts = run_dir / ATTEMPTS_FILE
    summary: dict[str, Any] = {
        "trial_id": trial_id,
        "study": settings.study,
        "status": outcome.status,
        "error": outcome.error,
        "stop_note": stop_note,
        "diverged_step": outcome.diverged_step,
        "steps_run": outcome.last_step,  # the trainer's last step (resumes included)
        "wall_s": wall_s,
        "gpu_s": float(result.get("gpu_s", 0.0)),
        "restarts": max(0, len(attempts.read_text().splitlines()) - 1) if attempts.is_file() else 0,
        "seed": config.training.runtime.seed,
        "code_version": code_version(),
        "config": flat_config(config),
        "run_dir": str(run_dir),
    }
    # get_trial_dir() is Tune's local staging folder, synced to storage only on reports, so the
    # summary goes straight to the trial's folder in the study's storage as well.
    for folder in {trial_dir, Path(settings.tune_dir) / trial_dir.name}:
        write_json_atomic(folder / SUMMARY_FILE, summary)
    if outcome.status == "finished" and result.get("steps_this_call") == 0:
        # The trainer resumed at its last step (the driver died after the final checkpoint but
        # before Tune kept the last report): it trained and reported nothing, and a trial that
        # ends without a report fails Tune's metric check, so its recorded summary goes instead.
        # Last, after the summary: a scheduler may stop the trial on this report.
        tune.report(recorded_summary(run_dir))
    if outcome.status in ("errored", "diverged"):
        # Tune records the trial as errored (Optuna: failed); the study goes on.
        raise RuntimeError(outcome.error)


def with_tune_step(metrics: dict[str, Any]) -> dict[str, Any]:
    """A report for Tune: Tune's TensorBoard logger steps by `timesteps_total` when a result has
    it (else by Tune iteration 1, 2, 3), so it gets the trainer's `step`, as in W&B,
    metrics.jsonl and the curves."""
    return {**metrics, "timesteps_total": metrics["step"]} if "step" in metrics else metrics


def recorded_summary(run_dir: Path) -> dict[str, Any]:
    """The last report a run made, rebuilt from its metrics.jsonl: every logged record merged in
    order (the last training window and the last validation round, as the loop's report holds
    them), with `step` and Tune's `timesteps_total` at the last logged step. Torn lines (a kill
    mid-write) are skipped."""
    summary: dict[str, Any] = {}
    for record in metric_records(run_dir):
        summary.update(record)
    return with_tune_step(summary)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------
# driver side, after the study


def rebuild_wandb_run(run_dir: Path) -> bool:
    """Finish the W&B offline run of a trial whose worker was killed mid-fit; True if rebuilt.

    When Tune stops a trial (ASHA) its Train workers are killed, so the trainer never finishes
    its W&B run and the offline file holds only a header. The run folder still has everything
    the run logged (metrics.jsonl, config.yaml, run_info.json): the offline run is written
    again from them, at the trainer's steps, with the same id, group and tags, and finished
    (validation pictures are not replayed). Runs whose loop ended by itself are left alone.
    """
    from trainables.gslrm.train import Hooks, MetricsLog

    info = _read_json(run_dir / RUN_INFO_FILE)
    wandb_dir = run_dir / "wandb_logs"
    if (run_dir / LOOP_ENDED_FILE).exists() or not info or not wandb_dir.is_dir():
        return False
    config = load_config(run_dir / "config.yaml")
    if config.training.logging.wandb.mode == "disabled":
        return False
    records = metric_records(run_dir)  # a line torn by the kill is skipped
    for old in (wandb_dir / "wandb").glob(f"*-{info['trial_id']}"):
        shutil.rmtree(old, ignore_errors=True)  # the killed run's header-only folder
    grouping = info.get("wandb", {})
    hooks = Hooks(
        wandb_run_name=str(info["trial_id"]),
        wandb_group=grouping.get("group", ""),
        wandb_tags=tuple(grouping.get("tags", ())),
        wandb_job_type=grouping.get("job_type", ""),
    )
    log = MetricsLog(run_dir, config, hooks)
    try:
        for record in records:
            step = record.pop("step", None)
            if isinstance(step, int) and log.wandb_run is not None:
                log.wandb_run.log(record, step=step)
    finally:
        log.close()
    (run_dir / LOOP_ENDED_FILE).touch()
    return True
