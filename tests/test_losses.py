"""Training losses on tiny hand-built images with hand-computed expected values."""

from __future__ import annotations

import math

import pytest
import pytorch_msssim
import torch

from trainables.gslrm.config import LossesConfig, config_from_dict
from trainables.gslrm.losses import (
    check_perceptual_available,
    compute_losses,
    crop_to_ssim_map,
    ssim_map,
)
from trainables.gslrm.metrics import compute_metrics
from trainables.gslrm.train import image_diagnostics

# pytorch_msssim warns when an image is smaller than its 11 px window (tiny test images)
pytestmark = pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")

KEYS = {"loss", "l2_loss", "ssim_loss", "background_loss"}


def white(b: int = 1, v: int = 1, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.ones(b, v, 3, h, w)


def corner_alpha(b: int = 1, v: int = 1, h: int = 4, w: int = 4) -> torch.Tensor:
    """Foreground = the top-left 2x2 block (4 of 16 pixels on a 4x4 image)."""
    alpha = torch.zeros(b, v, 1, h, w)
    alpha[..., :2, :2] = 1.0
    return alpha


def grey_mouse_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """White 4x4 target with a 2x2 mouse of grey 0.2; the render is all white.

    Error 0.8 on 4 fg pixels x 3 channels, squared 0.64.
    """
    target = white()
    target[..., :2, :2] = 0.2
    return white(), target, corner_alpha()


def test_keys_and_scalars() -> None:
    render, target, alpha = grey_mouse_case()
    out = compute_losses(render, target, alpha, LossesConfig(ssim_loss_weight=0.0))
    assert set(out) == KEYS
    assert all(value.dim() == 0 for value in out.values())
    assert out["ssim_loss"].item() == 0.0  # weight 0: not computed, key still present


def test_plain_l2_is_mean_over_all_values() -> None:
    render, target, alpha = grey_mouse_case()
    out = compute_losses(render, target, alpha, LossesConfig())
    # 4 pixels * 3 channels * 0.64 / (16 pixels * 3 channels) = 0.16
    assert out["l2_loss"].item() == pytest.approx(0.16)


def test_masked_l2_divides_by_foreground_pixels() -> None:
    render, target, alpha = grey_mouse_case()
    out = compute_losses(render, target, alpha, LossesConfig(masked_l2_loss=True))
    # 4 * 3 * 0.64 / (4 fg pixels * 3) = 0.64
    assert out["l2_loss"].item() == pytest.approx(0.64)


def test_masked_l2_ignores_background_error_plain_does_not() -> None:
    target = white()
    alpha = corner_alpha()
    render = white()
    render[..., 2:, :] = 0.9  # 8 background pixels off by 0.1
    plain = compute_losses(render, target, alpha, LossesConfig())
    masked = compute_losses(render, target, alpha, LossesConfig(masked_l2_loss=True))
    # plain: 8 * 3 * 0.01 / 48 = 0.005
    assert plain["l2_loss"].item() == pytest.approx(0.005)
    assert masked["l2_loss"].item() == 0.0


def test_masked_l2_is_pooled_over_the_batch() -> None:
    # sample 0: 1 fg pixel with error 1; sample 1: 3 fg pixels with error 0
    target = white(b=2)
    render = white(b=2)
    alpha = torch.zeros(2, 1, 1, 4, 4)
    alpha[0, 0, 0, 0, 0] = 1.0
    alpha[1, 0, 0, 0, :3] = 1.0
    render[0, 0, :, 0, 0] = 0.0
    out = compute_losses(render, target, alpha, LossesConfig(masked_l2_loss=True))
    # pooled: 3 / (4 * 3) = 0.25 (a per-sample mean would give 0.5)
    assert out["l2_loss"].item() == pytest.approx(0.25)


def test_soft_alpha_uses_mask_threshold() -> None:
    target = white()
    render = white()
    alpha = torch.zeros(1, 1, 1, 4, 4)
    alpha[..., 0, 0] = 0.3
    render[..., 0, 0] = 0.5
    low = compute_losses(
        render, target, alpha, LossesConfig(masked_l2_loss=True, mask_threshold=0.2)
    )
    high = compute_losses(
        render, target, alpha, LossesConfig(masked_l2_loss=True, mask_threshold=0.5)
    )
    assert low["l2_loss"].item() == pytest.approx(0.25)  # the one fg pixel, error 0.5
    assert high["l2_loss"].item() == 0.0  # no fg: defined as 0
    # at threshold 0.5 the pixel is background: 3 * 0.25 / (16 * 3)
    assert high["background_loss"].item() == pytest.approx(0.25 / 16)


def test_background_loss_to_target_colour() -> None:
    target = white()
    alpha = corner_alpha()
    render = white()
    render[..., 2:, :] = 0.9  # 8 of 12 bg pixels at distance 0.1 per channel
    render[..., :2, :2] = 0.0  # fg pixels are not part of the background loss
    out = compute_losses(render, target, alpha, LossesConfig())
    # 8 * 3 * 0.01 / (12 * 3) = 0.02 / 3
    assert out["background_loss"].item() == pytest.approx(0.02 / 3)
    grey_bg = LossesConfig(background_color_target=(0.9, 0.9, 0.9))
    out = compute_losses(render, target, alpha, grey_bg)
    # now the other 4 bg pixels (value 1) are off by 0.1: 4 * 3 * 0.01 / 36
    assert out["background_loss"].item() == pytest.approx(0.01 / 3)


def test_background_is_alpha_at_or_below_threshold() -> None:
    alpha = torch.full((1, 1, 1, 4, 4), 0.5)  # exactly at the threshold: background
    render = torch.zeros(1, 1, 3, 4, 4)
    out = compute_losses(render, white(), alpha, LossesConfig(masked_l2_loss=True))
    assert out["background_loss"].item() == pytest.approx(1.0)
    assert out["l2_loss"].item() == 0.0


def test_render_is_clamped_before_losses() -> None:
    render = torch.full((1, 1, 3, 4, 4), 1.5)
    out = compute_losses(render, white(), corner_alpha(), LossesConfig(background_loss_weight=1.0))
    assert out["l2_loss"].item() == 0.0
    assert out["background_loss"].item() == 0.0


def test_total_is_weighted_sum() -> None:
    target = white()
    target[..., :2, :2] = 0.2
    alpha = corner_alpha()
    render = white()
    render[..., 2:, :] = 0.9
    weights = LossesConfig(l2_loss_weight=2.0, masked_l2_loss=True, background_loss_weight=0.5)
    out = compute_losses(render, target, alpha, weights)
    # masked l2 = 0.64 (fg rendered white); background = 8 * 3 * 0.01 / 36 = 0.02 / 3
    assert out["l2_loss"].item() == pytest.approx(0.64)
    assert out["background_loss"].item() == pytest.approx(0.02 / 3)
    assert out["loss"].item() == pytest.approx(2.0 * 0.64 + 0.5 * 0.02 / 3)


def test_total_includes_ssim_term() -> None:
    torch.manual_seed(0)
    target = torch.rand(1, 2, 3, 16, 16)
    render = torch.rand(1, 2, 3, 16, 16)
    alpha = torch.ones(1, 2, 1, 16, 16)
    weights = LossesConfig(l2_loss_weight=1.0, ssim_loss_weight=0.5, background_loss_weight=2.0)
    out = compute_losses(render, target, alpha, weights)
    expected_ssim = 1 - pytorch_msssim.ssim(
        render.flatten(0, 1), target.flatten(0, 1), data_range=1.0
    ).clamp(0, 1)
    assert out["ssim_loss"].item() == pytest.approx(expected_ssim.item(), abs=1e-6)
    expected = out["l2_loss"] + 0.5 * out["ssim_loss"] + 2.0 * out["background_loss"]
    assert out["loss"].item() == pytest.approx(expected.item())


def batch_of(target: torch.Tensor, alpha: torch.Tensor, background: list[float]) -> dict:
    return {
        "target_images": target,
        "target_alpha": alpha,
        "background": torch.tensor([background] * target.shape[0]),
    }


def test_train_mask_iou_uses_the_batch_background_and_the_study_threshold() -> None:
    # gt = pixels (0,0), (0,1); the background is grey 0.5. Predicted (mean |render - 0.5| >
    # 0.3): the render is 0.5 except (0,1), (0,2) at 0.0 -> IoU 1/3. Against white (the old
    # train/mask_iou) every pixel would differ by 0.5 > 0.3 and the IoU would be 2/16.
    alpha = torch.zeros(1, 1, 1, 4, 4)
    alpha[..., 0, :2] = 1.0
    render = torch.full((1, 1, 3, 4, 4), 0.5, requires_grad=True)
    with torch.no_grad():
        render[..., 0, 1:3] = 0.0
    batch = batch_of(torch.full((1, 1, 3, 4, 4), 0.5), alpha, [0.5, 0.5, 0.5])
    out = image_diagnostics(render, batch, mask_iou_threshold=0.3)
    assert out["mask_iou"].item() == pytest.approx(1 / 3)
    assert not out["mask_iou"].requires_grad
    val = compute_metrics(render.detach(), batch["target_images"], alpha, batch["background"], 0.3)
    assert out["mask_iou"].item() == pytest.approx(val["mask_iou"])


def test_train_psnr_is_whole_image_psnr_whatever_the_masked_losses() -> None:
    """train/psnr means what val/psnr means: the mean over views of whole-image PSNR. (It used
    to become foreground PSNR when masked_l2_loss was on.)"""
    render, target, alpha = grey_mouse_case()
    two_views = torch.cat([render, white()], dim=1), torch.cat([target, target], dim=1)
    alpha2 = torch.cat([alpha, alpha], dim=1)
    batch = batch_of(two_views[1], alpha2, [1.0, 1.0, 1.0])
    out = image_diagnostics(two_views[0], batch, 0.1)
    # both views: MSE 0.16 over the whole image -> -10 log10(0.16) each
    assert out["psnr"].item() == pytest.approx(-10 * math.log10(0.16))
    val = compute_metrics(two_views[0], two_views[1], alpha2, torch.ones(3), 0.1)
    assert out["psnr"].item() == pytest.approx(val["psnr"])


def test_ssim_map_mean_matches_pytorch_msssim() -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 24, 20)
    y = (x + 0.2 * torch.rand(2, 3, 24, 20)).clamp(0, 1)
    value = ssim_map(x, y)
    assert value.shape == (2, 1, 14, 10)  # valid padding: 24 - 10, 20 - 10
    reference = pytorch_msssim.ssim(x, y, data_range=1.0)
    assert value.mean().item() == pytest.approx(reference.item(), abs=1e-5)
    assert crop_to_ssim_map(torch.ones(2, 1, 24, 20)).shape == (2, 1, 14, 10)


def ssim_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 textured target; foreground block rows/cols 5..12 (window centres valid)."""
    torch.manual_seed(2)
    target = torch.rand(1, 1, 3, 32, 32)
    alpha = torch.zeros(1, 1, 1, 32, 32)
    alpha[..., 5:13, 5:13] = 1.0
    return target, alpha


def test_masked_ssim_identical_images_is_zero() -> None:
    target, alpha = ssim_scene()
    weights = LossesConfig(l2_loss_weight=0.0, ssim_loss_weight=1.0, masked_ssim_loss=True)
    out = compute_losses(target.clone(), target, alpha, weights)
    assert out["ssim_loss"].item() == pytest.approx(0.0, abs=1e-5)


def test_masked_ssim_ignores_background_far_from_mouse() -> None:
    # Background changed only beyond the 5 px window radius of every fg pixel.
    target, alpha = ssim_scene()
    render = target.clone()
    render[..., 18:, :] = 1.0 - render[..., 18:, :]
    render[..., :18, 18:] = 1.0 - render[..., :18, 18:]
    masked = LossesConfig(l2_loss_weight=0.0, ssim_loss_weight=1.0, masked_ssim_loss=True)
    plain = LossesConfig(l2_loss_weight=0.0, ssim_loss_weight=1.0)
    assert compute_losses(render, target, alpha, masked)["ssim_loss"].item() == pytest.approx(
        0.0, abs=1e-5
    )
    assert compute_losses(render, target, alpha, plain)["ssim_loss"].item() > 0.1


def test_masked_ssim_sees_foreground_error() -> None:
    target, alpha = ssim_scene()
    render = target.clone()
    render[..., 5:13, 5:13] = 1.0  # the mouse painted white
    masked = LossesConfig(l2_loss_weight=0.0, ssim_loss_weight=1.0, masked_ssim_loss=True)
    plain = LossesConfig(l2_loss_weight=0.0, ssim_loss_weight=1.0)
    masked_loss = compute_losses(render, target, alpha, masked)["ssim_loss"].item()
    plain_loss = compute_losses(render, target, alpha, plain)["ssim_loss"].item()
    assert masked_loss > 2 * plain_loss > 0


def test_no_foreground_everything_finite_with_gradients() -> None:
    torch.manual_seed(3)
    target = torch.ones(2, 2, 3, 16, 16)
    alpha = torch.zeros(2, 2, 1, 16, 16)
    render = torch.rand(2, 2, 3, 16, 16, requires_grad=True)
    weights = LossesConfig(
        ssim_loss_weight=0.5,
        masked_l2_loss=True,
        masked_ssim_loss=True,
        background_loss_weight=0.1,
    )
    out = compute_losses(render, target, alpha, weights)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    assert out["l2_loss"].item() == 0.0
    assert out["ssim_loss"].item() == 0.0
    out["loss"].backward()
    assert render.grad is not None
    assert torch.isfinite(render.grad).all()
    assert render.grad.abs().sum() > 0  # the background loss still pulls to white


def test_paint_white_collapse_is_exposed() -> None:
    """A white render of a white target with a 4.84% dark mouse."""
    size, mouse = 100, 22
    color = torch.tensor([0.4, 0.3, 0.2]).view(3, 1, 1)
    target = torch.ones(1, 1, 3, size, size)
    target[0, 0, :, 30 : 30 + mouse, 40 : 40 + mouse] = color
    alpha = torch.zeros(1, 1, 1, size, size)
    alpha[..., 30 : 30 + mouse, 40 : 40 + mouse] = 1.0
    render = torch.ones_like(target)

    fg_mse = (0.6**2 + 0.7**2 + 0.8**2) / 3
    fraction = mouse * mouse / (size * size)
    metrics = compute_metrics(render, target, alpha, torch.ones(3), 0.1)
    assert metrics["psnr"] == pytest.approx(-10 * math.log10(fg_mse * fraction), abs=1e-4)
    assert metrics["psnr"] > 15
    assert metrics["psnr_fg"] == pytest.approx(-10 * math.log10(fg_mse), abs=1e-4)
    assert metrics["psnr"] - metrics["psnr_fg"] > 10
    assert metrics["mask_iou"] == 0.0

    plain = compute_losses(render, target, alpha, LossesConfig())
    masked = compute_losses(render, target, alpha, LossesConfig(masked_l2_loss=True))
    assert plain["l2_loss"].item() == pytest.approx(fg_mse * fraction)
    assert masked["l2_loss"].item() == pytest.approx(fg_mse)
    assert masked["l2_loss"].item() > 10 * plain["l2_loss"].item()


def test_perceptual_weights_raise() -> None:
    assert check_perceptual_available(0.0, 0.0) is None
    with pytest.raises(RuntimeError, match="not available locally"):
        check_perceptual_available(0.5, 0.0)
    with pytest.raises(RuntimeError, match="lpips_loss_weight"):
        check_perceptual_available(0.0, 0.1)


def test_compute_losses_takes_the_config_section_itself() -> None:
    """The `training.losses` section of a loaded config goes in as it is (no mirror class):
    a background colour from YAML (a list) and the weights act as configured."""
    losses = config_from_dict(
        {
            "training": {
                "losses": {"background_loss_weight": 2.0, "background_color_target": [0.5] * 3}
            }
        }
    ).training.losses
    render, alpha = white(), corner_alpha()
    out = compute_losses(render, white(), alpha, losses)
    # 12 background pixels at distance 0.5 from grey: background loss 0.25, weighted 2x
    assert out["background_loss"].item() == pytest.approx(0.25)
    assert out["loss"].item() == pytest.approx(0.0 + 2.0 * 0.25)


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        compute_losses(white(), white(), torch.zeros(1, 1, 3, 4, 4), LossesConfig())


def test_ranks_average_to_the_one_worker_loss_and_gradient() -> None:
    """Two DDP ranks with half the batch each: the mean of their losses and of their gradients
    (what DDP's all-reduce computes) equal one worker's on the whole batch, for the masked L2,
    masked SSIM and background losses, whose pixel counts differ between the halves."""
    torch.manual_seed(0)
    target = torch.rand(2, 1, 3, 16, 16)
    alpha = torch.zeros(2, 1, 1, 16, 16)
    alpha[0, ..., 2:12, 2:12] = 1.0  # 100 fg pixels in item 0
    alpha[1, ..., 5:9, 5:9] = 1.0  # 16 in item 1
    losses = LossesConfig(
        masked_l2_loss=True, masked_ssim_loss=True, ssim_loss_weight=0.5, background_loss_weight=0.3
    )
    # near the target, so SSIM is positive and its clamp at 0 does not bind
    # item 1 (few fg pixels) rendered worse than item 0, so per-rank normalising is visible
    noise = torch.tensor([0.05, 0.3]).view(2, 1, 1, 1, 1) * torch.rand(2, 1, 3, 16, 16)
    render = (target + noise).clamp(0, 1).requires_grad_(True)
    whole = compute_losses(render, target, alpha, losses)
    (whole_grad,) = torch.autograd.grad(whole["loss"], render)

    halves = [slice(0, 1), slice(1, 2)]
    counts: dict[int, list[torch.Tensor]] = {}

    def fake_all_reduce_mean(rank: int):
        # The counts are needed before either rank's loss exists, so compute both ranks' counts
        # up front (in the order compute_losses asks for them) and hand back their mean.
        calls = iter(counts[rank])

        def mean(local: torch.Tensor) -> torch.Tensor:
            other = next(calls)
            return (local + other) / 2

        return mean

    def record(rank: int):
        seen: list[torch.Tensor] = []
        compute_losses(
            render[halves[rank]].detach(),
            target[halves[rank]],
            alpha[halves[rank]],
            losses,
            lambda c: seen.append(c) or c,
        )
        return seen

    counts[0], counts[1] = record(1), record(0)  # each rank receives the other's counts
    per_rank, grads = [], []
    for rank in (0, 1):
        out = compute_losses(
            render[halves[rank]],
            target[halves[rank]],
            alpha[halves[rank]],
            losses,
            fake_all_reduce_mean(rank),
        )
        (grad,) = torch.autograd.grad(out["loss"], render)
        per_rank.append(out["loss"])
        grads.append(grad)
    assert torch.stack(per_rank).mean().item() == pytest.approx(whole["loss"].item(), rel=1e-5)
    torch.testing.assert_close((grads[0] + grads[1]) / 2, whole_grad, rtol=1e-5, atol=1e-7)
    # Without the shared counts each rank normalises by its own pixels: a different objective.
    alone = [compute_losses(render[h], target[h], alpha[h], losses)["loss"] for h in halves]
    assert abs(torch.stack(alone).mean().item() - whole["loss"].item()) > 1e-3


# --- silhouette (alpha) loss


def test_alpha_loss_hand_computed() -> None:
    """Mask = top-left 2x2 of 4x4. Rendered alpha 0.5 everywhere: every one of the 16 pixels is
    0.5 off, squared 0.25, mean 0.25. With weight 2 the total gains 2 * 0.25 = 0.5."""
    render, target, alpha = grey_mouse_case()
    rendered_alpha = torch.full_like(alpha, 0.5)
    base = compute_losses(render, target, alpha, LossesConfig(), render_alpha=rendered_alpha)
    weighted = compute_losses(
        render, target, alpha, LossesConfig(alpha_loss_weight=2.0), render_alpha=rendered_alpha
    )
    assert base["alpha_loss"].item() == pytest.approx(0.25)
    assert weighted["loss"].item() == pytest.approx(base["loss"].item() + 0.5)


def test_alpha_loss_painting_the_background_and_soft_alpha() -> None:
    """A render that covers the whole image (alpha 1) against the 2x2 mask is wrong on the 12
    background pixels by 1: 12 / 16 = 0.75. Against a soft target alpha of 0.4 on the mask
    the 4 mask pixels add (1 - 0.4)^2 = 0.36 each: (12 + 4 * 0.36) / 16 = 0.84. Over-bright
    alpha (1.5) is clamped to 1 first."""
    render, target, alpha = grey_mouse_case()
    covered = torch.full_like(alpha, 1.5)
    out = compute_losses(render, target, alpha, LossesConfig(), render_alpha=covered)
    assert out["alpha_loss"].item() == pytest.approx(0.75)
    soft = alpha * 0.4
    out = compute_losses(render, target, soft, LossesConfig(), render_alpha=covered)
    assert out["alpha_loss"].item() == pytest.approx((12 + 4 * 0.36) / 16)


def test_alpha_loss_gradient_points_to_the_mask() -> None:
    """d/da of mean((a - m)^2) = 2 (a - m) / N: with a = 0.5, N = 16, weight 1: +1/16 on the
    background pixels, -1/16 on the mask."""
    render, target, alpha = grey_mouse_case()
    rendered_alpha = torch.full_like(alpha, 0.5).requires_grad_(True)
    out = compute_losses(
        render, target, alpha, LossesConfig(alpha_loss_weight=1.0), render_alpha=rendered_alpha
    )
    out["loss"].backward()
    grad = rendered_alpha.grad[0, 0, 0]
    assert grad[0, 0].item() == pytest.approx(-1 / 16)
    assert grad[3, 3].item() == pytest.approx(1 / 16)


def test_zero_alpha_weight_changes_nothing_bitwise() -> None:
    """Weight 0: the total and the gradient of the colour render are bitwise those of a call
    without the rendered alpha, and the alpha render gets no gradient at all."""
    torch.manual_seed(0)
    target = torch.rand(2, 2, 3, 12, 12)
    alpha = (torch.rand(2, 2, 1, 12, 12) > 0.6).float()
    losses = LossesConfig(masked_l2_loss=True, ssim_loss_weight=0.5, background_loss_weight=0.1)
    grads, totals = [], []
    for with_alpha in (False, True):
        render = torch.rand(2, 2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
        render.requires_grad_(True)
        rendered_alpha = torch.rand(2, 2, 1, 12, 12).requires_grad_(True)
        out = compute_losses(
            render, target, alpha, losses, render_alpha=rendered_alpha if with_alpha else None
        )
        out["loss"].backward()
        grads.append(render.grad.clone())
        totals.append(out["loss"].detach())
        if with_alpha:
            assert rendered_alpha.grad is None
            assert out["alpha_loss"].item() > 0
    assert torch.equal(totals[0], totals[1])
    assert torch.equal(grads[0], grads[1])


def test_alpha_weight_without_rendered_alpha_is_refused() -> None:
    render, target, alpha = grey_mouse_case()
    with pytest.raises(ValueError, match="alpha_loss_weight=0.5 needs the rendered alpha"):
        compute_losses(render, target, alpha, LossesConfig(alpha_loss_weight=0.5))


def test_negative_alpha_weight_is_a_config_error() -> None:
    from trainables.gslrm.config import ConfigError

    with pytest.raises(ConfigError, match="training.losses.alpha_loss_weight"):
        config_from_dict({"training": {"losses": {"alpha_loss_weight": -0.1}}})
