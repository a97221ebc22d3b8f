"""Building, choosing and threading the native compositing kernel of the torch backend.

Its images and gradients are checked against the dense autograd oracle in test_render_fast.py
and against gsplat's rules in test_render.py; this file covers what a user can run into: no
compiler, a forced kernel, a bad setting, the build cache, and more than one thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from trainables.gslrm.render import native
from trainables.gslrm.render import torch_backend as tb


@pytest.fixture
def fresh_build(tmp_path, monkeypatch) -> Path:
    """An empty kernel cache and a forgotten loaded library, restored afterwards."""
    cache = tmp_path / "native-cache"
    monkeypatch.setenv("GSLRM_NATIVE_CACHE", str(cache))
    native._load_cached.cache_clear()
    yield cache
    native._load_cached.cache_clear()


def scene(dtype: torch.dtype = torch.float64, n: int = 80, size: int = 20):
    """A random dense scene: rasterize() arguments without the kernel."""
    g = torch.Generator().manual_seed(11)
    means = torch.rand(1, n, 3, generator=g, dtype=dtype) - 0.5
    means[..., 2] += 2.5
    quats = torch.randn(1, n, 4, generator=g, dtype=dtype)
    scales = 0.03 + 0.1 * torch.rand(1, n, 3, generator=g, dtype=dtype)
    opacities = 0.2 + 0.8 * torch.rand(1, n, generator=g, dtype=dtype)
    colors = torch.rand(1, n, 3, generator=g, dtype=dtype)
    w2c = torch.eye(4, dtype=dtype).expand(1, 2, 4, 4).clone()
    w2c[0, 1, 0, 3] = 0.3
    f = 1.2 * size
    Ks = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=dtype)
    bg = torch.full((1, 2, 3), 0.5, dtype=dtype)
    return [means, quats, scales, opacities, colors, w2c, Ks.expand(1, 2, 3, 3), size, size, bg]


def render_with_grads(args, kernel: str = "auto", tile_size: int = tb.TILE_SIZE):
    """(rgb, alpha, [grads of means, quats, scales, opacities, colors])."""
    leaves = [t.clone().requires_grad_() for t in args[:5]]
    rgb, alpha = tb.rasterize(*leaves, *args[5:], 0.2, tile_size=tile_size, kernel=kernel)
    weights = torch.rand(rgb.shape, generator=torch.Generator().manual_seed(3), dtype=rgb.dtype)
    ((rgb * weights).sum() + alpha.sum()).backward()
    return rgb.detach(), alpha.detach(), [t.grad for t in leaves]


def test_missing_compiler_warns_once_and_falls_back_to_the_torch_kernel(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    args = scene()
    with pytest.warns(RuntimeWarning, match="no-such-compiler-xyz.*install g\\+\\+ or set CXX"):
        rgb, alpha, grads = render_with_grads(args)
    ref_rgb, ref_alpha, ref_grads = render_with_grads(args, kernel="torch")
    # the fallback is the torch kernel itself, so the results are identical
    assert torch.equal(rgb, ref_rgb) and torch.equal(alpha, ref_alpha)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))
    assert not fresh_build.exists() or not any(fresh_build.iterdir())


def test_forced_native_kernel_without_compiler_is_an_error_naming_it(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    monkeypatch.setenv("GSLRM_COMPOSITE_KERNEL", "native")
    with pytest.raises(native.NativeBuildError, match="GSLRM_COMPOSITE_KERNEL=native.*xyz"):
        render_with_grads(scene())


def test_unknown_kernel_setting_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("GSLRM_COMPOSITE_KERNEL", "fastest")
    with pytest.raises(ValueError, match="'fastest'.*auto, native, torch"):
        render_with_grads(scene())
    monkeypatch.delenv("GSLRM_COMPOSITE_KERNEL")
    with pytest.raises(ValueError, match="unknown compositing kernel 'cuda'"):
        render_with_grads(scene(), kernel="cuda")


def test_compile_error_reports_the_compiler_output(fresh_build, tmp_path):
    bad = tmp_path / "broken.cpp"
    bad.write_text("int main( {\n")
    with pytest.raises(native.NativeBuildError, match="(?s)broken.cpp.*failed.*error"):
        native.build(bad)
    # no half-written library is left behind for a later load to pick up
    assert not any(p.suffix == ".so" for p in fresh_build.rglob("*"))


def test_build_is_cached_per_source_and_reused(fresh_build, tmp_path):
    first = native.build()
    assert first.parent == fresh_build and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == stamp
    # a changed source gets its own library instead of loading a stale one
    changed = tmp_path / "composite.cpp"
    changed.write_text(native.SOURCE.read_text() + "\n// changed\n")
    assert native.build(changed) != first


def test_two_threads_give_the_single_thread_result():
    args = scene(n=300)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = render_with_grads(args, kernel="native")
        torch.set_num_threads(2)
        two = render_with_grads(args, kernel="native")
    finally:
        torch.set_num_threads(threads)
    # tiles are independent forward; backward sums per-thread gradient tables in another order
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    for a, b in zip(one[2], two[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_tiles_the_native_kernel_cannot_take_use_the_torch_kernel():
    args = scene()
    with pytest.raises(ValueError, match="at most 16 px.*tile 32 px"):
        render_with_grads(args, kernel="native", tile_size=32)
    auto = render_with_grads(args, kernel="auto", tile_size=32)
    torch_kernel = render_with_grads(args, kernel="torch", tile_size=32)
    assert torch.equal(auto[0], torch_kernel[0])


def test_native_and_torch_kernels_agree_in_float32_on_a_training_sized_scene():
    # 64 px, 6 views, 1,300 splats of a few pixels: the smoke model's render
    args = scene(torch.float32, n=1300, size=64)
    args[5] = torch.eye(4).expand(1, 6, 4, 4).clone()
    args[5][0, :, 0, 3] = torch.linspace(-0.3, 0.3, 6)
    args[6] = args[6][:, :1].expand(1, 6, 3, 3)
    args[9] = torch.full((1, 6, 3), 0.5)
    rgb_n, alpha_n, grads_n = render_with_grads(args, kernel="native")
    rgb_t, alpha_t, grads_t = render_with_grads(args, kernel="torch")
    assert (alpha_n > 0.5).float().mean() > 0.1, "scene should cover the image"
    torch.testing.assert_close(rgb_n, rgb_t, rtol=0, atol=2e-5)
    torch.testing.assert_close(alpha_n, alpha_t, rtol=0, atol=2e-5)
    for a, b in zip(grads_n, grads_t, strict=True):
        assert ((a - b).norm() / b.norm()).item() < 1e-4


def test_kernel_source_ships_with_the_package():
    # setuptools package-data: a wheel install must carry composite.cpp next to native.py
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"trainables.gslrm.render" = ["*.cpp"]' in pyproject
    assert native.SOURCE.exists() and os.access(native.SOURCE, os.R_OK)
