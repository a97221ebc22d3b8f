"""Search spaces: conditional parameters, the define-by-run function Optuna calls, and the
refusals of check_space, run against a real in-memory Optuna study (no Ray)."""

from __future__ import annotations

import pickle

import optuna
import pytest

from search_spaces import Param, SearchSpaceError, check_space, define_by_run, get_space
from trainables.gslrm.config import TrainerConfig, flat_config

MASKED_L2 = "training.losses.masked_l2_loss"
MASKED_SSIM = "training.losses.masked_ssim_loss"
SSIM_W = "training.losses.ssim_loss_weight"
THRESHOLD = "training.losses.mask_threshold"


class ForcedTrial:
    """An Optuna-like trial that answers `fixed` values and the first choice / the low end
    otherwise, recording what was asked."""

    def __init__(self, fixed: dict) -> None:
        self.fixed, self.params = fixed, {}

    def suggest_categorical(self, key: str, choices: list):
        self.params[key] = self.fixed.get(key, choices[0])
        return self.params[key]

    def suggest_float(self, key: str, low: float, high: float, log: bool = False) -> float:
        self.params[key] = self.fixed.get(key, low)
        return self.params[key]


def sample(space: list[Param], fixed: dict) -> tuple[dict, dict]:
    """One define-by-run call with some values forced: (returned constants, sampled params)."""
    trial = ForcedTrial(fixed)
    constants = define_by_run(space, {"validation.max_items": 3})(trial)
    return constants, trial.params


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_threshold_is_sampled_only_when_a_masked_loss_is_on() -> None:
    space = get_space("mouse_loss")
    off = {MASKED_L2: False, SSIM_W: 0.0}
    _, params = sample(space, off)
    assert THRESHOLD not in params and MASKED_SSIM not in params  # SSIM off: no masked SSIM
    _, params = sample(space, {MASKED_L2: True, SSIM_W: 0.0})
    assert params[THRESHOLD] == 0.1
    # masked SSIM counts only when SSIM is on
    _, params = sample(space, {MASKED_L2: False, SSIM_W: 0.5, MASKED_SSIM: True})
    assert THRESHOLD in params
    _, params = sample(space, {MASKED_L2: False, SSIM_W: 0.5, MASKED_SSIM: False})
    assert THRESHOLD not in params


def test_define_by_run_in_a_real_optuna_study() -> None:
    space = get_space("mouse_loss")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_threshold = set()
    for _ in range(12):
        trial = study.ask()
        assert define_by_run(space, {"validation.max_items": 3})(trial) == {
            "validation.max_items": 3
        }
        params = trial.params
        assert {p.key for p in space if p.when is None} <= set(params)
        assert 1e-5 <= params["training.optimizer.lr"] <= 1e-3
        masked = params[MASKED_L2] or (params[SSIM_W] > 0 and params.get(MASKED_SSIM))
        assert (THRESHOLD in params) == bool(masked)
        seen_threshold.add(THRESHOLD in params)
        study.tell(trial, 0.0)
    assert seen_threshold == {True, False}  # both branches were exercised


def test_define_by_run_survives_pickling() -> None:
    """Tune saves the searcher (with this function) in the study folder and loads it on resume."""
    function = define_by_run(get_space("mouse_loss"), {"a": 1})
    restored = pickle.loads(pickle.dumps(function))
    assert restored == function


def test_every_named_space_names_real_config_keys() -> None:
    keys = set(flat_config(TrainerConfig()))
    check_space(get_space("mouse_loss"), keys)  # does not raise


def test_check_space_refuses_an_unknown_key_and_the_metric_threshold() -> None:
    keys = set(flat_config(TrainerConfig()))
    with pytest.raises(SearchSpaceError, match="training.losses.nope: .*lacks"):
        check_space([Param("training.losses.nope", choices=[1])], keys)
    with pytest.raises(
        SearchSpaceError, match="validation.mask_iou_threshold: may not be searched"
    ):
        check_space([Param("validation.mask_iou_threshold", low=0.05, high=0.2)], keys)


def test_unknown_space_lists_the_valid_ones() -> None:
    with pytest.raises(SearchSpaceError, match="unknown search space 'nope'; valid: mouse_loss"):
        get_space("nope")
