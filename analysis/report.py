"""Write a study's report folder: ``python -m analysis.report STUDY_DIR`` or write_report().

Output, in STUDY_DIR/report/: trials.parquet, curves.parquet (column scheme in the
docstring of analysis/tables.py: ``final/<metric>``, ``best/<metric>``,
``best_step/<metric>``, dotted config keys, status, flags), items.parquet (every evaluated
trial's runs/<trial>/eval/items.parquet stacked: study, trial_id, seed, item_id, item_index,
camera, role, then the item metrics of trainables/gslrm/metrics.py), report.md, and the plots
fg_psnr_vs_mask_iou.png, learning_curves.png, factor_<name>.png, levels_<name>.png
(multi-level factors), pareto_front.png and hypervolume.png (multi-objective Optuna studies),
tuning_curves.png (Optuna studies). trials.parquet also carries ``optuna_number``.

trials.parquet also gets ``validation_picture`` and ``eval_picture`` (each trial's last
validation picture and evaluation picture, relative to the study folder; null where absent),
which report.md's trial tables link to, and the item-level flag ``flag_mask_covers_image``
(nullable boolean: missing for trials without an evaluation) and the trial means
``eval/pred_fg_fraction``, ``eval/gt_fg_fraction``, ``eval/mask_iou`` it rests on (see
analysis/paired.py).

Atomic: everything is built in a temporary folder inside STUDY_DIR first; only when all
files exist are they moved into report/ one by one with os.replace (atomic per file on
one filesystem), report.md last. A crash while building leaves the previous report
untouched; report.md always matches a complete set of files it links to.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import markdown, paired, plots
from analysis.compare import FactorComparison, analysis_set, compare_all
from analysis.importance import parameter_importance
from analysis.interactions import all_interactions
from analysis.levels import all_level_summaries, level_pair_factors
from analysis.load import NotAStudyError, StudyInfo, read_study_info, read_trials
from analysis.markdown import render_report
from analysis.optuna_study import OptunaRecord, read_optuna, with_optuna_numbers
from analysis.pareto import (
    as_maximised,
    hypervolume_by_trial,
    objective_matrix,
    pareto_front,
    reference_point,
)
from analysis.sequential import report_section as sequential_report_section
from analysis.tables import (
    CURVES_DESCRIPTION,
    TRIALS_DESCRIPTION,
    build_curves,
    build_trials,
    write_parquet,
)
from analysis.tuning import best_so_far, compute_summary, finished_values_only, trial_order
from trainables.pictures import run_pictures

REPORT_DIR = "report"
RUNS_DIR = "runs"
REPORT_MD = "report.md"
TRIALS_PARQUET = "trials.parquet"
CURVES_PARQUET = "curves.parquet"
ITEMS_PARQUET = "items.parquet"
FG_PLOT = "fg_psnr_vs_mask_iou.png"
CURVES_PLOT = "learning_curves.png"
FACTOR_PLOT_GLOB = "factor_*.png"
LEVELS_PLOT_GLOB = "levels_*.png"
PARETO_PLOT = "pareto_front.png"
HYPERVOLUME_PLOT = "hypervolume.png"
TUNING_PLOT = "tuning_curves.png"
# Metrics of the multi-level and interaction tables besides the objective.
SECONDARY_METRICS = ("val/psnr_fg", "val/mask_iou")
TEMP_PREFIX = ".report-tmp-"


def factor_plot_name(factor_name: str) -> str:
    return f"factor_{factor_name}.png"


def draw_plots(
    study: StudyInfo,
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    comparisons: Sequence[FactorComparison],
    out_dir: Path,
) -> dict[str, str]:
    """Every plot into out_dir; returns title -> file name, in report order."""
    plots.plot_fg_psnr_vs_mask_iou(trials, out_dir / FG_PLOT)
    plots.plot_learning_curves(curves, trials, study.objective, out_dir / CURVES_PLOT)
    titles = {
        "Final foreground PSNR vs mask IoU": FG_PLOT,
        f"Learning curves ({study.objective})": CURVES_PLOT,
    }
    analysed = analysis_set(trials, study.objective)
    for comparison in comparisons:
        name = factor_plot_name(comparison.factor.name)
        plots.plot_factor(analysed, comparison.factor, study.objective, out_dir / name)
        titles[f"{comparison.factor.title} box plot"] = name
    return titles


def add_item_flags(trials: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """trials plus flag_mask_covers_image and the eval/ means behind it (NA when not evaluated)."""
    flags = paired.mask_cover_flags(items).rename(
        columns={
            "pred_fg_fraction": "eval/pred_fg_fraction",
            "gt_fg_fraction": "eval/gt_fg_fraction",
            "mask_iou": "eval/mask_iou",
        }
    )
    out = trials.drop(columns=[c for c in flags.columns if c != "trial_id"], errors="ignore")
    out = out.merge(flags, on="trial_id", how="left")
    out["flag_mask_covers_image"] = out["flag_mask_covers_image"].astype("boolean")
    for column in ("eval/pred_fg_fraction", "eval/gt_fg_fraction", "eval/mask_iou"):
        out[column] = out[column].astype("float64")
    return out


def add_picture_paths(trials: pd.DataFrame, study_dir: Path) -> pd.DataFrame:
    """trials plus validation_picture and eval_picture: each trial's last validation picture
    and its evaluation picture (trainables.pictures), relative to the study folder; null
    where the run has none."""
    out = trials.copy()
    found = [run_pictures(study_dir / RUNS_DIR / str(t)) for t in out["trial_id"]]
    for column, kind in (("validation_picture", "validation"), ("eval_picture", "evaluation")):
        pictures = [getattr(f, kind) for f in found]
        out[column] = pd.Series(
            [str(p.path.relative_to(study_dir)) if p else None for p in pictures],
            index=out.index,
            dtype="str",
        )
    return out


def compute_column(trials: pd.DataFrame) -> tuple[str, str]:
    """The trials' compute measure and its unit: GPU seconds when any trial ran on a GPU, else
    wall-clock seconds (a CPU trial's compute is its run time)."""
    gpu = trials["gpu_s"].astype(float) if "gpu_s" in trials.columns else pd.Series(dtype=float)
    if (gpu.fillna(0.0) > 0).any():
        return "gpu_s", "GPU-s"
    return "wall_s", "s (CPU wall clock)"


@dataclass
class Extras:
    """Report sections of issue 13 and the plots they link, in report order."""

    after_header: list[str] = field(default_factory=list)
    after_factors: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # title -> file name


def _metrics(objective: str) -> list[str]:
    return list(dict.fromkeys([objective, *SECONDARY_METRICS]))


def pareto_extras(
    study: StudyInfo, trials: pd.DataFrame, record: OptunaRecord, out_dir: Path, extras: Extras
) -> None:
    """Front table and plot of the finished trials, hypervolume over trials (Optuna order)."""
    objectives, modes = list(record.objectives[:2]), list(record.modes[:2])
    finished = trials[trials["status"] == "finished"]
    front = pareto_front(finished, objectives, modes)
    ordered = trial_order(trials)
    # Only finished trials count: a stopped trial's values are not final (NaN adds nothing).
    points = objective_matrix(ordered, objectives)
    points[(ordered["status"] != "finished").to_numpy()] = np.nan
    try:
        reference = reference_point(objectives, modes)
    except ValueError:
        reference = [float("nan"), float("nan")]
    by_trial = (
        hypervolume_by_trial(as_maximised(points, modes), reference)
        if np.isfinite(reference).all()
        else np.array([])
    )
    plots.plot_pareto_front(finished, front, objectives, out_dir / PARETO_PLOT)
    plots.plot_hypervolume(by_trial, out_dir / HYPERVOLUME_PLOT)
    extras.plots["Pareto front"] = PARETO_PLOT
    extras.plots["Hypervolume over trials"] = HYPERVOLUME_PLOT
    keys = markdown.shown_keys(study, trials)
    extras.after_factors.append(
        markdown.pareto_section(
            front,
            objectives,
            modes,
            keys,
            float(by_trial[-1]) if len(by_trial) else float("nan"),
            reference,
            len(finished),
            {"Pareto front": PARETO_PLOT, "Hypervolume over trials": HYPERVOLUME_PLOT},
        )
    )


def build_extras(
    study: StudyInfo, trials: pd.DataFrame, record: OptunaRecord | None, out_dir: Path
) -> Extras:
    """Compute line, multi-level factors, interactions, Pareto front and tuning curves."""
    extras = Extras()
    # --until-decided studies: the stopping rule and the looks (analysis/sequential.py)
    looks = sequential_report_section(paired.read_study_record(study.path))
    if looks:
        extras.after_header.append(looks)
    column, unit = compute_column(trials)
    extras.after_header.append(
        markdown.compute_line(compute_summary(trials, study.max_steps, column), unit)
    )
    metrics = _metrics(study.objective)
    summaries = all_level_summaries(trials, metrics, study.objective)
    level_plots = {}
    for summary in summaries:
        name = f"levels_{summary.factor.name}.png"
        plots.plot_levels(summary, study.objective, out_dir / name)
        level_plots[summary.factor.name] = name
        extras.plots[f"{summary.factor.title} per level"] = name
    if summaries:
        extras.after_factors.append(markdown.levels_section(summaries, level_plots))
    found = all_interactions(trials, study.objective, metrics)
    if found:
        extras.after_factors.append(markdown.interactions_section(found))
    if record is not None and record.multi_objective:
        pareto_extras(study, trials, record, out_dir, extras)
    if record is not None and len(trials):
        counted = finished_values_only(trials, study.objective)
        curve = best_so_far(counted, study.objective, study.mode, column)
        plots.plot_tuning_curves(curve, study.objective, unit, out_dir / TUNING_PLOT)
        extras.plots["Tuning curves"] = TUNING_PLOT
        extras.after_factors.append(
            markdown.tuning_section(curve, study.objective, study.mode, unit, TUNING_PLOT)
        )
    return extras


def build_report(
    study: StudyInfo, out_dir: Path, margins: dict[str, float] | None = None
) -> list[str]:
    """Every report file into out_dir (an empty folder); returns their names, report.md last."""
    trial_files = read_trials(study.path)
    record = read_optuna(study)
    trials = with_optuna_numbers(build_trials(study, trial_files), record)
    curves = build_curves(study, trial_files)
    items, protocols = paired.gather_items(study.path, trials, study.name)
    trials = add_picture_paths(add_item_flags(trials, items), study.path)
    write_parquet(trials, out_dir / TRIALS_PARQUET, TRIALS_DESCRIPTION)
    write_parquet(curves, out_dir / CURVES_PARQUET, CURVES_DESCRIPTION)
    items.to_parquet(out_dir / ITEMS_PARQUET, index=False)
    study_record = paired.read_study_record(study.path)
    _, study_margins = paired.study_question(study_record)
    seed_margins = {**study_margins, **(margins or {})}
    comparisons = compare_all(trials, study.objective, study.mode, seed_margins)
    evaluation = paired.evaluate_study(
        items,
        protocols,
        analysis_set(trials, study.objective),
        [
            *(c.factor for c in comparisons),
            *level_pair_factors(analysis_set(trials, study.objective)),
        ],
        margins,
        study_record,
    )
    if evaluation.refusal:
        print(f"[report] item-level comparison refused: {evaluation.refusal}", file=sys.stderr)
    plot_files = draw_plots(study, trials, curves, comparisons, out_dir)
    factor_plots = {c.factor.name: factor_plot_name(c.factor.name) for c in comparisons}
    extras = build_extras(study, trials, record, out_dir)
    plot_files.update(extras.plots)
    text = render_report(
        study,
        trials,
        comparisons,
        parameter_importance(study),
        plot_files,
        factor_plots,
        evaluation,
        after_header=extras.after_header,
        after_factors=extras.after_factors,
    )
    (out_dir / REPORT_MD).write_text(text, encoding="utf-8")
    return [TRIALS_PARQUET, CURVES_PARQUET, ITEMS_PARQUET, *plot_files.values(), REPORT_MD]


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def publish(built: Path, names: Sequence[str], report_dir: Path) -> None:
    """Move built files into report_dir, report.md last, then drop plots it no longer links."""
    report_dir.mkdir(exist_ok=True)
    for name in names:
        _fsync(built / name)
    for name in names:
        os.replace(built / name, report_dir / name)
    # Only after report.md points at the new set: an old factor plot is then unlinked.
    for pattern in (FACTOR_PLOT_GLOB, LEVELS_PLOT_GLOB):
        for stale in report_dir.glob(pattern):
            if stale.name not in names:
                stale.unlink(missing_ok=True)


def write_report(study_dir: Path | str, margins: dict[str, float] | None = None) -> Path:
    """Build the report of a study folder atomically; returns the path of report.md.

    margins: equivalence margins per item metric, over study.json's `margins`, over
    analysis.verdicts.DEFAULT_MARGINS.
    Raises NotAStudyError (naming the folder) when study_dir is not a study folder.
    """
    study = read_study_info(Path(study_dir))
    built = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=study.path))
    try:
        names = build_report(study, built, margins)
        publish(built, names, study.path / REPORT_DIR)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return study.path / REPORT_DIR / REPORT_MD


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write STUDY_DIR/report/ (Parquet tables, report.md, plots) from a study folder.",
    )
    parser.add_argument(
        "study_dir",
        type=Path,
        help="study folder holding study.json, its tune-<id>/ folder and runs/",
    )
    parser.add_argument(
        "--margin",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="equivalence margin of an item metric, e.g. psnr_fg=0.3 (over study.json's "
        "`margins`; defaults: "
        + ", ".join(f"{k} {v}" for k, v in paired.DEFAULT_MARGINS.items())
        + ")",
    )
    args = parser.parse_args(argv)
    margins = {}
    for text in args.margin:
        name, _, value = text.partition("=")
        try:
            margins[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--margin {text!r}: expected METRIC=NUMBER, e.g. psnr_fg=0.3")
    try:
        paired.MarginSettings(margins).margins()
    except ValueError as error:
        parser.error(f"--margin: {error}")
    try:
        path = write_report(args.study_dir, margins)
    except (NotAStudyError, paired.ProtocolMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
