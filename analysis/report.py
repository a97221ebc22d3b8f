"""Write a study's report folder: ``python -m analysis.report STUDY_DIR`` or write_report().

Output, in STUDY_DIR/report/: trials.parquet, curves.parquet (column scheme in the
docstring of analysis/tables.py: ``final/<metric>``, ``best/<metric>``,
``best_step/<metric>``, dotted config keys, status, flags), report.md, and the plots
fg_psnr_vs_mask_iou.png, learning_curves.png, factor_<name>.png.

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

from analysis import plots
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


def build_report(study: StudyInfo, out_dir: Path) -> list[str]:
    """Every report file into out_dir (an empty folder); returns their names, report.md last."""
    trial_files = read_trials(study.path)
    trials = build_trials(study, trial_files)
    curves = build_curves(study, trial_files)
    write_parquet(trials, out_dir / TRIALS_PARQUET, TRIALS_DESCRIPTION)
    write_parquet(curves, out_dir / CURVES_PARQUET, CURVES_DESCRIPTION)
    comparisons = compare_all(trials, study.objective, study.mode)
    plot_files = draw_plots(study, trials, curves, comparisons, out_dir)
    factor_plots = {c.factor.name: factor_plot_name(c.factor.name) for c in comparisons}
    text = render_report(
        study, trials, comparisons, parameter_importance(study), plot_files, factor_plots
    )
    (out_dir / REPORT_MD).write_text(text, encoding="utf-8")
    return [TRIALS_PARQUET, CURVES_PARQUET, *plot_files.values(), REPORT_MD]


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


def write_report(study_dir: Path | str) -> Path:
    """Build the report of a study folder atomically; returns the path of report.md.

    Raises NotAStudyError (naming the folder) when study_dir is not a study folder.
    """
    study = read_study_info(Path(study_dir))
    built = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=study.path))
    try:
        names = build_report(study, built)
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
        help="study folder holding study.json and the Tune folder it records (tune-<id>/)",
    )
    args = parser.parse_args(argv)
    try:
        path = write_report(args.study_dir)
    except NotAStudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
