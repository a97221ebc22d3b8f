"""Read one study folder into plain records: study.json plus each Tune trial's files.

No pandas here: this layer only parses files and tolerates what a crashed or stopped trial
leaves behind (missing files, an empty or truncated result.json, NaN metrics).

A trial's fate (status, compute, seed and code version of a trial stopped before its summary)
comes from its journal, STUDY/runs/<trial id>/journal.jsonl, through the one reader
`trainables.journal.TrialJournal` that the trial and the searcher use too. Study folders
written before the journal existed keep what their trial_summary.json says and their
run_info.json; a stopped trial of such a folder has no compute and its divergence (then
diverged.json) is not read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from analysis.metrics import is_curve_key
from trainables.journal import ERROR_MAX_CHARS as ERROR_MESSAGE_MAX_CHARS
from trainables.journal import METRICS_FILE, TrialJournal, read_json_lines
from trainables.journal import STATUSES as FINAL_STATUSES

# Ray names trial folders "<trainable>_<trial id>_<index>_<params>_<date>"; the id is
# 5 hex characters, "_", 5 digits.
_RAY_TRIAL_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{5}_\d{5})(?!\d)")


class NotAStudyError(ValueError):
    """The folder is not a study folder (no readable study.json)."""


@dataclass(frozen=True)
class StudyInfo:
    path: Path
    name: str
    objective: str
    mode: str  # "max" or "min"
    max_steps: int | None
    searched_keys: tuple[str, ...]
    optuna_storage: Path | None
    optuna_study_name: str | None
    created: str | None
    # interrupted.json when Ctrl-C ended the last run early ({"finished", "planned", "time"})
    interrupted: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrialFiles:
    """What one trial folder holds, parsed but not interpreted."""

    folder: str
    params: dict[str, Any]
    # result.json lines, flattened with "/", in file order; with_run_files puts before them
    # the validation rounds of the trainer's metrics.jsonl that Tune's file lacks
    reports: list[dict[str, Any]]
    summary: dict[str, Any] | None
    error_text: str | None
    # From the trainer's run folder (STUDY/runs/<trial id>/), which a trial stopped mid-fit
    # fills although it never wrote its summary: config.yaml (every key, flattened with "."),
    # the journal, and the journal's record of the trial (seed, code version; run_info.json in
    # folders written before the journal).
    run_config: dict[str, Any] | None = None
    run_info: dict[str, Any] | None = None
    journal: TrialJournal | None = None


def flatten(data: dict[str, Any], sep: str, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level, keys joined with ``sep``; other values untouched."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_result_lines(text: str) -> list[dict[str, Any]]:
    """Tune's result.json (JSON lines) -> flat dicts, skipping blank or truncated lines.

    Tune repeats the trial config under "config" in every line; that is not a metric and
    the config is read from params.json / the summary instead, so it is dropped here.
    """
    reports = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            # A trial killed mid-write leaves half a line; the rest is still good.
            continue
        if isinstance(row, dict):
            row = {k: v for k, v in row.items() if k != "config"}
            reports.append(flatten(row, "/"))
    return reports


def last_nonempty_line(text: str, max_chars: int = ERROR_MESSAGE_MAX_CHARS) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:max_chars] if lines else None


def read_study_info(study_dir: Path) -> StudyInfo:
    """Parse study.json; raises NotAStudyError naming the folder when it is not a study."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise NotAStudyError(f"{study_dir} is not a study folder: it does not exist")
    data = read_json_object(study_dir / "study.json")
    if data is None:
        raise NotAStudyError(
            f"{study_dir} is not a study folder: no readable study.json (a JSON object) in it"
        )
    if not data.get("objective"):
        raise NotAStudyError(f"{study_dir} is not a study folder: study.json has no objective")
    mode = str(data.get("mode") or "max").lower()
    if mode not in ("max", "min"):
        raise NotAStudyError(f"{study_dir}: study.json mode must be 'max' or 'min', not {mode!r}")
    storage = data.get("optuna_storage")
    max_steps = data.get("max_steps")
    return StudyInfo(
        path=study_dir,
        name=str(data.get("study") or study_dir.name),
        objective=str(data["objective"]),
        mode=mode,
        max_steps=int(max_steps) if isinstance(max_steps, int | float) else None,
        searched_keys=tuple(str(k) for k in data.get("searched_keys") or ()),
        optuna_storage=(study_dir / storage) if storage else None,
        optuna_study_name=data.get("optuna_study_name") or None,
        created=data.get("created"),
        interrupted=read_json_object(study_dir / "interrupted.json"),
    )


def read_trial(folder: Path) -> TrialFiles:
    params = read_json_object(folder / "params.json") or {}
    try:
        reports = parse_result_lines((folder / "result.json").read_text(encoding="utf-8"))
    except OSError:
        reports = []
    try:
        error_text: str | None = (folder / "error.txt").read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        error_text = None
    return TrialFiles(
        folder=folder.name,
        params=flatten(params, "."),
        reports=reports,
        summary=read_json_object(folder / "trial_summary.json"),
        error_text=error_text,
    )


def tune_folders(study_dir: Path) -> list[Path]:
    """The study's Tune experiment folder: the `tune_dir` study.json records.

    A start that died before Tune saved its state can leave another tune-<id>/ behind; it is not
    part of the study. Study folders without the record (older layouts, hand-made fixtures) use
    every tune*/ folder.
    """
    study_dir = Path(study_dir)
    recorded = (read_json_object(study_dir / "study.json") or {}).get("tune_dir")
    if isinstance(recorded, str) and recorded:
        return [study_dir / recorded]
    return sorted(p for p in study_dir.glob("tune*") if p.is_dir())


def find_trial_folders(study_dir: Path) -> list[Path]:
    """Trial folders are the ones holding a params.json (Ray names them) in the study's Tune folder."""
    return sorted(
        p.parent for folder in tune_folders(study_dir) for p in folder.glob("*/params.json")
    )


def read_yaml_mapping(path: Path) -> dict[str, Any] | None:
    """A YAML mapping from ``path``, or None when missing, unreadable or not a mapping."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _step(row: dict[str, Any]) -> int | None:
    step = row.get("step")
    return int(step) if isinstance(step, (int, float)) and math.isfinite(step) else None


def reports_before_tune(metrics_path: Path, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation rounds the trainer logged (metrics.jsonl) before Tune's first report,
    as reports: every metric of each such step, train/* rows of the same step included.

    Needed because a driver restart that restores a trial makes Tune start its result.json
    afresh: without these rows a resumed trial's curve (and the flags read from its first
    values) would begin at the resume. Read through the journal's tolerant line reader.
    """
    steps = [s for s in map(_step, reports) if s is not None]
    first = min(steps) if steps else math.inf
    by_step: dict[int, dict[str, Any]] = {}
    validated: set[int] = set()
    for record in read_json_lines(metrics_path):
        row = flatten({k: v for k, v in record.items() if k != "config"}, "/")
        step = _step(row)
        if step is None or step >= first:
            continue
        by_step.setdefault(step, {"step": step}).update(row)
        if any(key.startswith("val/") for key in row):
            validated.add(step)
    return [by_step[step] for step in sorted(validated)]


def with_run_files(trial: TrialFiles, study_dir: Path) -> TrialFiles:
    """The trial plus what its run folder STUDY/runs/<trial id>/ holds (the folder moves with
    the study, so it is found here rather than by the absolute path the summary records)."""
    run_dir = Path(study_dir) / "runs" / trial_id(trial)
    config = read_yaml_mapping(run_dir / "config.yaml")
    journal = TrialJournal.read(run_dir)
    return replace(
        trial,
        reports=reports_before_tune(run_dir / METRICS_FILE, trial.reports) + trial.reports,
        run_config=flatten(config, ".") if config is not None else None,
        run_info=journal.info or read_json_object(run_dir / "run_info.json"),
        journal=journal,
    )


def read_trials(study_dir: Path) -> list[TrialFiles]:
    return [with_run_files(read_trial(f), study_dir) for f in find_trial_folders(study_dir)]


def trial_id(trial: TrialFiles) -> str:
    """The Tune trial id: from the summary, a result line, the folder name, else the folder."""
    if trial.summary and trial.summary.get("trial_id"):
        return str(trial.summary["trial_id"])
    for report in trial.reports:
        if report.get("trial_id"):
            return str(report["trial_id"])
    match = _RAY_TRIAL_ID.search(trial.folder)
    return match.group(1) if match else trial.folder


def trial_config(trial: TrialFiles) -> dict[str, Any]:
    """Every config key we know for the trial: the summary's full config, else the run's own
    config.yaml (a trial stopped mid-fit has no summary), over params.json."""
    config = dict(trial.params)
    if trial.summary and isinstance(trial.summary.get("config"), dict):
        config.update(flatten(trial.summary["config"], "."))
    elif trial.run_config:
        config.update(trial.run_config)
    return config


def trial_record(trial: TrialFiles, key: str) -> Any:
    """`key` ("seed", "code_version") from the summary, else from the run's journal record."""
    for record in (trial.summary, trial.run_info):
        if record and record.get(key) is not None:
            return record[key]
    return None


def trial_status(trial: TrialFiles, last_step: int | None, max_steps: int | None) -> str:
    """The summary's status when it states a final one (the trial applied the journal's rule
    when it ended), else that same rule (`TrialJournal.outcome`) on what the trial left: its
    journal (read with its run folder, else from the run folder the summary names when it
    exists here), error.txt's last line and the last reported step."""
    if trial.summary and trial.summary.get("status") in FINAL_STATUSES:
        return str(trial.summary["status"])
    journal = trial.journal
    if journal is None:
        recorded = (trial.summary or {}).get("run_dir")
        run_dir = Path(recorded) if isinstance(recorded, str) and Path(recorded).is_dir() else None
        journal = TrialJournal.read(run_dir)
    error = last_nonempty_line(trial.error_text) if trial.error_text is not None else None
    if trial.error_text is not None and not error:
        error = "error.txt is empty"
    return journal.outcome(max_steps, error, last_step).status


def trial_compute(trial: TrialFiles) -> dict[str, Any]:
    """{"wall_s", "gpu_s", "restarts"}: summed over the attempts the journal records (a trial
    stopped mid-fit counts the span of its logged steps), else the summary's (older folders);
    None where neither knows."""
    journal = trial.journal
    if journal is not None and journal.attempts:
        compute = journal.compute()
        return {"wall_s": compute.wall_s, "gpu_s": compute.gpu_s, "restarts": compute.restarts}
    summary = trial.summary or {}
    return {key: summary.get(key) for key in ("wall_s", "gpu_s", "restarts")}


def trial_error(trial: TrialFiles) -> str | None:
    summary_error = (trial.summary or {}).get("error")
    if summary_error:
        return str(summary_error)[:ERROR_MESSAGE_MAX_CHARS]
    return last_nonempty_line(trial.error_text) if trial.error_text else None


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Logged numeric values in one result line (NaN and inf kept: they mean something)."""
    metrics = {}
    for key, value in report.items():
        if not is_curve_key(key):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
        elif value is None:
            metrics[key] = math.nan
    return metrics
