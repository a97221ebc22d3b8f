"""Validation metrics on hand-built images with hand-computed expected values."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.gslrm import metrics
from trainables.gslrm.metrics import compute_metrics, lpips_available, mask_iou, psnr_from_mse

# pytorch_msssim warns when an image is smaller than its 11 px window (tiny test images)
pytestmark = pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")

BASE_KEYS = {
    "psnr",
    "psnr_fg",
    "psnr_int",
    "psnr_union",
    "psnr_bal",
    "ssim_fg",
    "coverage",
    "ssim",
    "mask_iou",
}


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


def test_validation_means_are_the_per_view_definitions() -> None:
    """compute_metrics' view means equal the nan-skipping means of item_view_metrics."""
    torch.manual_seed(4)
    render = torch.rand(2, 3, 3, 16, 16)
    target = torch.rand(2, 3, 3, 16, 16)
    alpha = (torch.rand(2, 3, 1, 16, 16) > 0.6).float()
    alpha[1, 2] = 0.0  # one view without foreground: skipped, not zero
    out = compute_metrics(render, target, alpha, torch.ones(3), 0.1)
    per_view = metrics.item_view_metrics(render, target, alpha, torch.ones(3), 0.1)
    for name in ("psnr", "psnr_fg", "psnr_int", "ssim_fg", "coverage"):
        assert out[name] == pytest.approx(float(torch.nanmean(per_view[name])), abs=1e-5), name
    assert out["psnr_fg"] != pytest.approx(float(per_view["psnr_fg"].nan_to_num(0).mean()))


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


# ----------------------------------------------------------------------------- per (item, view)


def _two_by_two_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4x4 white image; GT mouse = top-left 2x2 at grey 0.5; the render paints (0,0), (0,1),
    (0,2) at 0.4 (|0.4 - 1| > 0.1: predicted foreground) and leaves the rest white."""
    target = torch.ones(1, 1, 3, 4, 4)
    target[..., :2, :2] = 0.5
    alpha = torch.zeros(1, 1, 1, 4, 4)
    alpha[..., :2, :2] = 1.0
    render = torch.ones(1, 1, 3, 4, 4)
    render[..., 0, :3] = 0.4
    return render, target, alpha


def test_item_view_metrics_hand_computed() -> None:
    render, target, alpha = _two_by_two_scene()
    out = metrics.item_view_metrics(render, target, alpha, torch.ones(3))
    assert set(out) == set(metrics.ITEM_METRICS)
    assert all(v.shape == (1, 1) and v.dtype == torch.float64 for v in out.values())
    value = {k: float(v[0, 0]) for k, v in out.items()}
    # squared error per channel: (0,0), (0,1): 0.01; (1,0), (1,1): 0.25; (0,2): 0.36
    assert value["psnr"] == pytest.approx(-10 * math.log10((2 * 0.01 + 2 * 0.25 + 0.36) / 16), 1e-5)
    assert value["psnr_fg"] == pytest.approx(-10 * math.log10((2 * 0.01 + 2 * 0.25) / 4), 1e-5)
    assert value["psnr_int"] == pytest.approx(20.0, 1e-5)  # only (0,0), (0,1): MSE 0.01
    assert value["mask_iou"] == pytest.approx(2 / 5)
    assert value["coverage"] == pytest.approx(2 / 4)
    assert value["pred_fg_fraction"] == pytest.approx(3 / 16)
    assert value["gt_fg_fraction"] == pytest.approx(4 / 16)


def test_item_view_metrics_empty_ground_truth_is_nan_not_zero() -> None:
    render, target, _ = _two_by_two_scene()
    no_fg = torch.zeros(1, 1, 1, 4, 4)
    out = {
        k: float(v) for k, v in metrics.item_view_metrics(render, target, no_fg, [1, 1, 1]).items()
    }
    for name in ("psnr_fg", "psnr_int", "ssim_fg", "coverage"):
        assert math.isnan(out[name]), name  # no foreground to score
    assert out["mask_iou"] == 0.0  # 3 predicted pixels, none true: a real 0
    assert out["gt_fg_fraction"] == 0.0 and math.isfinite(out["psnr"])
    # nothing true and nothing predicted: IoU is 0 / 0
    both_empty = metrics.item_view_metrics(torch.ones_like(render), target, no_fg, [1, 1, 1])
    assert math.isnan(float(both_empty["mask_iou"]))


def test_item_view_metrics_empty_prediction() -> None:
    _, target, alpha = _two_by_two_scene()
    white = torch.ones_like(target)
    out = {
        k: float(v) for k, v in metrics.item_view_metrics(white, target, alpha, [1, 1, 1]).items()
    }
    assert math.isnan(out["psnr_int"])  # no pixel is foreground in both
    assert out["mask_iou"] == 0.0 and out["coverage"] == 0.0 and out["pred_fg_fraction"] == 0.0
    assert out["psnr_fg"] == pytest.approx(-10 * math.log10(0.25), 1e-5)  # 0.5 off on all 4


def test_item_view_metrics_prediction_covering_the_image() -> None:
    _, target, alpha = _two_by_two_scene()
    black = torch.zeros_like(target)
    out = {
        k: float(v) for k, v in metrics.item_view_metrics(black, target, alpha, [1, 1, 1]).items()
    }
    assert out["pred_fg_fraction"] == 1.0 and out["coverage"] == 1.0
    assert out["mask_iou"] == pytest.approx(out["gt_fg_fraction"]) == pytest.approx(0.25)
    assert out["psnr_int"] == pytest.approx(out["psnr_fg"])
    assert out["psnr_fg"] == pytest.approx(-10 * math.log10(0.25), 1e-5)
    # whole-image PSNR: 12 white pixels off by 1, 4 grey ones by 0.5
    assert out["psnr"] == pytest.approx(-10 * math.log10((12 + 4 * 0.25) / 16), 1e-5)


def test_ssim_fg_ignores_background_far_from_the_mouse() -> None:
    torch.manual_seed(0)
    target = torch.rand(1, 1, 3, 32, 32)
    alpha = torch.zeros(1, 1, 1, 32, 32)
    alpha[..., 14:18, 14:18] = 1.0
    render = target.clone()
    render[..., :3, :] = torch.rand(3, 3, 32)  # rows 0-2: > 5 px from every fg window
    out = metrics.item_view_metrics(render, target, alpha, [1, 1, 1])
    assert float(out["ssim_fg"]) == pytest.approx(1.0, abs=1e-5)
    assert metrics.mean_ssim(render[0:1], target[0:1]) < 0.999  # the whole image did change
    render[..., 15, 15] = 1.0 - target[..., 15, 15]  # one fg pixel wrong
    assert float(metrics.item_view_metrics(render, target, alpha, [1, 1, 1])["ssim_fg"]) < 0.99


def test_item_view_metrics_are_per_view_and_batch_invariant() -> None:
    torch.manual_seed(2)
    render = torch.rand(3, 2, 3, 16, 16)
    target = torch.rand(3, 2, 3, 16, 16)
    alpha = (torch.rand(3, 2, 1, 16, 16) > 0.7).float()
    background = torch.rand(3, 3)
    together = metrics.item_view_metrics(render, target, alpha, background, 0.2)
    for b in range(3):
        alone = metrics.item_view_metrics(
            render[b : b + 1], target[b : b + 1], alpha[b : b + 1], background[b], 0.2
        )
        for name in metrics.ITEM_METRICS:
            torch.testing.assert_close(together[name][b : b + 1], alone[name], equal_nan=True)
    assert not torch.equal(together["psnr_fg"][:, 0], together["psnr_fg"][:, 1])
    # a higher predicted-mask threshold never predicts more foreground
    strict = metrics.item_view_metrics(render, target, alpha, background, 0.5)
    assert (strict["pred_fg_fraction"] <= together["pred_fg_fraction"]).all()
