"""Item-level comparisons on constructed item tables with known effects and known variances."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import paired
from analysis.factors import DATASET_TYPE, FACTORS

MASKED_L2 = next(f for f in FACTORS if f.name == "masked_l2")


def draw_differences(
    rng: np.random.Generator,
    seeds: int,
    items: int,
    views: int = 6,
    effect: float = 0.5,
    seed_sd: float = 0.3,
    item_sd: float = 1.0,
    view_sd: float = 0.5,
) -> pd.DataFrame:
    """d = effect + a_seed + b_(seed, item) + e_(seed, item, view), all normal."""
    a = rng.normal(0, seed_sd, seeds)[:, None, None]
    b = rng.normal(0, item_sd, (seeds, items))[:, :, None]
    d = effect + a + b + rng.normal(0, view_sd, (seeds, items, views))
    s, i, _ = np.meshgrid(range(seeds), range(items), range(views), indexing="ij")
    return pd.DataFrame(
        {"seed": s.ravel(), "item_id": [f"m{k}" for k in i.ravel()], "x": d.ravel()}
    )


def test_interval_covers_the_true_effect_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(11)
    hits = 0
    for repeat in range(200):
        result = paired.hierarchical_bootstrap(
            draw_differences(rng, seeds=3, items=20), "x", n_boot=1000, seed=repeat
        )
        hits += result.ci_low <= 0.5 <= result.ci_high
    assert 0.90 <= hits / 200 <= 0.99, hits / 200


def test_interval_narrows_as_items_are_added() -> None:
    rng = np.random.default_rng(3)

    def mean_width(items: int) -> float:
        widths = []
        for repeat in range(40):
            frame = draw_differences(rng, seeds=3, items=items, seed_sd=0.05)
            r = paired.hierarchical_bootstrap(frame, "x", n_boot=500, seed=repeat)
            widths.append(r.ci_high - r.ci_low)
        return float(np.mean(widths))

    few, many = mean_width(10), mean_width(80)
    # item noise dominates here: 8x the items should give about 1/sqrt(8) of the width
    assert many < 0.55 * few, (few, many)


def test_estimate_is_the_mean_of_seed_means_and_nan_rows_are_left_out() -> None:
    frame = pd.DataFrame(
        {
            "seed": [0, 0, 0, 1, 1],
            "item_id": ["a", "a", "b", "a", "b"],
            "x": [1.0, 3.0, math.nan, 10.0, 20.0],
        }
    )
    result = paired.hierarchical_bootstrap(frame, "x", n_boot=200)
    assert result.mean == pytest.approx((2.0 + 15.0) / 2)
    assert (result.n_seeds, result.n_items, result.n_rows) == (2, 2, 4)
    # seed 0 only has item a (its b is NaN), so a draw of seed 0 is always 2.0; a replicate is
    # the mean of two independent seed draws, in [2, 20], and exactly 2.0 a quarter of the
    # time (both draws seed 0); spreads around 8.5 are widened by sqrt(2 / 1) for 2 seeds
    assert result.ci_low == pytest.approx(8.5 - 6.5 * math.sqrt(2))
    assert result.ci_high <= 8.5 + 11.5 * math.sqrt(2) + 1e-9


def test_holm_hand_computed() -> None:
    assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = paired.holm([0.2, math.nan, 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def _result(mean: float, low: float, high: float) -> paired.BootstrapResult:
    return paired.BootstrapResult(mean, low, high, 1.0, 0.001, 3, 20, 360)


@pytest.mark.parametrize(
    ("interval", "p_holm", "margin", "expected"),
    [
        ((1.0, 0.6, 1.4), 0.001, 0.2, "better"),
        ((-1.0, -1.4, -0.6), 0.001, 0.2, "worse"),
        ((0.05, 0.01, 0.09), 0.001, 0.2, "equivalent"),  # real but smaller than the margin
        ((0.0, -0.1, 0.1), 0.9, 0.2, "equivalent"),
        ((0.0, -0.5, 0.5), 0.9, 0.2, "inconclusive"),
        ((0.3, 0.05, 0.55), 0.06, 0.2, "inconclusive"),  # raw CI excludes 0, Holm does not
        ((0.3, 0.25, 0.35), 0.001, 0.5, "equivalent"),  # a wider margin
        ((0.3, 0.25, 0.35), 0.001, 0.2, "better"),
    ],
)
def test_verdicts(interval, p_holm, margin, expected) -> None:
    assert paired.verdict(_result(*interval), margin, p_holm) == expected


def test_verdicts_from_drawn_studies() -> None:
    rng = np.random.default_rng(5)
    tight = {"seed_sd": 0.01, "item_sd": 0.02, "view_sd": 0.02}
    cases = {
        "better": draw_differences(rng, 3, 30, effect=1.0, **tight),
        "worse": draw_differences(rng, 3, 30, effect=-1.0, **tight),
        "equivalent": draw_differences(rng, 3, 30, effect=0.0, **tight),
        "inconclusive": draw_differences(rng, 3, 30, effect=0.1, seed_sd=1.0, item_sd=2.0),
    }
    for expected, frame in cases.items():
        result = paired.hierarchical_bootstrap(frame, "x", n_boot=1000)
        assert paired.verdict(result, 0.2, result.p_two_sided) == expected, (expected, result)


# ----------------------------------------------------------------------------- protocols


def _protocol(**changes) -> dict:
    base = {
        "metrics_version": 1,
        "item_set_hash": "9c0d" * 16,
        "checkpoint_rule": "best",
        "checkpoint_objective": "val/psnr_fg",
        "pred_mask_threshold": 0.1,
        "gt_alpha_threshold": 0.5,
        "image_size": 64,
        "background_color": "white",
        "view_order": "rig: inputs cameras 0-4, targets 0-5",
        "checkpoint_step": 40,
        "code_version": "abc",
    }
    return {**base, **changes}


def test_protocol_check_refuses_by_name() -> None:
    same = {"a": _protocol(), "b": _protocol(checkpoint_step=30, code_version="def")}
    assert paired.check_protocols(same)["item_set_hash"] == "9c0d" * 16  # step may differ
    with pytest.raises(paired.ProtocolMismatch) as info:
        paired.check_protocols({"a": _protocol(), "b": _protocol(item_set_hash="1f2e" * 16)})
    assert str(info.value) == (
        "trial b was evaluated on a different item set (hash 1f2e1f2e1f2e..., trial a: "
        "9c0d9c0d9c0d...)"
    )
    with pytest.raises(paired.ProtocolMismatch, match=r"^trial c was evaluated on a different "
                       r"checkpoint rule \('last', trial a: 'best'\)"):  # fmt: skip
        paired.check_protocols(
            {"a": _protocol(), "b": _protocol(), "c": _protocol(checkpoint_rule="last")}
        )
    with pytest.raises(
        paired.ProtocolMismatch, match="trial b has items but no eval/protocol.json"
    ):
        paired.check_protocols({"a": _protocol(), "b": None})


# ----------------------------------------------------------------------------- pairing


def study_tables(
    effects: dict[str, float], camera_bonus: float = 0.0, seeds: int = 3, items: int = 5
):
    """A 2 x 2 grid (dataset type x masked L2) x seeds, with exactly additive item metrics:
    psnr_fg = 20 + effect(mouse) + effect(masked) + seed + item/10 (+ camera_bonus on camera 5
    for mouse trials); every other metric is 0.5 (no effect)."""
    trials, rows = [], []
    for seed in range(seeds):
        for mouse in (False, True):
            for masked in (False, True):
                trial = f"t{seed}{int(mouse)}{int(masked)}"
                trials.append(
                    {
                        "trial_id": trial,
                        "seed": seed,
                        "mouse.use_mouse_dataset": mouse,
                        "training.losses.masked_l2_loss": masked,
                        "training.runtime.seed": seed,
                    }
                )
                for item in range(items):
                    for camera in range(6):
                        value = 20 + seed + item / 10
                        value += effects["mouse"] * mouse + effects["masked"] * masked
                        value += camera_bonus * (mouse and camera == 5)
                        rows.append(
                            {
                                "trial_id": trial,
                                "seed": seed,
                                "item_id": f"test_{item:06d}",
                                "camera": camera,
                                "role": "input" if camera < 5 else "novel",
                                **{m: 0.5 for m in paired.COMPARED_METRICS},
                                "psnr_fg": value,
                                "pred_fg_fraction": 0.06,
                                "gt_fg_fraction": 0.05,
                            }
                        )
    return pd.DataFrame(rows), pd.DataFrame(trials)


def test_paired_differences_recover_each_factor_and_count_seeds_and_items() -> None:
    items, trials = study_tables({"mouse": 1.5, "masked": 0.0})
    diff = paired.paired_item_differences(items, trials, DATASET_TYPE, ["psnr_fg"])
    # pairs: per seed, one with masked off and one with it on -> 2 groups x 3 seeds
    assert diff["group"].nunique() == 6 and len(diff) == 6 * 5 * 6
    assert diff["psnr_fg"].to_numpy() == pytest.approx(1.5)
    results = paired.compare_items(items, trials, [DATASET_TYPE, MASKED_L2], n_boot=300)
    mouse, masked = results
    c = mouse.get("psnr_fg")
    assert c.result.mean == pytest.approx(1.5) and c.verdict == "better"
    assert (c.result.n_seeds, c.result.n_items, c.result.n_rows) == (3, 5, 180)
    assert masked.get("psnr_fg").verdict == "equivalent"  # exactly 0 difference
    assert mouse.get("mask_iou").verdict == "equivalent"
    assert "3 seeds x 5 items (180 paired item-views)" in mouse.sentence
    assert mouse.sentence.startswith(
        "Item level: Fixed rig order (mouse) beats random on foreground PSNR by 1.50 dB"
    )
    assert "equivalent on foreground PSNR within ±0.20 dB" in masked.sentence
    # Holm across the two factors, per metric and role
    raw = [r.get("psnr_fg").result.p_two_sided for r in results]
    assert [r.get("psnr_fg").p_holm for r in results] == pytest.approx(paired.holm(raw))


def test_input_novel_and_per_camera_tables_show_where_a_level_wins() -> None:
    items, trials = study_tables({"mouse": 0.0, "masked": 0.0}, camera_bonus=2.0)
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE], n_boot=300)
    assert mouse.get("psnr_fg", "input").result.mean == pytest.approx(0.0)
    assert mouse.get("psnr_fg", "input").verdict == "equivalent"
    assert mouse.get("psnr_fg", "novel").result.mean == pytest.approx(2.0)
    assert mouse.get("psnr_fg", "novel").verdict == "better"
    table = mouse.per_camera.set_index("camera")
    assert list(table.index) == [0, 1, 2, 3, 4, 5]
    assert table.loc[5, "mean"] == pytest.approx(2.0) and table.loc[5, "role"] == "novel"
    assert table.loc[0:4, "mean"].to_numpy() == pytest.approx(0.0)


def test_single_seed_sentence_says_the_interval_ignores_seeds() -> None:
    items, trials = study_tables({"mouse": 1.0, "masked": 0.0}, seeds=1, items=8)
    items.loc[items["trial_id"].str.endswith("10"), "psnr_fg"] += np.linspace(-0.3, 0.3, 48)
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE], n_boot=300)
    assert "1 seed x 8 items" in mouse.sentence
    assert "one seed: the interval holds item-to-item variation only" in mouse.sentence


def test_mask_covers_the_image_flag() -> None:
    items = pd.DataFrame(
        {
            "trial_id": ["blob", "blob", "fine", "fine"],
            "pred_fg_fraction": [0.95, 0.99, 0.06, 0.05],
            "gt_fg_fraction": [0.05, 0.05, 0.05, 0.05],
            "mask_iou": [0.05, 0.05, 0.8, 0.7],
        }
    )
    flags = paired.mask_cover_flags(items).set_index("trial_id")
    assert bool(flags.loc["blob", "flag_mask_covers_image"])
    assert not bool(flags.loc["fine", "flag_mask_covers_image"])
    assert flags.loc["blob", "pred_fg_fraction"] == pytest.approx(0.97)


def test_margins_are_settable_and_checked() -> None:
    margins = paired.MarginSettings({"psnr_fg": 0.5}).margins()
    assert margins["psnr_fg"] == 0.5 and margins["mask_iou"] == 0.005 and margins["psnr"] == 0.2
    with pytest.raises(ValueError, match="unknown metric 'lpips'"):
        paired.MarginSettings({"lpips": 0.1}).margins()
    with pytest.raises(ValueError, match="psnr must be > 0"):
        paired.MarginSettings({"psnr": -1.0}).margins()
