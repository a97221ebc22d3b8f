"""Compare the two levels of each factor over the trials table: per-level CIs, paired and
Welch differences, and one plain sentence about the study objective.

Which trials count: those that ran to the end (finished) with a finite final objective value
and did not diverge. Trials stopped early (ASHA) are left out: their "final" value is from an
earlier step than the others', and a mean over both would compare steps, not settings (the
report says how many were left out; they still count in its status line, flags and curves).

Pairing: two trials form a pair when every config key except the factor's own keys is
equal (the seed included). Keys that are constant among the analysed trials are skipped
(they cannot break a pair, and a trial stopped before writing its summary only knows its
searched keys); a missing value in a varying key only matches another missing value.
Several trials of one level in the same group (e.g. background weights 0.1 and 0.5) are
averaged, so each group gives one difference.

Seeds are the unit (analysis/verdicts.py): the pair groups of one seed (the other factors'
levels, in a crossed grid) are averaged into one difference per seed before the t interval,
so 3 seeds give df 2 however many pairs each holds; counting the pairs as independent (df 5
from 3 seeds) covered 0.83 when the pairs of a seed correlate at 0.8 (issue 22). Groups whose
trials carry no seed are each their own unit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.factors import FACTORS, Factor, Level
from analysis.metrics import COMPARISON_METRICS, higher_is_better, metric_info
from analysis.stats import Estimate, mean_ci, paired_difference, welch_difference
from analysis.tables import config_columns, final_column
from analysis.verdicts import DEFAULT_MARGINS, Verdict, holm_adjusted, paired_verdict

MIN_PER_LEVEL = 2


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    baseline: Estimate
    treatment: Estimate
    paired: Estimate  # over per-seed mean differences: n == seeds with a pair (0 when none)
    welch: Estimate
    pair_seeds: int | None = None  # distinct seeds among the pairs (None: trials carry no seed)
    n_pairs: int = 0  # pair groups, averaged within their seed
    # analysis.verdicts over the per-seed differences, for metrics with a margin (None else)
    verdict: Verdict | None = None

    def difference(self) -> Estimate | None:
        """The interval the sentence uses: paired when >= 2 seeds have pairs, else Welch when
        nothing pairs up, else none (pairs from one seed hold no seed-to-seed spread, and a
        Welch interval over them would count one seed's trials as replicates)."""
        if self.paired.n >= MIN_PER_LEVEL:
            return self.paired
        if (
            self.n_pairs == 0
            and self.baseline.n >= MIN_PER_LEVEL
            and self.treatment.n >= MIN_PER_LEVEL
        ):
            return self.welch
        return None


@dataclass(frozen=True)
class FactorComparison:
    factor: Factor
    metrics: tuple[MetricComparison, ...]
    sentence: str
    n_trials: int


def analysis_set(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Trials that enter means and differences (see the module docstring)."""
    column = final_column(objective)
    if column not in trials.columns or trials.empty:
        return trials.iloc[0:0]
    values = trials[column].astype(float)
    keep = np.isfinite(values) & (trials["status"] == "finished") & ~trials["flag_diverged"]
    return trials[keep.to_numpy(dtype=bool)]


def level_labels(trials: pd.DataFrame, factor: Factor) -> pd.Series:
    """Each trial's level name for the factor (None when the trial lacks a key). A factor of
    several keys (e.g. masked L2 and masked SSIM switched together) has a level only where all
    its keys give the same one."""
    if any(key not in trials.columns for key in factor.keys):
        return pd.Series([None] * len(trials), index=trials.index, dtype=object)
    per_key = [trials[key].astype(object).map(factor.classify).tolist() for key in factor.keys]
    agreed = [levels[0] if len(set(levels)) == 1 else None for levels in zip(*per_key, strict=True)]
    return pd.Series(agreed, index=trials.index, dtype=object)


def is_reported(trials: pd.DataFrame, factor: Factor) -> bool:
    """A factor is reported when both of its levels occur among the given trials."""
    present = set(level_labels(trials, factor).dropna())
    return all(level.name in present for level in factor.levels)


def confounded_with(trials: pd.DataFrame, factor: Factor, wider: Factor) -> bool:
    """Whether ``factor``'s keys are some of ``wider``'s and never vary apart from the rest in
    these trials (e.g. masked L2 in a study that links masked SSIM to it): its comparison is
    then ``wider``'s, under a name that would credit one key with the effect of all."""
    if not set(factor.keys) < set(wider.keys):
        return False
    return level_labels(trials, factor).equals(level_labels(trials, wider))


def reported_factors(
    trials: pd.DataFrame, objective: str, factors: Sequence[Factor] = FACTORS
) -> list[Factor]:
    """Factors with both levels among the analysed trials, less those confounded with a wider
    reported factor (only the wider one is compared)."""
    analysed = analysis_set(trials, objective)
    shown = [factor for factor in factors if is_reported(analysed, factor)]
    return [
        factor
        for factor in shown
        if not any(confounded_with(analysed, factor, wider) for wider in shown)
    ]


def varying_columns(trials: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The given columns that hold more than one distinct non-missing value."""
    return [c for c in columns if c in trials.columns and trials[c].nunique(dropna=True) > 1]


def pair_key_columns(trials: pd.DataFrame, factor: Factor) -> list[str]:
    """Config columns (and seed) that must match for two trials to be a pair."""
    candidates = [c for c in config_columns(trials) if c not in factor.keys] + ["seed"]
    return varying_columns(trials, candidates)


def pairing_groups(trials: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """One label per trial; equal labels mean equal values in every key."""
    if not keys or trials.empty:
        return pd.Series("", index=trials.index, dtype=object)

    # repr keeps 1 and "1" apart; a missing value only equals another missing value.
    def label(row: pd.Series) -> str:
        return "\x1f".join("<missing>" if pd.isna(v) else repr(v) for v in row)

    return trials[list(keys)].astype(object).apply(label, axis=1)


def per_seed_differences(trials: pd.DataFrame, factor: Factor, metric: str) -> pd.Series:
    """One difference per seed: the mean of its pair groups' differences (a group whose trials
    carry no seed stands alone), indexed by seed, in seed order."""
    differences, paired_trials = _pairs(trials, factor, metric)
    if differences.empty:
        return differences
    groups = pairing_groups(paired_trials, pair_key_columns(trials, factor))
    seeds = paired_trials["seed"] if "seed" in paired_trials.columns else None
    unit = {
        group: (f"group:{group}" if seeds is None or pd.isna(seed) else seed)
        for group, seed in zip(groups, seeds if seeds is not None else groups, strict=True)
    }
    keyed = pd.Series(differences.to_numpy(dtype=float), index=[unit[g] for g in differences.index])
    return keyed.groupby(level=0, sort=True).mean()


def _pairs(trials: pd.DataFrame, factor: Factor, metric: str) -> tuple[pd.Series, pd.DataFrame]:
    """(difference per matched group, the trials that entered some group with both levels)."""
    frame = pd.DataFrame(
        {
            "group": pairing_groups(trials, pair_key_columns(trials, factor)),
            "level": level_labels(trials, factor),
            "value": trials[final_column(metric)].astype(float),
        }
    )
    frame = frame[frame["level"].notna() & np.isfinite(frame["value"])]
    means = frame.groupby(["group", "level"])["value"].mean().unstack("level")
    if factor.baseline.name not in means or factor.treatment.name not in means:
        return pd.Series([], dtype=float), trials.iloc[0:0]
    differences = (means[factor.treatment.name] - means[factor.baseline.name]).dropna()
    return differences, trials.loc[frame.index[frame["group"].isin(differences.index)]]


def paired_differences(trials: pd.DataFrame, factor: Factor, metric: str) -> np.ndarray:
    """Per matched group: mean(treatment) - mean(baseline) of the metric's final value."""
    return _pairs(trials, factor, metric)[0].to_numpy(dtype=float)


def compare_metric(
    trials: pd.DataFrame,
    factor: Factor,
    metric: str,
    margins: Mapping[str, float] | None = None,
) -> MetricComparison:
    levels = level_labels(trials, factor)
    values = trials[final_column(metric)].astype(float)
    baseline = values[levels == factor.baseline.name].to_numpy(dtype=float)
    treatment = values[levels == factor.treatment.name].to_numpy(dtype=float)
    differences, paired_trials = _pairs(trials, factor, metric)
    seeds = paired_trials["seed"].nunique() if "seed" in paired_trials.columns else None
    by_seed = per_seed_differences(trials, factor, metric)
    margin = seed_margin(metric, margins)
    found = None
    if margin is not None and len(by_seed):
        tidy = pd.DataFrame({"seed": by_seed.index, "item_id": "final", "d": by_seed.to_numpy()})
        found = paired_verdict(tidy, "d", margin)
    return MetricComparison(
        metric=metric,
        baseline=mean_ci(baseline),
        treatment=mean_ci(treatment),
        paired=paired_difference(by_seed.to_numpy(dtype=float)),
        welch=welch_difference(baseline, treatment),
        pair_seeds=seeds,
        n_pairs=len(differences),
        verdict=found,
    )


def seed_margin(metric: str, margins: Mapping[str, float] | None = None) -> float | None:
    """The equivalence margin of a validation metric (`val/psnr_fg` -> the `psnr_fg` margin),
    None for metrics without one (losses, whole-image SSIM): those get no verdict."""
    if not metric.startswith("val/") or not higher_is_better(metric):
        return None
    return {**DEFAULT_MARGINS, **(margins or {})}.get(metric.removeprefix("val/"))


def _fmt(metric: str, value: float) -> str:
    return f"{value:.{metric_info(metric).decimals}f}"


def _amount(metric: str, value: float) -> str:
    info = metric_info(metric)
    return " ".join(part for part in (_fmt(metric, value), info.unit, info.label) if part)


def _support(estimate: Estimate, n_pairs: int) -> str:
    """How many runs back the interval: "3 seeds (paired)" when each seed gives one pair, else
    "2 seeds (paired; 4 pairs averaged per seed)": the other factors' levels pair up within a
    seed too, and the seed, not the pair, is the unit."""
    if estimate.kind == "paired":
        seeds = f"{estimate.n} seed{'s' if estimate.n != 1 else ''}"
        if n_pairs == estimate.n:
            return f"{seeds} (paired)"
        return f"{seeds} (paired; {n_pairs} pairs averaged per seed)"
    return f"{estimate.n} vs {estimate.n_other} trials (unpaired, Welch)"


def _not_enough(factor: Factor, comparison: MetricComparison) -> str:
    base, treat = factor.baseline.name, factor.treatment.name
    label = metric_info(comparison.metric).label
    return (
        f"Not enough data to compare {base} and {treat} on {label}: "
        f"{comparison.baseline.n} trial(s) at {base}, {comparison.treatment.n} at {treat}, "
        f"{comparison.paired.n} seed(s) with pairs; at least {MIN_PER_LEVEL} per level, or "
        f"{MIN_PER_LEVEL} paired seeds, are needed."
    )


def _verdict_sentence(factor: Factor, comparison: MetricComparison, family: int) -> str | None:
    """The sentence of a paired comparison with a verdict (None: use the interval's sign)."""
    v, difference = comparison.verdict, comparison.difference()
    if v is None or difference is not comparison.paired or v.verdict == "too few seeds":
        return None
    metric = comparison.metric
    support = _support(difference, comparison.n_pairs)
    holm = f", Holm p {v.p_decision:.3g} across {family} factors" if family > 1 else ""
    if v.verdict in ("better", "worse"):
        winner, loser = (
            (factor.treatment, factor.baseline)
            if v.verdict == "better"
            else (factor.baseline, factor.treatment)
        )
        by = abs(v.estimate)
        low, high = (v.ci_low, v.ci_high) if v.verdict == "better" else (-v.ci_high, -v.ci_low)
        return (
            f"{winner.phrase} beats {loser.name} by {_amount(metric, by)}, "
            f"95% CI [{_fmt(metric, low)}, {_fmt(metric, high)}], {support}{holm}."
        )
    info = metric_info(metric)
    unit = f" {info.unit}" if info.unit else ""
    base, treat = factor.baseline.name, factor.treatment.name
    if v.verdict == "equivalent":
        return (
            f"{base} and {treat} are equivalent in {info.label} within "
            f"±{_fmt(metric, v.margin)}{unit} (difference {treat} − {base} "
            f"{_fmt(metric, v.estimate)}{unit}, 90% CI [{_fmt(metric, v.eq_low)}, "
            f"{_fmt(metric, v.eq_high)}] inside the margin, {support})."
        )
    return None


def sentence(factor: Factor, comparison: MetricComparison, mode: str, family: int = 1) -> str:
    """One plain sentence: who beats whom on the metric, by how much, that the two are
    equivalent within the metric's margin, or that the difference is noise. With a verdict
    (analysis.verdicts) its word decides; `family` factors share its Holm correction."""
    difference = comparison.difference()
    if difference is None:
        return _not_enough(factor, comparison)
    decided = _verdict_sentence(factor, comparison, family)
    if decided is not None:
        return decided
    if comparison.verdict is not None and difference is comparison.paired:
        return _no_difference(factor, comparison, difference)
    metric = comparison.metric
    # Improvement of treatment over baseline, positive when treatment is better.
    sign = 1.0 if mode == "max" else -1.0
    low, high = sorted((sign * difference.ci_low, sign * difference.ci_high))
    gain = sign * difference.mean
    winner: Level | None = None
    if difference.has_ci and low > 0:
        winner, loser, by, ci = factor.treatment, factor.baseline, gain, (low, high)
    elif difference.has_ci and high < 0:
        winner, loser, by, ci = factor.baseline, factor.treatment, -gain, (-high, -low)
    if winner is not None:
        return (
            f"{winner.phrase} beats {loser.name} by {_amount(metric, by)}, "
            f"95% CI [{_fmt(metric, ci[0])}, {_fmt(metric, ci[1])}], {_support(difference, comparison.n_pairs)}."
        )
    return _no_difference(factor, comparison, difference)


def _no_difference(factor: Factor, comparison: MetricComparison, difference: Estimate) -> str:
    metric = comparison.metric
    info = metric_info(metric)
    unit = f" {info.unit}" if info.unit else ""
    base, treat = factor.baseline.name, factor.treatment.name
    return (
        f"No difference beyond noise in {info.label} between {base} and {treat} "
        f"(difference {treat} − {base} {_fmt(metric, difference.mean)}{unit}, "
        f"95% CI [{_fmt(metric, difference.ci_low)}, {_fmt(metric, difference.ci_high)}], "
        f"{_support(difference, comparison.n_pairs)})."
    )


def comparison_metrics(objective: str) -> tuple[str, ...]:
    """The table's metrics: the four standard ones, plus the objective if it is another."""
    return (
        COMPARISON_METRICS if objective in COMPARISON_METRICS else (objective, *COMPARISON_METRICS)
    )


def compare_factor(
    trials: pd.DataFrame,
    factor: Factor,
    objective: str,
    mode: str,
    margins: Mapping[str, float] | None = None,
) -> FactorComparison:
    """Full comparison of one factor on the analysis set of ``trials`` (a family of one)."""
    analysed = analysis_set(trials, objective)
    analysed = analysed[level_labels(analysed, factor).notna().to_numpy(dtype=bool)]
    metrics = tuple(
        compare_metric(analysed, factor, m, margins) for m in comparison_metrics(objective)
    )
    by_metric = {m.metric: m for m in metrics}
    return FactorComparison(
        factor=factor,
        metrics=metrics,
        sentence=sentence(factor, by_metric[objective], mode),
        n_trials=len(analysed),
    )


def compare_all(
    trials: pd.DataFrame, objective: str, mode: str, margins: Mapping[str, float] | None = None
) -> list[FactorComparison]:
    """Every reported factor; the objective's verdicts are Holm-corrected across the factors
    (the seed-level family; the item-level confirmatory family is analysis.paired's)."""
    raw = [
        compare_factor(trials, f, objective, mode, margins)
        for f in reported_factors(trials, objective)
    ]
    found = [next(m for m in c.metrics if m.metric == objective) for c in raw]
    with_verdict = [i for i, m in enumerate(found) if m.verdict is not None]
    adjusted = holm_adjusted([found[i].verdict for i in with_verdict])  # type: ignore[misc]
    out = list(raw)
    for i, verdict in zip(with_verdict, adjusted, strict=True):
        metric = dataclasses.replace(found[i], verdict=verdict)
        metrics = tuple(metric if m.metric == objective else m for m in raw[i].metrics)
        text = sentence(raw[i].factor, metric, mode, family=len(with_verdict))
        out[i] = dataclasses.replace(raw[i], metrics=metrics, sentence=text)
    return out
