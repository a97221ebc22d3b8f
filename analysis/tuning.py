"""Tuning curves: how fast a search finds good configs, in trials and in compute.

best-so-far after k trials = the best final objective among the first k trials in the order the
searcher proposed them (Optuna's trial number, else the trial id); trials without a finite
value (errored, diverged) count as spent but never improve the curve. The compute axis is the
running sum of each trial's compute seconds, so a search that stops weak trials early reaches
a value sooner on it than on the trial axis.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.tables import final_column


def trial_order(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials in proposal order: by ``optuna_number`` when known, then by trial id."""
    keys = [c for c in ("optuna_number", "trial_id") if c in trials.columns]
    return trials.sort_values(keys, kind="stable", na_position="last", ignore_index=True)


def best_so_far(
    trials: pd.DataFrame, objective: str, mode: str, compute_column: str
) -> pd.DataFrame:
    """One row per trial in proposal order: n_trials, compute_s (cumulative), value, best."""
    ordered = trial_order(trials)
    values = ordered[final_column(objective)].astype(float).to_numpy()
    sign = 1.0 if mode == "max" else -1.0
    scored = np.where(np.isfinite(values), sign * values, -np.inf)
    running = np.maximum.accumulate(scored) if len(scored) else scored
    best = np.where(np.isfinite(running), sign * running, np.nan)
    compute = ordered[compute_column].astype(float).fillna(0.0).to_numpy()
    return pd.DataFrame(
        {
            "trial_id": ordered["trial_id"].astype(str),
            "n_trials": np.arange(1, len(ordered) + 1),
            "compute_s": np.cumsum(compute),
            "value": values,
            "best": best,
        }
    )


def spread_over_runs(curves: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Best-so-far curves of repeats of one study (different sampler seeds) -> per trial count:
    number of runs reaching it, median, min and max of the best value."""
    frames = [c[["n_trials", "best"]].assign(run=i) for i, c in enumerate(curves)]
    if not frames:
        return pd.DataFrame(columns=["n_trials", "runs", "median", "min", "max"])
    stacked = pd.concat(frames, ignore_index=True)
    grouped = stacked.groupby("n_trials")["best"]
    return pd.DataFrame(
        {
            "runs": grouped.count(),
            "median": grouped.median(),
            "min": grouped.min(),
            "max": grouped.max(),
        }
    ).reset_index()


def finished_values_only(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """trials with the final objective blanked (NaN) for every trial that did not finish: a
    trial stopped at step 10 has no final value comparable with one at max_steps, so on a
    tuning curve it spends compute but never improves the best."""
    column = final_column(objective)
    out = trials.copy()
    if column in out.columns:
        out[column] = out[column].astype(float).where(out["status"] == "finished")
    return out


@dataclass(frozen=True)
class ComputeSummary:
    spent_s: float  # sum of every trial's compute seconds
    saved_s: float  # estimate: steps a stopped trial did not run x its own seconds per step
    n_stopped: int


def compute_summary(
    trials: pd.DataFrame, max_steps: int | None, compute_column: str
) -> ComputeSummary:
    """Compute spent by the study and saved by early stopping (an estimate: each stopped
    trial's remaining steps at the speed it ran)."""
    compute = trials[compute_column].astype(float)
    spent = float(compute.fillna(0.0).sum())
    stopped = trials[trials["status"] == "stopped_early"]
    saved = 0.0
    if max_steps:
        steps = stopped["last_step"].astype(float)
        per_step = stopped[compute_column].astype(float) / steps
        remaining = (max_steps - steps).clip(lower=0)
        saved = float((per_step * remaining).replace([np.inf, -np.inf], np.nan).fillna(0).sum())
    return ComputeSummary(spent_s=spent, saved_s=saved, n_stopped=len(stopped))


def study_curve(study_dir: Path) -> tuple[pd.DataFrame, str]:
    """Best-so-far curve of one finished study folder, from its report/trials.parquet and
    study.json (finished trials only); returns (curve, the study's sampler-seed label)."""
    from analysis.load import read_study_info
    from analysis.report import TRIALS_PARQUET, compute_column

    study = read_study_info(study_dir)
    table = study_dir / "report" / TRIALS_PARQUET
    if not table.is_file():
        raise FileNotFoundError(
            f"{table}: no report yet; build it with python -m analysis.report {study_dir}"
        )
    trials = pd.read_parquet(table)
    column, _ = compute_column(trials)
    curve = best_so_far(
        finished_values_only(trials, study.objective), study.objective, study.mode, column
    )
    record = json.loads((study_dir / "study.json").read_text())
    return curve, f"{study_dir} (sampler seed {record.get('sampler_seed', '?')})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.tuning",
        description="Spread of best-so-far tuning curves over repeats of one study (the same "
        "study run with several --sampler-seed values, each in its own --storage folder).",
    )
    parser.add_argument("study_dirs", nargs="+", type=Path, help="study folders to compare")
    parser.add_argument("--out", type=Path, help="also write the spread table as Parquet here")
    args = parser.parse_args(argv)
    curves = []
    for study_dir in args.study_dirs:
        try:
            curve, label = study_curve(study_dir)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{label}: {len(curve)} trials, best {curve['best'].max():.4g}")
        curves.append(curve)
    spread = spread_over_runs(curves)
    print(spread.to_string(index=False))
    if args.out:
        spread.to_parquet(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
