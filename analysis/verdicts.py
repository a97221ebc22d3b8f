"""One verdict engine for "treatment vs baseline": seeds are the unit, intervals valid at 2-10 seeds.

    from analysis.verdicts import paired_verdict
    v = paired_verdict(differences, "psnr_fg", margin=0.5)
    v.verdict, v.estimate, (v.ci_low, v.ci_high), v.p_value, v.seeds_won, v.n_seeds

`differences` is a tidy frame of treatment − baseline: columns `seed`, `item_id`, the value
column, optionally a block column (a video / session id, or consecutive frames in blocks), one
row per item view (and per pair group: several pairs of one seed, e.g. the other factors'
levels, are rows of the same seed). It can come from anywhere: the report's item tables, a
notebook, another tool's per-image scores.

Method. Each seed's differences are averaged first (views and pair groups within an item, then
items with equal weight): one number per seed. The interval is Student's t over those per-seed
means, df = seeds − 1 (`scipy.stats.ttest_1samp`), and the p value its two-sided t test of 0.
Why this and not a bootstrap or a mixed model:
- A training seed is one draw of the whole pipeline; items and views measured on one trained
  model are not replicates of the config. The per-seed mean is an exact sufficient summary for
  the seed effect, and the t interval over it is exact under normal per-seed means whatever
  the item design: crossed items (the same test set under every seed), nested items (each seed
  its own poses), items correlated in blocks (consecutive video frames), any number of views
  and pair groups. All of that only changes the variance of a per-seed mean, which the t
  interval estimates from the seeds themselves.
- The estimand is the effect on this test set (what every evaluation here, and the reference
  fork's, scores). With nested items it is the effect on new poses as well.
- The hierarchical bootstrap this replaces covered 0.76-0.89 at 2-3 seeds (issue 22: a
  percentile bootstrap over 3 top-level clusters has 10 distinct seed draws) and is random; a
  mixed model would need Kenward-Roger / Satterthwaite degrees of freedom to be valid at 2-5
  seeds and gains nothing for the test-set estimand, where the item effects are fixed.
Checked by simulation (tests/test_verdict_calibration.py; `python benchmarks/verdicts.py
--calibration` prints the table): d = effect + seed + item (crossed or nested, optionally in
correlated blocks) + view noise, 2 / 3 / 5 / 10 seeds, seed sd / item sd 0/1, 0.5/1 and 1/1 dB,
4,000 studies per cell (Monte Carlo se 0.0034 near 0.05 or 0.95): coverage of the 95% interval
0.944-0.956 in every one of the 36 cells; on a zero effect, false "better" and false "worse"
0.000-0.028 each (0.000 where the seed spread is 0: the interval is then so tight that TOST
says equivalent); "equivalent" at a true effect on the margin 0.008-0.057 (nominal <= 0.05).
A per-seed t test has no item-correlation assumption to break, so blocks change nothing.

Verdicts (higher is better; d = treatment − baseline; margin m > 0; alpha 0.05):
  too few seeds  fewer than MIN_SEEDS seeds: an estimate, no interval, no verdict
  equivalent     TOST (Schuirmann 1987): both one-sided t tests against −m and +m reject at
                 alpha, i.e. the 90% interval lies inside (−m, m)
  better/worse   otherwise, when the (Holm-adjusted, see `holm_adjusted`) p < alpha: sign of d
  inconclusive   everything else
Equivalence is checked first: a real difference smaller than the margin is, for a researcher,
no reason to change a config. seeds_won is the number of seeds whose mean difference is > 0
(k of n): a count, not a probability.

Margins (DEFAULT_MARGINS) are the smallest difference a researcher would act on. 0.5 dB for the
PSNRs: below it no one switches a training config in novel-view synthesis (papers report
gains of 0.3-1 dB as improvements, and the reference fork acted on a 0.55 dB loss from the
silhouette-loss weight); 0.2 dB, the old default, needs 55-214 seeds for an equivalence
verdict at our seed spreads. 0.01 for IoU, foreground SSIM and coverage: the fork's silhouette
weights moved IoU by < 0.007 and it called them alike, while each added input view moved it by
>= 0.016. A study may set its own in study.json (`margins`), before it runs.

Undefined values (a metric that is NaN, see trainables/gslrm/metrics.py). An empty prediction
makes `psnr_int` NaN (no shared pixels): that is the failure under study, so dropping it would
hide exactly the collapsed seeds. Rule (`score_undefined`, applied to the arms before they are
differenced): an (item, view) undefined in some trials but not all is scored at the metric's
worst case FLOORS (0 dB PSNR: the MSE of [0, 1] images is at most 1; SSIM −1; IoU and coverage
0) in the trials where it is undefined, and counted per arm; an (item, view) undefined in every
trial of the study (an empty ground-truth mask: nothing to score) is left out and counted. The
report passes the whole study's trials, so a pair whose two arms both collapsed is two failures
(floor - floor), not a left-out item (mask_loss_ablation at the cpu size: 720 of 2,304
item-views were both-arm collapses).
paired_verdict refuses NaN differences rather than drop them.

Seeds needed (`seeds_for_detection`, `seeds_for_equivalence`): the smallest n with 80% power
for the two-sided paired t test to detect a true difference of the margin, or for TOST to say
equivalent at a true difference of 0, from the noncentral t (scipy.stats.nct) with the spread
of the per-seed means; about 7.85 sd^2 / m^2 + 2 and 8.6 sd^2 / m^2 + 2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
POWER = 0.8
MIN_SEEDS = 2
MAX_SEEDS = 10_000  # the power search stops here (a margin far below the seed spread)
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "too few seeds")
DEFAULT_MARGINS: dict[str, float] = {
    "psnr": 0.5,
    "psnr_fg": 0.5,
    "psnr_int": 0.5,
    "psnr_union": 0.5,
    "psnr_bal": 0.5,
    "mask_iou": 0.01,
    "ssim_fg": 0.01,
    "coverage": 0.01,
}
# The worst value a render can score: what an undefined value (a failed prediction) counts as.
FLOORS: dict[str, float] = {
    "psnr": 0.0,
    "psnr_fg": 0.0,
    "psnr_int": 0.0,
    "psnr_union": 0.0,
    "psnr_bal": 0.0,
    "ssim_fg": -1.0,
    "mask_iou": 0.0,
    "coverage": 0.0,
}
UNDEFINED_TREATMENT = "undefined_treatment"
UNDEFINED_BASELINE = "undefined_baseline"


@dataclass(frozen=True)
class Verdict:
    """Treatment − baseline over seeds. Interval and p values are NaN below MIN_SEEDS seeds."""

    estimate: float  # mean over seeds of each seed's mean difference
    ci_low: float  # (1 − alpha) Student t interval, df = n_seeds − 1
    ci_high: float
    p_value: float  # two-sided t test of a zero difference
    verdict: str  # one of VERDICTS
    n_seeds: int
    n_items: int
    seeds_won: int  # seeds whose mean difference is > 0
    seeds_needed: int  # for 80% power to detect a difference of the margin (MIN_SEEDS if unknown)
    margin: float
    alpha: float = ALPHA
    p_equivalence: float = math.nan  # TOST: the larger of the two one-sided p values
    eq_low: float = math.nan  # (1 − 2 alpha) interval that TOST puts inside ±margin
    eq_high: float = math.nan
    seeds_needed_equivalence: int = MIN_SEEDS  # 80% TOST power at a true difference of 0
    sd_seeds: float = math.nan  # sample sd of the per-seed means
    n_rows: int = 0
    n_blocks: int = 0  # distinct blocks when a block column was given, else 0
    undefined_treatment: int = 0  # item views scored at the floor in the treatment arm
    undefined_baseline: int = 0
    p_adjusted: float = math.nan  # Holm-adjusted p when part of a family, else NaN

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    @property
    def p_decision(self) -> float:
        """The p value the better / worse verdict uses: Holm's when adjusted, else the raw one."""
        return self.p_adjusted if math.isfinite(self.p_adjusted) else self.p_value


# ---------------------------------------------------------------------------------------
# per-seed means


def seed_means(
    differences: pd.DataFrame, value: str, item: str = "item_id", seed: str = "seed"
) -> pd.Series:
    """One mean difference per seed: views and pair groups averaged within an item first, then
    items with equal weight (so an item with more views or pairs does not count more)."""
    per_item = differences.groupby([seed, item], sort=True, observed=True)[value].mean()
    return per_item.groupby(level=0, sort=True).mean()


# ---------------------------------------------------------------------------------------
# tests on per-seed means (vectorised over leading axes: the calibration simulates thousands)


@dataclass(frozen=True)
class SeedTests:
    """Arrays over the leading axes of the per-seed means [..., n]."""

    estimate: np.ndarray
    sd: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    p_equivalence: np.ndarray
    eq_low: np.ndarray
    eq_high: np.ndarray


def seed_tests(means: np.ndarray, margin: float, alpha: float = ALPHA) -> SeedTests:
    """t interval, t test of 0 and TOST against ±margin over the last axis (n >= 2 seeds).

    Zero spread (every seed the same difference, e.g. exactly additive constructed data) is
    decided by the sign of the estimate: the interval is that point, p is 0 unless it is 0.
    """
    x = np.asarray(means, dtype=float)
    n = x.shape[-1]
    estimate = x.mean(axis=-1)
    sd = x.std(axis=-1, ddof=1)
    se = sd / math.sqrt(n)
    # zero spread is handled below; scipy's warning about it would only be noise
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        two_sided = stats.ttest_1samp(x, 0.0, axis=-1)
        lower = stats.ttest_1samp(x, -margin, axis=-1, alternative="greater").pvalue
        upper = stats.ttest_1samp(x, margin, axis=-1, alternative="less").pvalue
    half = stats.t.ppf(1 - alpha / 2, n - 1) * se
    half_eq = stats.t.ppf(1 - alpha, n - 1) * se
    flat = sd == 0
    p = np.where(flat, np.where(estimate == 0, 1.0, 0.0), two_sided.pvalue)
    inside = (estimate > -margin) & (estimate < margin)
    p_eq = np.where(flat, np.where(inside, 0.0, 1.0), np.maximum(lower, upper))
    return SeedTests(
        estimate=estimate,
        sd=sd,
        ci_low=estimate - half,
        ci_high=estimate + half,
        p_value=p,
        p_equivalence=p_eq,
        eq_low=estimate - half_eq,
        eq_high=estimate + half_eq,
    )


def decide(
    estimate: np.ndarray | float,
    p_value: np.ndarray | float,
    p_equivalence: np.ndarray | float,
    alpha: float = ALPHA,
) -> np.ndarray:
    """better | worse | equivalent | inconclusive (see the module docstring), elementwise."""
    est, p, p_eq = (np.asarray(a, dtype=float) for a in (estimate, p_value, p_equivalence))
    significant = p < alpha
    out = np.where(significant & (est > 0), "better", "inconclusive")
    out = np.where(significant & (est < 0), "worse", out)
    return np.where(p_eq < alpha, "equivalent", out)


# ---------------------------------------------------------------------------------------
# seeds needed


def detection_power(n: int, sd: float, delta: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample t test over n seeds at a true difference delta."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) * math.sqrt(n) / sd
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    # scipy's nct gives NaN far in the tail (large df and nc), where the normal is exact enough
    return power if math.isfinite(power) else _normal_power(nc, crit)


def equivalence_power(n: int, sd: float, margin: float, alpha: float = ALPHA) -> float:
    """Power of TOST over n seeds at a true difference of 0 (each one-sided test misses with
    probability nct.cdf(crit); the two misses are nearly exclusive, so 1 − 2 x that)."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha, df)
    nc = margin * math.sqrt(n) / sd
    miss = float(stats.nct.cdf(crit, df, nc))
    if not math.isfinite(miss):
        miss = float(stats.norm.cdf(crit - nc))
    return max(0.0, 1.0 - 2.0 * miss)


def _normal_power(nc: float, crit: float) -> float:
    return float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))


def _smallest_n(power_at: Callable[[int], float], target: float) -> int:
    """Smallest n in [MIN_SEEDS, MAX_SEEDS] with power_at(n) >= target (power rises with n)."""
    if power_at(MAX_SEEDS) < target:
        return MAX_SEEDS
    low, high = MIN_SEEDS, MAX_SEEDS
    while low < high:
        middle = (low + high) // 2
        if power_at(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return low


def seeds_for_detection(sd: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Seeds for `power` to detect a true difference delta with the two-sided t test; sd is
    the sd of per-seed mean differences. MIN_SEEDS when sd is 0, MAX_SEEDS when out of reach."""
    if not (math.isfinite(sd) and math.isfinite(delta)) or delta == 0:
        return MAX_SEEDS if delta == 0 else MIN_SEEDS
    if sd == 0:
        return MIN_SEEDS
    return _smallest_n(lambda n: detection_power(n, sd, delta, alpha), power)


def seeds_for_equivalence(
    sd: float, margin: float, alpha: float = ALPHA, power: float = POWER
) -> int:
    """Seeds for `power` of TOST within ±margin at a true difference of 0."""
    if not math.isfinite(sd) or sd == 0:
        return MIN_SEEDS
    return _smallest_n(lambda n: equivalence_power(n, sd, margin, alpha), power)


# Planning uses the one-sided 80% upper confidence limit of the seed spread (Browne 1995: a
# pilot's sd taken at face value gives the planned power only about half the time; its 80%
# upper limit gives at least the planned power with about 80% probability). Three seeds pin
# the sd only within a factor of ~6, so the point estimate alone would plan far too few.
PLAN_CONFIDENCE = 0.8


def sd_upper(sd: float, n_seeds: int, confidence: float = PLAN_CONFIDENCE) -> float:
    """One-sided upper confidence limit of a normal sd estimated from n_seeds values:
    sd sqrt((n − 1) / chi2_(1 − confidence, n − 1)); NaN below MIN_SEEDS."""
    if n_seeds < MIN_SEEDS or not math.isfinite(sd):
        return math.nan
    df = n_seeds - 1
    return sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df))


@dataclass(frozen=True)
class Plan:
    """Seeds for 80% power at the point estimate of the seed spread and at its upper limit."""

    margin: float
    n_seeds: int  # seeds the spread was estimated from
    sd: float
    sd_upper: float
    detect: int  # seeds to detect a difference of the margin (two-sided t test)
    detect_upper: int
    equivalent: int  # seeds for TOST within ±margin at a true difference of 0
    equivalent_upper: int


def plan(sd: float, n_seeds: int, margin: float, alpha: float = ALPHA) -> Plan:
    """Seeds a margin needs, from the sd of n_seeds per-seed mean differences."""
    upper = sd_upper(sd, n_seeds)
    return Plan(
        margin=margin,
        n_seeds=n_seeds,
        sd=sd,
        sd_upper=upper,
        detect=seeds_for_detection(sd, margin, alpha),
        detect_upper=seeds_for_detection(upper, margin, alpha),
        equivalent=seeds_for_equivalence(sd, margin, alpha),
        equivalent_upper=seeds_for_equivalence(upper, margin, alpha),
    )


# ---------------------------------------------------------------------------------------
# undefined values


def score_undefined(
    rows: pd.DataFrame, metrics: Sequence[str], keys: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Apply the undefined-value rule of the module docstring to arm rows before differencing.

    rows: one row per trial x item view; keys: the columns naming one compared (item, view)
    within a pair group (e.g. group, item_id, camera, role). Returns the rows with NaN scored at
    FLOORS where some trial of the same keys has the value (left NaN where none has), and per
    metric a boolean Series over rows marking the values that were scored at the floor.
    """
    out = rows.copy()
    scored: dict[str, pd.Series] = {}
    for metric in metrics:
        missing = out[metric].isna()
        if not missing.any():
            scored[metric] = missing
            continue
        defined_somewhere = out[metric].notna().groupby([out[k] for k in keys]).transform("any")
        fail = missing & defined_somewhere.astype(bool)
        out.loc[fail, metric] = FLOORS.get(metric, math.nan)
        scored[metric] = fail
    return out, scored


# ---------------------------------------------------------------------------------------
# the engine


def paired_verdict(
    differences: pd.DataFrame,
    value: str,
    margin: float,
    alpha: float = ALPHA,
    block: str | None = None,
) -> Verdict:
    """Verdict on treatment − baseline in `differences[value]` (see the module docstring).

    Optional bool columns `undefined_treatment` / `undefined_baseline` (as the report's pair
    builder writes them) are summed into the per-arm counts of floor-scored values. NaN values
    are refused (ValueError): score them with `score_undefined` on the arms, or drop them
    knowingly, first.
    """
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be > 0, got {margin}")
    values = differences[value].to_numpy(dtype=float)
    undefined = int(np.count_nonzero(~np.isfinite(values)))
    if undefined:
        raise ValueError(
            f"{undefined} undefined (NaN) differences in {value!r}: score them as failures "
            "(analysis.verdicts.score_undefined) or leave them out knowingly first"
        )
    means = seed_means(differences, value).to_numpy(dtype=float)
    n = len(means)
    counts = {
        "n_seeds": n,
        "n_items": int(differences["item_id"].nunique()),
        "n_rows": len(differences),
        "n_blocks": int(differences[block].nunique()) if block else 0,
        "undefined_treatment": _count(differences, UNDEFINED_TREATMENT),
        "undefined_baseline": _count(differences, UNDEFINED_BASELINE),
        "seeds_won": int(np.count_nonzero(means > 0)),
        "margin": float(margin),
        "alpha": alpha,
    }
    nan = math.nan
    if n < MIN_SEEDS:
        estimate = float(means.mean()) if n else nan
        return Verdict(estimate, nan, nan, nan, "too few seeds", seeds_needed=MIN_SEEDS, **counts)
    t = seed_tests(means, margin, alpha)
    sd = float(t.sd)
    return Verdict(
        estimate=float(t.estimate),
        ci_low=float(t.ci_low),
        ci_high=float(t.ci_high),
        p_value=float(t.p_value),
        verdict=str(decide(t.estimate, t.p_value, t.p_equivalence, alpha)),
        seeds_needed=seeds_for_detection(sd, margin, alpha),
        p_equivalence=float(t.p_equivalence),
        eq_low=float(t.eq_low),
        eq_high=float(t.eq_high),
        seeds_needed_equivalence=seeds_for_equivalence(sd, margin, alpha),
        sd_seeds=sd,
        **counts,
    )


def _count(frame: pd.DataFrame, column: str) -> int:
    return int(frame[column].sum()) if column in frame.columns else 0


# ---------------------------------------------------------------------------------------
# families


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p values, in input order; NaN stays NaN and is not counted.

    e.g. holm([0.01, 0.04, 0.03]) = [0.03, 0.06, 0.06].
    """
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def holm_adjusted(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The confirmatory family: Holm across `verdicts` (one per factor), verdicts re-decided on
    the adjusted p. TOST stays at its own level: an equivalence claim per factor is not made
    more likely by testing more factors' differences."""
    adjusted = holm([v.p_value for v in verdicts])
    out = []
    for v, p in zip(verdicts, adjusted, strict=True):
        if v.verdict == "too few seeds":
            out.append(v)
            continue
        word = str(decide(v.estimate, p, v.p_equivalence, v.alpha))
        out.append(replace(v, p_adjusted=p, verdict=word))
    return out


def margins_from(record: Mapping[str, object] | None, defaults: Mapping[str, float]) -> dict:
    """Margins of a study: its study.json `margins` entry over the defaults; entries that are
    not a positive number for a known metric are ignored (the record is read defensively)."""
    out = dict(defaults)
    given = record.get("margins") if isinstance(record, Mapping) else None
    if not isinstance(given, Mapping):
        return out
    for name, value in given.items():
        key = str(name).removeprefix("val/").removeprefix("test/")
        if key in out and isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(float(value)) and value > 0:
                out[key] = float(value)
    return out
