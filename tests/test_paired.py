"""Item-level comparisons on constructed item tables with known effects and known variances."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import paired
from analysis.factors import DATASET_TYPE, FACTORS
from analysis.verdicts import paired_verdict

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


def test_verdicts_from_drawn_studies() -> None:
    rng = np.random.default_rng(5)
    tight = {"seed_sd": 0.01, "item_sd": 0.02, "view_sd": 0.02}
    cases = {
        "better": draw_differences(rng, 3, 30, effect=1.0, **tight),
        "worse": draw_differences(rng, 3, 30, effect=-1.0, **tight),
        "equivalent": draw_differences(rng, 3, 30, effect=0.0, **tight),
        "inconclusive": draw_differences(rng, 3, 30, effect=0.1, seed_sd=1.0, item_sd=2.0),
        "too few seeds": draw_differences(rng, 1, 30, effect=1.0, **tight),
    }
    for expected, frame in cases.items():
        result = paired_verdict(frame, "x", margin=0.5)
        assert result.verdict == expected, (expected, result)


def test_holm_is_the_engines() -> None:
    assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


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
    results = paired.compare_items(items, trials, [DATASET_TYPE, MASKED_L2])
    mouse, masked = results
    c = mouse.get("psnr_fg")
    assert c.result.estimate == pytest.approx(1.5) and c.verdict == "better"
    assert (c.result.n_seeds, c.result.n_items, c.result.n_rows) == (3, 5, 180)
    assert c.result.seeds_won == 3 and c.confirmatory
    assert masked.get("psnr_fg").verdict == "equivalent"  # exactly 0 difference
    assert mouse.get("mask_iou").verdict == "equivalent"
    assert "3 seeds x 5 items (180 paired item-views)" in mouse.sentence
    assert mouse.sentence.startswith(
        "Item level: Fixed rig order (mouse) beats random on foreground PSNR by 1.50 dB"
    )
    assert "mouse better in 3 of 3 seeds" in mouse.sentence
    assert "equivalent on foreground PSNR within ±0.50 dB" in masked.sentence
    # Holm across the two factors on the confirmatory question only; the rest is exploratory
    raw = [r.get("psnr_fg").result.p_value for r in results]
    assert [r.get("psnr_fg").p_holm for r in results] == pytest.approx(paired.holm(raw))
    assert not mouse.get("psnr_fg", "novel").confirmatory
    assert math.isnan(mouse.get("psnr_fg", "novel").p_holm)


def test_the_pairs_of_one_seed_are_averaged_before_the_interval() -> None:
    """2 x 2 grid: each seed gives the dataset-type factor two pair groups (masked off / on);
    the verdict counts 3 seeds, and its interval is the t interval over 3 per-seed means."""
    items, trials = study_tables({"mouse": 1.0, "masked": 0.0})
    noise = {0: 0.3, 1: -0.2, 2: 0.5}
    for trial, seed in zip(trials["trial_id"], trials["seed"], strict=True):
        if trial[2] == "1":  # mouse trials: a per-seed shift, the same in both pair groups
            items.loc[items["trial_id"] == trial, "psnr_fg"] += noise[seed]
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE])
    r = mouse.get("psnr_fg").result
    per_seed = np.array([1.3, 0.8, 1.5])
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    assert r.n_seeds == 3 and r.estimate == pytest.approx(per_seed.mean())
    assert (r.ci_low, r.ci_high) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))


def test_an_empty_prediction_is_scored_as_a_failure_not_dropped() -> None:
    """psnr_int is NaN where the prediction is empty: the collapsed seed's mouse trial scores
    0 dB there (the floor) and is counted; dropping it would hide the collapse."""
    items, trials = study_tables({"mouse": 0.0, "masked": 0.0})
    items["psnr_int"] = 20.0
    collapsed = items["trial_id"].isin(["t010", "t011"])  # seed 0, mouse: empty predictions
    items.loc[collapsed, "psnr_int"] = np.nan
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE])
    r = mouse.get("psnr_int").result
    assert (r.undefined_treatment, r.undefined_baseline) == (60, 0)  # 2 trials x 5 items x 6
    assert r.estimate == pytest.approx(-20.0 / 3)  # seeds: -20, 0, 0
    assert "undefined (empty prediction) in 60 treatment and 0 baseline item-views" in (
        paired.item_sentence(mouse, "psnr_int")
    )
    # undefined in both arms of one pair group (both collapsed) but defined elsewhere: both
    # arms fail, scored at the floor (difference 0), not left out
    both = items["trial_id"].isin(["t100", "t110"]) & (items["item_id"] == "test_000001")
    items.loc[both, "psnr_int"] = np.nan
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE])
    assert mouse.get("psnr_int").n_unscorable == 0
    assert (
        mouse.get("psnr_int").result.undefined_treatment,
        mouse.get("psnr_int").result.undefined_baseline,
    ) == (66, 6)
    # undefined in every trial (no ground-truth foreground): left out and counted
    items.loc[items["item_id"] == "test_000000", "psnr_int"] = np.nan
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE])
    assert mouse.get("psnr_int").n_unscorable == 2 * 3 * 6  # 2 pair groups x 3 seeds x 6 views


def test_input_novel_and_per_camera_tables_show_where_a_level_wins() -> None:
    items, trials = study_tables({"mouse": 0.0, "masked": 0.0}, camera_bonus=2.0)
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE])
    assert mouse.get("psnr_fg", "input").result.estimate == pytest.approx(0.0)
    assert mouse.get("psnr_fg", "input").verdict == "equivalent"
    assert mouse.get("psnr_fg", "novel").result.estimate == pytest.approx(2.0)
    assert mouse.get("psnr_fg", "novel").verdict == "better"
    table = mouse.per_camera.set_index("camera")
    assert list(table.index) == [0, 1, 2, 3, 4, 5]
    assert table.loc[5, "mean"] == pytest.approx(2.0) and table.loc[5, "role"] == "novel"
    assert table.loc[0:4, "mean"].to_numpy() == pytest.approx(0.0)


def test_single_seed_sentence_says_the_interval_ignores_seeds() -> None:
    items, trials = study_tables({"mouse": 1.0, "masked": 0.0}, seeds=1, items=8)
    items.loc[items["trial_id"].str.endswith("10"), "psnr_fg"] += np.linspace(-0.3, 0.3, 48)
    (mouse,) = paired.compare_items(items, trials, [DATASET_TYPE])
    assert "1 seed x 8 items" in mouse.sentence
    assert mouse.get("psnr_fg").verdict == "too few seeds"
    assert mouse.sentence.startswith("Item level: too few seeds for a verdict on foreground PSNR")
    assert "A verdict needs at least 2 seeds" in mouse.sentence


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
    assert margins["psnr_fg"] == 0.5 and margins["mask_iou"] == 0.01 and margins["psnr"] == 0.5
    with pytest.raises(ValueError, match="unknown metric 'lpips'"):
        paired.MarginSettings({"lpips": 0.1}).margins()
    with pytest.raises(ValueError, match="psnr must be > 0"):
        paired.MarginSettings({"psnr": -1.0}).margins()
