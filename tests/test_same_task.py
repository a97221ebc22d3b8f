"""Issue 22 item 8: selection and test on the same task; view-count levels compared on the
target cameras every level shares, each level's own inputs reported apart."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import paired
from analysis.factors import LEVEL_FACTORS
from analysis.levels import level_pair_factors
from trainables.gslrm.config import load_config
from trainables.gslrm.data.dataset import rig_order_config
from trainables.gslrm.evaluate import evaluation_config, item_set_hash

INPUT_VIEWS = LEVEL_FACTORS[0]
KEY = "training.dataset.num_input_views"


def view_count_tables(levels=(2, 3), seeds=3, items=4, gain=0.8):
    """Trials of num_input_views in `levels` x seeds, all 6 cameras scored (rig order), roles
    from the level. psnr_fg = 20 + seed + item/10 + gain x inputs on novel cameras, 30 on
    input cameras (a level copying its inputs looks excellent there)."""
    trials, rows = [], []
    for seed in range(seeds):
        for n in levels:
            trial = f"v{n}s{seed}"
            trials.append({"trial_id": trial, "seed": seed, KEY: n, "training.runtime.seed": seed})
            for item in range(items):
                for camera in range(6):
                    novel = camera >= n
                    value = 20 + seed + item / 10 + gain * n if novel else 30.0
                    rows.append(
                        {
                            "trial_id": trial,
                            "seed": seed,
                            "item_id": f"test_{item:06d}",
                            "camera": camera,
                            "role": "novel" if novel else "input",
                            **{m: 0.5 for m in paired.COMPARED_METRICS},
                            "psnr_fg": value,
                            "pred_fg_fraction": 0.06,
                            "gt_fg_fraction": 0.05,
                        }
                    )
    return pd.DataFrame(rows), pd.DataFrame(trials)


def protocol(n_inputs: int) -> dict:
    """What evaluate_run now records: nothing compared depends on the input count."""
    keys = [(f"test_{i:06d}", c) for i in range(4) for c in range(6)]
    return {
        "metrics_version": 2,
        "item_set_hash": item_set_hash(keys),
        "checkpoint_rule": "best",
        "checkpoint_objective": "val/psnr_bal",
        "pred_mask_threshold": 0.1,
        "gt_alpha_threshold": 0.5,
        "image_size": 64,
        "background_color": "white",
        "view_order": "rig: targets cameras 0-5",
        "input_cameras": list(range(n_inputs)),
    }


def test_view_count_levels_get_a_verdict_on_the_shared_target_cameras() -> None:
    items, trials = view_count_tables(levels=(2, 3))
    protocols = {t: protocol(int(t[1])) for t in trials["trial_id"]}
    factors = level_pair_factors(trials)
    assert [f.name for f in factors] == ["input_views_2_vs_3"]
    evaluation = paired.evaluate_study(items, protocols, trials, factors)
    assert evaluation.refusal is None
    # camera 2 is an input of level 3 and a target of level 2: only 3, 4, 5 are shared targets
    assert evaluation.shared_cameras == (3, 4, 5)
    (comparison,) = evaluation.comparisons
    verdict = comparison.confirmatory().result
    # 0.8 dB per added view on every shared target, exactly: 3 seeds x 4 items x 3 cameras
    assert verdict.estimate == pytest.approx(0.8)
    assert (verdict.n_seeds, verdict.n_items, verdict.n_rows) == (3, 4, 36)
    assert verdict.verdict == "better" and comparison.confirmatory
    assert set(comparison.per_camera["camera"]) == {3, 4, 5}
    own = evaluation.own_views.set_index(["inputs", "role"])["mean"]
    assert own[("0-1", "input")] == pytest.approx(30.0)
    assert own[("0-2", "input")] == pytest.approx(30.0)
    # level 2's own targets are cameras 2-5: mean 20 + mean seed 1 + mean item 0.15 + 1.6
    assert own[("0-1", "novel")] == pytest.approx(22.75)
    assert own[("0-2", "novel")] == pytest.approx(23.55)


def test_adjacent_levels_are_each_a_question_and_others_are_left_out() -> None:
    items, trials = view_count_tables(levels=(1, 3, 5))
    factors = level_pair_factors(trials)
    assert [f.title for f in factors] == ["Input views: 1 vs 3", "Input views: 3 vs 5"]
    assert factors[0].classify(5) is None and factors[0].classify(3) == "3"
    protocols = {t: protocol(int(t[1])) for t in trials["trial_id"]}
    evaluation = paired.evaluate_study(items, protocols, trials, factors)
    assert evaluation.shared_cameras == (5,)  # level 5's inputs are 0-4
    estimates = [c.confirmatory().result.estimate for c in evaluation.comparisons]
    assert estimates == pytest.approx([1.6, 1.6])  # 2 more views x 0.8 dB each


def test_same_inputs_compare_every_row() -> None:
    items, _ = view_count_tables(levels=(3,))
    rows, shared = paired.shared_targets(items)
    assert shared is None and len(rows) == len(items)


def test_no_shared_target_is_refused_by_name() -> None:
    items, trials = view_count_tables(levels=(5, 6))
    protocols = {t: protocol(int(t[1])) for t in trials["trial_id"]}
    evaluation = paired.evaluate_study(items, protocols, trials, level_pair_factors(trials))
    assert "no camera is a target of every one" in evaluation.refusal


def test_validation_and_test_both_see_the_rig_order() -> None:
    config = load_config("configs/smoke.yaml", ["mouse.use_mouse_dataset=false"])
    assert config.mouse.use_mouse_dataset is False
    assert rig_order_config(config).mouse.use_mouse_dataset is True
    # the run's own roles stay: validation scores what the level is trained for
    assert rig_order_config(config).training.dataset == config.training.dataset
    test = evaluation_config(config)
    assert test.mouse.use_mouse_dataset is True and test.training.dataset.target_has_input


def test_the_page_shows_the_shared_cameras_the_own_views_and_each_level_pair() -> None:
    from analysis.markdown import evaluation_section, factors_section

    items, trials = view_count_tables(levels=(2, 3))
    protocols = {t: protocol(int(t[1])) for t in trials["trial_id"]}
    evaluation = paired.evaluate_study(items, protocols, trials, level_pair_factors(trials))
    page = evaluation_section(evaluation)
    assert "compared only on camera(s) 3, 4, 5, a target of every trial" in page
    assert "| 0-1 | input | 3 | 24 | 30.00 |" in page
    assert "| 0-2 | novel | 3 | 36 | 23.55 |" in page
    section = factors_section([], {}, evaluation)
    assert "### Input views: 2 vs 3 (`training.dataset.num_input_views`)" in section
    assert "Input views 3 beats 2 on foreground PSNR by 0.80 dB" in section
