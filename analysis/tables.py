"""Build the two typed tables of a study: trials (one row per trial) and curves (one per report).

Column naming scheme (the contract for anyone reading the Parquet files):

Every column of both files carries a one-line description in its Parquet field metadata
(key ``description``; `write_parquet`), readable with ``pyarrow.parquet.read_schema``.

trials.parquet, one row per trial folder under the study's Tune folder (``tune-<id>/``):
  study, trial_id, trial_dir (Ray's folder name), status ("finished", "stopped_early",
  "diverged", "errored"), error (message or null),
  flag_background_collapse, flag_diverged, flag_stopped_early (bool, never null),
  steps_run, last_step, n_reports, wall_s, gpu_s, restarts, seed, code_version,
  final/<metric>      value at the trial's last report holding the metric (NaN kept),
  best/<metric>       best finite value (max for scores, min for losses and LPIPS),
  best_step/<metric>  trainer step of that best value (earliest on ties),
  <dotted.config.key> every trainer config key, e.g. ``mouse.use_mouse_dataset``, from the
                      trial summary's full config, falling back to params.json (so a trial
                      stopped before writing its summary has only its searched/set keys).
  <metric> is the logged key, e.g. ``final/val/psnr_fg``, ``best_step/train/loss``.
  Config columns are exactly the columns whose name contains "." (metric columns use "/");
  a config key that would clash with a fixed column is stored as ``config.<key>``.

curves.parquet, one row per (trial, trainer step): study, trial_id, step,
  training_iteration, time_total_s, then one column per metric under its logged name
  (``val/psnr_fg``), plus the trainer's diagnostics (``metrics/lr``, ``metrics/grad_norm``,
  ...), which get no final/best columns in trials.parquet. A step reported twice (a
  restarted trial) keeps its last report; a report without "step" uses training_iteration
  as its step.

Types: text -> pandas ``str`` (arrow string); floats -> float64 (NaN for missing);
integers -> int64, or nullable Int64 where a value can be missing; booleans -> bool, or
nullable boolean where missing. Config values that are lists/dicts, or whose type differs
between trials, are stored as JSON text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.load import (
    StudyInfo,
    TrialFiles,
    report_metrics,
    trial_compute,
    trial_config,
    trial_error,
    trial_id,
    trial_record,
    trial_status,
)
from analysis.metrics import ALWAYS_PRESENT_METRICS, higher_is_better, is_metric_key

# Below this final val/mask_iou, with the training loss still falling, the model has learned
# to paint the background and drop the mouse.
COLLAPSE_MASK_IOU = 0.05

FIXED_COLUMNS: dict[str, str] = {
    "study": "str",
    "trial_id": "str",
    "trial_dir": "str",
    "status": "str",
    "error": "str",
    "flag_background_collapse": "bool",
    "flag_diverged": "bool",
    "flag_stopped_early": "bool",
    "steps_run": "Int64",
    "last_step": "Int64",
    "n_reports": "int64",
    "wall_s": "float64",
    "gpu_s": "float64",
    "restarts": "Int64",
    "seed": "Int64",
    "code_version": "str",
}

CURVE_FIXED_COLUMNS: dict[str, str] = {
    "study": "str",
    "trial_id": "str",
    "step": "int64",
    "training_iteration": "Int64",
    "time_total_s": "float64",
}

METRIC_PREFIXES = ("final", "best", "best_step")


def final_column(metric: str) -> str:
    return f"final/{metric}"


def best_column(metric: str) -> str:
    return f"best/{metric}"


def best_step_column(metric: str) -> str:
    return f"best_step/{metric}"


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The config columns of a trials table (see the naming scheme above)."""
    return [c for c in trials.columns if "." in c and "/" not in c]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def trial_curve(trial: TrialFiles) -> list[dict[str, Any]]:
    """The trial's reports as rows sorted by step, one per step (the last report wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    for index, report in enumerate(trial.reports):
        iteration = _integer(report.get("training_iteration"))
        step = _integer(report.get("step"))
        if step is None:
            step = iteration if iteration is not None else index + 1
        by_step[step] = {
            "step": step,
            "training_iteration": iteration,
            "time_total_s": _number(report.get("time_total_s")),
            **report_metrics(report),
        }
    return [by_step[step] for step in sorted(by_step)]


def final_value(curve: Sequence[dict[str, Any]], metric: str) -> float:
    for row in reversed(curve):
        if metric in row:
            return row[metric]
    return math.nan


def first_value(curve: Sequence[dict[str, Any]], metric: str) -> float:
    for row in curve:
        if metric in row:
            return row[metric]
    return math.nan


def best_value(curve: Sequence[dict[str, Any]], metric: str) -> tuple[float, int | None]:
    """Best finite value and its step; (NaN, None) when the metric never had one."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    best, best_step = math.nan, None
    for row in curve:
        value = row.get(metric, math.nan)
        if math.isfinite(value) and (best_step is None or sign * value > sign * best):
            best, best_step = value, row["step"]
    return best, best_step


def background_collapsed(curve: Sequence[dict[str, Any]]) -> bool:
    """Loss fell while the final mask IoU is ~0: the model paints everything background."""
    loss_fell = final_value(curve, "train/loss") < first_value(curve, "train/loss")
    return bool(loss_fell and final_value(curve, "val/mask_iou") < COLLAPSE_MASK_IOU)


def diverged(status: str, curve: Sequence[dict[str, Any]]) -> bool:
    has_loss = any("train/loss" in row for row in curve)
    return status == "diverged" or (
        has_loss and not math.isfinite(final_value(curve, "train/loss"))
    )


def curve_keys(trials: Iterable[TrialFiles]) -> set[str]:
    """Every logged key (metrics and diagnostics) any trial reported."""
    return {key for trial in trials for row in trial_curve(trial) for key in row if "/" in key}


def study_metrics(study: StudyInfo, trials: Iterable[TrialFiles]) -> list[str]:
    """Every metric any trial reported plus the ones the report always needs, sorted."""
    reported = {key for key in curve_keys(trials) if is_metric_key(key)}
    return sorted(reported | set(ALWAYS_PRESENT_METRICS) | {study.objective})


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def trial_row(study: StudyInfo, trial: TrialFiles, metrics: Sequence[str]) -> dict[str, Any]:
    """One trials-table row as plain Python values (typing happens per column later)."""
    curve = trial_curve(trial)
    summary = trial.summary or {}
    config = trial_config(trial)
    last_step = curve[-1]["step"] if curve else None
    status = trial_status(trial, last_step, study.max_steps)
    compute = trial_compute(trial)  # summed over attempts (the journal), else the summary's
    row: dict[str, Any] = {
        "study": study.name,
        "trial_id": trial_id(trial),
        "trial_dir": trial.folder,
        "status": status,
        "error": trial_error(trial),
        "flag_background_collapse": background_collapsed(curve),
        "flag_diverged": diverged(status, curve),
        "flag_stopped_early": status == "stopped_early",
        "steps_run": _integer(summary.get("steps_run", last_step)),
        "last_step": last_step,
        "n_reports": len(curve),
        "wall_s": _number(
            _first(compute["wall_s"], curve[-1].get("time_total_s") if curve else None)
        ),
        "gpu_s": _number(compute["gpu_s"]),
        "restarts": _integer(compute["restarts"]),
        "seed": _integer(_first(trial_record(trial, "seed"), config.get("training.runtime.seed"))),
        "code_version": trial_record(trial, "code_version"),
    }
    for metric in metrics:
        best, step = best_value(curve, metric)
        row[final_column(metric)] = final_value(curve, metric)
        row[best_column(metric)] = best
        row[best_step_column(metric)] = step
    for key, value in config.items():
        row[f"config.{key}" if key in row else key] = value
    return row


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def infer_series(name: str, values: Sequence[Any]) -> pd.Series:
    """Typed column from Python values of unknown type (config values)."""
    present = [v for v in values if v is not None]
    has_missing = len(present) < len(values)
    if present and all(isinstance(v, bool | np.bool_) for v in present):
        return pd.Series(values, name=name, dtype="boolean" if has_missing else "bool")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, name=name, dtype="Int64" if has_missing else "int64")
    if present and all(_number(v) is not None for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], name=name)
    if all(isinstance(v, str) for v in present):
        return pd.Series(values, name=name, dtype="str")
    # Lists, dicts and mixed types: JSON keeps them readable and typed as one string column.
    return pd.Series([None if v is None else _to_json(v) for v in values], name=name, dtype="str")


def typed_series(name: str, values: Sequence[Any], dtype: str) -> pd.Series:
    if dtype == "float64":
        return pd.Series([math.nan if v is None else float(v) for v in values], name=name)
    if dtype == "str":
        return pd.Series(
            [None if _is_missing(v) else str(v) for v in values], name=name, dtype="str"
        )
    return pd.Series(values, name=name, dtype=dtype)


def _metric_dtype(column: str) -> str:
    return "Int64" if column.startswith("best_step/") else "float64"


def build_trials(study: StudyInfo, trials: Sequence[TrialFiles]) -> pd.DataFrame:
    """The trials table; columns follow the naming scheme in this module's docstring."""
    metrics = study_metrics(study, trials)
    rows = [trial_row(study, trial, metrics) for trial in trials]
    metric_columns = [f"{p}/{m}" for p in METRIC_PREFIXES for m in metrics]
    known = set(FIXED_COLUMNS) | set(metric_columns)
    extra = sorted({key for row in rows for key in row} - known)
    columns = [typed_series(c, [r[c] for r in rows], t) for c, t in FIXED_COLUMNS.items()]
    columns += [typed_series(c, [r[c] for r in rows], _metric_dtype(c)) for c in metric_columns]
    columns += [infer_series(c, [r.get(c) for r in rows]) for c in extra]
    table = pd.concat(columns, axis=1) if rows else _empty(FIXED_COLUMNS, metric_columns)
    return table.sort_values(["trial_id", "trial_dir"], ignore_index=True)


def build_curves(study: StudyInfo, trials: Sequence[TrialFiles]) -> pd.DataFrame:
    """The curves table: one row per trial and trainer step."""
    metrics = sorted(set(study_metrics(study, trials)) | curve_keys(trials))
    rows = []
    for trial in trials:
        ident = trial_id(trial)
        for point in trial_curve(trial):
            rows.append({"study": study.name, "trial_id": ident, **point})
    columns = [typed_series(c, [r[c] for r in rows], t) for c, t in CURVE_FIXED_COLUMNS.items()]
    columns += [typed_series(m, [r.get(m) for r in rows], "float64") for m in metrics]
    table = pd.concat(columns, axis=1) if rows else _empty(CURVE_FIXED_COLUMNS, metrics)
    return table.sort_values(["trial_id", "step"], ignore_index=True)


def _empty(fixed: dict[str, str], float_columns: Sequence[str]) -> pd.DataFrame:
    columns = {c: pd.Series([], dtype=t) for c, t in fixed.items()}
    columns.update({c: pd.Series([], dtype=_metric_dtype(c)) for c in float_columns})
    return pd.DataFrame(columns)


# ---------------------------------------------------------------------------------------
# Parquet field metadata: what each column means, inside the file itself

DESCRIPTION_KEY = b"description"
TRIALS_DESCRIPTION = "one row per trial of the study; column families in README (trials.parquet)"
CURVES_DESCRIPTION = "one row per (trial, trainer step) report of the study"

FIXED_DESCRIPTIONS: dict[str, str] = {
    "study": "study name (the study folder's name, as in study.json)",
    "trial_id": "Tune trial id, unique within the study",
    "trial_dir": "the trial's folder name inside the study's tune-<id>/ folder",
    "status": "finished | stopped_early (ASHA stopped it) | diverged | errored",
    "error": "the trial's error message; null unless status is errored or diverged",
    "flag_background_collapse": "train/loss fell while final val/mask_iou < 0.05: the model "
    "paints background and drops the mouse",
    "flag_diverged": "status is diverged, or the last train/loss is not finite",
    "flag_stopped_early": "status is stopped_early",
    "steps_run": "trainer step the trial reached (trial summary; else its last reported step)",
    "last_step": "trainer step of the trial's last report; null without reports",
    "n_reports": "reports (distinct trainer steps) the trial sent to Tune",
    "wall_s": "wall-clock seconds of the trial (trial summary; else Tune's time_total_s)",
    "gpu_s": "seconds the trainer ran on a GPU (its wall time on CUDA, 0 on CPU; null if unknown)",
    "restarts": "times the trial was restarted from a checkpoint after a failure",
    "seed": "training.runtime.seed of the trial",
    "code_version": "git commit (short) of the code that ran the trial, else the package version",
    "optuna_number": "the trial's number in the study's Optuna storage; null for grid studies",
    "step": "trainer (optimizer) step of this report",
    "training_iteration": "Tune's report counter (1, 2, 3, ...) of this report",
    "time_total_s": "seconds since the trial started, at this report",
    "flag_mask_covers_image": "on the evaluation items the predicted foreground covers most of the "
    "image and far more than the true one (IoU falls to the true fraction); null if not evaluated",
    "eval/pred_fg_fraction": "mean predicted foreground fraction over the trial's evaluated "
    "(item, view) rows (runs/<trial>/eval/items.parquet)",
    "eval/gt_fg_fraction": "mean true foreground fraction over the trial's evaluated (item, view) rows",
    "eval/mask_iou": "mean mask IoU over the trial's evaluated (item, view) rows",
    "validation_picture": "the trial's last validation picture (highest step), relative to the "
    "study folder; null if it has none",
    "eval_picture": "the trial's evaluation picture (first evaluation item, evaluated "
    "checkpoint), relative to the study folder; null without a complete evaluation",
}


def column_description(name: str) -> str:
    """One-line meaning of a trials.parquet or curves.parquet column, from its name."""
    if name in FIXED_DESCRIPTIONS:
        return FIXED_DESCRIPTIONS[name]
    prefix, _, metric = name.partition("/")
    if prefix == "final" and metric:
        return f"{metric} at the trial's last report holding it (NaN kept)"
    if prefix == "best" and metric:
        direction = "max" if higher_is_better(metric) else "min"
        return f"best finite {metric} over the trial's reports ({direction})"
    if prefix == "best_step" and metric:
        return f"trainer step of best/{metric} (earliest on ties)"
    if "/" in name:
        return f"{name} as logged at this trainer step (NaN when not logged here)"
    if name.startswith("config.") and name[len("config.") :] in FIXED_DESCRIPTIONS:
        return f"trainer config key {name[len('config.') :]} (renamed: clashes with a column)"
    if "." in name:
        return f"trainer config key {name} (the trial's full config; JSON text for lists)"
    return name


def write_parquet(table: pd.DataFrame, path: str | Path, description: str) -> None:
    """table -> Parquet at path, each field's metadata holding its column_description and the
    schema's metadata the table's `description` (beside pandas' own dtype metadata)."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    fields = [
        f.with_metadata({DESCRIPTION_KEY: column_description(f.name).encode()})
        for f in arrow.schema
    ]
    metadata = dict(arrow.schema.metadata or {})
    metadata[DESCRIPTION_KEY] = description.encode()
    schema = pa.schema(fields, metadata=metadata)
    pq.write_table(pa.Table.from_arrays(arrow.columns, schema=schema), path)
