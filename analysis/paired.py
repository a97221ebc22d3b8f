"""Item-level comparisons: paired differences on the identical (item, view) set, verdicts
from analysis.verdicts (seeds as the unit), one confirmatory question per factor.

Input: the gathered item table (one row per trial x item x view: trial_id, seed, item_id,
camera, role, metrics; see trainables/gslrm/evaluate.py) and the trials table. Pure
pandas / numpy: no torch, no Ray.

Pairs. Two trials pair up as in analysis.compare (same seed, every other varying config key
equal); within a pair group, the difference of a metric on one (item, view) is the mean over
the group's treatment trials minus the mean over its baseline trials. An undefined (NaN) value
in some trials of the study is a failed prediction and is scored at the metric's floor
(analysis.verdicts.score_undefined, counted per arm), also where both arms of a group failed;
an (item, view) undefined in every trial (no ground-truth foreground) is left out and counted.

Verdicts. analysis.verdicts.paired_verdict on every metric x view role (all / input / novel)
and per rig camera: per-seed mean differences (the pair groups of a seed averaged first),
Student t over seeds, TOST within the metric's margin (verdicts.DEFAULT_MARGINS unless the
study's study.json or --margin sets one), seeds won (k of n). The study's confirmatory question
is its primary metric on its primary view role (PRIMARY_METRIC on all target views unless
study.json's `primary_metric` / `primary_role` say otherwise): Holm runs across the study's
factors on that one comparison each. Every other metric, role and camera row is exploratory:
its p value is uncorrected and the report labels it so.

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

from analysis import verdicts
from analysis.compare import level_labels, pair_key_columns, pairing_groups
from analysis.factors import Factor
from analysis.verdicts import Verdict, paired_verdict
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
COMPARED_METRICS = (
    "psnr_fg",
    "psnr_bal",
    "psnr_union",
    "psnr_int",
    "ssim_fg",
    "mask_iou",
    "coverage",
    "psnr",
)
PRIMARY_METRIC = "psnr_fg"
PRIMARY_ROLE = "all"  # all target views
DEFAULT_MARGINS: dict[str, float] = dict(verdicts.DEFAULT_MARGINS)
METRIC_UNITS = {
    "psnr": "dB",
    "psnr_fg": "dB",
    "psnr_int": "dB",
    "psnr_union": "dB",
    "psnr_bal": "dB",
}
METRIC_LABELS = {
    "psnr": "whole-image PSNR",
    "psnr_fg": "foreground PSNR",
    "psnr_int": "PSNR on the silhouette intersection",
    "psnr_union": "PSNR on the silhouette union",
    "psnr_bal": "balanced PSNR (mouse and background weighted equally)",
    "ssim_fg": "foreground SSIM",
    "mask_iou": "mask IoU",
    "coverage": "foreground coverage",
}
ROLES = ("all", "input", "novel")
ALPHA = verdicts.ALPHA
VERDICTS = verdicts.VERDICTS
holm = verdicts.holm
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
# pairing on items

UNDEFINED_COLUMNS = (verdicts.UNDEFINED_TREATMENT, verdicts.UNDEFINED_BASELINE)


def _flag(column: str, metric: str) -> str:
    """Name of the per-metric column marking floor-scored values of one arm."""
    return f"{column}:{metric}"


def paired_item_differences(
    items: pd.DataFrame, trials: pd.DataFrame, factor: Factor, metrics: Sequence[str]
) -> pd.DataFrame:
    """One row per (pair group, item, camera, role): seed, group, block, each metric's treatment −
    baseline difference (mean over the group's trials of each level) and, per metric, whether
    the treatment / baseline arm had an undefined value scored at the floor
    (`undefined_treatment:<metric>`, `undefined_baseline:<metric>`; verdicts.score_undefined).
    A metric undefined in every trial of the study for an (item, view) (no ground-truth
    foreground) stays NaN.

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
    flags = [_flag(c, m) for m in metrics for c in UNDEFINED_COLUMNS]
    empty = pd.DataFrame(columns=["group", "seed", *ITEM_KEYS, "block", *metrics, *flags])
    joined = items.drop(columns=["seed"], errors="ignore").merge(frame, on="trial_id")
    keys = ["group", *ITEM_KEYS]
    # Undefined in both arms of one pair group but defined in another group (both collapsed)
    # is a failure of both arms, scored at the floor; only an (item, view) that no trial of
    # the study defines (no ground-truth foreground) is unscorable.
    joined, scored = verdicts.score_undefined(joined, metrics, list(ITEM_KEYS))
    for metric in metrics:
        joined[f"floor:{metric}"] = scored[metric].to_numpy(dtype=bool)
    grouped = joined.groupby([*keys, "level"], sort=True)
    means = grouped[list(metrics)].mean()
    floors = grouped[[f"floor:{m}" for m in metrics]].any()
    base, treat = factor.baseline.name, factor.treatment.name
    levels = means.index.get_level_values("level")
    if base not in set(levels) or treat not in set(levels):
        return empty
    diff = means.xs(treat, level="level") - means.xs(base, level="level")
    for metric in metrics:
        for column, level in zip(UNDEFINED_COLUMNS, (treat, base), strict=True):
            diff[_flag(column, metric)] = floors.xs(level, level="level")[f"floor:{metric}"]
    diff = diff[diff[list(metrics)].notna().any(axis=1)].reset_index()
    seeds = frame.drop_duplicates("group").set_index("group")["seed"]
    # a group whose trials carry no seed is its own cluster
    diff["seed"] = [
        seeds.get(g) if not pd.isna(seeds.get(g)) else f"group:{g}" for g in diff["group"]
    ]
    diff["block"] = diff["item_id"].map(item_blocks(items)).fillna(diff["item_id"])
    return diff[["group", "seed", *ITEM_KEYS, "block", *metrics, *flags]]


def item_blocks(items: pd.DataFrame) -> pd.Series:
    """{item_id: block} of an item table; each item its own block when it has no `block`."""
    if "block" not in items.columns:
        ids = items["item_id"].drop_duplicates()
        return pd.Series(ids.to_numpy(), index=ids.to_numpy())
    pairs = items[["item_id", "block"]].drop_duplicates("item_id")
    return pairs.set_index("item_id")["block"].astype(str)


@dataclass(frozen=True)
class ItemComparison:
    metric: str
    role: str  # all | input | novel
    result: Verdict
    margin: float
    confirmatory: bool = False  # the study's one question per factor (Holm across factors)
    n_unscorable: int = 0  # item views undefined in every trial (no truth to score): left out

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @property
    def p_holm(self) -> float:
        """Holm-adjusted p of the confirmatory comparison; NaN for exploratory rows."""
        return self.result.p_adjusted


@dataclass(frozen=True)
class FactorItemComparison:
    factor: Factor
    comparisons: tuple[ItemComparison, ...]
    # camera, role, n_seeds, n_items, mean, ci_low, ci_high, seeds_won, verdict of the primary
    # metric: exploratory, uncorrected
    per_camera: pd.DataFrame
    n_trials: int
    n_pairs: int
    sentence: str = ""
    primary: tuple[str, str] = (PRIMARY_METRIC, PRIMARY_ROLE)

    def get(self, metric: str, role: str = "all") -> ItemComparison:
        return next(c for c in self.comparisons if c.metric == metric and c.role == role)

    def confirmatory(self) -> ItemComparison:
        return self.get(*self.primary)


def _subset(differences: pd.DataFrame, role: str) -> pd.DataFrame:
    return differences if role == "all" else differences[differences["role"] == role]


def metric_verdict(part: pd.DataFrame, metric: str, margin: float) -> tuple[Verdict, int]:
    """paired_verdict on one metric of the pair builder's rows, and the number of item views
    left out because no trial of the pair could score them (both arms NaN)."""
    values = part[metric].to_numpy(dtype=float)
    finite = np.isfinite(values)
    columns = {"seed": "seed", "item_id": "item_id", metric: metric}
    if "block" in part.columns:
        columns["block"] = "block"
    columns.update({_flag(c, metric): c for c in UNDEFINED_COLUMNS if _flag(c, metric) in part})
    view = part.loc[finite, list(columns)].rename(columns=columns)
    block = "block" if "block" in view.columns else None
    return paired_verdict(view, metric, margin, block=block), int((~finite).sum())


def compare_factor_items(
    items: pd.DataFrame,
    trials: pd.DataFrame,
    factor: Factor,
    margins: Mapping[str, float],
    metrics: Sequence[str] = COMPARED_METRICS,
    primary: tuple[str, str] = (PRIMARY_METRIC, PRIMARY_ROLE),
) -> FactorItemComparison:
    """Verdicts on every metric x role of one factor (Holm is applied by compare_items)."""
    differences = paired_item_differences(items, trials, factor, metrics)
    comparisons = []
    for role in ROLES:
        part = _subset(differences, role)
        for metric in metrics:
            result, unscorable = metric_verdict(part, metric, margins[metric])
            comparisons.append(
                ItemComparison(
                    metric,
                    role,
                    result,
                    margins[metric],
                    confirmatory=(metric, role) == primary,
                    n_unscorable=unscorable,
                )
            )
    cameras = []
    for (camera, role), part in differences.groupby(["camera", "role"], sort=True):
        result, _ = metric_verdict(part, primary[0], margins[primary[0]])
        cameras.append(
            {
                "camera": int(camera),
                "role": role,
                "n_seeds": result.n_seeds,
                "n_items": result.n_items,
                "n_blocks": result.n_blocks,
                "mean": result.estimate,
                "ci_low": result.ci_low,
                "ci_high": result.ci_high,
                "seeds_won": result.seeds_won,
                "verdict": result.verdict,
            }
        )
    analysed = items["trial_id"].isin(trials["trial_id"])
    return FactorItemComparison(
        factor=factor,
        comparisons=tuple(comparisons),
        per_camera=pd.DataFrame(cameras, columns=CAMERA_COLUMNS),
        n_trials=int(items.loc[analysed, "trial_id"].nunique()),
        n_pairs=int(differences["group"].nunique()) if len(differences) else 0,
        primary=primary,
    )


CAMERA_COLUMNS = [
    "camera",
    "role",
    "n_seeds",
    "n_items",
    "n_blocks",
    "mean",
    "ci_low",
    "ci_high",
    "seeds_won",
    "verdict",
]


def _amount(metric: str, value: float) -> str:
    unit = METRIC_UNITS.get(metric, "")
    decimals = 2 if unit == "dB" else 3
    return f"{value:.{decimals}f}{' ' + unit if unit else ''}"


def _support(c: ItemComparison) -> str:
    r = c.result
    text = (
        f"{r.n_seeds} seed{'s' if r.n_seeds != 1 else ''} x {r.n_items} items "
        f"({r.n_rows} paired item-views)"
    )
    if 0 < r.n_blocks < r.n_items:  # correlated items: say how few independent blocks there are
        text += f"; the items form {r.n_blocks} blocks of correlated items"
    if r.undefined_treatment or r.undefined_baseline:
        floor = _amount(c.metric, verdicts.FLOORS[c.metric])
        text += (
            f"; undefined (empty prediction) in {r.undefined_treatment} treatment and "
            f"{r.undefined_baseline} baseline item-views, scored as failures at {floor}"
        )
    if c.n_unscorable:
        text += f"; {c.n_unscorable} item-views without a value in any trial left out"
    return text


def seeds_line(c: ItemComparison) -> str:
    """What the margin needs in seeds, from this comparison's seed spread: the planner's line
    (python -m analysis.plan), at the spread's point estimate and its 80% upper limit."""
    r = c.result
    margin = _amount(c.metric, c.margin)
    if r.n_seeds < verdicts.MIN_SEEDS:
        return (
            f"A verdict needs at least {verdicts.MIN_SEEDS} seeds; how many a ±{margin} "
            "question needs cannot be read from one seed's spread."
        )
    return plan_line(verdicts.plan(r.sd_seeds, r.n_seeds, c.margin, r.alpha), c.metric)


def plan_line(p: verdicts.Plan, metric: str) -> str:
    """ "Seeds for 80% power ..." for one metric's margin (shared with analysis.plan)."""
    margin = _amount(metric, p.margin)
    return (
        f"Seeds for 80% power (from the spread of {p.n_seeds} seeds' mean differences, sd "
        f"{_amount(metric, p.sd)}, 80% upper limit {_amount(metric, p.sd_upper)}): "
        f"{p.detect}-{p.detect_upper} to detect a {margin} difference, "
        f"{p.equivalent}-{p.equivalent_upper} to show equivalence within ±{margin}."
    )


def item_sentence(comparison: FactorItemComparison, metric: str | None = None) -> str:
    """One sentence for the factor on the confirmatory metric and role (or `metric` over all
    views): verdict, size, interval, seeds won, support, then what the margin needs in seeds."""
    factor = comparison.factor
    c = comparison.confirmatory() if metric is None else comparison.get(metric)
    r = c.result
    label = METRIC_LABELS.get(c.metric, c.metric)
    base, treat = factor.baseline.name, factor.treatment.name
    if r.n_seeds == 0:
        return f"Item level: no paired items to compare {base} and {treat} on {label}."
    if r.verdict == "too few seeds":
        return (
            f"Item level: too few seeds for a verdict on {label}: {treat} − {base} "
            f"{_amount(c.metric, r.estimate)} from one seed (its item-to-item spread is not the "
            f"seed-to-seed spread a config comparison needs); {_support(c)}. {seeds_line(c)}"
        )
    interval = f"95% CI [{_amount(c.metric, r.ci_low)}, {_amount(c.metric, r.ci_high)}]"
    p_name = "Holm p" if c.confirmatory else "p (uncorrected)"
    stats = f"{p_name} {r.p_decision:.3g}, {treat} better in {r.seeds_won} of {r.n_seeds} seeds"
    if r.verdict in ("better", "worse"):
        winner, loser = (
            (factor.treatment, base) if r.verdict == "better" else (factor.baseline, treat)
        )
        text = (
            f"Item level: {winner.phrase} beats {loser} on {label} by "
            f"{_amount(c.metric, abs(r.estimate))}, {interval} of {treat} − {base}, {stats}; "
            f"{_support(c)}."
        )
    elif r.verdict == "equivalent":
        text = (
            f"Item level: {base} and {treat} are equivalent on {label} within "
            f"±{_amount(c.metric, c.margin)} (difference {_amount(c.metric, r.estimate)}, 90% CI "
            f"[{_amount(c.metric, r.eq_low)}, {_amount(c.metric, r.eq_high)}] inside the "
            f"margin, TOST p {r.p_equivalence:.3g}); {_support(c)}."
        )
    else:
        text = (
            f"Item level: inconclusive on {label} between {base} and {treat} (difference "
            f"{_amount(c.metric, r.estimate)}, {interval}, {stats}; neither a significant "
            f"difference nor a 90% interval inside ±{_amount(c.metric, c.margin)}); "
            f"{_support(c)}."
        )
    return f"{text} {seeds_line(c)}"


def compare_items(
    items: pd.DataFrame,
    trials: pd.DataFrame,
    factors: Sequence[Factor],
    margins: Mapping[str, float] | None = None,
    metrics: Sequence[str] = COMPARED_METRICS,
    primary: tuple[str, str] = (PRIMARY_METRIC, PRIMARY_ROLE),
) -> list[FactorItemComparison]:
    """Every factor's item-level comparison. The confirmatory family is the primary metric and
    view role, one comparison per factor, Holm-corrected across the factors; every other
    metric, role and camera row is exploratory (uncorrected p, labelled so)."""
    margins = {**DEFAULT_MARGINS, **(margins or {})}
    raw = [compare_factor_items(items, trials, f, margins, metrics, primary) for f in factors]
    family = verdicts.holm_adjusted([fc.confirmatory().result for fc in raw])
    out = []
    for fc, adjusted in zip(raw, family, strict=True):
        comparisons = tuple(
            dataclasses.replace(c, result=adjusted) if c.confirmatory else c for c in fc.comparisons
        )
        done = dataclasses.replace(fc, comparisons=comparisons)
        out.append(dataclasses.replace(done, sentence=item_sentence(done)))
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


# Read when present; an items.parquet written before blocks existed is read as every item its
# own block (the independence it assumed).
OPTIONAL_ITEM_COLUMNS = ("block",)


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
        if "block" not in frame.columns:  # written before blocks: each item its own block
            frame.insert(1, "block", frame["item_id"].astype(str))
        frame.insert(0, "seed", row.get("seed"))
        frame.insert(0, "trial_id", str(row["trial_id"]))
        frame.insert(0, "study", study)
        frames.append(frame)
        protocols[str(row["trial_id"])] = _read_protocol(folder / PROTOCOL_FILE)
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in ITEM_FILE_COLUMNS})
        empty.insert(1, "block", pd.Series(dtype="str"))
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


def shared_targets(items: pd.DataFrame) -> tuple[pd.DataFrame, tuple[int, ...] | None]:
    """(the rows to compare, the shared target cameras, or None when nothing was dropped).

    When every trial has the same input cameras (each camera has one role across the trials),
    all rows are compared. Otherwise (e.g. view_count_ablation: 1..5 input views) levels are
    compared on the cameras that are a target (`novel`) in every trial: a camera one level sees
    as input would reward that level for copying it, and a camera not every level renders is
    not a paired question. Each trial's own inputs are reported apart (`own_views`).
    """
    if items.empty:
        return items, None
    roles = items.groupby("camera", sort=True)["role"].agg(lambda r: frozenset(r))
    if all(len(r) == 1 for r in roles):
        return items, None
    shared = tuple(int(c) for c, r in roles.items() if r == frozenset({"novel"}))
    return items[items["camera"].isin(shared)], shared


def input_label(cameras: Sequence[int]) -> str:
    """'0-2' for cameras 0, 1, 2; '0, 3' for a gap; 'none' for no input."""
    ordered = sorted(int(c) for c in cameras)
    if not ordered:
        return "none"
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


OWN_VIEW_COLUMNS = ["inputs", "role", "trials", "item_views", "mean"]


def own_views(items: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per set of input cameras and view role: the mean of `metric` over its trials' own item
    views (each trial's mean first, then trials with equal weight). Descriptive, never compared
    across sets: each row is scored on different cameras."""
    if items.empty:
        return pd.DataFrame(columns=OWN_VIEW_COLUMNS)
    inputs = (
        items[items["role"] == "input"]
        .groupby("trial_id")["camera"]
        .agg(lambda c: input_label(sorted(set(c))))
    )
    frame = items.assign(inputs=items["trial_id"].map(inputs).fillna("none"))
    per_trial = frame.groupby(["inputs", "role", "trial_id"], sort=True)[metric].agg(
        ["mean", "size"]
    )
    rows = [
        {
            "inputs": key[0],
            "role": key[1],
            "trials": len(group),
            "item_views": int(group["size"].sum()),
            "mean": float(group["mean"].mean()),
        }
        for key, group in per_trial.groupby(level=[0, 1], sort=True)
    ]
    return pd.DataFrame(rows, columns=OWN_VIEW_COLUMNS)


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
    primary: tuple[str, str] = (PRIMARY_METRIC, PRIMARY_ROLE)
    margin_source: str = "defaults"  # where the margins came from, for the report
    # cameras compared when trials differ in their input cameras (shared_targets), else None
    shared_cameras: tuple[int, ...] | None = None
    # each input-camera set's own views, described apart (own_views); None when all agree
    own_views: pd.DataFrame | None = None


def study_question(record: Mapping[str, Any] | None) -> tuple[tuple[str, str], dict[str, float]]:
    """The study's confirmatory question (primary metric, view role) and its margins, from its
    study.json record, read defensively: a missing, unknown or malformed entry keeps the default
    (psnr_fg on all target views; DEFAULT_MARGINS). `val/psnr_fg` names the same metric."""
    record = record if isinstance(record, Mapping) else {}
    metric = str(record.get("primary_metric", PRIMARY_METRIC)).removeprefix("val/")
    role = str(record.get("primary_role", PRIMARY_ROLE))
    primary = (
        metric if metric in COMPARED_METRICS else PRIMARY_METRIC,
        role if role in ROLES else PRIMARY_ROLE,
    )
    return primary, verdicts.margins_from(record, DEFAULT_MARGINS)


def read_study_record(study_dir: Path) -> dict[str, Any]:
    """study.json as a dict ({} when unreadable: the caller falls back to defaults)."""
    return _read_protocol(Path(study_dir) / "study.json") or {}


def evaluate_study(
    items: pd.DataFrame,
    protocols: Mapping[str, dict[str, Any] | None],
    analysed: pd.DataFrame,
    factors: Sequence[Factor],
    margins: Mapping[str, float] | None = None,
    record: Mapping[str, Any] | None = None,
) -> StudyEvaluation:
    """Item-level comparisons of the analysed trials that were evaluated, or the refusal.

    margins: --margin overrides, over the study record's `margins`, over the defaults.
    """
    primary, study_margins = study_question(record)
    overrides = dict(margins or {})
    MarginSettings(overrides).margins()  # refuses unknown metrics and non-positive margins
    margins = {**study_margins, **overrides}
    source = "study.json" if study_margins != DEFAULT_MARGINS else "defaults"
    if overrides:
        source += " and --margin"
    evaluated = tuple(sorted(t for t in analysed["trial_id"].astype(str) if t in protocols))
    base = {
        "n_analysed": len(analysed),
        "evaluated": evaluated,
        "margins": margins,
        "primary": primary,
        "margin_source": source,
    }
    if not evaluated:
        return StudyEvaluation(**base)
    try:
        protocol = check_protocols({t: protocols[t] for t in evaluated})
    except ProtocolMismatch as exc:
        return StudyEvaluation(**base, refusal=str(exc))
    steps = {t: protocols[t].get("checkpoint_step") for t in evaluated}  # type: ignore[union-attr]
    chosen = analysed[analysed["trial_id"].astype(str).isin(evaluated)]
    evaluated_rows = items[items["trial_id"].isin(evaluated)]
    rows, shared = shared_targets(evaluated_rows)
    extra: dict[str, Any] = {}
    if shared is not None:
        extra = {"shared_cameras": shared, "own_views": own_views(evaluated_rows, primary[0])}
        if not shared:
            return StudyEvaluation(
                **base,
                **extra,
                refusal="the trials' input cameras differ and no camera is a target of every "
                "one of them, so no (item, view) is the same question for all",
            )
    comparisons = compare_items(rows, chosen, factors, margins, primary=primary)
    return StudyEvaluation(
        **base,
        **extra,
        protocol=protocol,
        comparisons=tuple(comparisons),
        checkpoint_steps=steps,
    )
