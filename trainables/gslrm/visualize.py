"""Validation picture: 5 rows x target views, for one sample.

Layout (exact, no separators): row r, view v occupies
grid[r*H:(r+1)*H, v*W:(v+1)*W]:
  0. ground truth
  1. render
  2. GT * 0.7 + 0.3 * overlay
  3. render * 0.7 + 0.3 * overlay, overlay = a*(0.2,0.8,0.2) + (1-a)*(0.8,0.2,0.2),
     a = GT alpha, so both rows show the GT mask (green = mouse, red = background)
  4. error heatmap on GT foreground (alpha > 0.5): e = clip(mean_c |GT - render| / 0.3,
     0, 1) on a blue -> green -> yellow -> red ramp; background pixels grey 0.3.

The reference's comment promises blue -> green -> yellow -> red but its formula gives
cyan -> purple -> red; this module implements the ramp the comment describes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from trainables.gslrm.atomic import atomic_path
from trainables.gslrm.metrics import GT_ALPHA_THRESHOLD

OVERLAY_WEIGHT = 0.3
FOREGROUND_TINT = (0.2, 0.8, 0.2)
BACKGROUND_TINT = (0.8, 0.2, 0.2)
# mean absolute error (per channel) that saturates the heatmap to red
HEATMAP_MAX_ERROR = 0.3
HEATMAP_BACKGROUND_GREY = 0.3
N_ROWS = 5


def heatmap_colors(e: Tensor) -> Tensor:
    """Map e in [0, 1] (clipped) to RGB: [...] -> [..., 3].

    Piecewise-linear through blue (0,0,1) at 0, green (0,1,0) at 1/3, yellow (1,1,0)
    at 2/3 and red (1,0,0) at 1.
    """
    e = e.clamp(0.0, 1.0)
    red = (3.0 * e - 1.0).clamp(0.0, 1.0)
    green = torch.minimum(3.0 * e, 3.0 - 3.0 * e).clamp(0.0, 1.0)
    blue = (1.0 - 3.0 * e).clamp(0.0, 1.0)
    return torch.stack([red, green, blue], dim=-1)


def mask_overlay(image: Tensor, alpha: Tensor) -> Tensor:
    """Blend the alpha-tinted overlay onto images: [V,3,H,W], [V,1,H,W] -> [V,3,H,W]."""
    fg = torch.tensor(FOREGROUND_TINT, dtype=image.dtype).view(1, 3, 1, 1)
    bg = torch.tensor(BACKGROUND_TINT, dtype=image.dtype).view(1, 3, 1, 1)
    overlay = alpha * fg + (1.0 - alpha) * bg
    return image * (1.0 - OVERLAY_WEIGHT) + OVERLAY_WEIGHT * overlay


def error_heatmap(target: Tensor, render: Tensor, alpha: Tensor) -> Tensor:
    """Foreground error heatmap: [V,3,H,W] x2, [V,1,H,W] -> [V,3,H,W]."""
    error = (target - render).abs().mean(dim=1) / HEATMAP_MAX_ERROR  # [V, H, W]
    colors = heatmap_colors(error).permute(0, 3, 1, 2)
    foreground = alpha > GT_ALPHA_THRESHOLD
    grey = torch.full_like(colors, HEATMAP_BACKGROUND_GREY)
    return torch.where(foreground, colors, grey)


def to_uint8(image: Tensor) -> np.ndarray:
    """[..., 3, H, W] float in [0, 1] -> [..., H, W, 3] uint8, rounded to nearest."""
    scaled = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return scaled.movedim(-3, -1).numpy()


def _tile(rows: Sequence[Tensor]) -> Tensor:
    """Rows of [V,3,H,W] -> one image [3, R*H, V*W]."""
    stacked = torch.stack(list(rows))  # [R, V, 3, H, W]
    n_rows, n_views, channels, height, width = stacked.shape
    grid = stacked.permute(2, 0, 3, 1, 4)  # [3, R, H, V, W]
    return grid.reshape(channels, n_rows * height, n_views * width)


def validation_grid(
    target: Tensor,
    render: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float] | None = None,
) -> np.ndarray:
    """The 5-row picture for one sample: uint8 [5*H, V*W, 3].

    target, render: [V, 3, H, W] in [0, 1] (render is clamped); target_alpha:
    [V, 1, H, W]. `background` ([3]) is accepted for call-site symmetry with
    compute_metrics but not used: the foreground comes from the GT alpha.
    """
    del background  # see docstring
    if target.dim() != 4 or target.shape[1] != 3 or render.shape != target.shape:
        raise ValueError(
            f"target/render must both be [V, 3, H, W], got {tuple(target.shape)}, "
            f"{tuple(render.shape)}"
        )
    expected_alpha = (target.shape[0], 1, *target.shape[2:])
    if tuple(target_alpha.shape) != expected_alpha:
        raise ValueError(f"target_alpha must be {expected_alpha}, got {tuple(target_alpha.shape)}")
    target = target.detach().float().cpu().clamp(0.0, 1.0)
    render = render.detach().float().cpu().clamp(0.0, 1.0)
    alpha = target_alpha.detach().float().cpu().clamp(0.0, 1.0)
    rows = [
        target,
        render,
        mask_overlay(target, alpha),
        mask_overlay(render, alpha),
        error_heatmap(target, render, alpha),
    ]
    return to_uint8(_tile(rows))


def save_validation_grid(
    path: str | os.PathLike[str],
    target: Tensor,
    render: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float] | None = None,
) -> Path:
    """Write validation_grid(...) as a PNG atomically; returns the path.

    The PNG is written to a temporary file in the same folder and moved into place
    with os.replace, so a reader (or a crash) never sees a half-written picture.
    """
    path = Path(path)
    grid = validation_grid(target, render, target_alpha, background)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path
