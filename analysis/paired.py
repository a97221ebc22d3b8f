"""Item-level comparisons: paired differences on the identical (item, view) set, hierarchical
bootstrap intervals over seeds and items, Holm-corrected verdicts with equivalence margins.

Input: the gathered item table (one row per trial x item x view: trial_id, seed, item_id,
camera, role, metrics; see trainables/gslrm/evaluate.py) and the trials table. Pure
pandas / numpy: no torch, no Ray.

Pairs. Two trials pair up as in analysis.compare (same seed, every other varying config key
equal); within a pair group, the difference of a metric on one (item, view) is the mean over
the group's treatment trials minus the mean over its baseline trials. Rows where either side
is NaN (an undefined metric, see trainables/gslrm/metrics.py) are left out, never zeroed.

Interval. The estimate is the mean over seeds of each seed's mean difference. A bootstrap
replicate resamples the seeds with replacement, then, inside each drawn seed, that seed's
items with replacement; an item brings all its views (and all pair groups of its seed) with
it, because views of one mouse pose are not independent, and every drawn copy of a seed gets
its own item resample. The 95% interval is the percentile interval of N_BOOT replicates,
their spread around the estimate widened by sqrt(n / (n - 1)) for n > 1 seeds (the
bootstrap's known (n - 1) / n shrink of the variance of a mean over n clusters). With one
seed only item-to-item variation is left, and the sentence says so.
Measured coverage of the 95% interval (200 simulated studies each, 6 views per item, item sd
1, view sd 0.5, effect 0.5; tests/test_paired.py checks the first row):
    3 seeds x 20 items, seed sd 0.3: 0.96     5 seeds: 0.96     8 seeds: 0.965
    3 seeds x 20 items, seed sd 0:   0.995 (item noise counts at both stages: conservative)
    3 seeds x 20 items, seed sd 1.0: 0.88  (3 seeds cannot measure a large seed spread)
    3 seeds x 80 items, seed sd 0.3: 0.89  (the same, once items make seed spread dominant)
    1 seed  x 40 items:              0.95
So with the default 3 seeds, read the item-level interval next to the seed-level t interval;
when seeds disagree strongly, add seeds.

P(better) is the share of replicates in which the treatment is the better level. The
two-sided bootstrap p value, 2 min(P(d >= 0), P(d <= 0)) (each (k + 1) / (N_BOOT + 1)), is
Holm-corrected across the factors
of a study, separately for each metric and view role.

Verdicts (for a higher-is-better metric, d = treatment - baseline, margin m > 0):
  equivalent    the whole 95% interval lies inside (-m, m)
  better/worse  otherwise, when the Holm-adjusted p < ALPHA: the sign of d
  inconclusive  everything else
Margins default to DEFAULT_MARGINS (0.2 dB for PSNRs, 0.005 for IoU, SSIM and coverage).

Refusals. check_protocols raises ProtocolMismatch naming the first trial whose protocol
record differs from the first trial's in one of PROTOCOL_COMPARED_KEYS, e.g. "trial b was
evaluated on a different item set (hash 1f2e..., trial a: 9c0d...)".
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.compare import level_labels, pair_key_columns, pairing_groups
from analysis.factors import Factor
from trainables.gslrm.protocol import PROTOCOL_COMPARED_KEYS

_KEY_WORDS = {
    "metrics_version": "a different metric-definition version",
    "item_set_hash": "a different item set",
    "checkpoint_rule": "a different checkpoint rule",
    "checkpoint_objective": "a different checkpoint objective",
    "pred_mask_threshold": "a different predicted-mask threshold",
    "gt_alpha_threshold": "a different ground-truth alpha threshold",
    "image_size": "a different image size",
    "background_color": "a different background colour",
    "view_order": "a different view order",
}
ITEM_KEYS = ("item_id", "camera", "role")
# Compared metrics, primary first; all are higher-is-better. The two foreground fractions
# are diagnostics (the true one is the same for every trial by construction).
COMPARED_METRICS = ("psnr_fg", "psnr_int", "ssim_fg", "mask_iou", "coverage", "psnr")
PRIMARY_METRIC = "psnr_fg"
DEFAULT_MARGINS: dict[str, float] = {
    "psnr": 0.2,
    "psnr_fg": 0.2,
    "psnr_int": 0.2,
    "mask_iou": 0.005,
    "ssim_fg": 0.005,
    "coverage": 0.005,
}
METRIC_UNITS = {"psnr": "dB", "psnr_fg": "dB", "psnr_int": "dB"}
METRIC_LABELS = {
    "psnr": "whole-image PSNR",
    "psnr_fg": "foreground PSNR",
    "psnr_int": "PSNR on the silhouette intersection",
    "ssim_fg": "foreground SSIM",
    "mask_iou": "mask IoU",
    "coverage": "foreground coverage",
}
ROLES = ("all", "input", "novel")
N_BOOT = 2000
CONFIDENCE = 0.95
ALPHA = 0.05
VERDICTS = ("better", "worse", "equivalent", "inconclusive")
# "Mask covers the image": the predicted silhouette takes at least this share of the image
# and at least COVER_RATIO times the true one (IoU then falls to about the true fraction).
COVER_FRACTION = 0.5
COVER_RATIO = 4.0


class ProtocolMismatch(ValueError):
    """Trials evaluated under different protocols; the message names the first difference."""


def check_protocols(protocols: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """The common protocol of trials {trial_id: protocol record}, or ProtocolMismatch.

    The first trial (by id) is the reference; a missing record is refused like a difference.
    """
    if not protocols:
        raise ProtocolMismatch("no evaluated trial to compare")
    ids = sorted(protocols)
    reference_id = ids[0]
    reference = protocols[reference_id]
    for trial in ids:
        record = protocols[trial]
        if record is None:
            raise ProtocolMismatch(
                f"trial {trial} has items but no eval/protocol.json; re-run "
                f"`python -m analysis.evaluate` on its run folder"
            )
        if reference is None:
            continue
        for key in PROTOCOL_COMPARED_KEYS:
            mine, theirs = record.get(key), reference.get(key)
            if mine != theirs:
                what = _KEY_WORDS.get(key, f"a different {key}")
                if key == "item_set_hash":
                    detail = (
                        f"hash {str(mine)[:12]}..., trial {reference_id}: {str(theirs)[:12]}..."
                    )
                else:
                    detail = f"{mine!r}, trial {reference_id}: {theirs!r}"
                raise ProtocolMismatch(f"trial {trial} was evaluated on {what} ({detail})")
    return dict(reference)


# ---------------------------------------------------------------------------------------
# bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """Mean paired difference (treatment - baseline) with its hierarchical-bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    p_positive: float  # share of replicates with difference > 0
    p_two_sided: float
    n_seeds: int
    n_items: int  # distinct items
    n_rows: int  # finite (pair group, item, view) differences

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)


def _empty_result(n_seeds: int = 0, n_items: int = 0, n_rows: int = 0) -> BootstrapResult:
    nan = math.nan
    return BootstrapResult(nan, nan, nan, nan, nan, n_seeds, n_items, n_rows)


def seed_item_sums(
    differences: pd.DataFrame, column: str
) -> tuple[np.ndarray, np.ndarray, list[Any], list[Any]]:
    """Per (seed, item): sum and count of the finite differences in `column`.

    differences: rows (seed, item_id, column). Returns sums [S, I], counts [S, I] (0 where
    the seed lacks the item), the seeds and the items in their row / column order.
    """
    frame = differences[["seed", "item_id", column]]
    frame = frame[np.isfinite(frame[column].to_numpy(dtype=float))]
    grouped = frame.groupby(["seed", "item_id"], sort=True)[column].agg(["sum", "count"])
    sums = grouped["sum"].unstack("item_id", fill_value=0.0)
    counts = grouped["count"].unstack("item_id", fill_value=0).reindex_like(sums).fillna(0)
    return (
        sums.to_numpy(dtype=float),
        counts.to_numpy(dtype=float),
        list(sums.index),
        list(sums.columns),
    )


def hierarchical_bootstrap(
    differences: pd.DataFrame,
    column: str,
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> BootstrapResult:
    """Estimate and interval of the mean difference (see the module docstring).

    differences: one row per (pair group, item, view) with columns seed, item_id, `column`.
    """
    sums, counts, seeds, items = seed_item_sums(differences, column)
    n_rows = int(counts.sum())
    if n_rows == 0:
        return _empty_result()
    has = counts.sum(axis=1) > 0
    sums, counts = sums[has], counts[has]
    n_seeds = int(has.sum())
    estimate = float(np.mean(sums.sum(axis=1) / counts.sum(axis=1)))
    if n_seeds * len(items) < 2:
        return dataclasses.replace(_empty_result(n_seeds, len(items), n_rows), mean=estimate)
    rng = np.random.default_rng(seed)
    # each seed draws among the items it actually has
    present = [np.flatnonzero(row > 0) for row in counts]
    picked_seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    # every drawn copy of a seed gets its own resample of that seed's items
    slot_means = np.empty((n_boot, n_seeds))
    for s in range(n_seeds):
        own = present[s]
        where = np.nonzero(picked_seeds == s)
        draws = own[rng.integers(0, own.size, size=(where[0].size, own.size))]
        slot_means[where] = sums[s][draws].sum(axis=1) / counts[s][draws].sum(axis=1)
    replicates = slot_means.mean(axis=1)
    if n_seeds > 1:  # undo the bootstrap's (n - 1) / n shrink of the variance over n seeds
        replicates = estimate + (replicates - estimate) * math.sqrt(n_seeds / (n_seeds - 1))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    # a replicate equal to 0 counts against both directions: no difference gives p = 1
    at_least = (np.count_nonzero(replicates >= 0) + 1.0) / (n_boot + 1.0)
    at_most = (np.count_nonzero(replicates <= 0) + 1.0) / (n_boot + 1.0)
    return BootstrapResult(
        mean=estimate,
        ci_low=float(low),
        ci_high=float(high),
        p_positive=float(np.count_nonzero(replicates > 0) / n_boot),
        p_two_sided=float(min(1.0, 2.0 * min(at_least, at_most))),
        n_seeds=n_seeds,
        n_items=len(items),
        n_rows=n_rows,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p values, in input order; NaN stays NaN and is not counted.

    e.g. holm([0.01, 0.04, 0.03]) = [0.03, 0.06, 0.06].
    """
    indexed = [(p, i) for i, p in enumerate(pvalues) if math.isfinite(p)]
    indexed.sort()
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(result: BootstrapResult, margin: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """better | worse | equivalent | inconclusive for treatment vs baseline (higher is better)."""
    if not result.has_ci:
        return "inconclusive"
    if -margin < result.ci_low and result.ci_high < margin:
        return "equivalent"
    if math.isfinite(p_adjusted) and p_adjusted < alpha:
        return "better" if result.mean > 0 else "worse"
    return "inconclusive"


# ---------------------------------------------------------------------------------------
# pairing on items


def paired_item_differences(
    items: pd.DataFrame, trials: pd.DataFrame, factor: Factor, metrics: Sequence[str]
) -> pd.DataFrame:
    """One row per (pair group, item, camera, role): seed, group, and each metric's
    treatment - baseline difference (mean over the group's trials of each level).

    items: gathered item rows with trial_id; trials: the analysed trials (config columns).
    """
    frame = pd.DataFrame(
        {
            "trial_id": trials["trial_id"].to_numpy(),
            "group": pairing_groups(trials, pair_key_columns(trials, factor)).to_numpy(),
            "level": level_labels(trials, factor).to_numpy(),
            "seed": trials["seed"].astype(object).to_numpy() if "seed" in trials else None,
        }
    )
    frame = frame[frame["level"].notna()]
    joined = items.drop(columns=["seed"], errors="ignore").merge(frame, on="trial_id")
    keys = ["group", *ITEM_KEYS]
    means = joined.groupby([*keys, "level"], sort=True)[list(metrics)].mean()
    base, treat = factor.baseline.name, factor.treatment.name
    levels = means.index.get_level_values("level")
    if base not in set(levels) or treat not in set(levels):
        return pd.DataFrame(columns=["group", "seed", *ITEM_KEYS, *metrics])
    treated = means.xs(treat, level="level")
    baseline = means.xs(base, level="level")
    diff = (treated - baseline).dropna(how="all").reset_index()
    seeds = frame.drop_duplicates("group").set_index("group")["seed"]
    # a group whose trials carry no seed is its own cluster
    diff["seed"] = [
        seeds.get(g) if not pd.isna(seeds.get(g)) else f"group:{g}" for g in diff["group"]
    ]
    return diff[["group", "seed", *ITEM_KEYS, *metrics]]


@dataclass(frozen=True)
class ItemComparison:
    metric: str
    role: str  # all | input | novel
    result: BootstrapResult
    margin: float
    p_holm: float = math.nan
    verdict: str = "inconclusive"


@dataclass(frozen=True)
class FactorItemComparison:
    factor: Factor
    comparisons: tuple[ItemComparison, ...]
    per_camera: pd.DataFrame  # camera, role, n_items, mean, ci_low, ci_high of PRIMARY_METRIC
    n_trials: int
    n_pairs: int
    sentence: str = ""

    def get(self, metric: str, role: str = "all") -> ItemComparison:
        return next(c for c in self.comparisons if c.metric == metric and c.role == role)


def _subset(differences: pd.DataFrame, role: str) -> pd.DataFrame:
    return differences if role == "all" else differences[differences["role"] == role]


def compare_factor_items(
    items: pd.DataFrame,
    trials: pd.DataFrame,
    factor: Factor,
    margins: Mapping[str, float],
    metrics: Sequence[str] = COMPARED_METRICS,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> FactorItemComparison:
    """Bootstrap every metric x role of one factor (Holm and verdicts are set by compare_items)."""
    differences = paired_item_differences(items, trials, factor, metrics)
    comparisons = []
    for role in ROLES:
        part = _subset(differences, role)
        for metric in metrics:
            result = hierarchical_bootstrap(part, metric, n_boot, seed)
            comparisons.append(ItemComparison(metric, role, result, margins[metric]))
    cameras = []
    for (camera, role), part in differences.groupby(["camera", "role"], sort=True):
        result = hierarchical_bootstrap(part, PRIMARY_METRIC, n_boot, seed)
        cameras.append(
            {
                "camera": int(camera),
                "role": role,
                "n_items": result.n_items,
                "mean": result.mean,
                "ci_low": result.ci_low,
                "ci_high": result.ci_high,
                "p_positive": result.p_positive,
            }
        )
    analysed = items["trial_id"].isin(trials["trial_id"])
    return FactorItemComparison(
        factor=factor,
        comparisons=tuple(comparisons),
        per_camera=pd.DataFrame(
            cameras,
            columns=["camera", "role", "n_items", "mean", "ci_low", "ci_high", "p_positive"],
        ),
        n_trials=int(items.loc[analysed, "trial_id"].nunique()),
        n_pairs=int(differences["group"].nunique()) if len(differences) else 0,
    )


def _amount(metric: str, value: float) -> str:
    unit = METRIC_UNITS.get(metric, "")
    decimals = 2 if unit == "dB" else 3
    return f"{value:.{decimals}f}{' ' + unit if unit else ''}"


def item_sentence(comparison: FactorItemComparison, metric: str = PRIMARY_METRIC) -> str:
    """One sentence for the factor on `metric` over all views: verdict, size, interval, support."""
    factor = comparison.factor
    c = comparison.get(metric)
    r = c.result
    label = METRIC_LABELS.get(metric, metric)
    base, treat = factor.baseline.name, factor.treatment.name
    if not r.has_ci:
        return (
            f"Item level: not enough paired items to compare {base} and {treat} on {label} "
            f"({r.n_seeds} seed(s), {r.n_items} item(s))."
        )
    seeds_note = (
        " (one seed: the interval holds item-to-item variation only)" if r.n_seeds == 1 else ""
    )
    support = (
        f"{r.n_seeds} seed{'s' if r.n_seeds != 1 else ''} x {r.n_items} items "
        f"({r.n_rows} paired item-views){seeds_note}"
    )
    interval = f"95% CI [{_amount(metric, r.ci_low)}, {_amount(metric, r.ci_high)}]"
    stats = f"P({treat} better) {r.p_positive:.2f}, Holm p {c.p_holm:.3g}"
    if c.verdict in ("better", "worse"):
        winner, loser = (
            (factor.treatment, base) if c.verdict == "better" else (factor.baseline, treat)
        )
        return (
            f"Item level: {winner.phrase} beats {loser} on {label} by "
            f"{_amount(metric, abs(r.mean))}, {interval} of {treat} − {base}, {stats}; "
            f"{support}."
        )
    if c.verdict == "equivalent":
        return (
            f"Item level: {base} and {treat} are equivalent on {label} within "
            f"±{_amount(metric, c.margin)} (difference {_amount(metric, r.mean)}, {interval}); "
            f"{support}."
        )
    return (
        f"Item level: inconclusive on {label} between {base} and {treat} (difference "
        f"{_amount(metric, r.mean)}, {interval}, {stats}; neither a Holm-significant difference "
        f"nor within ±{_amount(metric, c.margin)}); {support}."
    )


def compare_items(
    items: pd.DataFrame,
    trials: pd.DataFrame,
    factors: Sequence[Factor],
    margins: Mapping[str, float] | None = None,
    metrics: Sequence[str] = COMPARED_METRICS,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> list[FactorItemComparison]:
    """Every factor's item-level comparison, Holm-corrected across factors per (metric, role)."""
    margins = {**DEFAULT_MARGINS, **(margins or {})}
    raw = [compare_factor_items(items, trials, f, margins, metrics, n_boot, seed) for f in factors]
    adjusted: dict[tuple[str, str], list[float]] = {}
    for metric in metrics:
        for role in ROLES:
            p = [fc.get(metric, role).result.p_two_sided for fc in raw]
            adjusted[(metric, role)] = holm(p)
    out = []
    for index, fc in enumerate(raw):
        comparisons = []
        for c in fc.comparisons:
            p_holm = adjusted[(c.metric, c.role)][index]
            comparisons.append(
                ItemComparison(
                    c.metric,
                    c.role,
                    c.result,
                    c.margin,
                    p_holm,
                    verdict(c.result, c.margin, p_holm),
                )
            )
        done = FactorItemComparison(
            fc.factor, tuple(comparisons), fc.per_camera, fc.n_trials, fc.n_pairs
        )
        out.append(
            FactorItemComparison(
                done.factor,
                done.comparisons,
                done.per_camera,
                done.n_trials,
                done.n_pairs,
                item_sentence(done),
            )
        )
    return out


# ---------------------------------------------------------------------------------------
# flags


def mask_cover_flags(items: pd.DataFrame) -> pd.DataFrame:
    """Per trial: mean predicted / true foreground fraction, mean IoU and the flag
    `flag_mask_covers_image` (predicted >= COVER_FRACTION of the image and >= COVER_RATIO x
    the true fraction: the render paints everything and IoU collapses to the true fraction)."""
    columns = ["trial_id", "pred_fg_fraction", "gt_fg_fraction", "mask_iou"]
    if items.empty:
        return pd.DataFrame(columns=[*columns, "flag_mask_covers_image"])
    means = items.groupby("trial_id", sort=True)[columns[1:]].mean().reset_index()
    means["flag_mask_covers_image"] = (means["pred_fg_fraction"] >= COVER_FRACTION) & (
        means["pred_fg_fraction"] >= COVER_RATIO * means["gt_fg_fraction"]
    )
    return means


@dataclass(frozen=True)
class MarginSettings:
    """Equivalence margins per metric, defaults overridden by `overrides`."""

    overrides: Mapping[str, float] = field(default_factory=dict)

    def margins(self) -> dict[str, float]:
        unknown = sorted(set(self.overrides) - set(DEFAULT_MARGINS))
        if unknown:
            raise ValueError(
                f"equivalence margin for unknown metric {unknown[0]!r}; "
                f"valid: {', '.join(DEFAULT_MARGINS)}"
            )
        bad = [k for k, v in self.overrides.items() if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(
                f"equivalence margin for {bad[0]} must be > 0, got {self.overrides[bad[0]]}"
            )
        return {**DEFAULT_MARGINS, **self.overrides}


# ---------------------------------------------------------------------------------------
# a study's evaluations

EVAL_DIR = "eval"
ITEMS_FILE = "items.parquet"
PROTOCOL_FILE = "protocol.json"
# report/items.parquet: these first, then the per-trial file's columns (item_id, camera, ...)
GATHERED_PREFIX = ("study", "trial_id", "seed")
ITEM_FILE_COLUMNS = (
    "item_id",
    "item_index",
    "camera",
    "role",
    *COMPARED_METRICS,
    "pred_fg_fraction",
    "gt_fg_fraction",
)


def run_eval_dir(study_dir: Path, trial_id: str) -> Path:
    """Where the Ray adapter's trial run folder keeps its evaluation (runs/<trial>/eval)."""
    return Path(study_dir) / "runs" / str(trial_id) / EVAL_DIR


def _read_protocol(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gather_items(
    study_dir: Path, trials: pd.DataFrame, study: str = ""
) -> tuple[pd.DataFrame, dict[str, dict[str, Any] | None]]:
    """Every trial's eval/items.parquet stacked (study, trial_id, seed, then its columns), and
    {trial_id: protocol record or None} for the trials that have items."""
    frames, protocols = [], {}
    for _, row in trials.iterrows():
        folder = run_eval_dir(study_dir, row["trial_id"])
        if not (folder / ITEMS_FILE).is_file():
            continue
        frame = pd.read_parquet(folder / ITEMS_FILE)
        missing = [c for c in ITEM_FILE_COLUMNS if c not in frame.columns]
        if missing:
            raise ProtocolMismatch(
                f"trial {row['trial_id']}: {folder / ITEMS_FILE} lacks column {missing[0]}; "
                "re-run `python -m analysis.evaluate` on its run folder"
            )
        frame.insert(0, "seed", row.get("seed"))
        frame.insert(0, "trial_id", str(row["trial_id"]))
        frame.insert(0, "study", study)
        frames.append(frame)
        protocols[str(row["trial_id"])] = _read_protocol(folder / PROTOCOL_FILE)
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in ITEM_FILE_COLUMNS})
        for column, dtype in (("item_id", "str"), ("role", "str"), ("item_index", "int32")):
            empty[column] = empty[column].astype(dtype)
        empty["camera"] = empty["camera"].astype("int16")
        empty.insert(0, "seed", pd.Series(dtype="Int64"))
        empty.insert(0, "trial_id", pd.Series(dtype="str"))
        empty.insert(0, "study", pd.Series(dtype="str"))
        return empty, protocols
    items = pd.concat(frames, ignore_index=True)
    items["seed"] = items["seed"].astype("Int64")
    return items, protocols


@dataclass(frozen=True)
class StudyEvaluation:
    """What the report says about a study's item-level evaluation."""

    n_analysed: int  # trials in the seed-level analysis set
    evaluated: tuple[str, ...]  # of those, the trials with items
    protocol: dict[str, Any] | None = None
    refusal: str | None = None  # the ProtocolMismatch message, when comparisons were refused
    comparisons: tuple[FactorItemComparison, ...] = ()
    margins: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    checkpoint_steps: Mapping[str, int] = field(default_factory=dict)


def evaluate_study(
    items: pd.DataFrame,
    protocols: Mapping[str, dict[str, Any] | None],
    analysed: pd.DataFrame,
    factors: Sequence[Factor],
    margins: Mapping[str, float] | None = None,
    n_boot: int = N_BOOT,
) -> StudyEvaluation:
    """Item-level comparisons of the analysed trials that were evaluated, or the refusal."""
    margins = MarginSettings(dict(margins or {})).margins()
    evaluated = tuple(sorted(t for t in analysed["trial_id"].astype(str) if t in protocols))
    base = {"n_analysed": len(analysed), "evaluated": evaluated, "margins": margins}
    if not evaluated:
        return StudyEvaluation(**base)
    try:
        protocol = check_protocols({t: protocols[t] for t in evaluated})
    except ProtocolMismatch as exc:
        return StudyEvaluation(**base, refusal=str(exc))
    steps = {t: protocols[t].get("checkpoint_step") for t in evaluated}  # type: ignore[union-attr]
    chosen = analysed[analysed["trial_id"].astype(str).isin(evaluated)]
    rows = items[items["trial_id"].isin(evaluated)]
    comparisons = compare_items(rows, chosen, factors, margins, n_boot=n_boot)
    return StudyEvaluation(
        **base, protocol=protocol, comparisons=tuple(comparisons), checkpoint_steps=steps
    )
