"""What each logged metric means for the analysis: which direction is better, its label and unit.

Metric keys are the trainer's logged names (``train/loss``, ``val/psnr_fg``, ...), see
DESIGN.md "Losses and metrics".
"""

from __future__ import annotations

from dataclasses import dataclass

# Top-level namespaces of our own metrics in Tune's result lines; everything else there
# (training_iteration, timestamp, config, ...) is Tune bookkeeping.
METRIC_NAMESPACES = ("train", "val")
# Trainer diagnostics (metrics/lr, metrics/grad_norm, metrics/iter_time, ...): useful as
# curves when a run diverges, meaningless as a "best" value, so curves.parquet only.
CURVE_ONLY_NAMESPACES = ("metrics",)

# The four final values every factor comparison table shows, in this order.
COMPARISON_METRICS = ("val/psnr", "val/psnr_fg", "val/ssim", "val/mask_iou")

# Columns that always exist in the Parquet files, so their schema does not depend on which
# trials happened to report.
ALWAYS_PRESENT_METRICS = ("train/loss", *COMPARISON_METRICS)


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str
    higher_is_better: bool
    decimals: int


_KNOWN: dict[str, MetricInfo] = {
    "val/psnr": MetricInfo("PSNR", "dB", True, 2),
    "val/psnr_fg": MetricInfo("foreground PSNR", "dB", True, 2),
    "val/psnr_union": MetricInfo("PSNR on the silhouette union", "dB", True, 2),
    "val/psnr_bal": MetricInfo("balanced PSNR (mouse and background equal)", "dB", True, 2),
    "val/ssim": MetricInfo("SSIM", "", True, 3),
    "val/mask_iou": MetricInfo("mask IoU", "", True, 3),
    "train/mask_iou": MetricInfo("train mask IoU", "", True, 3),
    "val/lpips": MetricInfo("LPIPS", "", False, 3),
}


def is_metric_key(key: str) -> bool:
    """True for our own logged metric keys (``train/...``, ``val/...``)."""
    return "/" in key and key.split("/", 1)[0] in METRIC_NAMESPACES


def is_curve_key(key: str) -> bool:
    """True for every logged key curves.parquet keeps: metrics plus trainer diagnostics."""
    return is_metric_key(key) or ("/" in key and key.split("/", 1)[0] in CURVE_ONLY_NAMESPACES)


def metric_info(key: str) -> MetricInfo:
    """Label, unit and direction of a metric; unknown keys are judged by their name."""
    if key in _KNOWN:
        return _KNOWN[key]
    leaf = key.rsplit("/", 1)[-1]
    # Losses and LPIPS are distances: lower is better. Everything else we log is a score.
    lower = "loss" in leaf or "lpips" in leaf
    unit = "dB" if "psnr" in leaf else ""
    return MetricInfo(key, unit, not lower, 2 if unit == "dB" else 4)


def higher_is_better(key: str) -> bool:
    return metric_info(key).higher_is_better
