"""Small-sample statistics for comparing configs over seeds: mean, t CI, paired and Welch.

With 2-5 seeds per config the normal approximation is far too narrow, so every interval
here uses Student's t quantile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean (or mean difference) with its two-sided CI; NaN bounds when n is too small."""

    n: int
    mean: float
    std: float  # sample std of the values; for "welch", the standard error of the difference
    ci_low: float
    ci_high: float
    kind: str = "mean"  # "mean", "paired" or "welch"
    n_other: int = 0  # Welch only: size of the second group (n is the first)

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student t critical value, e.g. t_quantile(2) = 4.302653."""
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def mean_ci(values: Sequence[float], kind: str = "mean") -> Estimate:
    """Mean, sample std (ddof=1) and t CI of the mean of the finite values."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan, math.nan, kind)
    mean = float(x.mean())
    if n < 2:
        return Estimate(1, mean, math.nan, math.nan, math.nan, kind)
    std = float(x.std(ddof=1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Estimate(n, mean, std, mean - half, mean + half, kind)


def paired_difference(differences: Sequence[float]) -> Estimate:
    """CI of the mean of per-pair differences (treatment - baseline for the same seed)."""
    return mean_ci(differences, kind="paired")


def welch_difference(baseline: Sequence[float], treatment: Sequence[float]) -> Estimate:
    """Welch's unpaired CI of mean(treatment) - mean(baseline); needs >= 2 values in each."""
    a, b = _finite(baseline), _finite(treatment)
    if len(a) < 2 or len(b) < 2:
        diff = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
        return Estimate(len(a), diff, math.nan, math.nan, math.nan, "welch", len(b))
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(b.mean() - a.mean())
    se = math.sqrt(var_a + var_b)
    if se == 0:
        # Identical values in both groups: no spread, the difference is exact.
        return Estimate(len(a), diff, 0.0, diff, diff, "welch", len(b))
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = t_quantile(dof) * se
    return Estimate(len(a), diff, se, diff - half, diff + half, "welch", len(b))
