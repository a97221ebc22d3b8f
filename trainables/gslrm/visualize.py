"""Validation picture: 5 rows x target views, for one sample.

`validation_grid` is the bare grid (exact, no separators): row r, view v occupies
grid[r*H:(r+1)*H, v*W:(v+1)*W]:
  0. ground truth
  1. render
  2. GT * 0.7 + 0.3 * overlay(a = GT alpha)
  3. render * 0.7 + 0.3 * overlay(a = predicted mask), overlay = a*(0.2,0.8,0.2) +
     (1-a)*(0.8,0.2,0.2) (green = mouse, red = background). The predicted mask is the one
     val/mask_iou scores: mean_c |render - background| > validation.mask_iou_threshold, so
     rows 2 and 3 side by side show what the IoU compares.
  4. error heatmap on GT foreground (alpha > 0.5): e = clip(mean_c |GT - render| / 0.3,
     0, 1) on a blue -> green -> yellow -> red ramp; background pixels grey 0.3.

`validation_picture` (what `save_validation_grid` writes) is that grid, enlarged by a whole
factor when rows are short so text fits, with a label column on the left naming each row
(row 3 names its mask and threshold) and a colour bar for the heatmap on the right.

The reference's comment promises blue -> green -> yellow -> red but its formula gives
cyan -> purple -> red; this module implements the ramp the comment describes.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from trainables.gslrm.config import ValidationConfig
from trainables.gslrm.metrics import GT_ALPHA_THRESHOLD, predicted_mask

OVERLAY_WEIGHT = 0.3
FOREGROUND_TINT = (0.2, 0.8, 0.2)
BACKGROUND_TINT = (0.8, 0.2, 0.2)
# mean absolute error (per channel) that saturates the heatmap to red
HEATMAP_MAX_ERROR = 0.3
HEATMAP_BACKGROUND_GREY = 0.3
N_ROWS = 5
# The default mask threshold of the picture is the validation metric's (studies fix it).
DEFAULT_MASK_THRESHOLD = ValidationConfig().mask_iou_threshold
# Annotated picture: rows shorter than this are enlarged (nearest) so two text lines fit.
MIN_ROW_PX = 40
FONT_PX = 11
LINE_PX = 13
PAD_PX = 4
BAR_WIDTH_PX = 10
MARGIN_COLOUR = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


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


def _background(background: Tensor | Sequence[float] | None) -> Tensor:
    """[3] float background colour; None means white, the validation default."""
    if background is None:
        return torch.ones(3)
    return torch.as_tensor(background, dtype=torch.float32).detach().cpu().reshape(3)


def _prepare(target: Tensor, render: Tensor, target_alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if target.dim() != 4 or target.shape[1] != 3 or render.shape != target.shape:
        raise ValueError(
            f"target/render must both be [V, 3, H, W], got {tuple(target.shape)}, "
            f"{tuple(render.shape)}"
        )
    expected_alpha = (target.shape[0], 1, *target.shape[2:])
    if tuple(target_alpha.shape) != expected_alpha:
        raise ValueError(f"target_alpha must be {expected_alpha}, got {tuple(target_alpha.shape)}")
    return (
        target.detach().float().cpu().clamp(0.0, 1.0),
        render.detach().float().cpu().clamp(0.0, 1.0),
        target_alpha.detach().float().cpu().clamp(0.0, 1.0),
    )


def validation_grid(
    target: Tensor,
    render: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float] | None = None,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
) -> np.ndarray:
    """The bare 5-row grid for one sample: uint8 [5*H, V*W, 3].

    target, render: [V, 3, H, W] in [0, 1] (render is clamped); target_alpha: [V, 1, H, W];
    background: [3] (None = white), the colour the predicted mask of row 3 is measured
    against with `mask_threshold`, as in val/mask_iou.
    """
    target, render, alpha = _prepare(target, render, target_alpha)
    bg = _background(background)
    predicted = predicted_mask(render[None], bg.view(1, 1, 3, 1, 1), mask_threshold)[0].float()
    rows = [
        target,
        render,
        mask_overlay(target, alpha),
        mask_overlay(render, predicted),
        error_heatmap(target, render, alpha),
    ]
    return to_uint8(_tile(rows))


def foreground_mean_error(target: Tensor, render: Tensor, target_alpha: Tensor) -> float:
    """Mean over GT-foreground pixels of mean_c |GT - render| (NaN without foreground).

    target, render: [V, 3, H, W]; target_alpha: [V, 1, H, W].
    """
    foreground = (target_alpha > GT_ALPHA_THRESHOLD)[:, 0]
    if not bool(foreground.any()):
        return math.nan
    return float((target - render).abs().mean(dim=1)[foreground].mean())


def row_labels(mask_threshold: float, fg_mean_error: float) -> list[tuple[str, ...]]:
    """The text beside each of the 5 rows, one to two lines each."""
    error = "no GT foreground" if math.isnan(fg_mean_error) else f"fg mean {fg_mean_error:.3f}"
    return [
        ("ground truth",),
        ("render",),
        ("GT + GT mask", "(alpha: green fg, red bg)"),
        ("render + predicted mask", f"(|render - bg| > {mask_threshold:g})"),
        ("|GT - render| on GT fg", f"(grey: bg; {error})"),
    ]


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_PX)
    except (OSError, TypeError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _text_width(text: str) -> int:
    left, _, right, _ = _font().getbbox(text)
    return int(math.ceil(right - left))


@dataclass(frozen=True)
class PictureLayout:
    """Where things sit in the annotated picture (pixels). The bare grid, enlarged `scale`
    times, starts at (0, left); the colour bar spans rows bar_top..bar_bottom-1 and columns
    bar_left..bar_left+BAR_WIDTH_PX-1, red (error >= 0.3) at the top, blue (0) at the bottom."""

    scale: int
    left: int
    row_height: int
    bar_left: int
    bar_top: int
    bar_bottom: int
    width: int
    height: int


BAR_TICKS = ((1.0, f">={HEATMAP_MAX_ERROR:g}"), (0.5, f"{HEATMAP_MAX_ERROR / 2:g}"), (0.0, "0"))


def picture_layout(
    height: int, width: int, n_views: int, labels: Sequence[Sequence[str]]
) -> PictureLayout:
    """Layout for views of height x width pixels."""
    scale = max(1, math.ceil(MIN_ROW_PX / height))
    row_height = height * scale
    left = 2 * PAD_PX + max(_text_width(line) for label in labels for line in label)
    bar_left = left + n_views * width * scale + PAD_PX
    ticks = max(_text_width(text) for _, text in BAR_TICKS)
    heatmap_top = (N_ROWS - 1) * row_height
    return PictureLayout(
        scale=scale,
        left=left,
        row_height=row_height,
        bar_left=bar_left,
        bar_top=heatmap_top + PAD_PX,
        bar_bottom=heatmap_top + row_height - PAD_PX,
        width=bar_left + BAR_WIDTH_PX + PAD_PX + ticks + PAD_PX,
        height=N_ROWS * row_height,
    )


def colour_bar(length: int) -> np.ndarray:
    """Heatmap colour bar, top = error >= HEATMAP_MAX_ERROR, bottom = 0: uint8 [length, 3]."""
    e = torch.linspace(1.0, 0.0, length) if length > 1 else torch.ones(length)
    return to_uint8(heatmap_colors(e).T[:, :, None])[:, 0]


def validation_picture(
    target: Tensor,
    render: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float] | None = None,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
) -> np.ndarray:
    """The labelled picture: validation_grid with row labels and a heatmap colour bar,
    uint8 [layout.height, layout.width, 3] (see picture_layout); arguments as validation_grid."""
    grid = validation_grid(target, render, target_alpha, background, mask_threshold)
    target, render, alpha = _prepare(target, render, target_alpha)
    labels = row_labels(mask_threshold, foreground_mean_error(target, render, alpha))
    n_views, _, height, width = target.shape
    layout = picture_layout(height, width, n_views, labels)
    picture = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    picture[:] = MARGIN_COLOUR
    enlarged = grid.repeat(layout.scale, axis=0).repeat(layout.scale, axis=1)
    picture[:, layout.left : layout.left + enlarged.shape[1]] = enlarged
    bar = colour_bar(layout.bar_bottom - layout.bar_top)
    picture[
        layout.bar_top : layout.bar_bottom, layout.bar_left : layout.bar_left + BAR_WIDTH_PX
    ] = bar[:, None]
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    for row, label in enumerate(labels):
        top = row * layout.row_height + max(0, (layout.row_height - LINE_PX * len(label)) // 2)
        for line_index, line in enumerate(label):
            draw.text((PAD_PX, top + line_index * LINE_PX), line, fill=TEXT_COLOUR, font=_font())
    span = layout.bar_bottom - layout.bar_top - 1
    for fraction, text in BAR_TICKS:
        y = layout.bar_top + round((1.0 - fraction) * span) - LINE_PX // 2
        y = min(max(y, (N_ROWS - 1) * layout.row_height), layout.height - LINE_PX)
        x = layout.bar_left + BAR_WIDTH_PX + PAD_PX
        draw.text((x, y), text, fill=TEXT_COLOUR, font=_font())
    return np.asarray(image).copy()


def save_validation_grid(
    path: str | os.PathLike[str],
    target: Tensor,
    render: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float] | None = None,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
) -> Path:
    """Write validation_picture(...) as a PNG atomically; returns the path.

    The PNG is written to a temporary file in the same folder and moved into place
    with os.replace, so a reader (or a crash) never sees a half-written picture.
    """
    path = Path(path)
    grid = validation_picture(target, render, target_alpha, background, mask_threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(grid).save(handle, format="PNG")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
