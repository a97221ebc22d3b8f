"""Search-space parameters and the named spaces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The evaluation threshold of mask IoU is a property of the metric, fixed per study; searching
# it would let a trial game its own score.
FORBIDDEN_KEYS = ("validation.mask_iou_threshold",)


class SearchSpaceError(ValueError):
    """A search space that names an unknown space or a key the trainer config lacks."""


@dataclass(frozen=True)
class Param:
    """One searched config key: categorical `choices`, or a float range [low, high]."""

    key: str
    choices: Sequence[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    when: Callable[[dict[str, Any]], bool] | None = None  # sampled only when true

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def _any_masked_loss(values: dict[str, Any]) -> bool:
    return bool(values.get("training.losses.masked_l2_loss")) or (
        bool(values.get("training.losses.masked_ssim_loss"))
        and values.get("training.losses.ssim_loss_weight", 0.0) > 0
    )


def _ssim_on(values: dict[str, Any]) -> bool:
    return values.get("training.losses.ssim_loss_weight", 0.0) > 0


MOUSE_LOSS: list[Param] = [
    Param("mouse.use_mouse_dataset", choices=[False, True]),  # random vs fixed rig order
    Param("training.losses.masked_l2_loss", choices=[False, True]),
    Param("training.losses.ssim_loss_weight", choices=[0.0, 0.25, 0.5, 1.0]),
    Param("training.losses.masked_ssim_loss", choices=[False, True], when=_ssim_on),
    Param("training.losses.mask_threshold", low=0.1, high=0.9, when=_any_masked_loss),
    Param(
        "training.losses.background_loss_weight", choices=[0.0, 0.03, 0.1, 0.3]
    ),  # exactly 0 included
    Param("training.optimizer.lr", low=1e-5, high=1e-3, log=True),
]

# The Pareto study's space: mouse_loss plus the silhouette loss weight, at the reference fork's
# ablation levels (0 / 0.3 / 0.5 / 1.0); mouse_loss itself stays as it was, so earlier
# mouse_loss_sweep results remain comparable with new ones.
MOUSE_PARETO: list[Param] = [
    *MOUSE_LOSS,
    Param("training.losses.alpha_loss_weight", choices=[0.0, 0.3, 0.5, 1.0]),
]

SPACES: dict[str, list[Param]] = {"mouse_loss": MOUSE_LOSS, "mouse_pareto": MOUSE_PARETO}


def get_space(name: str) -> list[Param]:
    if name not in SPACES:
        raise SearchSpaceError(f"unknown search space {name!r}; valid: {', '.join(sorted(SPACES))}")
    return SPACES[name]


def check_space(space: list[Param], config_keys: set[str]) -> None:
    """Every key must exist in the trainer config and none may be a forbidden (metric) key."""
    for param in space:
        if param.key in FORBIDDEN_KEYS:
            raise SearchSpaceError(
                f"{param.key}: may not be searched (it is the metric's own threshold)"
            )
        if param.key not in config_keys:
            raise SearchSpaceError(
                f"{param.key}: search space names a key the trainer config lacks"
            )


@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run function (a picklable object, as Tune saves its searcher):
    samples the space in order, skipping parameters whose condition is false."""

    space: tuple[Param, ...]
    constants: tuple[tuple[str, Any], ...] = ()

    def __call__(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.space:
            if param.when is None or param.when(values):
                values[param.key] = param.suggest(trial)
        return dict(self.constants)


def define_by_run(space: list[Param], constants: dict[str, Any]) -> DefineByRun:
    return DefineByRun(tuple(space), tuple(constants.items()))
