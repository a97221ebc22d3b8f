"""`python -m study.run NAME`: run a named hyperparameter study on a local or remote Ray cluster.

Everything of one study lands in one folder, STORAGE/NAME/ (default ./studies/NAME):
    study.json     what was run (study, objective, searched keys, resources, command) and the
                   whole plan (`plan`: every flag, the concurrency decided), which --resume reloads
    optuna.db      Optuna storage for searched studies (open with
                   `optuna-dashboard sqlite:///optuna.db --artifact-dir artifacts`)
    artifacts/     the trials' pictures as Optuna artifacts (study.artifacts)
    tune-<id>/     Tune experiment state and one folder per trial (params, results, trial_summary.json);
                   the random id keeps Tune's local staging folders of studies started in the same
                   second on one cluster apart (Ray names them by experiment name and second)
    train/         Ray Train run state and the reported checkpoints (best by objective + latest),
                   hard links to the run's own files: one copy on disk
    interrupted.json  only after Ctrl-C / SIGTERM ended a run early (N of M trials); the report
                   says partial
    runs/<trial>/  journal.jsonl (the trial's fate) and the trainer's own files: metrics.jsonl,
                   pictures, checkpoints, W&B offline run
    report/        trials.parquet, curves.parquet, report.md and plots

Refused with exit 2 before Ray starts: a --gpus-per-trial / --workers-per-trial split that
cannot train, a --resume of a moved or copied folder (its state holds the old absolute paths),
an unreadable state file (named). Refused right after Ray starts: a trial the cluster can never
place (warned once instead with --autoscaling). Ctrl-C or SIGTERM: trials stop, the state is
saved, exit 130 / 143 with the --resume command to continue; a second signal aborts at once.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.load import read_json_object
from search_spaces import SearchSpaceError
from study import sequential
from study.cluster import (
    check_address,
    check_cluster_fits,
    cluster_nodes,
    dashboard_sign_in,
    gpus_per_trial,
    ray_env,
    start_ray,
)
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
from study.resources import ResourceError, TrialRequest, decide_concurrency, gpus_per_worker
from study.search import build_tuner
from study.state import (
    INTERRUPTED_FILE,
    check_not_moved,
    check_state_files,
    ended_trials,
    failed_trials,
    restore_error,
)
from study.studies import SIZES, STUDIES, StudySpec, UnknownStudyError
from trainables.gslrm.atomic import write_json_atomic
from trainables.gslrm.config import ConfigError, TrainerConfig, apply_overrides
from trainables.ray_trainable import TrialSettings, rebuild_wandb_run

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
    generate_dataset(
        folder,
        samples=data.samples,
        size=data.size,
        rig=data.rig,
        seed=data.seed,
        test_samples=data.test_samples,
    )
    return {
        "training.dataset.dataset_path": str(folder / "data_train.txt"),
        "validation.dataset_path": str(folder / "data_val.txt"),
        "evaluation.dataset_path": str(folder / "data_test.txt") if data.test_samples else "",
    }


def announce_evaluation_split(config: TrainerConfig) -> None:
    """Say at start-up which list every trial is evaluated on, and when it is not a test split."""
    from trainables.gslrm.evaluate import evaluation_list_file

    path, split = evaluation_list_file(config)
    if split == "test":
        print(f"[study] evaluation: test split {path}", flush=True)
    else:
        print(
            f"[study] no test split (no evaluation.dataset_path, no data_test.txt beside the "
            f"training list): trials are evaluated on the validation list {path}, recorded as "
            "split 'validation'",
            flush=True,
        )


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
        metrics=tuple(plan.spec.objectives or (plan.spec.objective,)),
        num_workers=workers,
        use_gpu=gpus > 0,
        cpus_per_worker=plan.cpus_per_worker,
        gpus_per_worker=gpus_per_worker(workers, gpus),
        max_failures=plan.max_failures,
    )


def trial_request(plan: StudyPlan, own: dict, gpus: float) -> TrialRequest:
    """One trial's Ray bundles: its own (the function driving TorchTrainer.fit) + its workers'."""
    per_worker = gpus_per_worker(plan.workers_per_trial, gpus)
    worker = {"CPU": plan.cpus_per_worker, **({"GPU": per_worker} if per_worker else {})}
    return TrialRequest(trial=own, worker=worker, workers=plan.workers_per_trial)


def planned_trials(plan: StudyPlan) -> int:
    """Trials the study runs in all: num_samples for a search, grid cells x repeats for a grid."""
    if plan.spec.search == "optuna":
        return plan.num_samples
    if plan.until_decided:
        return sequential.trial_cap(plan)  # at most: the study may stop at an earlier look
    cells = 1
    for key, values in plan.spec.grid.items():
        seeds = plan.grid_seeds if key == "training.runtime.seed" and plan.grid_seeds else None
        cells *= len(seeds if seeds is not None else values)
    return cells * plan.num_samples


class _NoRestoreHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)" advice: resuming a study goes
    through `python -m study.run NAME --resume`, which also restores the searcher and data."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


# Exit codes of a study stopped by a signal: 128 + the signal's number, as shells report it
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class Interrupts:
    """The stop signals a study received: times and the first one's number."""

    times: list[float] = field(default_factory=list)
    first: int | None = None

    def __bool__(self) -> bool:
        return bool(self.times)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.first, 130)


@contextmanager
def graceful_interrupt(resume_line: str) -> Iterator[Interrupts]:
    """Ctrl-C or SIGTERM ends the study the way Tune's own stop signal does; a second aborts.

    SLURM and Kubernetes send SIGTERM before they kill a job, so it does what Ctrl-C does:
    Tune's SIGINT handler is switched off (TUNE_DISABLE_SIGINT_HANDLER, read when fit() starts)
    and the first signal forwards SIGUSR1, which Tune treats as a stop: trials stop, the state
    is saved, fit() returns, the caller writes the partial report and exits 130 (SIGINT) or
    143 (SIGTERM). A second signal aborts at once, whatever Tune is doing (a trial that does not
    stop, a slow save): the resume line is printed and the process exits on the spot; the next
    --resume continues from Tune's last saved state.
    """
    interrupts = Interrupts()

    def on_signal(signum, frame) -> None:
        if interrupts:
            print(
                f"[study] second stop signal: aborting now; continue with `{resume_line}`",
                file=sys.stderr,
                flush=True,
            )
            abort_now(EXIT_CODES.get(interrupts.first, 130))
        interrupts.times.append(time.time())
        interrupts.first = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"[study] {name}: stopping the running trials and saving the study state "
            "(Ctrl-C again to abort at once)",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {sig: signal.signal(sig, on_signal) for sig in EXIT_CODES}
    previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    hint_filter = _NoRestoreHint()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(hint_filter)
    try:
        yield interrupts
    finally:
        tune_logger.removeFilter(hint_filter)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


def abort_now(code: int) -> None:
    """Exit this process at once, taking down the local Ray it started (a joined cluster is
    left running). Raising KeyboardInterrupt is not enough: the main thread may sit in a call
    that does not return to Python for minutes."""
    try:
        import ray

        node = getattr(ray._private.worker, "_global_node", None)
        if node is not None and node.head:
            node.kill_all_processes(check_alive=False, allow_graceful=False)
    except Exception:  # noqa: BLE001 - exiting is what matters
        pass
    os._exit(code)


def finish_killed_wandb_runs(study_dir: Path) -> None:
    """Rebuild the W&B runs of trials killed mid-fit; a failure is a warning, not the study's."""
    for run_dir in sorted((study_dir / "runs").glob("*")):
        try:
            rebuild_wandb_run(run_dir)
        except Exception as exc:  # noqa: BLE001 - the report must still be written
            print(
                f"[study] warning: W&B run of {run_dir.name} not rebuilt ({exc})",
                file=sys.stderr,
                flush=True,
            )


def resume_command(plan: StudyPlan) -> str:
    """The command that continues this study: its name and folder; everything else (size,
    workers, GPUs, concurrency, address, --set) comes back from study.json."""
    parts = ["python -m study.run", plan.name, "--resume"]
    if plan.storage != Path.cwd() / "studies":
        parts += ["--storage", str(plan.storage)]
    return " ".join(parts)


def trial_resources(plan: StudyPlan) -> dict[str, float]:
    """A trial's own bundle (the Tune function driving TorchTrainer.fit; Train puts the trial's
    controller on the same node). Locally a trial slot, so both CPUs stay free for Train
    workers. On a joined cluster a sliver of a resource only lasting nodes have (the head's, by
    default): a trial whose driver sat on a lost worker node would error for good."""
    if not plan.address:
        return {"trial_slot": 1.0, "CPU": 0.0}
    return {plan.driver_resource: 0.001, "CPU": 0.0}


def stored_concurrency(study_dir: Path) -> int | None:
    """The concurrency a study started with (study.json); a restored Tuner keeps it."""
    record = read_json_object(study_dir / "study.json") or {}
    value = (record.get("plan") or {}).get("concurrency")
    return value if isinstance(value, int) else None


def run(args: argparse.Namespace) -> int:
    # --- checks that write nothing: bad input leaves the storage folder as it was (or absent)
    plan = make_plan(args)
    sequential.check_plan(plan)  # --until-decided: a grid study over seeds (writes nothing)
    if plan.gpus_per_trial is not None:
        gpus_per_worker(plan.workers_per_trial, plan.gpus_per_trial)  # a bad split, before Ray
    study_dir = plan.study_dir
    earlier = check_resume_state(study_dir, plan.resume)
    restore = earlier is not None
    if plan.address:
        check_address(plan.address)
    data_overrides = user_dataset(plan) if not restore else {}
    if restore:
        resumed_overrides(study_dir, plan.set_args)
        check_not_moved(study_dir)
        check_state_files(study_dir, earlier)

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
        announce_evaluation_split(apply_overrides(plan.config, data_overrides))

    # --- Ray
    env = ray_env(plan.wandb or plan.config.training.logging.wandb.mode)
    dashboard = start_ray(plan.address, env, plan.dashboard_host)
    import ray

    try:
        print(
            f"[study] {plan.name}: dashboard {dashboard or '(none: the cluster has no dashboard yet)'}",
            flush=True,
        )
        if sign_in := dashboard_sign_in(dashboard, plan.address):
            print(f"[study] {plan.name}: {sign_in}", flush=True)
        gpus = gpus_per_trial(plan.gpus_per_trial, plan.workers_per_trial)
        own = trial_resources(plan)
        request = trial_request(plan, own, gpus)
        warning = check_cluster_fits(request, autoscaling=args.autoscaling)
        if warning:
            print(f"[study] warning: {warning}", file=sys.stderr, flush=True)
        concurrency, why = decide_concurrency(plan.max_concurrent, request, cluster_nodes())
        if restore:
            concurrency = stored_concurrency(study_dir) or concurrency
            why = "as the study started (study.json)"
        print(f"[study] {concurrency} trial(s) at once: {why}", flush=True)
        settings = trial_settings(plan, overrides, tune_dir, gpus)
        if not restore:
            record = study_record(plan, overrides, gpus, tune_dir)
            record["plan"]["concurrency"] = concurrency
            record.update(sequential.initial_record(plan))  # --until-decided: rule, margins
            write_json_atomic(study_dir / "study.json", record)
        (study_dir / INTERRUPTED_FILE).unlink(missing_ok=True)
        try:
            tuner = build_tuner(plan, settings, restore, own, concurrency)
        except Exception as exc:  # noqa: BLE001 - Ray's many restore errors, one message
            if not restore:
                raise
            raise restore_error(tune_dir, exc) from None
        start = time.perf_counter()
        with graceful_interrupt(resume_command(plan)) as interrupts:
            results = tuner.fit()
        wall = time.perf_counter() - start
        planned = planned_trials(plan)
        done = ended_trials(tune_dir) if interrupts else len(results)
        if interrupts:
            write_json_atomic(
                study_dir / INTERRUPTED_FILE,
                {
                    "finished": done,
                    "planned": planned,
                    "time": interrupts.times[0],
                    "signal": signal.Signals(interrupts.first).name,
                },
            )
        else:  # (an interrupted trial's W&B run goes on when the study resumes)
            finish_killed_wandb_runs(study_dir)
        errors = sum(1 for r in results if r.error is not None) + failed_trials(tune_dir)
        print(
            f"[study] {plan.name}: {done} of {planned} trials finished in {wall:.0f} s "
            f"({errors} errored or diverged)",
            flush=True,
        )
        from analysis.report import write_report

        report = write_report(study_dir)
        print(f"[study] report: {report}", flush=True)
    finally:
        ray.shutdown()
    if interrupts:
        print(
            f"interrupted: {done} of {planned} trials finished; continue with "
            f"`{resume_command(plan)}`",
            file=sys.stderr,
            flush=True,
        )
        return interrupts.exit_code
    return 0


def describe_sizes(spec: StudySpec) -> str:
    parts = []
    for size in SIZES:
        preset = spec.preset(size)
        config = preset.base_config if preset else spec.base_config
        data = preset.data if preset else spec.data
        trials = (
            (preset.num_samples if preset else spec.num_samples)
            if spec.search == "optuna"
            else None
        )
        count = f", {trials} trials" if trials else ""
        parts.append(f"{size} ({config}, {data.samples} samples at {data.size} px{count})")
    return "; ".join(parts)


def describe_studies() -> str:
    lines = []
    for spec in STUDIES.values():
        searched = ", ".join(searched_keys(spec))
        lines.append(
            f"{spec.name}\n  {spec.description}\n  search: {spec.search}; objective: {spec.mode} "
            f"{spec.objective}; scheduler: {spec.scheduler}\n  searched keys: {searched}\n"
            f"  sizes: {describe_sizes(spec)}"
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
        "  python -m study.run view_order_ablation --size cpu --storage /tmp/studies\n"
        "  python -m study.run view_order_ablation --set training.dataset.dataset_path=/data/mice/data_train.txt\n"
        "  python -m study.run mouse_loss_sweep --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="study name (see --list)")
    p.add_argument("--list", action="store_true", help="list the named studies and exit")
    p.add_argument(
        "--size",
        choices=SIZES,
        help="smoke: tiny model, 64 px, 40 steps, minutes on a CPU (CI, a first look); cpu: the "
        "same model for 3,000 steps, learns silhouettes on 2 cores (tens of minutes per trial); "
        "full: the study as defined, GPU scale (default)",
    )
    p.add_argument("--smoke", action="store_true", help="alias of --size smoke")
    p.add_argument("--num-samples", type=int, help="number of trials (Optuna) or grid repeats")
    p.add_argument(
        "--address", help="join a running Ray cluster (HOST:PORT) instead of starting one"
    )
    p.add_argument(
        "--workers-per-trial", type=int, help="Ray Train workers (DDP ranks) per trial (default 1)"
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial (default: one per worker if the cluster has GPUs)",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: a trial larger than it is today is a warning, "
        "not an error",
    )
    p.add_argument(
        "--cpus-per-worker", type=float, help="CPUs reserved per Train worker (default 1)"
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="at most this many trials at once (default: as many as the cluster holds, printed "
        "at start)",
    )
    p.add_argument(
        "--seeds",
        type=parse_seeds,
        help="grid studies: comma-separated seeds to run instead of the study's (e.g. 0,1)",
    )
    p.add_argument(
        "--until-decided",
        action="store_true",
        default=None,  # None: not given (a --resume takes the stored plan's)
        help="grid studies: add seeds (one trial per grid cell per seed) until every factor's "
        "confirmatory verdict is better, worse or equivalent (group-sequential, error rates "
        "kept across looks; study/sequential.py), or --max-seeds is reached",
    )
    p.add_argument(
        "--max-seeds",
        type=int,
        help="--until-decided: stop at this many seeds, decided or not (default 10)",
    )
    p.add_argument(
        "--margin",
        dest="margin_args",
        action="append",
        metavar="METRIC=VALUE",
        help="--until-decided: the equivalence margin of a metric, e.g. psnr_fg=0.5 (default "
        "analysis.verdicts.DEFAULT_MARGINS); recorded in study.json before the study runs",
    )
    p.add_argument(
        "--sampler-seed",
        type=int,
        help="Optuna studies: the TPE sampler's seed (default: the study's, 0); repeat a study "
        "with several seeds in separate --storage folders and compare them with "
        "python -m analysis.tuning STUDY_DIR STUDY_DIR ...",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        help="worker crashes a trial survives, and restarts of a trial whose driver was lost "
        "with its node (each resumes from its checkpoint; default 2)",
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
        "--resume",
        action="store_true",
        help="continue an interrupted study in its folder, with the plan it started with "
        "(size, workers, GPUs, concurrency, address ... from study.json; a flag that contradicts "
        "it is refused, --address may move)",
    )
    p.add_argument(
        "--wandb", choices=["offline", "online", "disabled"], help="W&B mode (default offline)"
    )
    p.add_argument(
        "--dashboard-host", help="interface the local dashboard listens on (default 127.0.0.1)"
    )
    p.add_argument(
        "--driver-resource",
        help="joined clusters: a Ray resource that only nodes which do not go away have; trial "
        "drivers (and their Train controllers) run there (default: the head node, "
        "node:__internal_head__)",
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
    except (UnknownStudyError, ConfigError, SearchSpaceError, StudyError, ResourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the trials started
        print(
            f"aborted; whatever Tune saved continues with `python -m study.run {args.name} "
            "--resume` (add the --storage the study was started with; the rest of its plan "
            "comes back from study.json)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
