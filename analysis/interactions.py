"""Two-factor interactions for grids that cross two factors (e.g. masked losses x background).

For factors A and B (two levels each, baseline first) the cells are the four level pairs. A
cell mean comes with its t interval over the cell's trials. The interaction contrast asks
whether B's effect depends on A:

    contrast = (y[A=t, B=t] - y[A=t, B=b]) - (y[A=b, B=t] - y[A=b, B=b])

It is computed per matched group (every other varying config key and the seed equal, as in
``analysis.compare``) and its 95% interval is the paired t interval over the groups, so the
seed-to-seed variation that all four cells share cancels out. A contrast whose interval
excludes zero is "beyond noise"; then neither factor's main effect can be read alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.compare import analysis_set, level_labels, pairing_groups, varying_columns
from analysis.factors import FACTORS, Factor
from analysis.metrics import metric_info
from analysis.stats import Estimate, mean_ci, paired_difference
from analysis.tables import config_columns, final_column


@dataclass(frozen=True)
class Interaction:
    first: Factor  # A: its levels are the table's rows
    second: Factor  # B: its levels are the table's columns
    metric: str
    cells: dict[tuple[str, str], Estimate]  # (level of A, level of B) -> mean over trials
    contrast: Estimate  # paired over matched groups; n = number of complete groups
    sentence: str


def _disjoint(first: Factor, second: Factor) -> bool:
    return not set(first.keys) & set(second.keys)


def crossed_factor_pairs(
    trials: pd.DataFrame, objective: str, factors: Sequence[Factor] = FACTORS
) -> list[tuple[Factor, Factor]]:
    """Pairs of factors (over different config keys) whose four cells all hold a trial."""
    analysed = analysis_set(trials, objective)
    labels = {f.name: level_labels(analysed, f) for f in factors}
    pairs = []
    for first, second in itertools.combinations(factors, 2):
        if not _disjoint(first, second):
            continue
        present = set(zip(labels[first.name], labels[second.name], strict=True))
        cells = itertools.product(
            [lv.name for lv in first.levels], [lv.name for lv in second.levels]
        )
        if all(cell in present for cell in cells):
            pairs.append((first, second))
    return _drop_aliases(pairs, analysed, labels)


def _drop_aliases(
    pairs: list[tuple[Factor, Factor]],
    analysed: pd.DataFrame,
    labels: dict[str, pd.Series],
) -> list[tuple[Factor, Factor]]:
    """One pair per way of splitting the trials. When a grid switches masked L2 and masked SSIM
    together, 'masked L2', 'masked SSIM' and 'both' split the trials identically; only the factor
    owning both keys can pair trials (the others see the linked key vary), so the pair whose
    factors own the most keys is kept."""
    best: dict[tuple[tuple[object, ...], tuple[object, ...]], tuple[Factor, Factor]] = {}
    for first, second in pairs:
        signature = (tuple(labels[first.name]), tuple(labels[second.name]))
        current = best.get(signature)
        if current is None or len(first.keys + second.keys) > len(
            current[0].keys + current[1].keys
        ):
            best[signature] = (first, second)
    return [pair for pair in pairs if pair in best.values()]


def cell_table(trials: pd.DataFrame, first: Factor, second: Factor, metric: str) -> pd.DataFrame:
    """Per trial: its group (other keys + seed), level of each factor and the final metric."""
    others = [c for c in config_columns(trials) if c not in first.keys + second.keys]
    frame = pd.DataFrame(
        {
            "group": pairing_groups(trials, varying_columns(trials, [*others, "seed"])),
            "a": level_labels(trials, first),
            "b": level_labels(trials, second),
            "value": trials[final_column(metric)].astype(float),
        }
    )
    return frame[frame["a"].notna() & frame["b"].notna() & np.isfinite(frame["value"])]


def interaction_contrasts(frame: pd.DataFrame, first: Factor, second: Factor) -> np.ndarray:
    """One contrast per group that has all four cells (trials within a cell are averaged)."""
    means = frame.groupby(["group", "a", "b"])["value"].mean().unstack(["a", "b"])
    a_base, a_treat = first.baseline.name, first.treatment.name
    b_base, b_treat = second.baseline.name, second.treatment.name
    needed = [(a_treat, b_treat), (a_treat, b_base), (a_base, b_treat), (a_base, b_base)]
    if any(cell not in means.columns for cell in needed):
        return np.array([], dtype=float)
    contrast = (means[(a_treat, b_treat)] - means[(a_treat, b_base)]) - (
        means[(a_base, b_treat)] - means[(a_base, b_base)]
    )
    return contrast.dropna().to_numpy(dtype=float)


def _fmt(metric: str, value: float) -> str:
    return f"{value:.{metric_info(metric).decimals}f}"


def interaction_sentence(first: Factor, second: Factor, metric: str, contrast: Estimate) -> str:
    info = metric_info(metric)
    unit = f" {info.unit}" if info.unit else ""
    groups = f"{contrast.n} matched seed group{'s' if contrast.n != 1 else ''}"
    if not contrast.has_ci:
        return (
            f"Interaction of {first.title.lower()} and {second.title.lower()} on {info.label}: "
            f"not enough data ({groups}; at least 2 needed)."
        )
    ci = f"95% CI [{_fmt(metric, contrast.ci_low)}, {_fmt(metric, contrast.ci_high)}]{unit}"
    effect = f"{second.title.lower()} ({second.treatment.name} − {second.baseline.name})"
    if contrast.ci_low > 0 or contrast.ci_high < 0:
        direction = "larger" if contrast.mean > 0 else "smaller"
        return (
            f"Interaction beyond noise: the effect of {effect} on {info.label} is "
            f"{_fmt(metric, abs(contrast.mean))}{unit} {direction} with "
            f"{first.title.lower()} {first.treatment.name} than {first.baseline.name} "
            f"({ci}, {groups}); read the cell table, not the main effects."
        )
    return (
        f"No interaction beyond noise between {first.title.lower()} and "
        f"{second.title.lower()} on {info.label} (contrast {_fmt(metric, contrast.mean)}{unit}, "
        f"{ci}, {groups})."
    )


def interaction(
    trials: pd.DataFrame, first: Factor, second: Factor, metric: str, objective: str
) -> Interaction:
    """Cell means and the interaction contrast of ``metric`` on the analysis set."""
    frame = cell_table(analysis_set(trials, objective), first, second, metric)
    cells = {
        (a.name, b.name): mean_ci(
            frame.loc[(frame["a"] == a.name) & (frame["b"] == b.name), "value"].to_numpy()
        )
        for a in first.levels
        for b in second.levels
    }
    contrast = paired_difference(interaction_contrasts(frame, first, second))
    return Interaction(
        first=first,
        second=second,
        metric=metric,
        cells=cells,
        contrast=contrast,
        sentence=interaction_sentence(first, second, metric, contrast),
    )


def all_interactions(
    trials: pd.DataFrame, objective: str, metrics: Sequence[str]
) -> list[Interaction]:
    """Every crossed factor pair, for each of ``metrics``."""
    return [
        interaction(trials, first, second, metric, objective)
        for first, second in crossed_factor_pairs(trials, objective)
        for metric in metrics
    ]
