"""The verdict engine on hand-computed cases: per-seed means first, Student t over seeds, TOST,
too few seeds, undefined values scored as failures, Holm, seeds needed, margins from study.json."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import verdicts
from analysis.verdicts import paired_verdict


def frame(per_seed: dict[int, list[float]], views: int = 1) -> pd.DataFrame:
    """One row per (seed, item, view); item k of a seed has the k-th value on every view."""
    rows = [
        {"seed": seed, "item_id": f"i{k}", "x": value}
        for seed, values in per_seed.items()
        for k, value in enumerate(values)
        for _ in range(views)
    ]
    return pd.DataFrame(rows)


def test_t_interval_over_per_seed_means_by_hand() -> None:
    # per-seed means 1.0, 2.0, 3.0 (items averaged first): mean 2, sd 1, df 2
    d = frame({1: [0.5, 1.5], 2: [2.0, 2.0], 3: [2.0, 4.0]}, views=6)
    v = paired_verdict(d, "x", margin=0.5)
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert v.estimate == pytest.approx(2.0)
    assert (v.ci_low, v.ci_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert v.p_value == pytest.approx(2 * stats.t.sf(2.0 / (1 / math.sqrt(3)), 2))
    assert (v.n_seeds, v.n_items, v.n_rows, v.seeds_won) == (3, 2, 36, 3)
    assert v.sd_seeds == pytest.approx(1.0)
    assert v.verdict == "inconclusive"  # t = 3.46 on 2 df: p = 0.074
    half90 = stats.t.ppf(0.95, 2) / math.sqrt(3)
    assert (v.eq_low, v.eq_high) == (pytest.approx(2 - half90), pytest.approx(2 + half90))


def test_pair_groups_of_one_seed_are_averaged_not_counted() -> None:
    """Two pair groups per seed (the other factor's levels) that agree closely must not
    double the degrees of freedom: 3 seeds give df 2 however many pairs each has."""
    rows = []
    for seed, mean in ((1, 1.0), (2, 2.0), (3, 3.0)):
        for group, shift in (("a", -0.01), ("b", 0.01)):
            rows.append({"seed": seed, "group": group, "item_id": "i0", "x": mean + shift})
    v = paired_verdict(pd.DataFrame(rows), "x", margin=0.5)
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert v.n_seeds == 3 and v.ci_high - v.ci_low == pytest.approx(2 * half)


def test_items_weigh_equally_whatever_their_view_count() -> None:
    d = pd.DataFrame(
        {"seed": [1, 1, 1, 2, 2], "item_id": ["a", "a", "b", "a", "b"], "x": [0, 0, 3, 1, 1.0]}
    )
    assert verdicts.seed_means(d, "x").tolist() == [1.5, 1.0]


def test_one_seed_gives_an_estimate_and_seeds_needed_but_no_verdict() -> None:
    v = paired_verdict(frame({7: [1.0, 2.0, 3.0]}, views=6), "x", margin=0.5)
    assert v.verdict == "too few seeds" and v.estimate == pytest.approx(2.0)
    assert math.isnan(v.ci_low) and math.isnan(v.p_value) and not v.has_ci
    assert v.seeds_needed == 2 and v.seeds_won == 1


def test_tost_equivalence_and_its_boundaries() -> None:
    tight = frame({1: [0.05], 2: [-0.05], 3: [0.0], 4: [0.02]})
    v = paired_verdict(tight, "x", margin=0.5)
    assert v.verdict == "equivalent" and -0.5 < v.eq_low and v.eq_high < 0.5
    # TOST p is the larger one-sided p: by hand for the lower bound
    means = np.array([0.05, -0.05, 0.0, 0.02])
    se = means.std(ddof=1) / 2
    lower = stats.t.sf((means.mean() + 0.5) / se, 3)
    upper = stats.t.cdf((means.mean() - 0.5) / se, 3)
    assert v.p_equivalence == pytest.approx(max(lower, upper))
    # the same data against a margin the 90% interval crosses: not equivalent
    narrow = paired_verdict(tight, "x", margin=0.05)
    assert narrow.verdict == "inconclusive"


@pytest.mark.parametrize(
    ("per_seed", "expected"),
    [
        ({1: [1.0], 2: [1.1], 3: [0.9]}, "better"),
        ({1: [-1.0], 2: [-1.1], 3: [-0.9]}, "worse"),
        ({1: [0.0], 2: [0.0], 3: [0.0]}, "equivalent"),  # no spread at all
        ({1: [1.5], 2: [1.5]}, "better"),  # no spread, clear sign
        ({1: [2.0], 2: [-1.0], 3: [0.5]}, "inconclusive"),
        ({1: [0.2], 2: [0.21], 3: [0.19]}, "equivalent"),  # real, but inside the margin
    ],
)
def test_verdict_words(per_seed: dict[int, list[float]], expected: str) -> None:
    assert paired_verdict(frame(per_seed), "x", margin=0.5).verdict == expected


def test_nan_differences_are_refused_not_dropped() -> None:
    d = frame({1: [1.0, math.nan], 2: [1.0, 2.0]})
    with pytest.raises(ValueError, match="1 undefined"):
        paired_verdict(d, "x", margin=0.5)


def test_undefined_values_are_scored_at_the_floor_per_arm() -> None:
    """psnr_int is NaN where a prediction is empty: a failure, scored at 0 dB in that trial;
    an (item, view) undefined in both trials (no ground-truth foreground) is left out."""
    arms = pd.DataFrame(
        {
            "group": ["g"] * 4,
            "item_id": ["a", "a", "b", "b"],
            "level": ["base", "treat", "base", "treat"],
            "psnr_int": [20.0, math.nan, math.nan, math.nan],
        }
    )
    scored, marks = verdicts.score_undefined(arms, ["psnr_int"], ["group", "item_id"])
    assert scored["psnr_int"].tolist()[:2] == [20.0, 0.0]
    assert scored["psnr_int"].iloc[2:].isna().all()
    assert marks["psnr_int"].tolist() == [False, True, False, False]


def test_per_arm_undefined_counts_are_reported() -> None:
    d = frame({1: [1.0, -20.0], 2: [1.0, 2.0]})
    d["undefined_treatment"] = [False, True, False, False]
    d["undefined_baseline"] = False
    v = paired_verdict(d, "x", margin=0.5)
    assert (v.undefined_treatment, v.undefined_baseline) == (1, 0)


def test_holm_family_redecides_on_adjusted_p() -> None:
    assert verdicts.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = verdicts.holm([0.2, math.nan, 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    a = paired_verdict(frame({1: [1.0], 2: [1.3], 3: [0.6]}), "x", margin=0.1)  # p ~ 0.03
    b = paired_verdict(frame({1: [1.0], 2: [-1.0], 3: [0.5]}), "x", margin=0.1)
    assert a.verdict == "better" and 0.025 < a.p_value < 0.05
    adjusted = verdicts.holm_adjusted([a, b])
    assert adjusted[0].p_adjusted == pytest.approx(2 * a.p_value)
    assert adjusted[0].verdict == "inconclusive" and adjusted[0].p_decision > 0.05


def test_seeds_needed_follows_the_power_formula() -> None:
    # about 7.85 sd^2 / delta^2 + 2 for detection; 8.6 sd^2 / m^2 + 2 for equivalence
    assert verdicts.seeds_for_detection(1.0, 1.0) in range(9, 12)
    assert verdicts.seeds_for_detection(1.0, 0.5) in range(32, 36)
    assert verdicts.seeds_for_equivalence(1.0, 0.5) in range(35, 40)
    n = verdicts.seeds_for_detection(0.7, 0.5)
    assert verdicts.detection_power(n, 0.7, 0.5) >= 0.8 > verdicts.detection_power(n - 1, 0.7, 0.5)
    assert verdicts.seeds_for_detection(0.0, 0.5) == 2


def test_margins_from_study_record_are_read_defensively() -> None:
    defaults = verdicts.DEFAULT_MARGINS
    assert verdicts.margins_from(None, defaults) == defaults
    assert verdicts.margins_from({"margins": "0.3"}, defaults) == defaults
    got = verdicts.margins_from(
        {"margins": {"val/psnr_fg": 0.3, "mask_iou": -1, "lpips": 0.1, "psnr": True}}, defaults
    )
    assert got["psnr_fg"] == 0.3 and got["mask_iou"] == 0.01 and got["psnr"] == 0.5
    assert "lpips" not in got
