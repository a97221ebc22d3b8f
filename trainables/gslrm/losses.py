"""Training losses for GS-LRM on mice filmed against a plain (white) background.

Shapes: render / target [B, V, 3, H, W] in [0, 1], target alpha [B, V, 1, H, W] in
[0, 1] (soft alpha allowed). The render is clamped to [0, 1] before every term, as
the reference does, so over-bright Gaussians are not pushed back by the loss.

With the mouse at ~5% of the pixels, plain L2 is minimised by painting everything
white. The masked variants average only over foreground pixels (alpha >
mask_threshold), and the background loss pulls the remaining pixels to the known
background colour so the masked loss cannot be gamed by spilling colour around the
mouse.

Foreground / background split: foreground = alpha > mask_threshold, background = NOT
foreground (alpha <= mask_threshold). The reference used alpha < 0.5 for the
background, which leaves pixels at exactly 0.5 in neither set; here each pixel is in
exactly one.

Masked SSIM: the per-pixel SSIM map uses the same Gaussian window and VALID padding
as pytorch_msssim (so its plain mean equals pytorch_msssim.ssim), and is averaged over
the map pixels whose window centre is foreground. Consequences: background pixels
within win_size // 2 = 5 px of the mouse do influence the masked SSIM (silhouette
edges count, by design), and foreground within 5 px of the image border is not
scored. The reference instead painted background 0.5 in both images and took the
full-image SSIM, which dilutes the loss by the ~95% background pixels (SSIM 1 there).

Data parallel: the masked and background losses divide by a pixel count. Each rank sees only
its share of the global batch, so `compute_losses` takes `mean_over_ranks` (an all-reduce mean
of a count; the identity alone) and divides by the mean count per rank: DDP's gradient average
of the per-rank losses is then the gradient of the global loss, sum over all ranks' pixels /
global count, as one worker with the whole batch computes it.

Silhouette (alpha) loss (ours; FaceLift has no such key): mean squared error between the
rendered alpha (accumulated Gaussian opacity per pixel) and the target's soft alpha, over every
pixel of every target view. It penalises both failure modes of this rig directly: a render
that paints the background (alpha 1 where the mask is 0) and one that leaves holes in the
mouse. With `alpha_loss_weight` 0 it is logged but never added to the total, so the gradient and
the total loss are bitwise those of a run without it.

Perceptual (VGG19) and LPIPS losses are not implemented: their weights are not
available locally and are never downloaded, and a fake term would corrupt the study.
check_perceptual_available() turns a non-zero weight into a start-up error.
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_msssim
import torch
from torch import Tensor
from torch.nn import functional as F

from trainables.gslrm.config import LossesConfig
from trainables.gslrm.metrics import SSIM_WIN_SIGMA, SSIM_WIN_SIZE, check_image_shapes

# pytorch_msssim's defaults for images in [0, 1]
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def check_perceptual_available(perceptual_loss_weight: float, lpips_loss_weight: float) -> None:
    """Fail at start-up if a perceptual or LPIPS loss is requested.

    Neither the VGG19 weights (perceptual loss) nor the LPIPS VGG weights are
    available locally, and this project never downloads weights nor substitutes a
    fake term. Returns None when both weights are 0.
    """
    if perceptual_loss_weight < 0 or lpips_loss_weight < 0:
        raise ValueError(
            f"perceptual_loss_weight ({perceptual_loss_weight}) and lpips_loss_weight "
            f"({lpips_loss_weight}) must be >= 0"
        )
    if perceptual_loss_weight > 0 or lpips_loss_weight > 0:
        raise RuntimeError(
            "perceptual_loss_weight="
            f"{perceptual_loss_weight}, lpips_loss_weight={lpips_loss_weight}: the VGG19 "
            "(perceptual) and LPIPS weights are not available locally and are never "
            "downloaded, so these losses cannot be computed. Set "
            "training.losses.perceptual_loss_weight and training.losses.lpips_loss_weight to 0."
        )
    return None


def gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian [size], centred on the middle tap."""
    coords = torch.arange(size, dtype=dtype, device=device) - size // 2
    window = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return window / window.sum()


def _blur_valid(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian blur with valid padding, per channel.

    x: [N, C, H, W] -> [N, C, H', W'] with H' = H - K + 1 where H >= K, else H.
    A dimension shorter than the window is not smoothed, matching pytorch_msssim
    so that the SSIM map's mean equals its scalar SSIM at every image size.
    """
    channels = x.shape[1]
    size = window.numel()
    out = x
    if x.shape[2] >= size:
        out = F.conv2d(
            out, window.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels
        )
    if x.shape[3] >= size:
        out = F.conv2d(
            out, window.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels
        )
    return out


def ssim_map(
    x: Tensor,
    y: Tensor,
    win_size: int = SSIM_WIN_SIZE,
    win_sigma: float = SSIM_WIN_SIGMA,
    data_range: float = 1.0,
) -> Tensor:
    """Per-pixel SSIM, mean over channels: [N, C, H, W] x2 -> [N, 1, H', W'].

    Valid padding (see _blur_valid): map pixel (i, j) is the window centred on image
    pixel (i + win_size // 2, j + win_size // 2) in each dimension that was smoothed.
    """
    window = gaussian_window(win_size, win_sigma, x.dtype, x.device)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    mu_x = _blur_valid(x, window)
    mu_y = _blur_valid(y, window)
    var_x = _blur_valid(x * x, window) - mu_x**2
    var_y = _blur_valid(y * y, window) - mu_y**2
    cov = _blur_valid(x * y, window) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * contrast_structure).mean(dim=1, keepdim=True)


def crop_to_ssim_map(mask: Tensor, win_size: int = SSIM_WIN_SIZE) -> Tensor:
    """Crop [N, 1, H, W] to the window centres of ssim_map's valid output."""
    radius = win_size // 2
    if mask.shape[2] >= win_size:
        mask = mask[:, :, radius : mask.shape[2] - radius, :]
    if mask.shape[3] >= win_size:
        mask = mask[:, :, :, radius : mask.shape[3] - radius]
    return mask


CountReduce = Callable[[Tensor], Tensor]


def _local(count: Tensor) -> Tensor:
    return count


def l2_loss(
    render: Tensor, target: Tensor, foreground: Tensor | None, mean_over_ranks: CountReduce = _local
) -> Tensor:
    """Mean squared error; over foreground pixels only when a mask is given.

    render, target: [N, 3, H, W]; foreground: [N, 1, H, W] float 0/1 or None.
    Masked: sum of squared error over fg pixels / (max(1, n_fg) * 3), pooled over
    the batch, n_fg being the mean over ranks of each rank's count (see the module
    docstring); 0 with a gradient (not NaN) when there is no foreground.
    """
    squared = (render - target).pow(2)
    if foreground is None:
        return squared.mean()
    count = mean_over_ranks(foreground.sum().detach())
    return (squared * foreground).sum() / (count.clamp_min(1.0) * 3.0)


def ssim_loss(
    render: Tensor, target: Tensor, foreground: Tensor | None, mean_over_ranks: CountReduce = _local
) -> Tensor:
    """1 - clamp(SSIM, 0, 1); SSIM averaged over foreground map pixels when masked.

    render, target: [N, 3, H, W]; foreground: [N, 1, H, W] float 0/1 or None.
    Masked with no foreground window centre: 0 (a defined value with zero gradient).
    Under DDP the lower clamp at 0 applies to each rank's share (a clamp of a sum is not a
    sum of clamps); it only binds for a negative SSIM, which trained renders do not reach.
    """
    if foreground is None:
        value = pytorch_msssim.ssim(
            render,
            target,
            data_range=1.0,
            win_size=SSIM_WIN_SIZE,
            win_sigma=SSIM_WIN_SIGMA,
            size_average=True,
        )
        return 1.0 - value.clamp(0.0, 1.0)
    weights = crop_to_ssim_map(foreground)
    local = weights.sum().detach()
    count = mean_over_ranks(local)
    share = local / count.clamp_min(1.0)  # this rank's part of the global mean: 1 alone
    mean_fg = (ssim_map(render, target) * weights).sum() / count.clamp_min(1.0)
    # clamp to [0, share]: alone [0, 1]; per-pixel SSIM <= 1 keeps the upper bound a no-op
    loss = share - torch.minimum(mean_fg.clamp_min(0.0), share)
    # torch.where (not a Python branch) avoids a host sync on GPU; both branches are finite
    return torch.where(count > 0, loss, loss * 0.0)


def background_loss(
    render: Tensor, background: Tensor, color: Tensor, mean_over_ranks: CountReduce = _local
) -> Tensor:
    """Squared distance of background pixels to the background colour.

    render: [N, 3, H, W]; background: [N, 1, H, W] float 0/1; color: [1, 3, 1, 1].
    Sum over background pixels / (max(1, n_bg) * 3), n_bg the mean count per rank.
    """
    squared = (render - color).pow(2) * background
    count = mean_over_ranks(background.sum().detach())
    return squared.sum() / (count.clamp_min(1.0) * 3.0)


def alpha_loss(render_alpha: Tensor, target_alpha: Tensor) -> Tensor:
    """Mean squared error of the rendered alpha against the target alpha.

    render_alpha, target_alpha: [N, 1, H, W] in [0, 1] (the render is clamped first, like the
    colour). A plain mean over pixels: every rank holds the same number of pixels, so DDP's
    average of the per-rank losses is already the global mean.
    """
    return (render_alpha.clamp(0.0, 1.0) - target_alpha).pow(2).mean()


def compute_losses(
    render: Tensor,
    target: Tensor,
    target_alpha: Tensor,
    losses: LossesConfig,
    mean_over_ranks: CountReduce = _local,
    render_alpha: Tensor | None = None,
) -> dict[str, Tensor]:
    """The training losses as 0-dim tensors, configured by `training.losses` directly.

    render, target: [B, V, 3, H, W]; target_alpha, render_alpha: [B, V, 1, H, W].
    Keys: loss (= l2_w * l2_loss + ssim_w * ssim_loss + bg_w * background_loss
    [+ alpha_w * alpha_loss when alpha_w > 0]), l2_loss (masked when masked_l2_loss), ssim_loss
    (0 unless ssim_loss_weight > 0, since SSIM is costly), background_loss, and alpha_loss when
    `render_alpha` is given. Ranges of the weights are checked by config.validate.
    mean_over_ranks: all-reduce mean of a pixel count under DDP (identity alone).
    """
    check_image_shapes(render, target, target_alpha)
    if render_alpha is None and losses.alpha_loss_weight > 0:
        raise ValueError(
            f"training.losses.alpha_loss_weight={losses.alpha_loss_weight} needs the rendered "
            "alpha: pass render_alpha to compute_losses"
        )
    if render_alpha is not None and render_alpha.shape != target_alpha.shape:
        raise ValueError(
            f"render_alpha {tuple(render_alpha.shape)} must match target_alpha "
            f"{tuple(target_alpha.shape)} ([B, V, 1, H, W])"
        )
    # float32: bf16 autocast outputs would lose the small squared errors in the sums
    flat_render = render.float().clamp(0.0, 1.0).flatten(0, 1)
    flat_target = target.float().flatten(0, 1)
    flat_alpha = target_alpha.float().flatten(0, 1)
    foreground = (flat_alpha > losses.mask_threshold).float()
    background = 1.0 - foreground
    color = torch.tensor(
        [float(c) for c in losses.background_color_target],
        dtype=flat_render.dtype,
        device=flat_render.device,
    ).view(1, 3, 1, 1)

    fg_l2 = foreground if losses.masked_l2_loss else None
    l2 = l2_loss(flat_render, flat_target, fg_l2, mean_over_ranks)
    if losses.ssim_loss_weight > 0:
        fg_ssim = foreground if losses.masked_ssim_loss else None
        ssim = ssim_loss(flat_render, flat_target, fg_ssim, mean_over_ranks)
    else:
        ssim = flat_render.new_zeros(())
    bg = background_loss(flat_render, background, color, mean_over_ranks)
    total = (
        losses.l2_loss_weight * l2
        + losses.ssim_loss_weight * ssim
        + losses.background_loss_weight * bg
    )
    out = {"l2_loss": l2, "ssim_loss": ssim, "background_loss": bg}
    if render_alpha is not None:
        out["alpha_loss"] = alpha_loss(render_alpha.float().flatten(0, 1), flat_alpha)
        # Added only when weighted: 0 * term would still be bitwise the same value, but skipping
        # it keeps the autograd graph (and so the gradient's summation order) exactly as before.
        if losses.alpha_loss_weight > 0:
            total = total + losses.alpha_loss_weight * out["alpha_loss"]
    return {"loss": total, **out}
