"""Validation metrics for GS-LRM renders of mice on a plain background.

Shapes: render / target [B, V, 3, H, W] in [0, 1], target alpha [B, V, 1, H, W] in [0, 1]
(soft alpha allowed), background colour [3] or [B, 3].

Whole-image PSNR is inflated by the ~95% background pixels (a render that paints
everything white scores ~16 dB), so `psnr_fg` and `mask_iou` are the numbers that
say whether the mouse is actually there.

Conventions a caller must know:
- PSNR is capped at 100 dB (an MSE of 0 would otherwise give +inf and poison averages).
- `psnr_fg` is NaN when no view in the batch has a foreground pixel: the quantity is
  undefined there, and callers averaging over batches must skip NaN (e.g. nanmean).
- SSIM is pytorch_msssim's (Gaussian window 11, sigma 1.5, valid padding), not the
  skimage SSIM the reference used, so absolute values differ slightly from its logs.
- `lpips` is present only when the `lpips` package and all its VGG weights are
  already on disk; nothing is ever downloaded and no placeholder value is returned.

Per (item, view) metrics for the evaluation protocol (`item_view_metrics`, one value per
view, never pooled; FaceLift fork's "fair eval" names in brackets):
    gt  = alpha > gt_threshold (0.5)             [H, W] bool, the true silhouette
    pred = mean_c |render - background| > t (0.1) [H, W] bool, the rendered silhouette
    psnr             -10 log10 mean_{pixels, channels} (r - t)^2           [PSNR_wh]
    psnr_fg          same mean over gt pixels only                         [PSNR_gt]
    psnr_int         same mean over gt AND pred pixels                     [PSNR_int]
    psnr_union       same mean over gt OR pred pixels                      (ours, v2)
    psnr_bal         -10 log10((mse over gt + mse over not gt) / 2)        (ours, v3)
    ssim_fg          SSIM map (window 11, sigma 1.5, valid) averaged over gt window centres
    mask_iou         |gt AND pred| / |gt OR pred|
    coverage         |gt AND pred| / |gt|
    pred_fg_fraction |pred| / (H W);  gt_fg_fraction |gt| / (H W)
Undefined cases are NaN, never 0 or inf, and each has one reason:
    empty gt          -> psnr_fg, psnr_int, ssim_fg, coverage NaN (no foreground to score);
                         mask_iou NaN too when pred is also empty (0 / 0), else 0;
                         psnr_union NaN only when pred is empty too (else it scores pred);
                         psnr_bal is the background's PSNR (= psnr); gt covering the whole
                         view: psnr_bal = psnr_fg. Never NaN.
    empty pred        -> psnr_int NaN (no shared pixels); mask_iou = coverage = 0
    pred covers image -> all defined: coverage 1, mask_iou = gt_fg_fraction, psnr_int = psnr_fg,
                         psnr_union = psnr (the whole image)
A perfect render (MSE 0) is capped at 100 dB, as everywhere in this module.

Why `psnr_bal` is the default objective (issue 22, item 13). `psnr_fg` scores only the true
silhouette, so a render that paints mouse colour over the whole image is never charged for the
painted background and can win (two smoke-sweep trials at 16.1 dB had IoU 0.054: they covered
everything); `psnr_int` (the fork's) has the same blind spot, since a cover-all prediction
makes the intersection the whole true silhouette. `psnr_bal` is the PSNR of the class-balanced
MSE, the mean of the MSE over the true silhouette and the MSE over the true background:

    psnr_bal = -10 log10( (MSE_fg + MSE_bg) / 2 )    (one class empty: that of the other)

Both means run over ground-truth pixel sets, so it is a per-pixel loss with fixed weights: making
any pixel closer to the target raises it, and the mouse counts as much as the background however
small it is. A cover-all painting pays the full background error, an empty render the full mouse error
(its `psnr_fg` + 3 dB): in the hand-made scene of tests/test_objective.py 7.9 and 7.4 dB against
23.0 dB for the right silhouette 0.1 off in colour, where `psnr_fg` ranks the painting first.
`psnr_union` (metrics v2's objective, PSNR over the union of the true and predicted silhouettes)
is kept as a diagnostic: its mean runs over a set the prediction chooses, so removing the
mildest pixels of a halo lowers it (tests/test_objective.py), and on the cpu-size view-order
runs it was flat (11.7-13.3 dB) while mask IoU rose from 0.19 to 0.65 and whole-image PSNR from
19 to 24 dB, choosing checkpoints of step 250-500 of 3,000.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import pytorch_msssim
import torch
from torch import Tensor

# Alpha above this is ground-truth foreground for metrics; fixed (not searched) so
# that metrics stay comparable across trials that search the training mask threshold.
GT_ALPHA_THRESHOLD = 0.5
# 10 * log10(1 / 1e-10) = 100 dB: the cap for a perfect (MSE == 0) reconstruction.
_MIN_MSE = 1e-10
SSIM_WIN_SIZE = 11
SSIM_WIN_SIGMA = 1.5

# The linear-layer weights ship inside the lpips wheel; the VGG16 backbone is the
# torchvision ImageNet checkpoint that lpips would otherwise download into torch hub.
_LPIPS_LINEAR_WEIGHTS = Path("weights") / "v0.1" / "vgg.pth"
_TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
_lpips_models: dict[str, torch.nn.Module] = {}

# Bump when a definition in item_view_metrics changes: evaluations with different versions
# are never compared (the protocol record carries it).
METRICS_VERSION = 3  # 2: psnr_union added; 3: psnr_bal added (the default objective)
# Default predicted-silhouette threshold of the evaluation (FaceLift's validation value).
PRED_MASK_THRESHOLD = 0.1
# The per-(item, view) metric names, in the column order of items.parquet.
ITEM_METRICS = (
    "psnr",
    "psnr_fg",
    "psnr_int",
    "psnr_union",
    "psnr_bal",
    "ssim_fg",
    "mask_iou",
    "coverage",
    "pred_fg_fraction",
    "gt_fg_fraction",
)

# What validation averages over views (mask IoU is pooled instead; the fractions are diagnostics).
VIEW_MEAN_METRICS = tuple(
    m for m in ITEM_METRICS if m not in ("mask_iou", "pred_fg_fraction", "gt_fg_fraction")
)


def psnr_from_mse(mse: Tensor | float) -> Tensor | float:
    """PSNR in dB for images in [0, 1], capped at 100 dB where MSE is 0.

    Accepts a tensor of any shape (returns a tensor of that shape) or a float
    (returns a float).
    """
    if isinstance(mse, Tensor):
        return -10.0 * torch.log10(mse.clamp_min(_MIN_MSE))
    return -10.0 * math.log10(max(float(mse), _MIN_MSE))


def background_tensor(
    background: Tensor | Sequence[float], batch: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Broadcastable background colour [B or 1, 1, 3, 1, 1] from [3] or [B, 3]."""
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    if bg.shape == (3,):
        return bg.view(1, 1, 3, 1, 1)
    if bg.shape == (batch, 3):
        return bg.view(batch, 1, 3, 1, 1)
    raise ValueError(f"background must be [3] or [{batch}, 3], got {tuple(bg.shape)}")


def check_image_shapes(render: Tensor, target: Tensor, target_alpha: Tensor) -> None:
    """Raise ValueError unless render/target are [B,V,3,H,W] and alpha is [B,V,1,H,W]."""
    if render.dim() != 5 or render.shape[2] != 3:
        raise ValueError(f"render must be [B, V, 3, H, W], got {tuple(render.shape)}")
    if target.shape != render.shape:
        raise ValueError(f"target {tuple(target.shape)} != render {tuple(render.shape)}")
    expected_alpha = (*render.shape[:2], 1, *render.shape[3:])
    if tuple(target_alpha.shape) != expected_alpha:
        raise ValueError(f"target_alpha must be {expected_alpha}, got {tuple(target_alpha.shape)}")


def predicted_mask(render: Tensor, background: Tensor, threshold: float) -> Tensor:
    """Pixels that differ from the background colour: [B, V, 1, H, W] bool.

    render: [B, V, 3, H, W]; background: broadcastable to render.
    """
    return (render - background).abs().mean(dim=2, keepdim=True) > threshold


def mask_iou(
    render: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float],
    threshold: float,
) -> Tensor:
    """Mask IoU pooled over every view of the batch, as a 0-dim tensor (no gradient).

    render: [B, V, 3, H, W] (clamped to [0, 1] here); target_alpha: [B, V, 1, H, W];
    background: [3] or [B, 3]. Predicted mask = mean_c |render - background| > threshold,
    ground truth = alpha > 0.5. Pooling (rather than a mean of per-view IoUs) keeps
    views where the mouse is tiny from dominating. An empty union gives 0, as in the
    reference.
    """
    with torch.no_grad():
        render = render.detach().float().clamp(0.0, 1.0)
        bg = background_tensor(background, render.shape[0], render.device, render.dtype)
        pred = predicted_mask(render, bg, threshold)
        gt = target_alpha.detach() > GT_ALPHA_THRESHOLD
        inter = (pred & gt).sum().float()
        union = (pred | gt).sum().float()
        return inter / union.clamp_min(1.0)


def per_view_psnr(render: Tensor, target: Tensor) -> Tensor:
    """PSNR of each view over all pixels and channels: [B*V]."""
    mse = (render - target).pow(2).flatten(2).mean(dim=2).flatten()
    return psnr_from_mse(mse)


def foreground_psnr(render: Tensor, target: Tensor, target_alpha: Tensor) -> float:
    """Mean over views with foreground of the PSNR on alpha > 0.5 pixels; NaN if none.

    render, target: [B, V, 3, H, W]; target_alpha: [B, V, 1, H, W].
    Per view MSE = sum of squared error over fg pixels and channels / (n_fg * 3).
    """
    fg = (target_alpha > GT_ALPHA_THRESHOLD).to(render.dtype)
    sse = ((render - target).pow(2) * fg).flatten(2).sum(dim=2).flatten()
    n_values = fg.flatten(2).sum(dim=2).flatten() * 3.0
    has_fg = n_values > 0
    if not bool(has_fg.any()):
        return float("nan")
    mse = sse[has_fg] / n_values[has_fg]
    return float(psnr_from_mse(mse).mean())


def mean_ssim(render: Tensor, target: Tensor) -> float:
    """pytorch_msssim SSIM (window 11, sigma 1.5) averaged over views and channels."""
    flat_r = render.flatten(0, 1)
    flat_t = target.flatten(0, 1)
    value = pytorch_msssim.ssim(
        flat_r,
        flat_t,
        data_range=1.0,
        win_size=SSIM_WIN_SIZE,
        win_sigma=SSIM_WIN_SIGMA,
        size_average=True,
    )
    return float(value)


def lpips_available() -> bool:
    """True only if `lpips` (VGG variant) can run without downloading anything.

    Checks, without importing lpips: the package, torchvision, lpips' bundled linear
    weights and the torchvision VGG16 checkpoint in the torch hub cache.
    """
    lpips_spec = importlib.util.find_spec("lpips")
    if lpips_spec is None or not lpips_spec.submodule_search_locations:
        return False
    if importlib.util.find_spec("torchvision") is None:
        return False
    package_dir = Path(next(iter(lpips_spec.submodule_search_locations)))
    if not (package_dir / _LPIPS_LINEAR_WEIGHTS).is_file():
        return False
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_VGG16_FILE
    return backbone.is_file()


def _lpips_model(device: torch.device) -> torch.nn.Module:
    """The LPIPS-VGG network on `device`, built once per device (building is slow)."""
    key = str(device)
    if key not in _lpips_models:
        import lpips  # only reached when lpips_available() said so

        model = lpips.LPIPS(net="vgg", pretrained=True, verbose=False)
        model.eval().requires_grad_(False)
        _lpips_models[key] = model.to(device)
    return _lpips_models[key]


def mean_lpips(render: Tensor, target: Tensor) -> float:
    """LPIPS-VGG averaged over views; images go in as [-1, 1] as lpips expects."""
    model = _lpips_model(render.device)
    flat_r = render.flatten(0, 1) * 2.0 - 1.0
    flat_t = target.flatten(0, 1) * 2.0 - 1.0
    return float(model(flat_r, flat_t).mean())


def _view_mean(values: Tensor) -> float:
    """Mean over the finite entries of [B, V] per-view values; NaN when none is finite."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


def compute_metrics(
    render: Tensor,
    target: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float],
    mask_iou_threshold: float,
) -> dict[str, float]:
    """Validation metrics for one batch; call per batch and average the results.

    render, target: [B, V, 3, H, W]; target_alpha: [B, V, 1, H, W];
    background: [3] or [B, 3]. The render is clamped to [0, 1].
    Returns `psnr`, `psnr_fg`, `psnr_int`, `psnr_union`, `psnr_bal`, `ssim_fg`, `coverage`
    (means over the views where
    each is defined: the per-view values of item_view_metrics, so validation and the
    evaluation protocol share one definition; NaN when no view defines it), `ssim`
    (full-image), `mask_iou` (pooled over the batch's views) and `lpips` only when
    lpips_available().
    """
    check_image_shapes(render, target, target_alpha)
    with torch.no_grad():
        # float32 so bf16 renders do not lose precision in the squared-error sums
        render = render.detach().float().clamp(0.0, 1.0)
        target = target.detach().float()
        target_alpha = target_alpha.detach().float()
        per_view = item_view_metrics(render, target, target_alpha, background, mask_iou_threshold)
        metrics = {name: _view_mean(per_view[name]) for name in VIEW_MEAN_METRICS}
        metrics["ssim"] = mean_ssim(render, target)
        metrics["mask_iou"] = float(mask_iou(render, target_alpha, background, mask_iou_threshold))
        if lpips_available():
            metrics["lpips"] = mean_lpips(render, target)
    return metrics


def _masked_mse(sq_err: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """MSE over the pixels of `mask` and their count, per view: [N, 3, H, W], [N, 1, H, W] ->
    ([N], [N]). MSE = sum over mask pixels and channels of sq_err / (3 |mask|); 0 where empty."""
    weights = mask.to(sq_err.dtype)
    sse = (sq_err * weights).flatten(1).sum(dim=1)
    count = weights.flatten(1).sum(dim=1)
    return sse / (count * sq_err.shape[1]).clamp_min(1.0), count


def _masked_psnr(sq_err: Tensor, mask: Tensor) -> Tensor:
    """PSNR over the pixels of `mask`, per view: [N, 3, H, W], [N, 1, H, W] -> [N]; NaN where
    |mask| = 0."""
    mse, count = _masked_mse(sq_err, mask)
    psnr = psnr_from_mse(mse)
    return torch.where(count > 0, psnr, torch.full_like(psnr, float("nan")))


def balanced_psnr(sq_err: Tensor, gt: Tensor) -> Tensor:
    """PSNR of the class-balanced MSE, per view: [N, 3, H, W], [N, 1, H, W] bool -> [N].

    The mean of the MSE over the gt pixels and the MSE over the other pixels; where one of the
    two sets is empty, the MSE of the other (so never NaN).
    """
    mse_fg, n_fg = _masked_mse(sq_err, gt)
    mse_bg, n_bg = _masked_mse(sq_err, ~gt)
    balanced = torch.where(
        n_fg == 0, mse_bg, torch.where(n_bg == 0, mse_fg, 0.5 * (mse_fg + mse_bg))
    )
    return psnr_from_mse(balanced)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator as float, NaN where the denominator is 0: [N] -> [N]."""
    num, den = numerator.double(), denominator.double()
    return torch.where(den > 0, num / den.clamp_min(1.0), torch.full_like(num, float("nan")))


def foreground_ssim(render: Tensor, target: Tensor, gt: Tensor) -> Tensor:
    """SSIM averaged over ground-truth foreground window centres, per view.

    render, target: [N, 3, H, W]; gt: [N, 1, H, W] bool -> [N]. The SSIM map is the one the
    masked SSIM loss uses (pytorch_msssim's window, valid padding), so map pixel (i, j) scores
    the window centred on image pixel (i + 5, j + 5); foreground within 5 px of the border has
    no window and does not count. NaN where no foreground window centre is left.
    """
    from trainables.gslrm.losses import crop_to_ssim_map, ssim_map  # losses imports this module

    weights = crop_to_ssim_map(gt.to(render.dtype))
    values = ssim_map(render, target)
    total = (values * weights).flatten(1).sum(dim=1)
    return _ratio(total, weights.flatten(1).sum(dim=1)).to(render.dtype)


def item_view_metrics(
    render: Tensor,
    target: Tensor,
    target_alpha: Tensor,
    background: Tensor | Sequence[float],
    pred_threshold: float = PRED_MASK_THRESHOLD,
    gt_threshold: float = GT_ALPHA_THRESHOLD,
) -> dict[str, Tensor]:
    """Every ITEM_METRICS value of every (item, view): {name: [B, V] float64 tensor}.

    render, target: [B, V, 3, H, W] in [0, 1] (render clamped here); target_alpha:
    [B, V, 1, H, W]; background: [3] or [B, 3]. Definitions and the NaN cases are in the
    module docstring. Computed in float32 without gradients; returned on the CPU.
    """
    check_image_shapes(render, target, target_alpha)
    batch, views = render.shape[:2]
    with torch.no_grad():
        render = render.detach().float().clamp(0.0, 1.0)
        target = target.detach().float()
        bg = background_tensor(background, batch, render.device, render.dtype)
        pred = predicted_mask(render, bg, pred_threshold).flatten(0, 1)
        gt = (target_alpha.detach().float() > gt_threshold).flatten(0, 1)
        flat_r, flat_t = render.flatten(0, 1), target.flatten(0, 1)
        sq_err = (flat_r - flat_t).pow(2)
        pixels = float(gt[0].numel()) if gt.numel() else 1.0
        n_gt = gt.flatten(1).sum(dim=1)
        n_pred = pred.flatten(1).sum(dim=1)
        inter = (gt & pred).flatten(1).sum(dim=1)
        union = (gt | pred).flatten(1).sum(dim=1)
        values = {
            "psnr": psnr_from_mse(sq_err.flatten(1).mean(dim=1)),
            "psnr_fg": _masked_psnr(sq_err, gt),
            "psnr_int": _masked_psnr(sq_err, gt & pred),
            "psnr_union": _masked_psnr(sq_err, gt | pred),
            "psnr_bal": balanced_psnr(sq_err, gt),
            "ssim_fg": foreground_ssim(flat_r, flat_t, gt),
            "mask_iou": _ratio(inter, union),
            "coverage": _ratio(inter, n_gt),
            "pred_fg_fraction": n_pred.double() / pixels,
            "gt_fg_fraction": n_gt.double() / pixels,
        }
    return {name: values[name].double().cpu().view(batch, views) for name in ITEM_METRICS}
