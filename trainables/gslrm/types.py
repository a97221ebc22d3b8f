"""Plain tensor containers passed between the model, the renderers and the losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Gaussians:
    """A batch of 3D Gaussians, already activated (ready to render).

    means: [B, N, 3] world positions
    scales: [B, N, 3] standard deviations along the Gaussian's own axes (> 0)
    quats: [B, N, 4] unit rotation quaternions in (w, x, y, z) order
    opacities: [B, N] in (0, 1)
    colors: [B, N, 3] RGB (>= 0), i.e. SH degree 0 already evaluated
    """

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor


@dataclass
class Cameras:
    """Pinhole cameras in OpenCV convention (x right, y down, z forward).

    c2w: [B, V, 4, 4] camera-to-world
    intrinsics: [B, V, 4] (fx, fy, cx, cy) in pixels of the image they describe
    """

    c2w: torch.Tensor
    intrinsics: torch.Tensor

    @property
    def w2c(self) -> torch.Tensor:
        """[B, V, 4, 4] world-to-camera."""
        return torch.linalg.inv(self.c2w)

    def K(self) -> torch.Tensor:
        """[B, V, 3, 3] intrinsic matrices."""
        fx, fy, cx, cy = self.intrinsics.unbind(-1)
        zeros, ones = torch.zeros_like(fx), torch.ones_like(fx)
        rows = [
            torch.stack([fx, zeros, cx], -1),
            torch.stack([zeros, fy, cy], -1),
            torch.stack([zeros, zeros, ones], -1),
        ]
        return torch.stack(rows, -2)
