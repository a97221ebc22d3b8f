"""Validation metrics on hand-built images with hand-computed expected values."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.gslrm import metrics
from trainables.gslrm.metrics import compute_metrics, lpips_available, mask_iou, psnr_from_mse

# pytorch_msssim warns when an image is smaller than its 11 px window (tiny test images)
pytestmark = pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")

BASE_KEYS = {"psnr", "psnr_fg", "ssim", "mask_iou"}


def test_psnr_from_mse() -> None:
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(0.0) == pytest.approx(100.0)  # documented cap
    values = psnr_from_mse(torch.tensor([0.1, 0.001, 0.0]))
    assert torch.allclose(values, torch.tensor([10.0, 30.0, 100.0]))


def test_constant_error_gives_20_db() -> None:
    target = torch.full((2, 3, 3, 8, 8), 0.5)
    render = target + 0.1  # error 0.1 everywhere -> MSE 0.01
    alpha = torch.ones(2, 3, 1, 8, 8)
    out = compute_metrics(render, target, alpha, torch.ones(3), 0.1)
    assert out["psnr"] == pytest.approx(20.0, abs=1e-4)
    assert out["psnr_fg"] == pytest.approx(20.0, abs=1e-4)


def test_perfect_render() -> None:
    torch.manual_seed(0)
    target = torch.rand(1, 2, 3, 16, 16)
    alpha = torch.ones(1, 2, 1, 16, 16)
    out = compute_metrics(target.clone(), target, alpha, torch.ones(3), 0.1)
    assert out["psnr"] == pytest.approx(100.0)
    assert out["psnr_fg"] == pytest.approx(100.0)
    assert out["ssim"] == pytest.approx(1.0, abs=1e-5)


def test_psnr_is_mean_of_per_view_psnr() -> None:
    target = torch.zeros(1, 2, 3, 4, 4)
    render = target.clone()
    render[0, 0] = 0.1  # view 0: 20 dB
    render[0, 1] = 0.01  # view 1: 40 dB
    alpha = torch.ones(1, 2, 1, 4, 4)
    out = compute_metrics(render, target, alpha, torch.ones(3), 0.1)
    assert out["psnr"] == pytest.approx(30.0, abs=1e-4)


def test_psnr_fg_uses_foreground_pixels_and_skips_views_without() -> None:
    target = torch.ones(1, 2, 3, 4, 4)
    render = target.clone()
    alpha = torch.zeros(1, 2, 1, 4, 4)
    alpha[0, 0, 0, :2, :2] = 1.0
    render[0, 0, 0, 0, 0] = 0.7  # one fg value off by 0.3 in view 0
    render[0, 1] = 0.0  # view 1 has no foreground: excluded from psnr_fg
    out = compute_metrics(render, target, alpha, torch.ones(3), 0.1)
    # view 0 fg MSE = 0.09 / (4 pixels * 3 channels) = 0.0075
    assert out["psnr_fg"] == pytest.approx(-10 * math.log10(0.0075), abs=1e-4)
    # whole image: view 0 MSE = 0.09 / 48, view 1 MSE = 1
    expected = (-10 * math.log10(0.09 / 48) + 0.0) / 2
    assert out["psnr"] == pytest.approx(expected, abs=1e-4)


def test_psnr_fg_nan_without_foreground() -> None:
    target = torch.ones(1, 2, 3, 4, 4)
    out = compute_metrics(target * 0.5, target, torch.zeros(1, 2, 1, 4, 4), torch.ones(3), 0.1)
    assert math.isnan(out["psnr_fg"])
    assert math.isfinite(out["psnr"])


def test_mask_iou_one_third() -> None:
    # gt pixels (0,0), (0,1); predicted pixels (0,1), (0,2): intersection 1, union 3
    render = torch.ones(1, 1, 3, 4, 4)
    render[..., 0, 1:3] = 0.0
    alpha = torch.zeros(1, 1, 1, 4, 4)
    alpha[..., 0, :2] = 1.0
    out = compute_metrics(render, torch.ones_like(render), alpha, torch.ones(3), 0.1)
    assert out["mask_iou"] == pytest.approx(1 / 3)


def test_mask_iou_pooled_over_views_with_threshold_and_soft_alpha() -> None:
    render = torch.ones(1, 2, 3, 4, 4)
    alpha = torch.zeros(1, 2, 1, 4, 4)
    # view 0: gt 1 pixel, predicted the same pixel (error 0.2 > 0.1)
    alpha[0, 0, 0, 0, 0] = 1.0
    render[0, 0, :, 0, 0] = 0.8
    # view 1: gt 3 pixels (alpha 0.6 > 0.5, 0.4 is not); predicted 1 (0.95 is within 0.1)
    alpha[0, 1, 0, 0, :3] = 0.6
    alpha[0, 1, 0, 1, 0] = 0.4
    render[0, 1, :, 0, 0] = 0.5
    render[0, 1, :, 0, 1] = 0.95
    # pooled: intersection 2, union 4 (per-view mean would be 2/3)
    assert mask_iou(render, alpha, torch.ones(3), 0.1).item() == pytest.approx(0.5)


def test_mask_iou_per_sample_background() -> None:
    # sample 0 on black, sample 1 on white; each render equals its background except
    # at the gt pixel, so IoU is 1 only if each sample uses its own colour.
    render = torch.zeros(2, 1, 3, 4, 4)
    render[1] = 1.0
    render[0, 0, :, 0, 0] = 1.0
    render[1, 0, :, 0, 0] = 0.0
    alpha = torch.zeros(2, 1, 1, 4, 4)
    alpha[:, 0, 0, 0, 0] = 1.0
    background = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert mask_iou(render, alpha, background, 0.1).item() == pytest.approx(1.0)
    assert mask_iou(render, alpha, torch.ones(3), 0.1).item() < 1.0


def test_ssim_drops_with_noise() -> None:
    torch.manual_seed(1)
    target = torch.rand(1, 2, 3, 16, 16)
    render = (target + 0.3 * torch.randn_like(target)).clamp(0, 1)
    out = compute_metrics(render, target, torch.ones(1, 2, 1, 16, 16), torch.ones(3), 0.1)
    assert 0.0 < out["ssim"] < 0.9


def test_no_lpips_key_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "lpips_available", lambda: False)
    target = torch.ones(1, 1, 3, 16, 16)
    out = compute_metrics(target, target, torch.ones(1, 1, 1, 16, 16), torch.ones(3), 0.1)
    assert set(out) == BASE_KEYS
    assert all(isinstance(value, float) for value in out.values())


def test_lpips_key_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []

    class FakeLpips(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(metrics, "lpips_available", lambda: True)
    monkeypatch.setattr(metrics, "_lpips_model", lambda device: FakeLpips())
    target = torch.zeros(1, 2, 3, 16, 16)
    out = compute_metrics(target + 0.25, target, torch.ones(1, 2, 1, 16, 16), torch.ones(3), 0.1)
    assert out["lpips"] == pytest.approx(0.5)  # 0.25 in [0, 1] is 0.5 in [-1, 1]
    assert seen[0].min().item() == pytest.approx(-0.5)  # inputs mapped to [-1, 1]


def test_lpips_available_needs_the_package_and_both_weight_files(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked against a fake installation, so the test means the same with or without lpips:
    True only when the package, torchvision, lpips' linear weights and the torchvision VGG16
    checkpoint are all on disk (nothing is ever downloaded)."""
    import importlib.machinery
    import importlib.util

    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    real_find_spec = importlib.util.find_spec
    installed = {"lpips", "torchvision"}

    def find_spec(name: str, *args):
        if name == "lpips" and "lpips" in installed:
            spec = importlib.machinery.ModuleSpec("lpips", None, is_package=True)
            spec.submodule_search_locations = [str(package)]
            return spec
        if name in ("lpips", "torchvision"):
            return object() if name in installed else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert lpips_available() is False  # no weight files yet
    (package / "weights" / "v0.1" / "vgg.pth").write_bytes(b"linear layers")
    assert lpips_available() is False  # the VGG16 backbone is still missing
    (hub / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"backbone")
    assert lpips_available() is True
    installed.discard("torchvision")
    assert lpips_available() is False
    installed.discard("lpips")
    assert lpips_available() is False


def test_no_gradients_and_bad_shapes() -> None:
    render = torch.rand(1, 1, 3, 4, 4, requires_grad=True)
    target = torch.rand(1, 1, 3, 4, 4)
    out = compute_metrics(render, target, torch.ones(1, 1, 1, 4, 4), torch.ones(3), 0.1)
    assert all(isinstance(value, float) for value in out.values())
    with pytest.raises(ValueError):
        compute_metrics(render, target, torch.ones(1, 1, 1, 4, 4), torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError):
        compute_metrics(render[0], target[0], torch.ones(1, 1, 4, 4), torch.ones(3), 0.1)
