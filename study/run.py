"""`python -m study.run NAME`: run a named hyperparameter study on a local or remote Ray cluster.

Everything of one study lands in one folder, STORAGE/NAME/ (default ./studies/NAME):
    study.json     what was run (study, objective, searched keys, resources, command)
    optuna.db      Optuna storage for searched studies (open with `optuna-dashboard sqlite:///optuna.db`)
    tune-<id>/     Tune experiment state and one folder per trial (params, results, trial_summary.json);
                   the random id keeps Tune's local staging folders of studies started in the same
                   second on one cluster apart (Ray names them by experiment name and second)
    train/         Ray Train run state and the reported checkpoints (best by objective + latest)
    runs/<trial>/  the trainer's own files: metrics.jsonl, pictures, checkpoints, W&B offline run
    report/        trials.parquet, curves.parquet, report.md and plots
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from search_spaces import SearchSpaceError
from study.cluster import check_address, gpus_per_trial, ray_env, start_ray
from study.plan import (
    StudyError,
    StudyPlan,
    check_resume_state,
    make_plan,
    parse_seeds,
    resumed_overrides,
    searched_keys,
    study_record,
    synthetic_data_folder,
    user_dataset,
)
from study.search import build_tuner
from study.studies import STUDIES, UnknownStudyError
from trainables.gslrm.atomic import write_json_atomic
from trainables.gslrm.config import ConfigError, apply_overrides
from trainables.ray_trainable import TrialSettings

# The pieces tests and users import from here, kept importable under their old names.
__all__ = ["StudyError", "main", "parser", "run", "start_ray"]


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise StudyError(
            f"storage folder {folder} is not writable ({exc.strerror}); "
            "pass --storage DIR with a folder you can write"
        ) from None


def lock_study(storage: Path, name: str):
    """Hold an exclusive lock on STORAGE/NAME for this process's life (the OS drops it on exit).

    Two drivers on one study folder would interleave their Tune state; the second one stops here.
    """
    handle = open(storage / f".{name}.lock", "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StudyError(
            f"study {name} in {storage} is already running ({holder}); wait for it, or pass "
            "--storage DIR to run a separate copy"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle


def synthetic_dataset(plan: StudyPlan) -> dict[str, Any]:
    """Generate the study's synthetic mouse data once into STORAGE/_data (later studies reuse it)."""
    from trainables.gslrm.data.synthetic import generate_dataset

    folder, data = synthetic_data_folder(plan), plan.data
    print(f"[study] synthetic data: {folder}", flush=True)
    generate_dataset(folder, samples=data.samples, size=data.size, rig=data.rig, seed=data.seed)
    return {
        "training.dataset.dataset_path": str(folder / "data_train.txt"),
        "validation.dataset_path": str(folder / "data_val.txt"),
    }


def trial_settings(plan: StudyPlan, overrides: dict, tune_dir: Path, gpus: float) -> TrialSettings:
    workers = plan.workers_per_trial
    return TrialSettings(
        study=plan.name,
        study_dir=str(plan.study_dir),
        tune_dir=str(tune_dir),
        base_config=str(plan.base_config),
        overrides=overrides,
        linked=dict(plan.spec.linked),
        objective=plan.spec.objective,
        mode=plan.spec.mode,
        num_workers=workers,
        use_gpu=gpus > 0,
        cpus_per_worker=plan.cpus_per_worker,
        gpus_per_worker=gpus / workers if gpus else 0.0,
        max_failures=plan.max_failures,
    )


def run(args: argparse.Namespace) -> int:
    # --- checks that write nothing: bad input leaves the storage folder as it was (or absent)
    plan = make_plan(args)
    study_dir = plan.study_dir
    restore = check_resume_state(study_dir, plan.resume) is not None
    if plan.address:
        check_address(plan.address)
    data_overrides = user_dataset(plan) if not restore else {}
    if restore:
        resumed_overrides(study_dir, plan.set_args)

    # --- from here on this driver owns the study. The state is checked again under the lock:
    # another driver may have just started or finished it.
    check_writable(plan.storage)
    lock = lock_study(plan.storage, plan.name)  # noqa: F841 - released when the process ends
    earlier_tune_dir = check_resume_state(study_dir, plan.resume)
    tune_dir = earlier_tune_dir or study_dir / f"tune-{secrets.token_hex(4)}"
    if restore:
        overrides = resumed_overrides(study_dir, plan.set_args)
    else:
        if data_overrides is None:
            data_overrides = synthetic_dataset(plan)
        apply_overrides(plan.config, data_overrides)  # validates the data keys too
        overrides = {**plan.overrides, **data_overrides}

    # --- Ray
    env = ray_env(plan.wandb or plan.config.training.logging.wandb.mode)
    dashboard = start_ray(plan.address, plan.max_concurrent, env, plan.dashboard_host)
    print(f"[study] {plan.name}: dashboard {dashboard}", flush=True)
    import ray

    gpus = gpus_per_trial(plan.gpus_per_trial, plan.workers_per_trial)
    settings = trial_settings(plan, overrides, tune_dir, gpus)
    trial_resources = {"CPU": 1.0} if plan.address else {"trial_slot": 1.0, "CPU": 0.0}
    if not restore:
        write_json_atomic(study_dir / "study.json", study_record(plan, overrides, gpus, tune_dir))
    tuner = build_tuner(plan, settings, restore, trial_resources)
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    errors = sum(1 for r in results if r.error is not None)
    print(
        f"[study] {plan.name}: {len(results)} trials in {wall:.0f} s ({errors} errored or diverged)",
        flush=True,
    )
    from analysis.report import write_report

    report = write_report(study_dir)
    print(f"[study] report: {report}", flush=True)
    ray.shutdown()
    return 0


def describe_studies() -> str:
    lines = []
    for spec in STUDIES.values():
        searched = ", ".join(searched_keys(spec))
        lines.append(
            f"{spec.name}\n  {spec.description}\n  search: {spec.search}; objective: {spec.mode} "
            f"{spec.objective}; scheduler: {spec.scheduler}\n  searched keys: {searched}"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.run",
        description="Run a named GS-LRM hyperparameter study with Ray Tune (+ Optuna) and Ray Train. "
        "Without --address a local Ray starts, with its dashboard on 127.0.0.1; without a "
        "dataset, synthetic mouse data is generated once. Results go to STORAGE/NAME/, "
        "ending with report/report.md and Parquet files.",
        epilog="examples:\n  python -m study.run --list\n  python -m study.run mouse_loss_sweep --smoke\n"
        "  python -m study.run view_order_ablation --set training.dataset.dataset_path=/data/mice/data_train.txt\n"
        "  python -m study.run mouse_loss_sweep --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="study name (see --list)")
    p.add_argument("--list", action="store_true", help="list the named studies and exit")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model, 64 px, few steps and trials: minutes on a CPU",
    )
    p.add_argument("--num-samples", type=int, help="number of trials (Optuna) or grid repeats")
    p.add_argument(
        "--address", help="join a running Ray cluster (HOST:PORT) instead of starting one"
    )
    p.add_argument(
        "--workers-per-trial", type=int, default=1, help="Ray Train workers (DDP ranks) per trial"
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial (default: one per worker if the cluster has GPUs)",
    )
    p.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per Train worker"
    )
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument(
        "--seeds",
        type=parse_seeds,
        help="grid studies: comma-separated seeds to run instead of the study's (e.g. 0,1)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="worker crashes a trial survives (resumes from its checkpoint)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trainer config key for every trial, e.g. training.schedule.max_steps=2000",
    )
    p.add_argument(
        "--storage",
        help="folder holding study folders (default ./studies); shared storage on clusters",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted study in its folder"
    )
    p.add_argument(
        "--wandb", choices=["offline", "online", "disabled"], help="W&B mode (default offline)"
    )
    p.add_argument(
        "--dashboard-host", default="127.0.0.1", help="interface the local dashboard listens on"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        print(describe_studies())
        return 0
    if not args.name:
        parser().print_usage(sys.stderr)
        print("error: name a study (python -m study.run --list)", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (UnknownStudyError, ConfigError, SearchSpaceError, StudyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
