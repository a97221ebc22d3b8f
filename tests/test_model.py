"""GS-LRM geometry under mixed precision: rays and Gaussian centres stay float32 whatever the
autocast, so a bf16 GPU study places its Gaussians where a float32 CPU study does.

CPU autocast with bf16 runs matmuls in bf16 exactly like CUDA autocast, so these CPU tests catch
the defect the GPU would hit (issue 16, defect 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.gslrm.config import load_config
from trainables.gslrm.data.synthetic import make_rig
from trainables.gslrm.model import GSLRM, pixel_rays
from trainables.gslrm.types import Cameras

REPO = Path(__file__).resolve().parent.parent
SIZE = 64


def rig_cameras(size: int, batch: int = 2) -> Cameras:
    """The uneven 6-camera mouse rig, [batch, 6] cameras of size x size images."""
    rig = make_rig("mouse6", size)
    c2w = torch.tensor(np.stack([np.linalg.inv(c.w2c) for c in rig]), dtype=torch.float32)
    intr = torch.tensor([[c.fx, c.fy, c.cx, c.cy] for c in rig], dtype=torch.float32)
    return Cameras(c2w[None].repeat(batch, 1, 1, 1), intr[None].repeat(batch, 1, 1))


def smoke_model(downsample: int = 1) -> GSLRM:
    config = load_config(
        REPO / "configs/smoke.yaml",
        [f"model.image_tokenizer.image_size={SIZE}", f"model.gaussians.downsample={downsample}"],
    )
    torch.manual_seed(0)
    return GSLRM(config.model).eval()


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_pixel_rays_are_float32_and_unchanged_under_bf16_autocast():
    cams = rig_cameras(SIZE, batch=1)
    origins, directions = pixel_rays(cams.c2w, cams.intrinsics, SIZE, SIZE)
    with bf16_autocast():
        origins_amp, directions_amp = pixel_rays(cams.c2w, cams.intrinsics, SIZE, SIZE)
    assert directions_amp.dtype == torch.float32 and origins_amp.dtype == torch.float32
    assert torch.equal(directions_amp, directions) and torch.equal(origins_amp, origins)
    # The comparison is not vacuous: the same product in bf16 is visibly off (8 mantissa bits)
    rotation = cams.c2w[..., None, None, :3, :3]
    cam = rotation.transpose(-1, -2) @ directions[..., None]  # back to the camera frame
    with bf16_autocast():
        rounded = (rotation @ cam)[..., 0]
    assert rounded.dtype == torch.bfloat16
    assert (rounded.float() - directions).abs().max() > 1e-4


@pytest.mark.parametrize("downsample", [1, 4])
def test_centres_under_bf16_autocast_equal_float32_centres_for_the_same_decoder_output(
    monkeypatch, downsample: int
):
    # The transformer's output rightly differs in bf16; the geometry must not. With the decoder
    # output held fixed, the Gaussians placed under autocast are bitwise the float32 ones.
    model = smoke_model(downsample)
    cams = rig_cameras(SIZE)
    images = torch.rand(2, 6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), bf16_autocast():
        free, pixel = model.forward_raw(images, cams)
    assert pixel.dtype == torch.bfloat16  # what a bf16 GPU step hands to the placement
    monkeypatch.setattr(model, "forward_raw", lambda *_: (free, pixel))
    with torch.no_grad():
        reference = model(images, cams)
        with bf16_autocast():
            mixed = model(images, cams)
    for name in ("means", "scales", "quats", "opacities", "colors"):
        ours, theirs = getattr(mixed, name), getattr(reference, name)
        assert ours.dtype == torch.float32, name
        assert torch.equal(ours, theirs), (name, (ours - theirs).abs().max().item())
    assert mixed.means.shape == (2, 2 + 6 * (SIZE // downsample) ** 2, 3)


def test_centres_of_a_real_bf16_forward_lie_on_the_float32_rays():
    # Full forward under autocast: the position along each ray comes from the bf16 network, but
    # each pixel-aligned centre must sit on its pixel's float32 ray. A bf16 ray direction would
    # put it ~ depth * 2^-9 ~ 5e-3 units off the ray (measured 1.1e-2 before the fix).
    model = smoke_model()
    cams = rig_cameras(SIZE)
    images = torch.rand(2, 6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), bf16_autocast():
        gauss = model(images, cams)
    origins, directions = pixel_rays(cams.c2w, cams.intrinsics, SIZE, SIZE)
    origins, directions = origins.flatten(1, 3), directions.flatten(1, 3)  # [B, M, 3]
    offset = gauss.means[:, 2:] - origins  # [B, M, 3]; the 2 free Gaussians come first
    along = (offset * directions).sum(-1, keepdim=True)  # [B, M, 1]
    off_ray = (offset - along * directions).norm(dim=-1)  # [B, M]
    assert gauss.means.dtype == torch.float32
    assert along.min() > 0.5  # in front of the cameras (2.0-3.4 units away)
    assert off_ray.max() < 1e-5, off_ray.max().item()  # measured 1.2e-6
