"""Differentiable rendering of activated 3D Gaussians into pinhole views.

One public entry point, ``render``. Two backends follow the same gsplat 1.5.3 "classic" rules
so that CPU and GPU studies train the same model:
``gsplat`` (CUDA kernels) and ``torch`` (pure PyTorch, the CPU path).
"""

from __future__ import annotations

import torch

from ..types import Cameras, Gaussians

BACKENDS = ("auto", "gsplat", "torch")

__all__ = ["BACKENDS", "render"]


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise RuntimeError(
            f"render backend 'gsplat' needs CUDA tensors but got device {device}; "
            "use backend='torch' or 'auto'"
        )
    return backend


def _background_per_view(background: torch.Tensor, n_batch: int, n_views: int) -> torch.Tensor:
    """background: [3] or [B, 3] -> [B, V, 3]."""
    if background.shape == (3,):
        background = background.expand(n_batch, 3)
    if background.shape != (n_batch, 3):
        raise ValueError(f"background must be [3] or [{n_batch}, 3], got {tuple(background.shape)}")
    return background[:, None, :].expand(n_batch, n_views, 3)


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    height: int,
    width: int,
    background: torch.Tensor,
    backend: str = "auto",
    near_plane: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render B Gaussian scenes, each into its own V cameras.

    gaussians: means [B, N, 3], scales [B, N, 3], quats [B, N, 4], opacities [B, N],
    colors [B, N, 3]; cameras: c2w [B, V, 4, 4], intrinsics [B, V, 4] in pixels of an
    image of ``height`` x ``width``; background: [3] or [B, 3] RGB in [0, 1].
    backend: "auto" (gsplat on CUDA, torch otherwise), "gsplat" or "torch".
    Returns (rgb [B, V, 3, H, W], alpha [B, V, 1, H, W]).

    Example: one red splat 3 units in front of an identity camera lands on the image centre.

    >>> import torch
    >>> from trainables.gslrm.types import Cameras, Gaussians
    >>> g = Gaussians(
    ...     means=torch.tensor([[[0.0, 0.0, 3.0]]]),
    ...     scales=torch.full((1, 1, 3), 0.1),
    ...     quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]),
    ...     opacities=torch.tensor([[0.9]]),
    ...     colors=torch.tensor([[[1.0, 0.0, 0.0]]]),
    ... )
    >>> cams = Cameras(torch.eye(4)[None, None], torch.tensor([[[32.0, 32.0, 16.0, 16.0]]]))
    >>> rgb, alpha = render(g, cams, 32, 32, torch.ones(3), backend="torch")
    >>> rgb.shape, alpha.shape
    (torch.Size([1, 1, 3, 32, 32]), torch.Size([1, 1, 1, 32, 32]))
    >>> # pixel centre (16.5, 16.5), splat at (16, 16) with variance (32 * 0.1 / 3)^2 + 0.3 px^2:
    >>> # alpha = 0.9 exp(-0.5 (0.5^2 + 0.5^2) / 1.438) = 0.756; green = blue = 1 - alpha
    >>> [round(v, 3) for v in rgb[0, 0, :, 16, 16].tolist()]
    [1.0, 0.244, 0.244]
    >>> round(alpha[0, 0, 0, 0, 0].item(), 3)  # a corner, far outside the splat
    0.0
    """
    means = gaussians.means
    backend = _resolve_backend(backend, means.device)
    n_batch, n_views = cameras.c2w.shape[:2]
    if means.shape[0] != n_batch:
        raise ValueError(f"gaussians have batch {means.shape[0]} but cameras have {n_batch}")
    bg = _background_per_view(background.to(means.device, means.dtype), n_batch, n_views)
    args = (
        means,
        gaussians.quats,
        gaussians.scales,
        gaussians.opacities,
        gaussians.colors,
        cameras.w2c.to(means.dtype),
        cameras.K().to(means.dtype),
        width,
        height,
        bg,
        near_plane,
    )
    if backend == "gsplat":
        from .gsplat_backend import rasterize
    else:
        from .torch_backend import rasterize
    return rasterize(*args)
