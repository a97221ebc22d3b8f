"""CUDA path: thin wrapper over ``gsplat.rasterization`` in "classic" mode (gsplat 1.5.3)."""

from __future__ import annotations

import torch

from .torch_backend import EPS2D, FAR_PLANE


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    w2c: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor,
    near_plane: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render B scenes from V cameras each with gsplat's CUDA kernels.

    means: [B, N, 3], quats: [B, N, 4], scales: [B, N, 3], opacities: [B, N],
    colors: [B, N, 3], w2c: [B, V, 4, 4], Ks: [B, V, 3, 3], background: [B, V, 3]
    -> (rgb [B, V, 3, H, W], alpha [B, V, 1, H, W]).
    """
    if not means.is_cuda:
        raise RuntimeError(
            "render backend 'gsplat' needs CUDA tensors (gsplat has no CPU kernels); "
            "use backend='torch' or 'auto' on CPU"
        )
    # Imported here so CPU-only code paths never load gsplat's CUDA extension
    import gsplat

    # gsplat's kernels are float32-only; batch dims [B] lead every input
    def f32(t: torch.Tensor) -> torch.Tensor:
        return t.float().contiguous()

    rgb, alpha, _ = gsplat.rasterization(
        means=f32(means),
        quats=f32(quats),
        scales=f32(scales),
        opacities=f32(opacities),
        colors=f32(colors),
        viewmats=f32(w2c),
        Ks=f32(Ks),
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=FAR_PLANE,
        eps2d=EPS2D,
        sh_degree=None,
        # Dense (unpacked) intermediates: every Gaussian of a training scene is usually in
        # view, so packing only adds index bookkeeping
        packed=False,
        backgrounds=f32(background),
        render_mode="RGB",
        rasterize_mode="classic",
    )
    # [B, V, H, W, C] -> [B, V, C, H, W]
    return rgb.permute(0, 1, 4, 2, 3), alpha.permute(0, 1, 4, 2, 3)
