"""Renderer tests: hand-computed single-splat values, gsplat's projection oracle, compositing
rules (order, background, culling, early stop) against a per-pixel loop, gradients, and (GPU
only) agreement of the torch and gsplat backends."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trainables.gslrm.render import render
from trainables.gslrm.render import torch_backend as tb
from trainables.gslrm.types import Cameras, Gaussians

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


@pytest.fixture(params=["native", "torch"])
def kernel(request, monkeypatch) -> str:
    """Run a test with each compositing kernel of the torch backend (``render`` reads it from
    GSLRM_COMPOSITE_KERNEL)."""
    monkeypatch.setenv("GSLRM_COMPOSITE_KERNEL", request.param)
    return request.param


def axis_camera(focal: float, cx: float, cy: float, views: int = 1) -> Cameras:
    """Cameras at the origin looking down +z (OpenCV), batch 1."""
    c2w = torch.eye(4).expand(1, views, 4, 4).clone()
    intrinsics = torch.tensor([focal, focal, cx, cy]).expand(1, views, 4).clone()
    return Cameras(c2w=c2w, intrinsics=intrinsics)


def splats(
    means: list[tuple[float, float, float]],
    scale: float | list[float],
    opacity: float | list[float],
    colors: list[tuple[float, float, float]],
    dtype: torch.dtype = torch.float32,
) -> Gaussians:
    """Isotropic Gaussians, batch 1."""
    n = len(means)
    scales = torch.tensor(scale, dtype=dtype).expand(n)[:, None].expand(n, 3)
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype).expand(n, 4)
    return Gaussians(
        means=torch.tensor(means, dtype=dtype).reshape(1, n, 3),
        scales=scales[None].clone(),
        quats=quats[None].clone(),
        opacities=torch.tensor(opacity, dtype=dtype).expand(n)[None].clone(),
        colors=torch.tensor(colors, dtype=dtype).reshape(1, n, 3),
    )


def look_at(eye: torch.Tensor) -> torch.Tensor:
    """[3] -> [4, 4] OpenCV camera-to-world looking at the origin."""
    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0], dtype=eye.dtype))
    right = right / right.norm()
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = (
        right,
        torch.linalg.cross(forward, right),
        forward,
        eye,
    )
    return c2w


def random_scene(
    n: int,
    views: int,
    size: int,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.01, 0.06),
    opacity_range: tuple[float, float] = (0.05, 0.95),
    dtype: torch.dtype = torch.float32,
) -> tuple[Gaussians, Cameras]:
    """N Gaussians in a unit cube seen by V ring cameras 2.5 units away, batch 1."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    quats = torch.randn(1, n, 4, generator=gen, dtype=dtype)
    op_lo, op_hi = opacity_range
    gauss = Gaussians(
        means=torch.rand(1, n, 3, generator=gen, dtype=dtype) - 0.5,
        scales=torch.exp(lo + (hi - lo) * torch.rand(1, n, 3, generator=gen, dtype=dtype)),
        quats=quats / quats.norm(dim=-1, keepdim=True),
        opacities=op_lo + (op_hi - op_lo) * torch.rand(1, n, generator=gen, dtype=dtype),
        colors=torch.rand(1, n, 3, generator=gen, dtype=dtype),
    )
    angles = torch.arange(views, dtype=dtype) * (2 * math.pi / views) + 0.3
    eyes = torch.stack([2.5 * angles.cos(), 0.4 * torch.ones_like(angles), 2.5 * angles.sin()], -1)
    c2w = torch.stack([look_at(e) for e in eyes])[None]
    focal = 1.1 * size
    intr = torch.tensor([focal, focal, size / 2 + 0.3, size / 2 - 0.2], dtype=dtype)
    return gauss, Cameras(c2w=c2w, intrinsics=intr.expand(1, views, 4).clone())


def per_pixel_reference(
    gauss: Gaussians, cams: Cameras, size: int, background: torch.Tensor, near: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gsplat compositing rules as a literal per-Gaussian loop over all pixels.

    Uses our projection (checked against gsplat's oracle separately) and no tiling.
    Returns rgb [V, 3, H, W], alpha [V, 1, H, W] for batch element 0.
    """
    n_views = cams.c2w.shape[1]
    means = gauss.means[0].expand(n_views, -1, -1)
    covars = tb.covariance_3d(gauss.quats[0], gauss.scales[0]).expand(n_views, -1, -1, -1)
    proj = tb.project(means, covars, cams.w2c[0], cams.K()[0], size, size, near)
    pix = torch.arange(size, dtype=means.dtype) + 0.5
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    rgbs, alphas = [], []
    for v in range(n_views):
        trans = torch.ones(size, size, dtype=means.dtype)
        color = torch.zeros(3, size, size, dtype=means.dtype)
        done = torch.zeros(size, size, dtype=torch.bool)
        for g in torch.argsort(proj.depths[v]).tolist():
            if proj.radii[v, g, 0] == 0:
                continue
            a, b, c = proj.conics[v, g]
            dx, dy = px - proj.means2d[v, g, 0], py - proj.means2d[v, g, 1]
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = torch.clamp(gauss.opacities[0, g] * torch.exp(-sigma), max=0.999)
            active = (sigma >= 0) & (alpha >= 1.0 / 255.0) & ~done
            next_trans = trans * (1 - alpha)
            stop = active & (next_trans <= 1e-4)
            done |= stop
            active &= ~stop
            color = (
                color + torch.where(active, alpha * trans, 0.0) * gauss.colors[0, g, :, None, None]
            )
            trans = torch.where(active, next_trans, trans)
        rgbs.append(color + trans * background[:, None, None])
        alphas.append(1 - trans[None])
    return torch.stack(rgbs), torch.stack(alphas)


# ---------------------------------------------------------------------------------------------
# One splat, hand-computed
# ---------------------------------------------------------------------------------------------


def test_single_isotropic_gaussian_matches_hand_computed_values(kernel):
    # focal 20, depth 2, scale 0.1 -> screen std 20 * 0.1 / 2 = 1 px, so cov2d = (1 + 0.3) I
    # after the eps2d blur and the conic is I / 1.3. cx = cy = 8.5 puts the mean on the centre
    # of pixel (8, 8).
    var = 1.0 + 0.3
    opacity, color, bg = 0.8, (0.2, 0.6, 1.0), torch.tensor([0.1, 0.2, 0.3])
    gauss = splats([(0.0, 0.0, 2.0)], 0.1, opacity, [color])
    rgb, alpha = render(gauss, axis_camera(20.0, 8.5, 8.5), 17, 17, bg, backend="torch")
    rgb, alpha = rgb[0, 0], alpha[0, 0, 0]

    # Centre: sigma = 0 -> alpha = opacity; colour = alpha c + (1 - alpha) bg
    assert alpha[8, 8].item() == pytest.approx(0.8, abs=1e-6)
    expected = [0.8 * c + 0.2 * b for c, b in zip(color, bg.tolist(), strict=True)]
    assert rgb[:, 8, 8].tolist() == pytest.approx(expected, abs=1e-6)

    # One pixel right and two down: sigma = 0.5 (1 + 4) / 1.3
    a_off = 0.8 * math.exp(-0.5 * 5 / var)
    assert alpha[10, 9].item() == pytest.approx(a_off, rel=1e-5)
    assert rgb[2, 10, 9].item() == pytest.approx(a_off * 1.0 + (1 - a_off) * 0.3, rel=1e-5)

    # Footprint: alpha >= 1/255 <=> dx^2 + dy^2 <= 2 var ln(255 opacity) = 13.83 (45 pixels)
    r2 = 2 * var * math.log(255 * opacity)
    offsets = torch.arange(17) - 8
    expected_mask = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= r2
    assert int(expected_mask.sum()) == 45
    assert torch.equal(alpha >= 1.0 / 255.0, expected_mask)
    # Outside the footprint nothing is added at all: exactly the background
    assert torch.all(alpha[~expected_mask] == 0)
    assert torch.equal(rgb[:, ~expected_mask], bg[:, None].expand(3, int((~expected_mask).sum())))


def test_opacity_above_0999_is_clamped(kernel):
    gauss = splats([(0.0, 0.0, 2.0)], 0.1, 1.0, [RED])
    rgb, alpha = render(gauss, axis_camera(20.0, 4.5, 4.5), 9, 9, torch.zeros(3), backend="torch")
    assert alpha[0, 0, 0, 4, 4].item() == pytest.approx(0.999, abs=1e-6)
    assert rgb[0, 0, 0, 4, 4].item() == pytest.approx(0.999, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Projection against gsplat's pure-PyTorch oracle (runs on CPU)
# ---------------------------------------------------------------------------------------------


def test_projection_matches_gsplat_torch_oracle():
    from gsplat.cuda._torch_impl import _fully_fused_projection

    size, near = 48, 0.2
    gauss, cams = random_scene(400, 3, size, seed=1, scale_range=(0.005, 0.3))
    # Push some Gaussians behind the cameras' near plane and far off to the side
    means = gauss.means[0].clone()
    means[:20] *= 8.0
    covars = tb.covariance_3d(gauss.quats[0], gauss.scales[0])
    w2c, Ks = cams.w2c[0], cams.K()[0]

    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, w2c, Ks, size, size, eps2d=0.3, near_plane=near, far_plane=1e10
    )
    ours = tb.project(
        means.expand(3, -1, -1), covars.expand(3, -1, -1, -1), w2c, Ks, size, size, near
    )

    # Radii are ceil()ed, so rounding may flip a rare one by a pixel
    diff = (ours.radii - radii).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    visible = (radii > 0).all(-1) & (ours.radii > 0).all(-1)
    assert 0.5 < visible.float().mean() < 1.0  # the scene exercises both culled and kept
    torch.testing.assert_close(ours.means2d[visible], means2d[visible], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.depths, depths, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.conics[visible], conics[visible], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Compositing rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("red_in_front", [True, False])
def test_two_overlapping_gaussians_front_one_dominates(red_in_front: bool, kernel):
    # Both on the optical axis, so both have sigma = 0 and alpha = 0.6 at the centre pixel
    z_red, z_green = (2.0, 3.0) if red_in_front else (3.0, 2.0)
    gauss = splats([(0.0, 0.0, z_red), (0.0, 0.0, z_green)], [0.1, 0.15], 0.6, [RED, GREEN])
    bg = torch.tensor([0.0, 0.0, 1.0])
    rgb, alpha = render(gauss, axis_camera(20.0, 4.5, 4.5), 9, 9, bg, backend="torch")
    centre = rgb[0, 0, :, 4, 4].tolist()
    front, back = (0.6, 0.4 * 0.6)
    expected = [front, back, 0.16] if red_in_front else [back, front, 0.16]
    assert centre == pytest.approx(expected, abs=1e-6)
    assert alpha[0, 0, 0, 4, 4].item() == pytest.approx(1 - 0.4 * 0.4, abs=1e-6)


def test_empty_scene_is_background(kernel):
    gauss = splats([], 0.1, 0.5, [])
    bg = torch.tensor([0.25, 0.5, 0.75])
    rgb, alpha = render(gauss, axis_camera(10.0, 4.0, 4.0, views=2), 8, 8, bg, backend="torch")
    assert rgb.shape == (1, 2, 3, 8, 8) and alpha.shape == (1, 2, 1, 8, 8)
    assert torch.equal(rgb, bg[None, None, :, None, None].expand_as(rgb))
    assert torch.all(alpha == 0)


def test_background_shows_where_no_gaussian_and_per_batch_background():
    # A small splat in the top-left corner; batch 2 with a different background each
    one = splats([(-0.5, -0.5, 2.0)], 0.02, 0.9, [RED])
    gauss = Gaussians(
        *(torch.cat([t, t]) for t in (one.means, one.scales, one.quats, one.opacities, one.colors))
    )
    cams = axis_camera(16.0, 8.0, 8.0)
    cams = Cameras(torch.cat([cams.c2w, cams.c2w]), torch.cat([cams.intrinsics, cams.intrinsics]))
    bg = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rgb, alpha = render(gauss, cams, 16, 16, bg, backend="torch")
    # Mean projects to u = v = 16 * -0.25 + 8 = 4, the corner shared by 4 pixels
    assert alpha[:, 0, 0, 3:5, 3:5].min() > 0.4
    far = (slice(None), 0, slice(None), slice(10, None), slice(10, None))
    assert torch.all(alpha[far[:2] + (slice(None),) + far[3:]] == 0)
    assert torch.equal(rgb[0, 0, :, 10:, 10:], bg[0, :, None, None].expand(3, 6, 6))
    assert torch.equal(rgb[1, 0, :, 10:, 10:], bg[1, :, None, None].expand(3, 6, 6))


@pytest.mark.parametrize("depth", [-2.0, 0.0, 0.1, 0.2])
def test_gaussians_behind_camera_or_before_near_plane_are_culled(depth: float):
    bg = torch.tensor([0.5, 0.5, 0.5])
    gauss = splats([(0.0, 0.0, depth)], 0.01, 0.9, [RED])
    rgb, alpha = render(
        gauss, axis_camera(20.0, 4.5, 4.5), 9, 9, bg, backend="torch", near_plane=0.2
    )
    assert torch.all(alpha == 0)
    assert torch.equal(rgb, bg[None, None, :, None, None].expand_as(rgb))


def test_gaussian_just_past_near_plane_is_drawn():
    gauss = splats([(0.0, 0.0, 0.25)], 0.01, 0.9, [RED])
    _, alpha = render(
        gauss, axis_camera(20.0, 4.5, 4.5), 9, 9, torch.zeros(3), backend="torch", near_plane=0.2
    )
    assert alpha[0, 0, 0, 4, 4].item() == pytest.approx(0.9, abs=1e-6)


def test_transmittance_early_stop_excludes_the_stopping_gaussian(kernel):
    # Alpha 0.95 each at the centre pixel: T goes 1, 0.05, 0.0025, 1.25e-4, then 6.25e-6
    # <= 1e-4, so gsplat stops *before* the 4th and never adds it (nor the 5th).
    colors = [RED, GREEN, BLUE, (1.0, 1.0, 0.0), (0.0, 1.0, 1.0)]
    means = [(0.0, 0.0, 2.0 + 0.5 * k) for k in range(5)]
    gauss = splats(means, [0.1 + 0.025 * k for k in range(5)], 0.95, colors, dtype=torch.float64)
    bg = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    cams = axis_camera(20.0, 4.5, 4.5)
    cams = Cameras(cams.c2w.double(), cams.intrinsics.double())
    rgb, alpha = render(gauss, cams, 9, 9, bg, backend="torch")
    weights = [0.95, 0.05 * 0.95, 0.0025 * 0.95]
    expected = [
        sum(w * c[ch] for w, c in zip(weights, colors, strict=False)) + 1.25e-4 * 0.3
        for ch in range(3)
    ]
    assert rgb[0, 0, :, 4, 4].tolist() == pytest.approx(expected, abs=1e-12)
    assert alpha[0, 0, 0, 4, 4].item() == pytest.approx(1 - 1.25e-4, abs=1e-12)


@pytest.mark.parametrize(
    ("tile_size", "chunk", "kernel"),
    [(4, 3, "torch"), (8, 64, "torch"), (16, 5, "torch"), (4, 0, "native"), (16, 0, "native")],
)
def test_matches_per_pixel_loop_on_random_scene(
    monkeypatch, tile_size: int, chunk: int, kernel: str
):
    # Dense and fairly opaque so early stops, skips, overlaps and tiles leaving the chunk loop
    # early all occur; tile and chunk sizes only change the work done, never the image. The
    # chunk is the torch kernel's; the native kernel walks whole lists.
    if chunk:
        monkeypatch.setattr(tb, "CHUNK", chunk)
    size, near = 20, 0.2
    gauss, cams = random_scene(
        150, 2, size, seed=3, scale_range=(0.02, 0.12), opacity_range=(0.3, 1.0)
    )
    bg = torch.tensor([0.2, 0.4, 0.6])
    rgb, alpha = tb.rasterize(
        gauss.means, gauss.quats, gauss.scales, gauss.opacities, gauss.colors,
        cams.w2c, cams.K(), size, size, bg.expand(1, 2, 3), near, tile_size=tile_size,
        kernel=kernel,
    )  # fmt: skip
    ref_rgb, ref_alpha = per_pixel_reference(gauss, cams, size, bg, near)
    assert (ref_alpha > 1 - 1e-3).any(), "scene should saturate some pixels"
    torch.testing.assert_close(rgb[0], ref_rgb, rtol=0, atol=2e-5)
    torch.testing.assert_close(alpha[0], ref_alpha, rtol=0, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def test_gradients_finite_and_nonzero_for_all_inputs(kernel):
    gauss, cams = random_scene(60, 2, 24, seed=4, scale_range=(0.03, 0.1))
    leaves = [
        t.requires_grad_(True)
        for t in (gauss.means, gauss.scales, gauss.quats, gauss.opacities, gauss.colors)
    ]
    rgb, alpha = render(gauss, cams, 24, 24, torch.tensor([0.5, 0.5, 0.5]), backend="torch")
    target = torch.rand_like(rgb, generator=torch.Generator().manual_seed(0))
    ((rgb - target).square().mean() + alpha.mean()).backward()
    for name, t in zip(["means", "scales", "quats", "opacities", "colors"], leaves, strict=True):
        assert t.grad is not None, name
        assert torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kernel", "saved_elements", "chunk"),
    [("torch", 1 << 25, 64), ("torch", 0, 64), ("torch", 1500, 3), ("native", 0, 0)],
    ids=["torch-saved", "torch-recomputed", "torch-chunked-mixed", "native"],
)
def test_gradients_match_finite_differences(
    monkeypatch, kernel: str, saved_elements: int, chunk: int
):
    # float64 so that finite differences are meaningful; a small scene away from the 1/255
    # and 1e-4 thresholds, where the render is smooth in every input. Covers the native
    # kernel and the torch kernel's backward paths (per-pixel terms saved by forward or
    # recomputed, and a mix of the two) with gradients flowing across list chunks.
    monkeypatch.setenv("GSLRM_COMPOSITE_KERNEL", kernel)
    if chunk:
        monkeypatch.setattr(tb, "SAVED_ELEMENTS", saved_elements)
        monkeypatch.setattr(tb, "CHUNK", chunk)
    gauss, cams = random_scene(
        12, 2, 12, seed=5, scale_range=(0.06, 0.15), opacity_range=(0.1, 0.7), dtype=torch.float64
    )
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)

    def fn(means, scales, quats, opacities, colors):
        return render(
            Gaussians(means, scales, quats, opacities, colors), cams, 12, 12, bg, backend="torch"
        )

    inputs = [
        t.clone().requires_grad_(True)
        for t in (gauss.means, gauss.scales, gauss.quats, gauss.opacities, gauss.colors)
    ]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_no_gradient_through_the_0999_clamp(kernel):
    # Opacity 1 on a pixel centre: alpha = min(0.999, 1) is clamped there, so (as in gsplat)
    # that pixel sends no gradient to the opacity; one pixel over it is unclamped and does.
    gauss = splats([(0.0, 0.0, 2.0)], 0.1, 1.0, [RED])
    gauss.opacities.requires_grad_(True)
    cams = axis_camera(20.0, 4.5, 4.5)
    _, alpha = render(gauss, cams, 9, 9, torch.zeros(3), backend="torch")
    alpha[0, 0, 0, 4, 4].backward()
    assert gauss.opacities.grad.item() == 0.0
    gauss.opacities.grad = None
    _, alpha = render(gauss, cams, 9, 9, torch.zeros(3), backend="torch")
    alpha[0, 0, 0, 4, 5].backward()
    assert gauss.opacities.grad.item() == pytest.approx(math.exp(-0.5 / 1.3), rel=1e-5)


def test_empty_render_still_backpropagates(kernel):
    # Everything behind the camera: a loss on the render must still call backward()
    gauss = splats([(0.0, 0.0, -1.0)], 0.1, 0.5, [RED])
    gauss.means.requires_grad_(True)
    rgb, alpha = render(gauss, axis_camera(20.0, 4.5, 4.5), 9, 9, torch.zeros(3), backend="torch")
    (rgb.sum() + alpha.sum()).backward()
    assert torch.equal(gauss.means.grad, torch.zeros_like(gauss.means))


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def test_unknown_backend_is_rejected_with_valid_names():
    gauss = splats([(0.0, 0.0, 2.0)], 0.1, 0.5, [RED])
    with pytest.raises(ValueError, match="auto.*gsplat.*torch"):
        render(gauss, axis_camera(20.0, 4.5, 4.5), 9, 9, torch.zeros(3), backend="opengl")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_gsplat_backend_without_cuda_raises():
    gauss = splats([(0.0, 0.0, 2.0)], 0.1, 0.5, [RED])
    with pytest.raises(RuntimeError, match="CUDA"):
        render(gauss, axis_camera(20.0, 4.5, 4.5), 9, 9, torch.zeros(3), backend="gsplat")


def test_auto_backend_on_cpu_uses_torch_and_rejects_bad_background():
    gauss = splats([(0.0, 0.0, 2.0)], 0.1, 0.5, [RED])
    cams = axis_camera(20.0, 4.5, 4.5)
    auto = render(gauss, cams, 9, 9, torch.zeros(3))
    explicit = render(gauss, cams, 9, 9, torch.zeros(3), backend="torch")
    assert torch.equal(auto[0], explicit[0]) and torch.equal(auto[1], explicit[1])
    with pytest.raises(ValueError, match="background"):
        render(gauss, cams, 9, 9, torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# GPU: the two backends agree (the helpers and the noise floor they rest on also run on CPU)
# ---------------------------------------------------------------------------------------------

GAUSSIAN_FIELDS = ("means", "scales", "quats", "opacities", "colors")
# A pixel differing by more than this between two renders has a discrete rule flipped (a
# Gaussian's alpha crossing 1/255 moves it by up to 1/255 ~ 3.9e-3); float rounding stays ~1e-6
FLIP = 1e-3
# Multiple of the measured float32 noise the two backends may differ by: both evaluate the same
# float32 formulas, but in different orders (tile-centre expansion here, the direct quadratic
# and __expf there; atomic-add gradient sums), so each has its own rounding of the same size
NOISE_MULTIPLE = 10.0
# Floors under the measured noise. Pixels: 1e-8, below any float32 render's noise. Gradients:
# one flipped pixel alone moves the means / scales gradients by 1.3e-4 (relative L2) on the GPU
# test's scene, while without flips they agree to 1e-6, so the bound allows a few flips
NOISE_FLOOR = {"pixels": 1e-8, "grads": 1e-4}


@dataclass
class RenderRun:
    """One backend's forward + backward on a scene, all moved to CPU float64.

    rgb: [B, V, 3, H, W], alpha: [B, V, 1, H, W], grads: field name -> gradient of that input
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    grads: dict[str, torch.Tensor]


def agreement_scene(
    batch: int = 2, n: int = 3000, views: int = 2, size: int = 128
) -> tuple[Gaussians, Cameras, torch.Tensor]:
    """B different random scenes (seeds 7, 8, ...) with their own backgrounds [B, 3]."""
    parts = [random_scene(n, views, size, seed=7 + b) for b in range(batch)]
    gauss = Gaussians(*(torch.cat([getattr(p[0], f) for p in parts]) for f in GAUSSIAN_FIELDS))
    cams = Cameras(
        torch.cat([p[1].c2w for p in parts]), torch.cat([p[1].intrinsics for p in parts])
    )
    bg = torch.rand(batch, 3, generator=torch.Generator().manual_seed(2))
    return gauss, cams, bg


def render_run(
    gauss: Gaussians,
    cams: Cameras,
    bg: torch.Tensor,
    size: int,
    backend: str,
    device: str,
    dtype: torch.dtype = torch.float32,
) -> RenderRun:
    """Render, then backpropagate a loss that weighs every pixel differently, into all 5 inputs."""
    leaves = [
        getattr(gauss, f).detach().to(device, dtype).requires_grad_(True) for f in GAUSSIAN_FIELDS
    ]
    cams_d = Cameras(cams.c2w.to(device, dtype), cams.intrinsics.to(device, dtype))
    rgb, alpha = render(
        Gaussians(*leaves), cams_d, size, size, bg.to(device, dtype), backend=backend
    )
    target = torch.rand(rgb.shape, generator=torch.Generator().manual_seed(1))
    ((rgb - target.to(device, dtype)).square().mean() + alpha.mean()).backward()
    return RenderRun(
        rgb=rgb.detach().cpu().double(),
        alpha=alpha.detach().cpu().double(),
        grads={f: t.grad.cpu().double() for f, t in zip(GAUSSIAN_FIELDS, leaves, strict=True)},
    )


def compare_runs(test: RenderRun, ref: RenderRun) -> dict[str, float]:
    """Differences of two runs: flipped pixels, the largest difference, the mean difference of
    the other pixels (the rounding noise), and each gradient's relative L2 error."""
    d_rgb = (test.rgb - ref.rgb).abs()  # [B, V, 3, H, W]
    d_alpha = (test.alpha - ref.alpha).abs()  # [B, V, 1, H, W]
    per_pixel = torch.maximum(d_rgb.amax(2), d_alpha[:, :, 0])  # [B, V, H, W]
    flipped = per_pixel > FLIP
    stats = {
        "flipped_pixels": float(flipped.sum()),
        "max": float(per_pixel.max()),
        "rgb_noise": float(d_rgb.mean(2)[~flipped].mean()),
        "alpha_noise": float(d_alpha[:, :, 0][~flipped].mean()),
    }
    for name in GAUSSIAN_FIELDS:
        a, b = test.grads[name], ref.grads[name]
        stats[f"grad_{name}"] = float((a - b).norm() / b.norm())
    return stats


def test_float32_noise_floor_of_the_torch_backend():
    # The yardstick of the GPU test below, and its helpers run on CPU: the torch backend in
    # float32 against itself in float64 (batch 2, a smaller scene than the GPU test's to stay
    # quick; measured here: no flips, rgb noise 4e-8, gradient errors ~1e-6). On the GPU test's
    # scene (128 px, 3000 Gaussians) on CPU: rgb noise 5e-8, alpha 6e-8, one flipped pixel of
    # 65536, gradient errors 1.7e-5 (quats) to 1.4e-4 (scales), all from that one pixel.
    size = 64
    gauss, cams, bg = agreement_scene(n=1500, size=size)
    f32 = render_run(gauss, cams, bg, size, "torch", "cpu")
    f64 = render_run(gauss, cams, bg, size, "torch", "cpu", torch.float64)
    stats = compare_runs(f32, f64)
    print(stats)
    assert stats["flipped_pixels"] <= 4
    assert stats["max"] < 1.5 / 255  # at most one Gaussian flipped at any pixel
    assert stats["rgb_noise"] < 1e-6 and stats["alpha_noise"] < 1e-6
    for name in GAUSSIAN_FIELDS:
        assert stats[f"grad_{name}"] < 1e-3, (name, stats)
    # every input receives gradient, so the relative errors are not 0 / 0
    assert all(g.abs().sum() > 0 for g in f64.grads.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat")
def test_torch_and_gsplat_backends_agree():
    # Batch 2 (different scenes and backgrounds), 2 views of 128 px, 3000 Gaussians, gradients
    # of all five inputs. Tolerances come from the float32 noise measured here, on the same
    # scene: torch float32 vs float64. gsplat (float32) may differ from torch float32 by
    # NOISE_MULTIPLE times that noise, plus a few rule flips (pixels where a Gaussian's alpha
    # sits on 1/255 or T on 1e-4: rare, each bounded by 1/255). A systematic error (half-pixel
    # shift, wrong blur, a gradient term missing) is ~1e-2 per pixel, 1e5 x the noise.
    size = 128
    gauss, cams, bg = agreement_scene(size=size)
    torch32 = render_run(gauss, cams, bg, size, "torch", "cpu")
    noise = compare_runs(torch32, render_run(gauss, cams, bg, size, "torch", "cpu", torch.float64))
    got = compare_runs(render_run(gauss, cams, bg, size, "gsplat", "cuda"), torch32)
    print("torch32 vs torch64:", noise)
    print("gsplat vs torch32: ", got)
    assert got["flipped_pixels"] <= 4 + noise["flipped_pixels"], (got, noise)
    assert got["max"] < 1.5 / 255, (got, noise)
    for key in ("rgb_noise", "alpha_noise", *(f"grad_{n}" for n in GAUSSIAN_FIELDS)):
        floor = NOISE_FLOOR["grads" if key.startswith("grad_") else "pixels"]
        bound = NOISE_MULTIPLE * max(noise[key], floor)
        assert got[key] < bound, (key, got[key], bound)


# ---------------------------------------------------------------------------------------------
# benchmarks/render.py times fresh leaves, never the caller's scene tensors
# ---------------------------------------------------------------------------------------------


def load_render_benchmark():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "render.py"
    spec = importlib.util.spec_from_file_location("benchmark_render", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_render_benchmark_leaves_the_scene_untouched(device: str):
    # `t.to(device).requires_grad_(True)` marked the scene's own CPU tensors: on CPU they became
    # leaves collecting gradients, on CUDA every timed backward also copied gradients to the CPU
    bench = load_render_benchmark()
    scene, cams = bench.random_scene(1, 200, 2, 16)
    before = [getattr(scene, f).clone() for f in GAUSSIAN_FIELDS]
    backend = "torch" if device == "cpu" else "gsplat"
    wall, cpu = bench.time_backend(scene, cams, 16, backend, torch.device(device), repeats=1)
    assert wall > 0 and cpu >= 0
    for name, old in zip(GAUSSIAN_FIELDS, before, strict=True):
        t = getattr(scene, name)
        assert not t.requires_grad and t.grad is None, name
        assert torch.equal(t, old), name
