"""What a study run will do, decided before Ray starts: a frozen `StudyPlan`, made without Ray.

`make_plan(args)` resolves the named study, its base config, every override (study, smoke
preset, `--set`, `--wandb`) and the folders, and refuses bad input with a `StudyError` or
`ConfigError` naming the thing and the fix. `check_resume_state`, `resumed_overrides` and
`user_dataset` read the study folder and the dataset list without writing anything, so a
refused start leaves the storage folder as it was (or absent). `study_record` is the
study.json payload. Nothing here imports Ray; `study.cluster` connects to it and `study.run`
wires the two together.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import check_space, get_space
from search_spaces.space import Param
from study.studies import DataSpec, SizePreset, StudySpec, get_study
from trainables.gslrm.config import (
    TrainerConfig,
    apply_overrides,
    flat_config,
    load_config,
    parse_override,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CHECKPOINTS_KEPT = 2  # per trial in runs/<trial>/checkpoints (a --set may change it)


class StudyError(RuntimeError):
    """A problem the user can fix (bad folder, cluster address, resume of nothing)."""


@dataclass(frozen=True)
class StudyPlan:
    """Everything decided from the command line and the files, before Ray starts.

    overrides: dotted config keys applied to the base config for every trial (study fixed
    values, size preset, --set, --wandb; the dataset keys are added when data is prepared).
    config: the base config with `overrides` applied (checked). gpus_per_trial: None means
    "one per worker if the cluster has GPUs", decided once Ray is up.
    """

    spec: StudySpec
    size: str  # smoke | cpu | full (study.studies.SIZES)
    base_config: Path
    overrides: dict[str, Any]
    config: TrainerConfig
    storage: Path
    data: DataSpec
    num_samples: int
    max_concurrent: int | None  # a cap (--max-concurrent); None: as many as the cluster holds
    seeds: tuple[int, ...] | None
    workers_per_trial: int
    gpus_per_trial: float | None
    cpus_per_worker: float
    max_failures: int
    sampler_seed: int  # Optuna's TPE seed (--sampler-seed; repeats of a study differ only here)
    address: str | None
    resume: bool
    wandb: str | None
    dashboard_host: str
    set_args: tuple[str, ...]
    # Where trial drivers (the Tune function driving TorchTrainer.fit, and its Train controller)
    # run on a joined cluster: a Ray resource only nodes that do not vanish have. Default: the
    # head node's own resource.
    driver_resource: str = "node:__internal_head__"
    # --until-decided (study/sequential.py): add seeds until every factor is decided
    until_decided: bool = False
    max_seeds: int | None = None  # None: study.sequential.DEFAULT_MAX_SEEDS
    margin_args: tuple[str, ...] = ()  # --margin METRIC=VALUE, as given

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def study_dir(self) -> Path:
        return self.storage / self.spec.name

    @property
    def preset(self) -> SizePreset | None:
        return self.spec.preset(self.size)

    @property
    def grace_period_rounds(self) -> int:
        return self.preset.grace_period_rounds if self.preset else self.spec.grace_period_rounds

    @property
    def grid_seeds(self) -> tuple[int, ...] | None:
        """Seeds replacing a grid study's own: --seeds, else the size preset's."""
        return self.seeds or (self.preset.grid_seeds if self.preset else None)


def resolve_path(path: str) -> Path:
    """Absolute paths as they are; relative ones against the repo when they exist there,
    else against the working directory."""
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p if (REPO_ROOT / p).exists() else Path.cwd() / p)


def searched_keys(spec: StudySpec) -> list[str]:
    if spec.search == "optuna":
        return [p.key for p in get_space(spec.space)]
    return list(spec.grid) + list(spec.linked)


def parse_seeds(text: str) -> tuple[int, ...]:
    """--seeds "0,1,2" -> (0, 1, 2); a bad entry is named (argparse turns this into exit 2)."""
    seeds = []
    for part in text.split(","):
        try:
            seeds.append(int(part.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} in {text!r} is not an integer seed; "
                "give comma-separated integers, e.g. --seeds 0,1,2"
            ) from None
    return tuple(seeds)


# The command-line flags a study keeps for its whole life, stored in study.json["plan"] and
# reloaded by --resume: StudyPlan field -> (flag, default when the flag is not given).
PLAN_FLAGS: dict[str, tuple[str, Any]] = {
    "size": ("--size", "full"),
    "num_samples": ("--num-samples", None),
    "max_concurrent": ("--max-concurrent", None),
    "seeds": ("--seeds", None),
    "workers_per_trial": ("--workers-per-trial", 1),
    "gpus_per_trial": ("--gpus-per-trial", None),
    "cpus_per_worker": ("--cpus-per-worker", 1.0),
    "max_failures": ("--max-failures", 2),
    "sampler_seed": ("--sampler-seed", None),
    "wandb": ("--wandb", None),
    "dashboard_host": ("--dashboard-host", "127.0.0.1"),
    "driver_resource": ("--driver-resource", "node:__internal_head__"),
    # --until-decided (study/sequential.py)
    "until_decided": ("--until-decided", False),
    "max_seeds": ("--max-seeds", None),
    "margin_args": ("--margin", ()),
}
ADDRESS_FLAG = "--address"  # may change on --resume (a cluster's head moves); said when it does


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The plan flags the user gave on this command line: {StudyPlan field: value}.

    The parser's defaults are None, so a flag left out is told from one given with its default
    value (`--workers-per-trial 1` on a study started with 2 is a contradiction, not a default).
    """
    given = {field: getattr(args, field, None) for field in PLAN_FLAGS}
    if getattr(args, "smoke", False):
        given["size"] = "smoke"
    return {field: value for field, value in given.items() if value is not None}


def stored_plan(record: dict[str, Any]) -> dict[str, Any]:
    """study.json's plan flags and address; a study written before the plan was stored gives
    what its record holds (size, workers, GPUs, samples, sampler seed)."""
    plan = record.get("plan")
    if isinstance(plan, dict):
        return plan
    known = ("size", "num_samples", "workers_per_trial", "gpus_per_trial", "sampler_seed")
    return {key: record[key] for key in known if key in record}


def _same(field: str, given: Any, stored: Any) -> bool:
    if field in ("seeds", "margin_args") and stored is not None:
        stored, given = tuple(stored), tuple(given)
    if isinstance(given, float) or isinstance(stored, float):
        try:
            return float(given) == float(stored)
        except (TypeError, ValueError):
            return False
    return given == stored


def resumed_args(args: argparse.Namespace, record: dict[str, Any]) -> argparse.Namespace:
    """The command line of a --resume, completed from the plan the study stored.

    A flag that contradicts the stored plan is refused, naming the flag and both values. A
    different --address is allowed (the head may have moved) and printed; without --address the
    study joins the cluster it ran on.
    """
    stored = stored_plan(record)
    given = given_flags(args)
    for field, value in given.items():
        if field in stored and not _same(field, value, stored[field]):
            flag = PLAN_FLAGS[field][0]
            raise StudyError(
                f"{flag} {value}: a resumed study keeps the plan it started with ({flag} "
                f"{stored[field]} in {record.get('study_dir', 'study.json')}/study.json); "
                "leave the flag out, or start a new study with --storage DIR"
            )
    merged = vars(args).copy()
    for field, value in stored.items():
        if field in PLAN_FLAGS and merged.get(field) is None:
            listed = field in ("seeds", "margin_args") and value is not None
            merged[field] = tuple(value) if listed else value
    merged["smoke"] = False  # the size now comes from the stored plan
    stored_address = stored.get("address")
    if args.address and stored_address and args.address != stored_address:
        print(
            f"[study] --address {args.address}: the study ran on {stored_address}; resuming on "
            "the new address",
            file=sys.stderr,
            flush=True,
        )
    merged["address"] = args.address or stored_address
    # --set values the study started with come back too (a contradicting one is refused by
    # resumed_overrides)
    merged["set"] = list(dict.fromkeys([*stored.get("set_args", ()), *args.set]))
    return argparse.Namespace(**merged)


def plan_flags_record(plan: StudyPlan, gpus_per_trial: float) -> dict[str, Any]:
    """study.json["plan"]: every flag a --resume restores, with the GPUs per trial decided when
    the study started (so a resume on another cluster keeps each trial's size)."""
    record = {field: getattr(plan, field) for field in PLAN_FLAGS}
    record["gpus_per_trial"] = gpus_per_trial
    record["seeds"] = list(plan.seeds) if plan.seeds is not None else None
    record["margin_args"] = list(plan.margin_args)
    record["address"] = plan.address
    record["set_args"] = list(plan.set_args)
    return record


def make_plan(args: argparse.Namespace) -> StudyPlan:
    """Validate the study, config overrides and search space against the config; no I/O
    beyond reading the study's YAML (and, for --resume, the study's study.json)."""
    spec = get_study(args.name)
    if getattr(args, "resume", False):
        record = _read_record(_storage(args) / spec.name / "study.json")
        if record is not None:
            args = resumed_args(args, record)
    flags = {field: default for field, (_, default) in PLAN_FLAGS.items()}
    flags.update(given_flags(args))
    size = flags["size"]
    preset = spec.preset(size)
    base_config = resolve_path(preset.base_config if preset else spec.base_config)
    # Each trial's run folder keeps its newest checkpoints only: Ray Train keeps the best and the
    # latest in train/, and a sweep of full-size trials would otherwise fill the disk (1.2 GB each).
    overrides: dict[str, Any] = {
        "training.checkpointing.keep_last": LOCAL_CHECKPOINTS_KEPT,
        # one evaluation protocol for every trial: the study's checkpoint rule and objective
        "evaluation.checkpoint": spec.checkpoint_rule,
        "evaluation.objective": spec.objective,
        "evaluation.objective_mode": spec.mode,
        **spec.fixed,
    }
    if preset:
        overrides.update(preset.overrides)
    overrides.update(dict(parse_override(text) for text in args.set))
    if flags["wandb"]:
        overrides["training.logging.wandb.mode"] = flags["wandb"]
    config = apply_overrides(load_config(base_config), overrides)  # names any bad --set key
    keys = set(flat_config(config))
    if spec.search == "optuna":
        check_space(get_space(spec.space), keys)
    else:
        check_space([Param(k, choices=v) for k, v in spec.grid.items()], keys)
        check_space([Param(k, choices=[None]) for k in spec.linked], keys)
    preset_samples = preset.num_samples if preset and spec.search == "optuna" else None
    if flags["max_concurrent"] is not None and flags["max_concurrent"] < 1:
        raise StudyError(f"--max-concurrent {flags['max_concurrent']}: must be 1 or more")
    return StudyPlan(
        spec=spec,
        size=size,
        base_config=base_config,
        overrides=overrides,
        config=config,
        storage=_storage(args),
        data=preset.data if preset else spec.data,
        num_samples=flags["num_samples"] or preset_samples or spec.num_samples,  # grid: repeats
        max_concurrent=flags["max_concurrent"],
        seeds=flags["seeds"],
        workers_per_trial=flags["workers_per_trial"],
        gpus_per_trial=flags["gpus_per_trial"],
        cpus_per_worker=flags["cpus_per_worker"],
        max_failures=flags["max_failures"],
        sampler_seed=spec.sampler_seed if flags["sampler_seed"] is None else flags["sampler_seed"],
        address=args.address,
        resume=bool(getattr(args, "resume", False)),
        wandb=flags["wandb"],
        dashboard_host=flags["dashboard_host"],
        set_args=tuple(args.set),
        driver_resource=flags["driver_resource"],
        until_decided=bool(flags["until_decided"]),
        max_seeds=flags["max_seeds"],
        margin_args=tuple(flags["margin_args"]),
    )


def _storage(args: argparse.Namespace) -> Path:
    return Path(args.storage).expanduser().resolve() if args.storage else (Path.cwd() / "studies")


def _read_record(path: Path) -> dict[str, Any] | None:
    """study.json as a dict; None when absent (check_resume_state then names what is missing).
    An unreadable one is refused here, naming it."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(
            f"{path}: unreadable ({type(exc).__name__}); the study cannot be resumed, "
            "start it again with --storage DIR"
        ) from None
    if not isinstance(record, dict):
        raise StudyError(
            f"{path}: not a study record (a JSON object); start again with --storage DIR"
        )
    return record


def find_tune_dir(study_dir: Path) -> Path | None:
    """The study's Tune experiment folder, if an earlier run left one with state in it."""
    from analysis.load import tune_folders

    with_state = [f for f in tune_folders(study_dir) if any(f.glob("experiment_state*.json"))]
    return with_state[0] if with_state else None


def check_resume_state(study_dir: Path, resume: bool) -> Path | None:
    """The Tune folder of an earlier run of this study to continue; None for a fresh start.

    Reads only: a refused --resume leaves no folder behind.
    """
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


def resumed_overrides(study_dir: Path, set_args: tuple[str, ...]) -> dict[str, Any]:
    """The overrides a study started with (study.json); a --set that changes one is refused."""
    record = study_dir / "study.json"
    try:
        overrides = json.loads(record.read_text())["overrides"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StudyError(
            f"{record}: unreadable ({type(exc).__name__}); the study cannot be resumed, "
            "start it again with --storage DIR"
        ) from None
    for key, value in (parse_override(text) for text in set_args):
        if key not in overrides or overrides[key] != value:
            raise StudyError(
                f"--set {key}={value!r}: a resumed study keeps the settings it started with "
                f"({key}={overrides.get(key, '<default>')!r}); start a new study to change it"
            )
    return overrides


def user_dataset(plan: StudyPlan) -> dict[str, Any] | None:
    """The user's dataset as overrides (checked to exist), or None when the study uses synthetic
    data."""
    if not plan.config.training.dataset.dataset_path:
        return None
    path = resolve_path(plan.config.training.dataset.dataset_path)
    if not path.is_file():
        raise StudyError(f"training.dataset.dataset_path: {path} not found")
    return {"training.dataset.dataset_path": str(path)}


def synthetic_data_folder(plan: StudyPlan) -> Path:
    """STORAGE/_data/<rig>_<size>px_<samples>s_seed<seed>: shared by the studies of a storage."""
    data = plan.data
    return plan.storage / "_data" / f"{data.rig}_{data.size}px_{data.samples}s_seed{data.seed}"


def study_record(
    plan: StudyPlan, overrides: dict[str, Any], gpus_per_trial: float, tune_dir: Path
) -> dict[str, Any]:
    """The study.json payload: what was run, for the analysis and for --resume."""
    spec = plan.spec
    return {
        "study": spec.name,
        "description": spec.description,
        "objective": spec.objective,
        "mode": spec.mode,
        "search": spec.search,
        "searched_keys": searched_keys(spec),
        "max_steps": plan.config.training.schedule.max_steps,
        "num_samples": plan.num_samples,
        "sampler_seed": plan.sampler_seed,
        "size": plan.size,
        "smoke": plan.size == "smoke",  # older readers
        "checkpoint_rule": spec.checkpoint_rule,
        "optuna_storage": "optuna.db" if spec.search == "optuna" else None,
        "optuna_study_name": spec.name if spec.search == "optuna" else None,
        "base_config": str(plan.base_config),
        "overrides": overrides,
        "workers_per_trial": plan.workers_per_trial,
        "gpus_per_trial": gpus_per_trial,
        "plan": plan_flags_record(plan, gpus_per_trial),
        "tune_dir": tune_dir.name,
        "study_dir": str(plan.study_dir.resolve()),  # a moved folder is refused on --resume
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": sys.argv,
    }
