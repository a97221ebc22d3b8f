"""Runs the GS-LRM training loop under Ray Train (TorchTrainer) inside one Tune trial.

Ray 2.60 uses Ray Train V2, so the Tune trainable is a plain function (`run_trial`) that
builds a `TorchTrainer` and calls `fit()`. Each worker runs `train_worker`, which drives the
plain loop in `trainables.gslrm.train` through its hooks: `prepare_model` (DDP),
`prepare_data_loader` (distributed sampling), `ray.train.report` with a `Checkpoint` at every
validation round, and resume from `ray.train.get_checkpoint()` after a worker failure.
`TuneReportCallback` forwards rank 0's reports to Tune, so every validation round is one
Tune iteration that ASHA and Optuna see.

Files per trial (in the study folder):
    runs/<trial_id>/           the trainer's run folder (metrics.jsonl, pictures, checkpoints, wandb)
    runs/<trial_id>/attempts.jsonl   one line per worker-group start (restarts = lines - 1)
    tune-<id>/<trial>/trial_summary.json  status, error, steps, wall and GPU seconds, full config
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.gslrm.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flat_config,
    load_config,
)

SUMMARY_FILE = "trial_summary.json"
DIVERGED_FILE = "diverged.json"
ATTEMPTS_FILE = "attempts.jsonl"


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


def code_version() -> str:
    """git commit of the code when run from a checkout, else the package version."""
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0 and commit.stdout.strip():
            return commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mouse-gslrm-study")
    except PackageNotFoundError:
        return "unknown"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, default=str)
    os.replace(tmp, path)


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
    if rank == 0:
        with (run_dir / ATTEMPTS_FILE).open("a") as handle:
            handle.write(json.dumps({"time": time.time(), "world_size": world}) + "\n")

    resume_dir = None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="resume_"))
        restored.to_directory(str(resume_dir))
    resume_file = next(iter(sorted(resume_dir.glob("ckpt_*.pt"))), None) if resume_dir else None

    def report(metrics: dict[str, float], checkpoint_file: Path | None) -> None:
        if checkpoint_file is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="report_") as folder:
            os.link(checkpoint_file, Path(folder) / checkpoint_file.name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    hooks = Hooks(
        device=ray.train.torch.get_device(),
        rank=rank,
        world_size=world,
        wrap_model=ray.train.torch.prepare_model,
        wrap_loader=ray.train.torch.prepare_data_loader,
        report=report,
        resume_checkpoint=resume_file,
        wandb_run_name=loop_config["trial_id"],
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
    if rank == 0:
        write_json_atomic(
            run_dir / "train_result.json",
            {
                "steps_run": result.steps_run,
                "final_step": result.final_step,
                "wall_s": result.wall_s,
                "gpu_s": result.gpu_s,
                "resumed_from_step": result.resumed_from_step,
            },
        )


# ---------------------------------------------------------------------------------------
# Tune side


def last_logged_step(run_dir: Path) -> int:
    """The newest step in the trainer's metrics.jsonl (0 when nothing was logged)."""
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return 0
    steps = [
        json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()
    ]
    return max(steps, default=0)


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


def run_trial(sampled: dict[str, Any], settings: TrialSettings) -> None:
    """Tune function trainable: one trial = one TorchTrainer.fit()."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    context = tune.get_context()
    trial_id = context.get_trial_id()
    trial_dir = Path(context.get_trial_dir())
    study_dir = Path(settings.study_dir)
    run_dir = study_dir / "runs" / trial_id
    config = trial_config(settings, sampled)
    summary: dict[str, Any] = {
        "trial_id": trial_id,
        "study": settings.study,
        "status": "running",
        "error": None,
        "diverged_step": None,
        "steps_run": 0,
        "wall_s": 0.0,
        "gpu_s": 0.0,
        "restarts": 0,
        "seed": config.training.runtime.seed,
        "code_version": code_version(),
        "config": flat_config(config),
        "run_dir": str(run_dir),
    }
    os.environ.setdefault(
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(settings.worker_start_timeout_s)
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config_to_dict(config),
            "trial_id": trial_id,
            "run_dir": str(run_dir),
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
            name=f"{settings.study}-{trial_id}",
            storage_path=str(study_dir / "train"),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(
                max_failures=settings.max_failures, controller_failure_limit=settings.max_failures
            ),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=settings.keep_checkpoints,
                checkpoint_score_attribute=settings.objective,
                checkpoint_score_order=settings.mode,
            ),
        ),
    )
    start = time.perf_counter()
    error: BaseException | None = None
    stopped_from_outside = False
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:  # wraps the worker's own exception
        error = exc
    except Exception:  # noqa: BLE001
        # Tune stopped this trial (ASHA, or the study ending) and tore the worker group down
        # mid-fit: not a training failure.
        stopped_from_outside = True
    summary["wall_s"] = time.perf_counter() - start
    attempts = run_dir / ATTEMPTS_FILE
    if attempts.is_file():
        summary["restarts"] = max(0, len(attempts.read_text().splitlines()) - 1)
    result_file = run_dir / "train_result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        summary.update(steps_run=result["final_step"], gpu_s=result["gpu_s"])
    diverged = run_dir / DIVERGED_FILE
    if diverged.is_file():
        info = json.loads(diverged.read_text())
        summary.update(
            status="diverged",
            error=info["error"],
            diverged_step=info["step"],
            steps_run=info["step"],
        )
        error = RuntimeError(info["error"])
    elif error is not None:
        summary.update(status="errored", error=_root_cause(error))
    elif stopped_from_outside and not result_file.is_file():
        step = last_logged_step(run_dir)
        done = step >= config.training.schedule.max_steps
        summary.update(status="finished" if done else "stopped_early", steps_run=step)
    else:
        summary["status"] = "finished"
    # get_trial_dir() is Tune's local staging folder, synced to storage only on reports, so the
    # summary goes straight to the trial's folder in the study's storage as well.
    for folder in {trial_dir, Path(settings.tune_dir) / trial_dir.name}:
        write_json_atomic(folder / SUMMARY_FILE, summary)
    if error is not None:
        # Tune records the trial as errored (Optuna: failed); the study goes on.
        raise RuntimeError(summary["error"])
