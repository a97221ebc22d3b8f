"""How many seeds a question needs: ``python -m analysis.plan STUDY_DIR [--detect psnr_fg=0.5]
[--equivalent psnr_fg=0.5]``.

For each reported factor of a finished (or partly run) study and each question asked, the
planner takes the factor's per-seed mean differences of the metric (item level, all target
views, when the trials were evaluated under one protocol; else the final validation value,
`val/<metric>`), and prints:
- the variance components, by the method of moments: the variance of the per-seed means
  (what the verdict's t interval rests on) split into its within-seed part (the item-to-item
  variance of a seed's item means over the number of items: what more test items would
  shrink) and the between-seed remainder (what only more seeds shrink);
- the seeds needed for 80% power (analysis.verdicts.plan: the noncentral t, scipy.stats.nct)
  to detect a difference of the given size with the two-sided t test at alpha 0.05, or to show
  equivalence within the given margin by TOST at a true difference of 0, at the point estimate
  of the spread and at its one-sided 80% upper confidence limit (3 seeds pin the sd only within
  a factor of ~6: plan from the upper limit);
- what that costs: seeds x the study's grid cells per seed x the measured mean GPU (else wall)
  time per trial, in trial-hours.
Without --detect / --equivalent the study's margin for its primary metric is asked both ways.
The report prints the same numbers under each verdict (analysis.paired.seeds_line).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import paired, verdicts
from analysis.compare import analysis_set, per_seed_differences, reported_factors
from analysis.factors import Factor
from analysis.levels import level_pair_factors
from analysis.load import NotAStudyError, read_study_info, read_trials
from analysis.tables import build_trials


@dataclass(frozen=True)
class Spread:
    """The per-seed mean differences of one factor on one metric, and where they came from."""

    factor: Factor
    metric: str
    source: str  # "test items, all target views" or "final validation value"
    per_seed: np.ndarray
    within: float  # within-seed variance of a per-seed mean (NaN when unknown)

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def sd(self) -> float:
        return float(np.std(self.per_seed, ddof=1)) if self.n_seeds >= 2 else math.nan

    def components(self) -> tuple[float, float]:
        """(between-seed, within-seed) variance of a per-seed mean; between >= 0."""
        total = self.sd**2
        if not math.isfinite(self.within):
            return total, math.nan
        return max(0.0, total - self.within), self.within


def within_seed_variance(differences: pd.DataFrame, metric: str) -> float:
    """Mean over seeds of var(block means) / blocks: the item part of a per-seed mean's variance.

    Blocks of correlated items (a `block` column: one video or session, consecutive frames)
    are the independent units: items of one block are averaged first, so a block of 30 nearly
    equal frames counts once, not 30 times (which would shrink the item part about 30-fold).
    Without a block column every item is its own block (the item-level formula). A seed with
    a single block has no within-seed spread to estimate and is left out."""
    per_item = differences.groupby(["seed", "item_id"], sort=True)[metric].mean()
    if "block" in differences.columns:
        blocks = differences.drop_duplicates(["seed", "item_id"]).set_index(["seed", "item_id"])
        keys = blocks.loc[per_item.index, "block"].to_numpy()
    else:
        keys = per_item.index.get_level_values("item_id").to_numpy()
    seeds = per_item.index.get_level_values("seed").to_numpy()
    per_block = per_item.groupby([seeds, keys], sort=True).mean()
    parts = [g.var(ddof=1) / len(g) for _, g in per_block.groupby(level=0) if len(g) > 1]
    return float(np.mean(parts)) if parts else math.nan


def item_spreads(
    study_dir: Path, trials: pd.DataFrame, analysed: pd.DataFrame, factors: Sequence[Factor]
) -> dict[tuple[str, str], Spread]:
    """Item-level spreads per (factor, metric), {} when no single-protocol evaluation exists."""
    items, protocols = paired.gather_items(study_dir, trials)
    evaluated = [t for t in analysed["trial_id"].astype(str) if t in protocols]
    if not evaluated:
        return {}
    try:
        paired.check_protocols({t: protocols[t] for t in evaluated})
    except paired.ProtocolMismatch:
        return {}
    chosen = analysed[analysed["trial_id"].astype(str).isin(evaluated)]
    rows, shared = paired.shared_targets(items[items["trial_id"].isin(evaluated)])
    if shared == ():
        return {}
    out = {}
    for factor in factors:
        differences = paired.paired_item_differences(rows, chosen, factor, paired.COMPARED_METRICS)
        for metric in paired.COMPARED_METRICS:
            part = differences[np.isfinite(differences[metric].to_numpy(dtype=float))]
            means = verdicts.seed_means(part, metric).to_numpy(dtype=float)
            out[(factor.name, metric)] = Spread(
                factor,
                metric,
                "test items, all target views",
                means,
                within_seed_variance(part, metric),
            )
    return out


def seed_spread(analysed: pd.DataFrame, factor: Factor, metric: str) -> Spread:
    key = f"val/{metric}"
    if f"final/{key}" not in analysed.columns:
        return Spread(factor, metric, "final validation value", np.array([]), math.nan)
    means = per_seed_differences(analysed, factor, key).to_numpy(dtype=float)
    return Spread(factor, metric, "final validation value", means, math.nan)


def trial_cost(trials: pd.DataFrame, analysed: pd.DataFrame) -> tuple[float, str, float]:
    """(mean compute per finished trial in hours, its unit, grid cells per seed)."""
    gpu = trials["gpu_s"].astype(float) if "gpu_s" in trials.columns else pd.Series(dtype=float)
    column, unit = ("gpu_s", "GPU-hours") if (gpu.fillna(0) > 0).any() else ("wall_s", "hours")
    finished = trials[trials["status"] == "finished"]
    per_trial = float(finished[column].astype(float).mean()) / 3600 if len(finished) else math.nan
    seeds = analysed["seed"].nunique() if "seed" in analysed.columns else 0
    cells = len(analysed) / seeds if seeds else math.nan
    return per_trial, unit, cells


def _hours(seeds: int, per_trial: float, cells: float) -> str:
    total = seeds * cells * per_trial
    return f"{total:.1f}" if math.isfinite(total) else "?"


def question_lines(
    spread: Spread, kind: str, size: float, per_trial: float, unit: str, cells: float
) -> list[str]:
    """The planner's lines for one question: detect a difference of `size`, or equivalence."""
    label = paired.METRIC_LABELS.get(spread.metric, spread.metric)
    if spread.n_seeds < verdicts.MIN_SEEDS:
        return [
            f"  {kind} ±{size:g} on {label}: {spread.n_seeds} seed(s) with pairs; at least "
            f"{verdicts.MIN_SEEDS} are needed to estimate the seed spread."
        ]
    p = verdicts.plan(spread.sd, spread.n_seeds, size)
    low, high = (
        (p.detect, p.detect_upper) if kind == "detect" else (p.equivalent, p.equivalent_upper)
    )
    what = "detect a difference of" if kind == "detect" else "show equivalence within ±"
    return [
        f"  {what}{'' if kind != 'detect' else ' '}{size:g} on {label}: {low} seeds at the "
        f"estimated spread, {high} at its 80% upper limit (80% power, alpha 0.05; now "
        f"{spread.n_seeds}); {_hours(low, per_trial, cells)}-{_hours(high, per_trial, cells)} "
        f"{unit} of trials ({cells:g} trials per seed)."
    ]


def spread_line(spread: Spread) -> str:
    between, within = spread.components()
    label = paired.METRIC_LABELS.get(spread.metric, spread.metric)
    if spread.n_seeds < verdicts.MIN_SEEDS:
        return f"{spread.factor.title}, {label} ({spread.source}): {spread.n_seeds} seed(s)."
    upper = verdicts.sd_upper(spread.sd, spread.n_seeds)
    parts = f"between seeds {between:.3g}" + (
        f", within seeds (items) {within:.3g}" if math.isfinite(within) else ""
    )
    return (
        f"{spread.factor.title}, {label} ({spread.source}): {spread.n_seeds} seeds, sd of "
        f"per-seed mean differences {spread.sd:.3g} (80% upper limit {upper:.3g}); variance "
        f"of a per-seed mean: {parts}."
    )


def plan_study(
    study_dir: Path,
    detect: Mapping[str, float] | None = None,
    equivalent: Mapping[str, float] | None = None,
) -> str:
    """The planner's text for a study folder (see the module docstring)."""
    study = read_study_info(Path(study_dir))
    trials = build_trials(study, read_trials(study.path))
    analysed = analysis_set(trials, study.objective)
    factors = [*reported_factors(trials, study.objective), *level_pair_factors(analysed)]
    (metric, _), margins = paired.study_question(paired.read_study_record(study.path))
    if not detect and not equivalent:
        detect = equivalent = {metric: margins[metric]}
    detect, equivalent = dict(detect or {}), dict(equivalent or {})
    per_trial, unit, cells = trial_cost(trials, analysed)
    spreads = item_spreads(study.path, trials, analysed, factors)
    lines = [
        f"Study {study.name}: {len(analysed)} analysed trials, "
        f"{analysed['seed'].nunique() if len(analysed) else 0} seeds, {cells:g} trials per seed, "
        f"{per_trial:.2f} {unit} per finished trial (mean)."
    ]
    if not factors:
        lines.append("No factor has both levels among the analysed trials: nothing to plan.")
    for factor in factors:
        for name in dict.fromkeys([*detect, *equivalent]):
            spread = spreads.get((factor.name, name)) or seed_spread(analysed, factor, name)
            lines.append(spread_line(spread))
            if name in detect:
                lines += question_lines(spread, "detect", detect[name], per_trial, unit, cells)
            if name in equivalent:
                lines += question_lines(
                    spread, "equivalent", equivalent[name], per_trial, unit, cells
                )
    return "\n".join(lines)


def _sizes(texts: Sequence[str], flag: str, parser: argparse.ArgumentParser) -> dict[str, float]:
    out = {}
    for text in texts:
        name, _, value = text.partition("=")
        name = name.strip().removeprefix("val/")
        try:
            size = float(value)
        except ValueError:
            parser.error(f"{flag} {text!r}: expected METRIC=NUMBER, e.g. psnr_fg=0.5")
        if name not in paired.COMPARED_METRICS or not (math.isfinite(size) and size > 0):
            parser.error(
                f"{flag} {text!r}: a positive size for one of {', '.join(paired.COMPARED_METRICS)}"
            )
        out[name] = size
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.plan",
        description="Seeds (and trial-hours) a study's questions need for 80% power.",
    )
    parser.add_argument("study_dir", type=Path, help="study folder holding study.json")
    parser.add_argument(
        "--detect",
        action="append",
        default=[],
        metavar="METRIC=SIZE",
        help="a difference to detect, e.g. psnr_fg=0.5 (dB)",
    )
    parser.add_argument(
        "--equivalent",
        action="append",
        default=[],
        metavar="METRIC=MARGIN",
        help="an equivalence margin to show, e.g. psnr_fg=0.5 (dB)",
    )
    args = parser.parse_args(argv)
    detect = _sizes(args.detect, "--detect", parser)
    equivalent = _sizes(args.equivalent, "--equivalent", parser)
    try:
        print(plan_study(args.study_dir, detect, equivalent))
    except NotAStudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
