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
import datetime as dt
import fcntl
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from search_spaces import SearchSpaceError, check_space, define_by_run, get_space
from study.studies import STUDIES, DataSpec, StudySpec, UnknownStudyError, get_study
from trainables.gslrm.config import (
    ConfigError,
    apply_overrides,
    flat_config,
    load_config,
    parse_override,
)
from trainables.ray_trainable import TrialSettings, run_trial, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CHECKPOINTS_KEPT = 2  # per trial in runs/<trial>/checkpoints (a --set may change it)


class StudyError(RuntimeError):
    """A problem the user can fix (bad folder, cluster address, resume of nothing)."""


# ---------------------------------------------------------------------------------------
# planning: everything that can fail before Ray starts


def resolve_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p if (REPO_ROOT / p).exists() else Path.cwd() / p)


def searched_keys(spec: StudySpec) -> list[str]:
    if spec.search == "optuna":
        return [p.key for p in get_space(spec.space)]
    return list(spec.grid) + list(spec.linked)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the study, config overrides and folders; return the resolved plan."""
    spec = get_study(args.name)
    base_config = resolve_path(spec.smoke.base_config if args.smoke else spec.base_config)
    # Each trial's run folder keeps its newest checkpoints only: Ray Train keeps the best and the
    # latest in train/, and a sweep of full-size trials would otherwise fill the disk (1.2 GB each).
    overrides: dict[str, Any] = {
        "training.checkpointing.keep_last": LOCAL_CHECKPOINTS_KEPT,
        **spec.fixed,
    }
    if args.smoke:
        overrides.update(spec.smoke.overrides)
    overrides.update(dict(parse_override(text) for text in args.set))
    if args.wandb:
        overrides["training.logging.wandb.mode"] = args.wandb
    base = load_config(base_config)
    config = apply_overrides(base, overrides)  # names any bad --set key before Ray starts
    keys = set(flat_config(config))
    if spec.search == "optuna":
        check_space(get_space(spec.space), keys)
    else:
        from search_spaces.space import Param

        check_space([Param(k, choices=v) for k, v in spec.grid.items()], keys)
        check_space([Param(k, choices=[None]) for k in spec.linked], keys)
    storage = (
        Path(args.storage).expanduser().resolve() if args.storage else (Path.cwd() / "studies")
    )
    study_dir = storage / args.name
    data = spec.smoke.data if args.smoke else spec.data
    smoke_samples = spec.smoke.num_samples if args.smoke and spec.search == "optuna" else None
    num_samples = args.num_samples or smoke_samples or spec.num_samples  # grid: repeats of the grid
    return {
        "spec": spec,
        "base_config": base_config,
        "overrides": overrides,
        "config": config,
        "storage": storage,
        "study_dir": study_dir,
        "data": data,
        "num_samples": num_samples,
        "max_concurrent": args.max_concurrent or spec.max_concurrent,
    }


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


def find_tune_dir(study_dir: Path) -> Path | None:
    """The study's Tune experiment folder, if an earlier run left one with state in it."""
    from analysis.load import tune_folders

    with_state = [f for f in tune_folders(study_dir) if any(f.glob("experiment_state*.json"))]
    return with_state[0] if with_state else None


def check_resume_state(study_dir: Path, resume: bool) -> Path | None:
    """The Tune folder of an earlier run of this study to continue; None for a fresh start."""
    tune_dir = find_tune_dir(study_dir)
    if tune_dir and not resume:
        raise StudyError(
            f"{study_dir} already holds this study; pass --resume to continue it, or "
            "--storage DIR to start a separate one"
        )
    if resume and not tune_dir:
        raise StudyError(
            f"nothing to resume: {study_dir} holds no study state "
            "(run without --resume to start it)"
        )
    return tune_dir


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


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when the cluster address does not answer (ray.init would retry for minutes)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise StudyError(
            f"--address {address}: no Ray cluster answers there ({exc}); start one with "
            "`ray start --head` or leave --address out to run locally"
        ) from None


# ---------------------------------------------------------------------------------------
# Ray


def ray_env(wandb_mode: str) -> dict[str, str]:
    """Variables every Ray process needs; set before ray.init so workers inherit them."""
    env = {
        "WANDB_MODE": wandb_mode,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get(
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120"
        ),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
    }
    os.environ.update(env)
    return env


def send_auth_token_if_available() -> None:
    """Join a cluster with Ray's auth token when this machine has one.

    `ray start --head` turns token authentication on when ~/.ray/auth_token exists, but
    `ray.init(address=...)` sends the token only under RAY_AUTH_MODE=token (Ray switches that on by
    itself only for clusters it finds without an address). A token sent to a cluster without
    authentication is ignored, so sending it whenever there is one is safe. An explicit
    RAY_AUTH_MODE from the user wins.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(
        os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")
    ).expanduser()
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def start_ray(
    address: str | None, max_concurrent: int, env: dict[str, str], dashboard_host: str
) -> str:
    """Start a local Ray with its dashboard on loopback, or join `address`. Returns the dashboard URL."""
    if address:
        send_auth_token_if_available()  # before Ray is imported: Ray reads its config once
    import ray

    runtime_env = {"env_vars": env}
    if address:
        try:
            context = ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        except ConnectionError as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise StudyError(
                f"--address {address}: could not join the Ray cluster ({reason}); a cluster "
                "with token authentication needs its token in ~/.ray/auth_token or "
                "RAY_AUTH_TOKEN on this machine"
            ) from None
    else:
        # Trials reserve a `trial_slot` instead of a CPU so both CPUs stay free for Train workers.
        context = ray.init(
            include_dashboard=True,
            dashboard_host=dashboard_host,
            resources={"trial_slot": max_concurrent},
            runtime_env=runtime_env,
            log_to_driver=False,
        )
    url = context.dashboard_url or ""
    return url if not url or url.startswith("http") else f"http://{url}"


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

            def _line(self, trials: list, force: bool = False) -> None:
                now = time.monotonic()
                if not force and now - self.last_print < 10:
                    return
                self.last_print = now
                status = [t.status for t in trials]
                best = (
                    f"best {objective} {self.best[0]:.3f} ({self.best[1]})"
                    if self.best
                    else f"no {objective} yet"
                )
                print(
                    f"[study] trials: {status.count('TERMINATED')} done, {status.count('RUNNING')} running, "
                    f"{status.count('PENDING')} pending, {status.count('ERROR')} failed; {best}",
                    flush=True,
                )

            def on_trial_result(self, iteration, trials, trial, result, **info):
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


def build_tuner(
    plan_: dict[str, Any],
    args: argparse.Namespace,
    settings: TrialSettings,
    restore: bool,
    trial_resources: dict[str, float],
):
    """A new Tuner writing to settings.tune_dir, or the earlier one restored from it."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec: StudySpec = plan_["spec"]
    study_dir: Path = plan_["study_dir"]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, settings=settings), trial_resources
    )
    if restore:
        return tune.Tuner.restore(
            settings.tune_dir,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )

    config = plan_["config"]
    rounds = max(1, config.training.schedule.max_steps // config.validation.val_every)
    grace = spec.smoke.grace_period_rounds if args.smoke else spec.grace_period_rounds
    if spec.scheduler == "asha":
        # max_t one round past the last, so ASHA never stops a trial for reaching the end: a trial
        # that ends by itself writes its own summary instead of being killed mid-teardown.
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=rounds + 1,
            grace_period=min(grace, rounds),
            reduction_factor=2,
        )
    else:
        scheduler = FIFOScheduler()
    search_alg, param_space = None, {}
    num_samples = plan_["num_samples"]
    if spec.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(
            space=define_by_run(get_space(spec.space), {}),
            metric=spec.objective,
            mode=spec.mode,
            sampler=optuna.samplers.TPESampler(
                seed=spec.sampler_seed, n_startup_trials=min(8, num_samples)
            ),
            storage=optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}"),
            study_name=spec.name,
        )
    else:
        param_space = grid_param_space(
            spec, args.seeds or (spec.smoke.grid_seeds if args.smoke else None)
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.objective,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=plan_["max_concurrent"],
        ),
        run_config=tune.RunConfig(
            name=Path(settings.tune_dir).name,
            storage_path=str(study_dir),
            verbose=0,
            callbacks=[Progress(spec.objective, spec.mode)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def user_dataset(plan_: dict[str, Any]) -> dict[str, Any] | None:
    """The user's dataset as overrides (checked to exist), or None when the study uses synthetic data."""
    config = plan_["config"]
    if not config.training.dataset.dataset_path:
        return None
    path = resolve_path(config.training.dataset.dataset_path)
    if not path.is_file():
        raise StudyError(f"training.dataset.dataset_path: {path} not found")
    return {"training.dataset.dataset_path": str(path)}


def synthetic_dataset(plan_: dict[str, Any]) -> dict[str, Any]:
    """Generate the study's synthetic mouse data once into STORAGE/_data (later studies reuse it)."""
    data: DataSpec = plan_["data"]
    from trainables.gslrm.data.synthetic import generate_dataset

    folder = (
        plan_["storage"] / "_data" / f"{data.rig}_{data.size}px_{data.samples}s_seed{data.seed}"
    )
    print(f"[study] synthetic data: {folder}", flush=True)
    generate_dataset(folder, samples=data.samples, size=data.size, rig=data.rig, seed=data.seed)
    return {
        "training.dataset.dataset_path": str(folder / "data_train.txt"),
        "validation.dataset_path": str(folder / "data_val.txt"),
    }


def run(args: argparse.Namespace) -> int:
    plan_ = plan(args)
    spec: StudySpec = plan_["spec"]
    study_dir: Path = plan_["study_dir"]
    check_writable(plan_["storage"])
    restore = check_resume_state(study_dir, args.resume) is not None
    if args.address:
        check_address(args.address)

    data_overrides = user_dataset(plan_) if not restore else {}
    # Bad input has been refused without touching the storage folder; from here on this driver
    # owns the study. The state is checked again under the lock: another driver may have just
    # started or finished it.
    lock = lock_study(plan_["storage"], spec.name)  # noqa: F841 - released when the process ends
    earlier_tune_dir = check_resume_state(study_dir, args.resume)
    tune_dir = earlier_tune_dir or study_dir / f"tune-{secrets.token_hex(4)}"
    if data_overrides is None:
        data_overrides = synthetic_dataset(plan_)
    overrides = {**plan_["overrides"], **data_overrides}
    if restore:
        overrides = json.loads((study_dir / "study.json").read_text())["overrides"]
        changed = {
            k: v
            for k, v in (parse_override(t) for t in args.set)
            if overrides.get(k, v) != v or k not in overrides
        }
        if changed:
            key, value = next(iter(changed.items()))
            raise StudyError(
                f"--set {key}={value!r}: a resumed study keeps the settings it started with "
                f"({key}={overrides.get(key, '<default>')!r}); start a new study to change it"
            )
    apply_overrides(plan_["config"], data_overrides)  # validates the data keys too

    env = ray_env(args.wandb or plan_["config"].training.logging.wandb.mode)
    max_concurrent = plan_["max_concurrent"]
    dashboard = start_ray(args.address, max_concurrent, env, args.dashboard_host)
    print(f"[study] {spec.name}: dashboard {dashboard}", flush=True)
    import ray

    workers = args.workers_per_trial
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = float(workers) if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    settings = TrialSettings(
        study=spec.name,
        study_dir=str(study_dir),
        tune_dir=str(tune_dir),
        base_config=str(plan_["base_config"]),
        overrides=overrides,
        linked=dict(spec.linked),
        objective=spec.objective,
        mode=spec.mode,
        num_workers=workers,
        use_gpu=gpus > 0,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=gpus / workers if gpus else 0.0,
        max_failures=args.max_failures,
    )
    trial_resources = {"CPU": 1.0} if args.address else {"trial_slot": 1.0, "CPU": 0.0}
    if not restore:
        write_json_atomic(
            study_dir / "study.json",
            {
                "study": spec.name,
                "description": spec.description,
                "objective": spec.objective,
                "mode": spec.mode,
                "search": spec.search,
                "searched_keys": searched_keys(spec),
                "max_steps": plan_["config"].training.schedule.max_steps,
                "num_samples": plan_["num_samples"],
                "smoke": args.smoke,
                "optuna_storage": "optuna.db" if spec.search == "optuna" else None,
                "optuna_study_name": spec.name if spec.search == "optuna" else None,
                "base_config": str(plan_["base_config"]),
                "overrides": overrides,
                "workers_per_trial": workers,
                "gpus_per_trial": gpus,
                "tune_dir": tune_dir.name,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                "command": sys.argv,
            },
        )
    tuner = build_tuner(plan_, args, settings, restore, trial_resources)
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    errors = sum(1 for r in results if r.error is not None)
    print(
        f"[study] {spec.name}: {len(results)} trials in {wall:.0f} s ({errors} errored or diverged)",
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
        type=lambda text: tuple(int(x) for x in text.split(",")),
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
