"""Forward+backward time of the render backends on one random scene.

    python benchmarks/render.py --size 64 --gaussians 2000 --views 6

The scene: Gaussians uniform in a unit cube, log-uniform scales, V cameras on a ring 2.5
units away looking at the centre (focal 1.1 x size), so splats cover a few pixels, roughly
like a feed-forward model's output on the 6-camera rig. The torch backend always runs; gsplat
runs too when CUDA is available.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from trainables.gslrm.render import render
from trainables.gslrm.types import Cameras, Gaussians


def look_at(eye: torch.Tensor) -> torch.Tensor:
    """eye: [3] -> [4, 4] OpenCV camera-to-world looking at the origin, y down."""
    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0]))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def random_scene(
    batch: int,
    gaussians: int,
    views: int,
    size: int,
    scale_range: tuple[float, float] = (0.01, 0.05),
    seed: int = 0,
) -> tuple[Gaussians, Cameras]:
    """A reproducible scene: B x N Gaussians and B x V ring cameras of a size x size image."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, gaussians)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    quats = torch.randn(*shape, 4, generator=gen)
    scene = Gaussians(
        means=torch.rand(*shape, 3, generator=gen) - 0.5,
        scales=torch.exp(lo + (hi - lo) * torch.rand(*shape, 3, generator=gen)),
        quats=quats / quats.norm(dim=-1, keepdim=True),
        opacities=0.05 + 0.9 * torch.rand(*shape, generator=gen),
        colors=torch.rand(*shape, 3, generator=gen),
    )
    angles = torch.arange(views) * (2 * math.pi / views)
    eyes = torch.stack([2.5 * angles.cos(), torch.full_like(angles, 0.3), 2.5 * angles.sin()], -1)
    c2w = torch.stack([look_at(e) for e in eyes])
    focal = 1.1 * size
    intrinsics = torch.tensor([focal, focal, size / 2, size / 2]).expand(views, 4)
    cams = Cameras(
        c2w=c2w[None].expand(batch, -1, -1, -1).clone(),
        intrinsics=intrinsics[None].expand(batch, -1, -1).clone(),
    )
    return scene, cams


def time_backend(
    scene: Gaussians, cams: Cameras, size: int, backend: str, device: torch.device, repeats: int
) -> tuple[float, float]:
    """Fastest (wall, process CPU) milliseconds of one forward+backward pass.

    The minimum, not the median: on shared machines other jobs only ever add time.
    """
    # Fresh leaves on the device: `t.to(device)` alone would return the scene's own tensors on
    # CPU (and mark them), and on CUDA every timed backward would copy gradients back to them
    leaves = [
        t.detach().to(device).requires_grad_(True)
        for t in (scene.means, scene.scales, scene.quats, scene.opacities, scene.colors)
    ]
    gauss = Gaussians(*leaves)
    cams = Cameras(cams.c2w.to(device), cams.intrinsics.to(device))
    background = torch.ones(3, device=device)
    walls, cpus = [], []
    for i in range(repeats + 1):
        for t in leaves:
            t.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        rgb, alpha = render(gauss, cams, size, size, background, backend=backend)
        # Weighted sum so every output pixel sends a distinct gradient back
        (rgb.square().mean() + alpha.mean()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first pass warms allocators and caches
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
    return 1e3 * min(walls), 1e3 * min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--gaussians", type=int, default=1300)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale-min", type=float, default=0.01)
    parser.add_argument("--scale-max", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scene, cams = random_scene(
        args.batch, args.gaussians, args.views, args.size, (args.scale_min, args.scale_max)
    )
    # ru_maxrss is in KiB on Linux; the figure before rendering is the import baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runs = [("torch", torch.device("cpu"))]
    if torch.cuda.is_available():
        runs += [("torch", torch.device("cuda")), ("gsplat", torch.device("cuda"))]
    print(
        f"N={args.gaussians} Gaussians, B={args.batch}, V={args.views} views, "
        f"{args.size}x{args.size} px, cpu threads={torch.get_num_threads()}"
    )
    for backend, device in runs:
        wall, cpu = time_backend(scene, cams, args.size, backend, device, args.repeats)
        # CPU time (all threads) is the steadier figure when other jobs share the cores
        print(
            f"{backend:>6} on {device.type}: {wall:8.1f} ms wall, {cpu:8.1f} ms CPU "
            "per forward+backward"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak process RSS: {peak:.0f} MiB ({base:.0f} MiB before rendering)")


if __name__ == "__main__":
    main()
