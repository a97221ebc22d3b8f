"""The 5-row validation picture: layout, overlay blend, heatmap colours, PNG round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.gslrm.visualize import (
    BAR_WIDTH_PX,
    heatmap_colors,
    picture_layout,
    row_labels,
    save_validation_grid,
    validation_grid,
    validation_picture,
)

V, H, W = 3, 4, 5


def block(grid: np.ndarray, row: int, view: int) -> np.ndarray:
    """The [H, W, 3] cell of row `row`, view `view`."""
    return grid[row * H : (row + 1) * H, view * W : (view + 1) * W]


def to_u8(x: torch.Tensor) -> np.ndarray:
    """[V?, 3, H, W] -> [.., H, W, 3] uint8, rounding like the module must."""
    return (x * 255).round().to(torch.uint8).movedim(-3, -1).numpy()


def scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target with exact k/255 values, render, and alpha (fg = left 2 columns)."""
    torch.manual_seed(0)
    target = torch.randint(0, 256, (V, 3, H, W)).float() / 255
    render = torch.rand(V, 3, H, W)
    alpha = torch.zeros(V, 1, H, W)
    alpha[..., :2] = 1.0
    return target, render, alpha


def test_heatmap_ramp_anchor_colours() -> None:
    e = torch.tensor([0.0, 1 / 3, 0.5, 2 / 3, 1.0, 1.7, -0.2])
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0],  # blue
            [0.0, 1.0, 0.0],  # green
            [0.5, 1.0, 0.0],  # halfway green -> yellow
            [1.0, 1.0, 0.0],  # yellow
            [1.0, 0.0, 0.0],  # red
            [1.0, 0.0, 0.0],  # clipped to red
            [0.0, 0.0, 1.0],  # clipped to blue
        ]
    )
    assert torch.allclose(heatmap_colors(e), expected, atol=1e-6)
    # piecewise-linear: 1/6 is halfway blue -> green
    assert torch.allclose(heatmap_colors(torch.tensor(1 / 6)), torch.tensor([0.0, 0.5, 0.5]))
    assert heatmap_colors(torch.zeros(2, 4, 5)).shape == (2, 4, 5, 3)


def test_grid_shape_and_first_two_rows() -> None:
    target, render, alpha = scene()
    grid = validation_grid(target, render, alpha, torch.ones(3))
    assert grid.shape == (5 * H, V * W, 3)
    assert grid.dtype == np.uint8
    expected_target = to_u8(target)
    expected_render = to_u8(render)
    for v in range(V):
        np.testing.assert_array_equal(block(grid, 0, v), expected_target[v])
        np.testing.assert_array_equal(block(grid, 1, v), expected_render[v])


def test_overlay_rows_blend_gt_mask_and_predicted_mask() -> None:
    target = torch.zeros(1, 3, H, W)
    render = torch.ones(1, 3, H, W)
    render[..., 0, 0] = 0.5  # |render - white| = 0.5 > 0.1: predicted foreground
    render[..., 0, 1] = 0.95  # 0.05 <= 0.1: predicted background
    alpha = torch.zeros(1, 1, H, W)
    alpha[..., 0, 0] = 1.0
    alpha[..., 0, 1] = 0.5
    grid = validation_grid(target, render, alpha, torch.ones(3), mask_threshold=0.1)
    gt_row, render_row = block(grid, 2, 0), block(grid, 3, 0)
    # black GT: 0.3 * overlay; fg overlay (0.2, 0.8, 0.2), bg overlay (0.8, 0.2, 0.2)
    np.testing.assert_allclose(gt_row[0, 0], np.array([0.06, 0.24, 0.06]) * 255, atol=0.51)
    np.testing.assert_allclose(gt_row[1, 1], np.array([0.24, 0.06, 0.06]) * 255, atol=0.51)
    # soft alpha 0.5: overlay (0.5, 0.5, 0.2)
    np.testing.assert_allclose(gt_row[0, 1], np.array([0.15, 0.15, 0.06]) * 255, atol=0.51)
    # render row: render * 0.7 + 0.3 * overlay of the predicted (hard) mask
    np.testing.assert_allclose(render_row[0, 0], np.array([0.41, 0.59, 0.41]) * 255, atol=0.51)
    np.testing.assert_allclose(
        render_row[0, 1], np.array([0.665 + 0.24, 0.665 + 0.06, 0.665 + 0.06]) * 255, atol=0.51
    )
    np.testing.assert_allclose(render_row[1, 1], np.array([0.94, 0.76, 0.76]) * 255, atol=0.51)
    # the mask follows the threshold: at 0.6 the grey pixel is background too
    strict = block(validation_grid(target, render, alpha, torch.ones(3), mask_threshold=0.6), 3, 0)
    np.testing.assert_allclose(strict[0, 0], np.array([0.59, 0.41, 0.41]) * 255, atol=0.51)


def test_row_labels_name_each_mask_and_the_threshold() -> None:
    labels = row_labels(0.25, 0.0423)
    assert len(labels) == 5 and labels[0] == ("ground truth",) and labels[1] == ("render",)
    assert labels[2] == ("GT + GT mask", "(alpha: green fg, red bg)")
    assert labels[3] == ("render + predicted mask", "(|render - bg| > 0.25)")
    assert labels[4] == ("|GT - render| on GT fg", "(grey: bg; fg mean 0.042)")
    assert row_labels(0.1, float("nan"))[4][1] == "(grey: bg; no GT foreground)"


def test_picture_holds_the_grid_labels_and_colour_bar() -> None:
    target, render, alpha = scene()
    picture = validation_picture(target, render, alpha, torch.ones(3), mask_threshold=0.1)
    layout = picture_layout(H, W, V, row_labels(0.1, 0.0))
    assert picture.shape == (layout.height, layout.width, 3) and picture.dtype == np.uint8
    assert layout.scale == 10 and layout.height == 5 * H * 10  # 4 px rows enlarged to 40
    # the bare grid, enlarged by whole pixels, sits right of the label column
    grid = validation_grid(target, render, alpha, torch.ones(3), mask_threshold=0.1)
    enlarged = grid.repeat(layout.scale, axis=0).repeat(layout.scale, axis=1)
    inner = picture[:, layout.left : layout.left + V * W * layout.scale]
    np.testing.assert_array_equal(inner, enlarged)
    # labels: dark text pixels in every row's label column
    for row in range(5):
        cell = picture[row * layout.row_height : (row + 1) * layout.row_height, : layout.left]
        assert (cell.max(axis=-1) < 128).any(), row
    # colour bar beside the heatmap row: red (>= 0.3 error) at the top, blue (0) at the bottom
    bar = picture[layout.bar_top : layout.bar_bottom, layout.bar_left]
    assert layout.bar_top >= 4 * layout.row_height
    np.testing.assert_array_equal(bar[0], [255, 0, 0])
    np.testing.assert_array_equal(bar[-1], [0, 0, 255])
    middle = bar[len(bar) // 2]
    assert middle[1] > 200 and middle[2] < 60  # around green-yellow
    columns = picture[
        layout.bar_top : layout.bar_bottom, layout.bar_left : layout.bar_left + BAR_WIDTH_PX
    ]
    assert (columns == bar[:, None]).all()


def test_heatmap_row_colours() -> None:
    target = torch.ones(1, 3, H, W)
    render = torch.ones(1, 3, H, W)
    alpha = torch.zeros(1, 1, H, W)
    alpha[..., 0, :3] = 1.0
    render[..., 0, 1] = 1.0 - 0.15  # e = 0.15 / 0.3 = 0.5: between green and yellow
    render[..., 0, 2] = 0.4  # error 0.6 >= 0.3: red
    render[..., 1, 0] = 0.0  # background pixel with a large error: still grey
    heat = block(validation_grid(target, render, alpha), 4, 0)
    np.testing.assert_array_equal(heat[0, 0], [0, 0, 255])  # e = 0: blue
    np.testing.assert_allclose(heat[0, 1], [127.5, 255, 0], atol=0.51)
    np.testing.assert_array_equal(heat[0, 2], [255, 0, 0])
    background = heat[1:].reshape(-1, 3)
    assert np.isin(background, [76, 77]).all()  # grey 0.3
    assert (background == background[0]).all()
    assert np.isin(heat[0, 3:], [76, 77]).all()


def test_heatmap_uses_mean_over_channels() -> None:
    target = torch.ones(1, 3, H, W)
    render = torch.ones(1, 3, H, W)
    render[:, 0, 0, 0] = 0.1  # one channel off by 0.9: mean 0.3 -> e = 1 (red)
    render[:, 0, 0, 1] = 0.7  # mean 0.1 -> e = 1/3 (green)
    heat = block(validation_grid(target, render, torch.ones(1, 1, H, W)), 4, 0)
    np.testing.assert_array_equal(heat[0, 0], [255, 0, 0])
    np.testing.assert_allclose(heat[0, 1], [0, 255, 0], atol=1)


def test_saved_png_reads_back_identical(tmp_path: Path) -> None:
    target, render, alpha = scene()
    path = tmp_path / "sub" / "val_000100.png"
    returned = save_validation_grid(path, target, render, alpha, torch.ones(3))
    assert returned == path
    with Image.open(path) as image:
        assert image.format == "PNG"
        loaded = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(loaded, validation_picture(target, render, alpha, torch.ones(3)))
    assert sorted(p.name for p in path.parent.iterdir()) == ["val_000100.png"]  # no temp left


def test_bad_shapes_rejected() -> None:
    target, render, alpha = scene()
    with pytest.raises(ValueError):
        validation_grid(target[None], render[None], alpha[None])
    with pytest.raises(ValueError):
        validation_grid(target, render, alpha[:, :, :2])
