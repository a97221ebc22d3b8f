"""Pareto front and hypervolume of a multi-objective study (e.g. foreground PSNR and mask IoU).

Every objective is turned into "higher is better" first (a minimised one is negated), so the
functions below only know maximisation. A trial with a missing objective value is never on
the front and adds no volume.

Hypervolume: the area (for two objectives) dominated by the front and bounded below by a fixed
reference point. The reference is fixed per metric (``REFERENCE``: 0 dB for the PSNRs, IoU 0),
not taken from the data, so hypervolumes of two studies, or of one study after more trials, are
comparable. Units: dB x IoU for the default pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.tables import final_column

# Worst value each objective could sensibly take: the hypervolume's lower-left corner.
REFERENCE: dict[str, float] = {
    "val/psnr_fg": 0.0,
    "val/psnr_union": 0.0,
    "val/psnr_bal": 0.0,
    "val/psnr": 0.0,
    "val/mask_iou": 0.0,
}


def as_maximised(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """values: [N, M] -> [N, M] with each column negated where its mode is "min"."""
    signs = np.array([1.0 if mode == "max" else -1.0 for mode in modes])
    return np.asarray(values, dtype=float) * signs


def non_dominated_mask(points: np.ndarray) -> np.ndarray:
    """points: [N, M], maximised -> [N] bool, True where no other point dominates.

    q dominates p when q >= p in every objective and q > p in at least one. Rows with a NaN
    are never on the front and dominate nothing; equal points are both kept.
    """
    points = np.asarray(points, dtype=float)
    finite = np.isfinite(points).all(axis=1)
    keep = finite.copy()
    for i in np.flatnonzero(finite):
        others = points[finite]
        dominated = np.all(others >= points[i], axis=1) & np.any(others > points[i], axis=1)
        keep[i] = not dominated.any()
    return keep


def hypervolume_2d(points: np.ndarray, reference: Sequence[float]) -> float:
    """points: [N, 2], maximised; reference: [2] -> area dominated by the points above the
    reference (points not strictly above it in both objectives add nothing)."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    ref = np.asarray(reference, dtype=float)
    points = points[np.isfinite(points).all(axis=1) & np.all(points > ref, axis=1)]
    if len(points) == 0:
        return 0.0
    front = points[non_dominated_mask(points)]
    # Sweep along the first objective, highest first: each front point adds a slab.
    front = front[np.argsort(-front[:, 0], kind="stable")]
    area, covered_y = 0.0, ref[1]
    for x, y in front:
        if y > covered_y:
            area += (x - ref[0]) * (y - covered_y)
            covered_y = y
    return float(area)


def hypervolume_by_trial(points: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """points: [N, 2] in trial order, maximised -> [N] hypervolume after the first k trials."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    return np.array([hypervolume_2d(points[: k + 1], reference) for k in range(len(points))])


def objective_matrix(trials: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    """[N, M] final values of the objectives (NaN where a trial has none)."""
    columns = [final_column(metric) for metric in objectives]
    if any(column not in trials.columns for column in columns):
        return np.full((len(trials), len(objectives)), np.nan)
    # copy=True: callers write into it (masking unfinished trials), and under pandas'
    # copy-on-write a frame whose columns sit in one block hands out a read-only view
    return trials[columns].astype(float).to_numpy(copy=True)


def pareto_front(
    trials: pd.DataFrame, objectives: Sequence[str], modes: Sequence[str]
) -> pd.DataFrame:
    """The non-dominated trials, best first objective first (the table the report prints)."""
    points = as_maximised(objective_matrix(trials, objectives), modes)
    front = trials[non_dominated_mask(points)]
    ascending = modes[0] == "min"
    return front.sort_values(final_column(objectives[0]), ascending=ascending, kind="stable")


def reference_point(objectives: Sequence[str], modes: Sequence[str]) -> list[float]:
    """The fixed reference in maximised coordinates; an objective without one is refused."""
    missing = [metric for metric in objectives if metric not in REFERENCE]
    if missing:
        raise ValueError(
            f"no hypervolume reference value for {', '.join(missing)}; add one to "
            "analysis.pareto.REFERENCE"
        )
    return list(as_maximised(np.array([[REFERENCE[m] for m in objectives]]), modes)[0])
