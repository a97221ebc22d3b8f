"""The study's factors as data: which config key, how its values map to two levels.

Every factor has exactly two levels, baseline first; differences are always
``treatment - baseline`` (second level minus first). To add a factor, add one entry to
``FACTORS``; nothing else in the package names a config key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Level:
    name: str  # short, used as table label and sentence object ("random")
    phrase: str  # used as sentence subject ("Fixed rig order (mouse)")


@dataclass(frozen=True)
class Factor:
    name: str  # file-name safe; plots are factor_<name>.png
    title: str
    keys: tuple[str, ...]  # config keys this factor owns; pairing ignores them
    baseline: Level
    treatment: Level
    classify: Callable[[Any], str | None]  # config value -> level name, None if unknown

    @property
    def levels(self) -> tuple[Level, Level]:
        return (self.baseline, self.treatment)

    @property
    def key(self) -> str:
        return self.keys[0]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | type(pd.NA)) and pd.isna(value))


def _as_bool(value: Any) -> bool | None:
    # Values come from Parquet-typed columns but also from hand-edited params.json files.
    if _is_missing(value):
        return None
    if isinstance(value, str):
        lowered = value.strip().lower()
        return {"true": True, "1": True, "false": False, "0": False}.get(lowered)
    try:
        return bool(value)
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    if _is_missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _on_off(value: Any) -> str | None:
    flag = _as_bool(value)
    return None if flag is None else ("on" if flag else "off")


def _zero_or_positive(value: Any) -> str | None:
    number = _as_float(value)
    if number is None:
        return None
    return "0" if number == 0 else "> 0"


def _dataset_type(value: Any) -> str | None:
    flag = _as_bool(value)
    return None if flag is None else ("mouse" if flag else "random")


FACTORS: tuple[Factor, ...] = (
    Factor(
        name="dataset_type",
        title="Dataset type",
        keys=("mouse.use_mouse_dataset",),
        baseline=Level("random", "Random view order (random)"),
        treatment=Level("mouse", "Fixed rig order (mouse)"),
        classify=_dataset_type,
    ),
    Factor(
        name="masked_l2",
        title="Masked L2 loss",
        keys=("training.losses.masked_l2_loss",),
        baseline=Level("off", "Masked L2 off"),
        treatment=Level("on", "Masked L2 on"),
        classify=_on_off,
    ),
    Factor(
        name="masked_ssim",
        title="Masked SSIM loss",
        keys=("training.losses.masked_ssim_loss",),
        baseline=Level("off", "Masked SSIM off"),
        treatment=Level("on", "Masked SSIM on"),
        classify=_on_off,
    ),
    Factor(
        name="masked_losses",
        title="Masked L2 + SSIM losses (switched together)",
        keys=("training.losses.masked_l2_loss", "training.losses.masked_ssim_loss"),
        baseline=Level("off", "Masked L2 + SSIM off"),
        treatment=Level("on", "Masked L2 + SSIM on"),
        classify=_on_off,
    ),
    Factor(
        name="background_loss",
        title="Background loss weight",
        keys=("training.losses.background_loss_weight",),
        baseline=Level("0", "Background loss weight 0"),
        treatment=Level("> 0", "Background loss weight > 0"),
        classify=_zero_or_positive,
    ),
    Factor(
        name="ssim_loss",
        title="SSIM loss weight",
        keys=("training.losses.ssim_loss_weight",),
        baseline=Level("0", "SSIM loss weight 0"),
        treatment=Level("> 0", "SSIM loss weight > 0"),
        classify=_zero_or_positive,
    ),
)

DATASET_TYPE = FACTORS[0]


@dataclass(frozen=True)
class LevelFactor:
    """A factor of several ordered numeric levels (e.g. 1..5 input views), reported per level
    (mean with its interval) rather than as one treatment − baseline difference. Its levels are
    the distinct values of `key` among the analysed trials, in numeric order."""

    name: str  # file-name safe; the plot is levels_<name>.png
    title: str
    key: str

    def level(self, value: Any) -> float | None:
        """A config value -> its level (a number), None when missing or not a number."""
        return _as_float(value)


LEVEL_FACTORS: tuple[LevelFactor, ...] = (
    LevelFactor(name="input_views", title="Input views", key="training.dataset.num_input_views"),
    LevelFactor(
        name="alpha_loss", title="Silhouette loss weight", key="training.losses.alpha_loss_weight"
    ),
)


def _level_name(value: float) -> str:
    return f"{value:g}"


def level_pair_factor(factor: LevelFactor, low: float, high: float) -> Factor:
    """Two levels of a multi-level factor as a two-level Factor (baseline `low`, treatment
    `high`; trials at other levels are classified None and left out of its pairs), so the
    item-level verdicts can compare e.g. 2 vs 3 input views like any other factor."""

    def classify(value: Any) -> str | None:
        level = factor.level(value)
        return _level_name(level) if level in (low, high) else None

    low_name, high_name = _level_name(low), _level_name(high)
    return Factor(
        name=f"{factor.name}_{low_name}_vs_{high_name}".replace(".", "p"),
        title=f"{factor.title}: {low_name} vs {high_name}",
        keys=(factor.key,),
        baseline=Level(low_name, f"{factor.title} {low_name}"),
        treatment=Level(high_name, f"{factor.title} {high_name}"),
        classify=classify,
    )
