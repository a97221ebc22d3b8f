"""Issue 22 item 13: an objective painting cannot win. A render that paints mouse colour over
the whole image beats a correct silhouette on foreground PSNR, and loses on psnr_bal (PSNR of
the class-balanced MSE: mouse and background weighted equally), the default objective now, as
it does on psnr_union (v2's objective, which a better render can lose: the halo test)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from analysis import paired
from study.studies import STUDIES
from trainables.gslrm.config import EvaluationConfig
from trainables.gslrm.metrics import compute_metrics, item_view_metrics

WHITE = (1.0, 1.0, 1.0)
pytestmark = pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """10 x 10 image, white background, a 4 x 4 mouse of grey 0.4 (16 foreground pixels)."""
    target = torch.ones(1, 1, 3, 10, 10)
    alpha = torch.zeros(1, 1, 1, 10, 10)
    target[..., 3:7, 3:7] = 0.4
    alpha[..., 3:7, 3:7] = 1.0
    return target, alpha


def correct_silhouette(target: torch.Tensor) -> torch.Tensor:
    """The right silhouette, its colour off by 0.1 (MSE 0.01 -> 20 dB), background exact."""
    render = target.clone()
    render[..., 3:7, 3:7] = 0.5
    return render


def cover_all() -> torch.Tensor:
    """Grey 0.43 everywhere: the mouse off by only 0.03, the background painted."""
    return torch.full((1, 1, 3, 10, 10), 0.43)


def test_cover_all_wins_psnr_fg_and_loses_psnr_union() -> None:
    target, alpha = scene()
    good = item_view_metrics(correct_silhouette(target), target, alpha, WHITE)
    blob = item_view_metrics(cover_all(), target, alpha, WHITE)
    # hand-computed: correct 10 log10(1 / 0.01) = 20 dB on both; cover-all fg MSE 0.03^2
    assert float(good["psnr_fg"]) == pytest.approx(20.0, abs=1e-4)
    assert float(good["psnr_union"]) == pytest.approx(20.0, abs=1e-4)
    assert float(blob["psnr_fg"]) == pytest.approx(-10 * math.log10(0.03**2), abs=1e-3)
    # union = every pixel: (16 x 0.03^2 + 84 x 0.57^2) / 100 = 0.27306
    assert float(blob["psnr_union"]) == pytest.approx(-10 * math.log10(0.27306), abs=1e-3)
    assert float(blob["psnr_fg"]) > float(good["psnr_fg"])  # painting wins the old objective
    assert float(blob["psnr_union"]) < float(good["psnr_union"])  # and loses the new one
    assert float(blob["psnr_union"]) == pytest.approx(float(blob["psnr"]), abs=1e-4)
    assert float(blob["psnr_int"]) == pytest.approx(float(blob["psnr_fg"]), abs=1e-4)


def test_a_halo_of_false_foreground_is_charged() -> None:
    """A render one pixel wider all round than the mouse (the 6 x 6 square in mouse colour):
    the 20 ring pixels cost (1 - 0.4)^2 each, the mouse itself is exact."""
    target, alpha = scene()
    render = target.clone()
    render[..., 2:8, 2:8] = 0.4
    values = item_view_metrics(render, target, alpha, WHITE)
    assert float(values["psnr_fg"]) == pytest.approx(100.0)  # capped: the mouse is exact
    assert float(values["psnr_union"]) == pytest.approx(-10 * math.log10(20 * 0.36 / 36))


def test_balanced_psnr_ranks_painting_and_emptiness_below_the_silhouette() -> None:
    """Hand-computed on the 10 x 10 scene (16 mouse, 84 background pixels)."""
    target, alpha = scene()
    good = item_view_metrics(correct_silhouette(target), target, alpha, WHITE)
    blob = item_view_metrics(cover_all(), target, alpha, WHITE)
    empty = item_view_metrics(torch.ones_like(target), target, alpha, WHITE)
    # correct: (0.01 + 0) / 2; cover-all: (0.03^2 + 0.57^2) / 2; empty: (0.6^2 + 0) / 2
    assert float(good["psnr_bal"]) == pytest.approx(-10 * math.log10(0.005), abs=1e-4)
    assert float(blob["psnr_bal"]) == pytest.approx(-10 * math.log10(0.1629), abs=1e-4)
    assert float(empty["psnr_bal"]) == pytest.approx(-10 * math.log10(0.18), abs=1e-4)
    assert float(empty["psnr_bal"]) == pytest.approx(float(empty["psnr_fg"]) + 10 * math.log10(2))
    assert float(blob["psnr_fg"]) > float(good["psnr_fg"])
    assert float(good["psnr_bal"]) > float(blob["psnr_bal"]) + 15.0


def test_removing_mild_halo_pixels_raises_psnr_bal_and_lowers_psnr_union() -> None:
    """Render A: the mouse 0.1 off, a one-pixel ring around it (20 pixels) of which 10 are
    0.12 off the white background (above the 0.1 silhouette threshold) and 10 are 0.5 off.
    Render B is A with the 10 mild ring pixels made exact: better at every pixel. The union's
    mean loses its mildest pixels and falls (v2's flaw); the balanced PSNR rises."""
    target, alpha = scene()
    a = target.clone()
    a[..., 3:7, 3:7] = 0.5
    ring = [(r, c) for r in range(2, 8) for c in range(2, 8) if r in (2, 7) or c in (2, 7)]
    for r, c in ring[:10]:
        a[..., r, c] = 0.88
    for r, c in ring[10:]:
        a[..., r, c] = 0.5
    b = a.clone()
    for r, c in ring[:10]:
        b[..., r, c] = 1.0
    va, vb = (item_view_metrics(x, target, alpha, WHITE) for x in (a, b))
    # union: A (16 x 0.01 + 10 x 0.0144 + 10 x 0.25) / 36, B (16 x 0.01 + 10 x 0.25) / 26
    assert float(va["psnr_union"]) == pytest.approx(-10 * math.log10(2.804 / 36), abs=1e-3)
    assert float(vb["psnr_union"]) == pytest.approx(-10 * math.log10(2.66 / 26), abs=1e-3)
    # balanced: (0.01 + background SSE / 84) / 2
    assert float(va["psnr_bal"]) == pytest.approx(
        -10 * math.log10((0.01 + 2.644 / 84) / 2), abs=1e-3
    )
    assert float(vb["psnr_bal"]) == pytest.approx(-10 * math.log10((0.01 + 2.5 / 84) / 2), abs=1e-3)
    assert float(vb["psnr_union"]) < float(va["psnr_union"])
    assert float(vb["psnr_bal"]) > float(va["psnr_bal"])


def test_balanced_psnr_without_one_class() -> None:
    """No mouse in the view: the background's PSNR; mouse everywhere: the foreground's."""
    target, alpha = scene()
    render = correct_silhouette(target)
    no_mouse = item_view_metrics(render, target, torch.zeros_like(alpha), WHITE)
    all_mouse = item_view_metrics(render, target, torch.ones_like(alpha), WHITE)
    assert float(no_mouse["psnr_bal"]) == pytest.approx(float(no_mouse["psnr"]))
    assert float(all_mouse["psnr_bal"]) == pytest.approx(float(all_mouse["psnr_fg"]))
    assert math.isnan(float(no_mouse["psnr_fg"]))


def test_validation_logs_psnr_union_and_psnr_bal() -> None:
    target, alpha = scene()
    metrics = compute_metrics(cover_all(), target, alpha, WHITE, 0.1)
    assert metrics["psnr_union"] == pytest.approx(-10 * math.log10(0.27306), abs=1e-3)
    assert metrics["psnr_bal"] == pytest.approx(-10 * math.log10(0.1629), abs=1e-3)


def test_the_defaults_are_balanced_and_the_cover_flag_still_fires() -> None:
    assert EvaluationConfig().objective == "val/psnr_bal"
    for spec in STUDIES.values():
        assert spec.objective == "val/psnr_bal", spec.name
    # the cover-all flag stays as a check on what the objective let through
    blob = pd.DataFrame(
        {"trial_id": ["a"], "pred_fg_fraction": [1.0], "gt_fg_fraction": [0.16], "mask_iou": [0.16]}
    )
    assert bool(paired.mask_cover_flags(blob)["flag_mask_covers_image"].iloc[0])
