"""Tuning curves: how fast a search finds good configs, in trials and in compute.

best-so-far after k trials = the best final objective among the first k trials in the order the
searcher proposed them (Optuna's trial number, else the trial id); trials without a finite
value (errored, diverged) count as spent but never improve the curve. The compute axis is the
running sum of each trial's compute seconds, so a search that stops weak trials early reaches
a value sooner on it than on the trial axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
