"""Write a study's report folder: ``python -m analysis.report STUDY_DIR`` or write_report().

Output, in STUDY_DIR/report/: trials.parquet, curves.parquet (column scheme in the
docstring of analysis/tables.py: ``final/<metric>``, ``best/<metric>``,
``best_step/<metric>``, dotted config keys, status, flags), items.parquet (every evaluated
trial's runs/<trial>/eval/items.parquet stacked: study, trial_id, seed, item_id, item_index,
camera, role, then the item metrics of trainables/gslrm/metrics.py), report.md, and the plots
fg_psnr_vs_mask_iou.png, learning_curves.png, factor_<name>.png.

trials.parquet also gets the item-level flag ``flag_mask_covers_image`` (nullable boolean:
missing for trials without an evaluation) and the trial means ``eval/pred_fg_fraction``,
``eval/gt_fg_fraction``, ``eval/mask_iou`` it rests on (see analysis/paired.py).

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
from pathlib import Path

import pandas as pd

from analysis import paired, plots
from analysis.compare import FactorComparison, analysis_set, compare_all
from analysis.importance import parameter_importance
from analysis.load import NotAStudyError, StudyInfo, read_study_info, read_trials
from analysis.markdown import render_report
from analysis.tables import (
    CURVES_DESCRIPTION,
    TRIALS_DESCRIPTION,
    build_curves,
    build_trials,
    write_parquet,
)

REPORT_DIR = "report"
REPORT_MD = "report.md"
TRIALS_PARQUET = "trials.parquet"
CURVES_PARQUET = "curves.parquet"
ITEMS_PARQUET = "items.parquet"
FG_PLOT = "fg_psnr_vs_mask_iou.png"
CURVES_PLOT = "learning_curves.png"
FACTOR_PLOT_GLOB = "factor_*.png"
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


def build_report(
    study: StudyInfo, out_dir: Path, margins: dict[str, float] | None = None
) -> list[str]:
    """Every report file into out_dir (an empty folder); returns their names, report.md last."""
    trial_files = read_trials(study.path)
    trials = build_trials(study, trial_files)
    curves = build_curves(study, trial_files)
    items, protocols = paired.gather_items(study.path, trials, study.name)
    trials = add_item_flags(trials, items)
    write_parquet(trials, out_dir / TRIALS_PARQUET, TRIALS_DESCRIPTION)
    write_parquet(curves, out_dir / CURVES_PARQUET, CURVES_DESCRIPTION)
    items.to_parquet(out_dir / ITEMS_PARQUET, index=False)
    comparisons = compare_all(trials, study.objective, study.mode)
    evaluation = paired.evaluate_study(
        items,
        protocols,
        analysis_set(trials, study.objective),
        [c.factor for c in comparisons],
        margins,
    )
    if evaluation.refusal:
        print(f"[report] item-level comparison refused: {evaluation.refusal}", file=sys.stderr)
    plot_files = draw_plots(study, trials, curves, comparisons, out_dir)
    factor_plots = {c.factor.name: factor_plot_name(c.factor.name) for c in comparisons}
    text = render_report(
        study,
        trials,
        comparisons,
        parameter_importance(study),
        plot_files,
        factor_plots,
        evaluation,
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
    for stale in report_dir.glob(FACTOR_PLOT_GLOB):
        if stale.name not in names:
            stale.unlink(missing_ok=True)


def write_report(study_dir: Path | str, margins: dict[str, float] | None = None) -> Path:
    """Build the report of a study folder atomically; returns the path of report.md.

    margins: equivalence margins per item metric (analysis.paired.DEFAULT_MARGINS otherwise).
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
        help="equivalence margin of an item metric, e.g. psnr_fg=0.3 (defaults: "
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
