"""The tiled CPU compositors (native and torch kernels) against a dense, plain-autograd
compositor, forward and gradients.

The oracle applies gsplat's per-pixel rules (GSPLAT_NOTES.md) to every (pixel, Gaussian) pair
of a small scene, front to back by depth, with no tiles, no chunks, no custom backward, no
saved-for-backward budget: autograd differentiates it. Both share ``project`` (checked against
gsplat's own torch oracle in test_render.py), so a difference here is a compositing fault:
tile lists, runs, early exits, the expanded quadratic or the hand-written backward.
Double precision makes the expanded quadratic's rounding (~1e-5 in sigma in float32) vanish,
so threshold decisions (1/255, T <= 1e-4) agree and the comparison can be tight.
"""

from __future__ import annotations

import pytest
import torch

from trainables.gslrm.render import torch_backend as tb


def dense_composite(
    proj: tb.Projection, opacities: torch.Tensor, colors: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """gsplat's rules on every pixel x Gaussian pair: opacities [I, N], colors [I, N, 3]
    -> (colour [I, 3, H, W], alpha [I, 1, H, W]), no background."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=opacities.dtype) + 0.5,
        torch.arange(width, dtype=opacities.dtype) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [HW, 2]
    colours, alphas = [], []
    for i in range(opacities.shape[0]):
        order = torch.argsort(proj.depths[i].detach(), stable=True)
        live = order[proj.radii[i, order, 0] > 0]
        d = pix[:, None, :] - proj.means2d[i, live][None]  # [HW, n, 2]
        a, b, c = proj.conics[i, live].unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = torch.clamp(opacities[i, live] * torch.exp(-sigma), max=tb.ALPHA_MAX)
        alpha = alpha * ((alpha >= tb.ALPHA_MIN) & (sigma >= 0))  # [HW, n]
        # A pixel stops before the entry that would take T to <= 1e-4, and T only falls
        survive = torch.cumprod(1 - alpha, -1)
        alpha = alpha * (survive > tb.TRANSMITTANCE_MIN)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], -1), -1)
        weights = alpha * trans  # [HW, n]
        colours.append((weights @ colors[i, live]).T.reshape(3, height, width))
        alphas.append(weights.sum(-1).reshape(1, height, width))
    return torch.stack(colours), torch.stack(alphas)


def random_scene(seed: int, n: int, n_img: int, width: int, height: int):
    """n Gaussians in front of n_img cameras looking down +z; some opacities above 0.999 and
    crowded enough that pixels hit the T <= 1e-4 stop."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    means = torch.cat(
        [
            torch.rand(n, 2, generator=g, dtype=dt) * 0.8 - 0.4,
            2 + torch.rand(n, 1, generator=g, dtype=dt),
        ],
        -1,
    )
    quats = torch.randn(n, 4, generator=g, dtype=dt)
    scales = 0.02 + 0.12 * torch.rand(n, 3, generator=g, dtype=dt)
    opacities = torch.rand(n, generator=g, dtype=dt)
    opacities[: n // 5] = 0.9995  # clamped to 0.999
    colors = torch.rand(n, 3, generator=g, dtype=dt)
    w2c = torch.eye(4, dtype=dt).repeat(n_img, 1, 1)
    w2c[:, 0, 3] = torch.linspace(-0.2, 0.2, n_img, dtype=dt)
    f = 1.2 * width
    Ks = torch.tensor([[f, 0, 0.47 * width], [0, f, 0.53 * height], [0, 0, 1]], dtype=dt)
    return means, quats, scales, opacities, colors, w2c, Ks.expand(n_img, 3, 3).clone()


def render_both(scene, width: int, height: int, tile_size: int, kernel: str = "torch"):
    """(fast outputs, dense outputs), each (colour, alpha, grads of means/quats/scales/
    opacities/colors) for one random linear loss on colour and alpha; kernel is the tiled
    compositor's (``composite_tiles``)."""
    n_img = scene[5].shape[0]
    results = []
    for fast in (True, False):
        leaves = [t.clone().requires_grad_() for t in scene[:5]]
        means, quats, scales, opacities, colors = leaves
        covars = tb.covariance_3d(quats, scales)
        proj = tb.project(
            means.expand(n_img, -1, -1),
            covars.expand(n_img, -1, -1, -1),
            scene[5],
            scene[6],
            width,
            height,
            near_plane=0.2,
        )
        op = opacities.expand(n_img, -1)
        col = colors.expand(n_img, -1, -1)
        if fast:
            boxes = tb.box_radii(proj.cov2d, op, proj.radii)
            bins = tb.bin_gaussians(proj.means2d, boxes, proj.depths, width, height, tile_size)
            colour, alpha = tb.composite_tiles(
                proj, op, col, bins, width, height, tile_size, kernel
            )
        else:
            colour, alpha = dense_composite(proj, op, col, width, height)
        g = torch.Generator().manual_seed(99)
        # drawn in double for every dtype, so float32 and float64 runs share one loss
        w_c = torch.rand(colour.shape, generator=g, dtype=torch.float64).to(colour.dtype)
        w_a = torch.rand(alpha.shape, generator=g, dtype=torch.float64).to(alpha.dtype)
        ((colour * w_c).sum() + (alpha * w_a).sum()).backward()
        results.append([colour.detach(), alpha.detach()] + [t.grad for t in leaves])
    return results


NAMES = ["colour", "alpha", "d means", "d quats", "d scales", "d opacities", "d colors"]


@pytest.mark.parametrize(
    "kernel, seed, tile_size, chunk, saved_elements",
    [
        ("torch", 0, 4, 64, 1 << 25),  # production settings
        ("torch", 1, 4, 5, 1 << 25),  # many runs per tile, early exits between runs
        ("torch", 2, 8, 7, 0),  # backward recomputes every run
        ("torch", 3, 4, 3, 3000),  # budget runs out part way: some runs saved, some recomputed
        ("native", 0, 4, 0, 0),  # production settings (chunks and budget are torch-only)
        ("native", 1, 8, 0, 0),
        ("native", 2, 16, 0, 0),  # the largest tile the native kernel takes
    ],
)
def test_tiled_compositor_matches_dense_autograd(
    monkeypatch, kernel, seed, tile_size, chunk, saved_elements
):
    if kernel == "torch":
        monkeypatch.setattr(tb, "CHUNK", chunk)
        monkeypatch.setattr(tb, "SAVED_ELEMENTS", saved_elements)
    width, height = 26, 22  # not multiples of the tile size: partial edge tiles
    scene = random_scene(seed, n=120, n_img=2, width=width, height=height)
    fast, dense = render_both(scene, width, height, tile_size, kernel)
    # The scene must exercise the rules it claims to: coverage, clamped and stopped pixels
    assert dense[1].max() > 1 - 2 * tb.TRANSMITTANCE_MIN, "no pixel reached the T stop"
    assert 0.05 < dense[1].mean() < 0.98
    for name, a, b in zip(NAMES, fast, dense, strict=True):
        assert torch.isfinite(a).all(), name
        assert b.abs().max() > 0, f"{name}: oracle is all zero, the check would prove nothing"
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("kernel", ["torch", "native"])
def test_float32_fast_path_is_within_float_tolerance_of_the_double_oracle(kernel: str):
    """Production runs in float32; the torch kernel's expanded quadratic costs ~1e-5 relative
    in sigma, the native kernel's polynomial exp ~1e-7."""
    width, height = 24, 24
    scene = random_scene(7, n=50, n_img=2, width=width, height=height)
    fast32, _ = render_both([t.float() for t in scene], width, height, tb.TILE_SIZE, kernel)
    _, dense64 = render_both(scene, width, height, tb.TILE_SIZE)
    for name, a, b in zip(NAMES[:2], fast32[:2], dense64[:2], strict=True):
        err = (a.double() - b).abs().max().item()
        assert err < 1e-4, f"{name}: float32 differs from the double oracle by {err}"
    for name, a, b in zip(NAMES[2:], fast32[2:], dense64[2:], strict=True):
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel < 1e-5, f"{name}: relative gradient error {rel}"


def test_render_docstring_example_runs_and_gives_its_numbers():
    import doctest

    import trainables.gslrm.render as render_module

    result = doctest.testmod(render_module)
    assert result.attempted >= 5 and result.failed == 0
