"""Per-level summaries of multi-level factors (analysis.factors.LevelFactor): for each level of
e.g. the input-view count, the mean of a final metric over its trials with a 95% t interval.

A factor is summarised only when the analysed trials hold at least two of its levels; a grid
study that fixes the key (every trial at 5 input views) gets no table.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.compare import analysis_set
from analysis.factors import LEVEL_FACTORS, Factor, LevelFactor, level_pair_factor
from analysis.stats import Estimate, mean_ci
from analysis.tables import final_column


@dataclass(frozen=True)
class LevelSummary:
    factor: LevelFactor
    levels: tuple[float, ...]  # ascending
    metrics: tuple[str, ...]
    estimates: dict[tuple[float, str], Estimate]  # (level, metric) -> mean over its trials


def trial_levels(trials: pd.DataFrame, factor: LevelFactor) -> pd.Series:
    """Each trial's level (float; NaN when the trial lacks the key or it is not a number)."""
    if factor.key not in trials.columns:
        return pd.Series(np.nan, index=trials.index, dtype=float)
    return trials[factor.key].map(factor.level).astype(float)


def summarise_levels(
    trials: pd.DataFrame, factor: LevelFactor, metrics: Sequence[str], objective: str
) -> LevelSummary | None:
    """Mean and interval of each metric's final value per level, over the analysis set."""
    analysed = analysis_set(trials, objective)
    levels = trial_levels(analysed, factor)
    distinct = tuple(sorted(set(levels.dropna())))
    if len(distinct) < 2:
        return None
    shown = tuple(m for m in metrics if final_column(m) in analysed.columns)
    estimates = {
        (level, metric): mean_ci(
            analysed.loc[levels == level, final_column(metric)].astype(float).to_numpy()
        )
        for level in distinct
        for metric in shown
    }
    return LevelSummary(factor, distinct, shown, estimates)


def all_level_summaries(
    trials: pd.DataFrame, metrics: Sequence[str], objective: str
) -> list[LevelSummary]:
    found = (summarise_levels(trials, f, metrics, objective) for f in LEVEL_FACTORS)
    return [summary for summary in found if summary is not None]


def level_pair_factors(analysed: pd.DataFrame) -> list[Factor]:
    """Adjacent levels of every multi-level factor among the analysed trials as two-level
    factors (1 vs 2, 2 vs 3, ... input views): each asks whether one more step helps, the
    question the reference fork's view-count table answers, and each is one confirmatory
    question of the item-level Holm family."""
    out = []
    for factor in LEVEL_FACTORS:
        distinct = sorted(set(trial_levels(analysed, factor).dropna()))
        out += [level_pair_factor(factor, a, b) for a, b in itertools.pairwise(distinct)]
    return out
