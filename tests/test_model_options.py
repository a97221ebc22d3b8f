"""Model options beyond FaceLift's defaults, on one seeded tiny model and a 3-camera rig: the
standard Plücker rays, `hard_pixelalign: false`, `clip_xyz: true`, `downsample > 1`, and
gradient checkpointing (same outputs, same gradients)."""

from __future__ import annotations

import torch

from trainables.gslrm.config import apply_overrides, config_from_dict
from trainables.gslrm.model import GSLRM, pixel_rays, ray_features
from trainables.gslrm.rig import look_at_c2w, orbit_center
from trainables.gslrm.types import Cameras

SIZE, VIEWS, FREE = 16, 2, 3


def model_for(**overrides) -> GSLRM:
    config = config_from_dict(
        {
            "model": {
                "image_tokenizer": {"image_size": SIZE, "patch_size": 8},
                "transformer": {"d": 32, "d_head": 16, "n_layer": 2},
                "gaussians": {"n_gaussians": FREE, "downsample": 1},
            }
        }
    )
    grad_checkpoint_every = overrides.pop("grad_checkpoint_every", 0)
    torch.manual_seed(0)  # the same weights for every option (none of them adds a parameter)
    return GSLRM(apply_overrides(config, overrides).model, grad_checkpoint_every)


def inputs(target: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[torch.Tensor, Cameras]:
    g = torch.Generator().manual_seed(1)
    c2w = torch.stack(
        [
            torch.from_numpy(look_at_c2w(orbit_center(2.5, az, 25.0) + target, target)).float()
            for az in (10.0, 95.0)
        ]
    )[None]
    intrinsics = torch.tensor([[19.0, 20.0, 8.3, 7.6], [21.0, 20.5, 7.9, 8.4]])[None]
    return torch.rand(1, VIEWS, 3, SIZE, SIZE, generator=g), Cameras(c2w, intrinsics)


def pixel_means(model: GSLRM, target: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    images, cameras = inputs(target)
    with torch.no_grad():
        return model(images, cameras).means[0, FREE:]


def test_ray_channels_by_hand() -> None:
    origin, direction = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([1.0, 0.0, 0.0])
    # FaceLift: (d, closest point to the origin); o.d = 0 so the closest point is o itself
    assert ray_features(origin, direction, custom=True).tolist() == [1, 0, 0, 0, 0, 2]
    # Plücker: (d, o x d) = (d, (0, 2, 0))
    assert ray_features(origin, direction, custom=False).tolist() == [1, 0, 0, 0, 2, 0]
    images, cameras = inputs()
    with torch.no_grad():
        custom = model_for()(images, cameras).means
        plucker = model_for(**{"model.use_custom_plucker": False})(images, cameras).means
    assert not torch.allclose(custom, plucker)  # the option reaches the network's input


def test_hard_pixelalign_puts_each_centre_on_its_pixel_ray() -> None:
    images, cameras = inputs()
    origins, directions = pixel_rays(cameras.c2w, cameras.intrinsics, SIZE, SIZE)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)

    def off_ray(means: torch.Tensor) -> torch.Tensor:
        return torch.linalg.cross(means - origins, directions, dim=-1).norm(dim=-1)

    assert off_ray(pixel_means(model_for())).max() < 1e-5
    free_form = pixel_means(model_for(**{"model.hard_pixelalign": False}))
    assert off_ray(free_form).min() > 1e-3  # centres are the decoder's own xyz, off the rays


def test_clip_xyz_keeps_centres_in_the_unit_cube() -> None:
    # a rig looking at a point outside the cube, so pixel-aligned centres fall outside it
    target = (1.5, 1.5, 0.5)
    unclipped = pixel_means(model_for(), target)
    assert unclipped.abs().max() > 1.0
    clipped = pixel_means(model_for(**{"model.clip_xyz": True}), target)
    assert clipped.abs().max() <= 1.0
    assert torch.equal(clipped, unclipped.clamp(-1.0, 1.0))


def test_downsample_keeps_the_centre_pixel_of_each_block() -> None:
    full = pixel_means(model_for()).reshape(VIEWS, SIZE, SIZE, 3)
    half = pixel_means(model_for(**{"model.gaussians.downsample": 2}))
    assert half.shape == (VIEWS * (SIZE // 2) ** 2, 3)
    torch.testing.assert_close(half.reshape(VIEWS, SIZE // 2, SIZE // 2, 3), full[:, 1::2, 1::2])


def test_gradient_checkpointing_gives_equal_outputs_and_gradients() -> None:
    images, cameras = inputs()
    results = []
    for every in (0, 1):
        model = model_for(grad_checkpoint_every=every).train()
        g = model(images, cameras)
        loss = g.means.square().mean() + g.colors.mean() + g.opacities.mean() + g.scales.mean()
        loss.backward()
        results.append((g.means.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (means_a, grads_a), (means_b, grads_b) = results
    torch.testing.assert_close(means_a, means_b, rtol=0, atol=0)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-6, atol=1e-7)
