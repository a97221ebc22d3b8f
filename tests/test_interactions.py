"""Interaction contrasts on constructed 2 x 2 trial tables with hand-computed cell means."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.factors import FACTORS
from analysis.interactions import all_interactions, crossed_factor_pairs, interaction

FACTOR = {f.name: f for f in FACTORS}
MASKED = "training.losses.masked_l2_loss"
MASKED_SSIM = "training.losses.masked_ssim_loss"
BACKGROUND = "training.losses.background_loss_weight"
T_975_DF2 = 4.302653


def grid_table(values: dict[tuple[bool, float, int], float]) -> pd.DataFrame:
    """A trials table of a masked x background x seed grid (masked SSIM follows masked L2)."""
    rows = []
    for (masked, background, seed), value in values.items():
        rows.append(
            {
                "trial_id": f"t_{int(masked)}_{background}_{seed}",
                "status": "finished",
                "flag_diverged": False,
                "seed": seed,
                "final/val/psnr_fg": value,
                MASKED: masked,
                MASKED_SSIM: masked,
                BACKGROUND: background,
                "training.runtime.seed": seed,
                "mouse.use_mouse_dataset": True,
            }
        )
    return pd.DataFrame(rows)


# y = 20 + seed shift + 1.0 (masked) + 0.5 (background) + 2.0 (both) + per-trial noise.
SEED_SHIFT = {0: 0.0, 1: 0.3, 2: -0.2}
NOISE = {
    (False, 0.0): (0.0, 0.1, -0.1),
    (False, 0.1): (0.05, 0.0, 0.0),
    (True, 0.0): (0.0, -0.05, 0.1),
    (True, 0.1): (0.1, 0.0, -0.2),
}


def interacting_values(both: float) -> dict[tuple[bool, float, int], float]:
    values = {}
    for (masked, background), noise in NOISE.items():
        for seed, eps in zip((0, 1, 2), noise, strict=True):
            base = 20.0 + SEED_SHIFT[seed] + 1.0 * masked + 0.5 * (background > 0)
            values[(masked, background, seed)] = base + both * (masked and background > 0) + eps
    return values


def test_crossed_pairs_are_found_once() -> None:
    table = grid_table(interacting_values(2.0))
    pairs = crossed_factor_pairs(table, "val/psnr_fg")
    # masked_l2, masked_ssim and masked_losses split the trials identically: the factor owning
    # both linked keys is kept (the single-key ones would see the other key vary).
    assert [(a.name, b.name) for a, b in pairs] == [("masked_losses", "background_loss")]


def test_interaction_contrast_matches_hand_computation() -> None:
    table = grid_table(interacting_values(2.0))
    result = interaction(
        table, FACTOR["masked_losses"], FACTOR["background_loss"], "val/psnr_fg", "val/psnr_fg"
    )
    # Per seed: (on,>0 - on,0) - (off,>0 - off,0) = 2.0 + noise terms:
    # seed 0: (0.1 - 0.0) - (0.05 - 0.0) = 0.05 -> 2.05
    # seed 1: (0.0 + 0.05) - (0.0 - 0.1) = 0.15 -> 2.15
    # seed 2: (-0.2 - 0.1) - (0.0 + 0.1) = -0.4 -> 1.60
    contrasts = [2.05, 2.15, 1.60]
    mean = sum(contrasts) / 3
    std = math.sqrt(sum((c - mean) ** 2 for c in contrasts) / 2)
    half = T_975_DF2 * std / math.sqrt(3)
    assert result.contrast.n == 3
    assert result.contrast.mean == pytest.approx(mean)
    assert result.contrast.ci_low == pytest.approx(mean - half)
    assert result.contrast.ci_high == pytest.approx(mean + half)
    # Cell mean (on, > 0): 20 + 1 + 0.5 + 2 + mean seed shift (0.1/3) + mean noise (-0.1/3).
    on_bg = result.cells[("on", "> 0")]
    assert on_bg.n == 3 and on_bg.mean == pytest.approx(23.5 + (0.1 - 0.1) / 3)
    off_none = result.cells[("off", "0")]
    assert off_none.mean == pytest.approx(20.0 + 0.1 / 3 + 0.0)
    assert result.sentence.startswith("Interaction beyond noise")
    assert "3 matched seed groups" in result.sentence


def test_no_interaction_says_so() -> None:
    table = grid_table(interacting_values(0.0))
    result = interaction(
        table, FACTOR["masked_losses"], FACTOR["background_loss"], "val/psnr_fg", "val/psnr_fg"
    )
    # Contrasts are the noise terms alone: 0.05, 0.15, -0.40; the interval spans zero.
    assert result.contrast.mean == pytest.approx((0.05 + 0.15 - 0.40) / 3)
    assert result.contrast.ci_low < 0 < result.contrast.ci_high
    assert result.sentence.startswith("No interaction beyond noise")


def test_missing_cell_gives_no_pair_and_one_group_gives_no_interval() -> None:
    values = interacting_values(2.0)
    without_cell = {k: v for k, v in values.items() if not (k[0] and k[1] > 0)}
    assert crossed_factor_pairs(grid_table(without_cell), "val/psnr_fg") == []
    one_seed = {k: v for k, v in values.items() if k[2] == 0}
    result = interaction(
        grid_table(one_seed),
        FACTOR["masked_losses"],
        FACTOR["background_loss"],
        "val/psnr_fg",
        "val/psnr_fg",
    )
    assert result.contrast.n == 1 and not result.contrast.has_ci
    assert "not enough data" in result.sentence


def test_errored_trial_leaves_its_group_out() -> None:
    table = grid_table(interacting_values(2.0))
    errored = (table[MASKED]) & (table[BACKGROUND] > 0) & (table["seed"] == 2)
    table.loc[errored, "status"] = "errored"
    (result,) = all_interactions(table, "val/psnr_fg", ["val/psnr_fg"])
    assert result.contrast.n == 2
    assert result.contrast.mean == pytest.approx((2.05 + 2.15) / 2)
