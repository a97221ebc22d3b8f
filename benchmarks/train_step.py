"""Steady-state training-step speed of the GS-LRM trainer, with a time breakdown and MFU.

    python benchmarks/train_step.py --config configs/smoke.yaml --steps 20            # CPU, tiny
    python benchmarks/train_step.py --config configs/mouse_gslrm.yaml --steps 50 \
        --set model.transformer.d=768 --set model.transformer.n_layer=12               # H100 target config

Times the loop's own `train_step` (forward, losses, finite check, backward, clip, optimizer,
scheduler and scaler steps, the train/* diagnostics), on a `TrainState` built as `train()`
builds it. Prints steps/s, samples/s, peak GPU memory, the share of step time spent in data loading, the
transformer (forward + backward) and the renderer (forward + backward), and model FLOPs
utilisation: transformer FLOPs per step (from the config) / step time / the device's measured
peak (a large bf16 matmul on CUDA, fp32 on CPU, in the same run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainables.gslrm.config import TrainerConfig, load_config  # noqa: E402
from trainables.gslrm.data.dataset import MultiViewDataset  # noqa: E402
from trainables.gslrm.data.synthetic import generate_dataset  # noqa: E402
from trainables.gslrm.model import count_parameters  # noqa: E402
from trainables.gslrm.render import render  # noqa: E402
from trainables.gslrm.train import build_state, to_device, train_step  # noqa: E402
from trainables.gslrm.types import Cameras  # noqa: E402


def transformer_flops_per_step(config: TrainerConfig, batch: int) -> float:
    """Training FLOPs of the transformer (forward + backward = 3 x forward), per step.

    Per layer and token: 2 * 12 d^2 (qkv, out, 4x MLP) plus attention 2 * 2 * T * d."""
    tok, tr = config.model.image_tokenizer, config.model.transformer
    views = config.training.dataset.num_input_views
    tokens = views * (tok.image_size // tok.patch_size) ** 2 + config.model.gaussians.n_gaussians
    d = tr.d
    per_layer = 2 * tokens * 12 * d * d + 4 * tokens * tokens * d
    embed = 2 * tokens * (9 * tok.patch_size**2) * d + 2 * tokens * d * 14 * tok.patch_size**2
    return 3.0 * batch * (tr.n_layer * per_layer + embed)


def measured_peak_flops(device: torch.device) -> tuple[float, str]:
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (
        time.perf_counter() - start
    ), f"{n}x{n} {str(dtype).split('.')[-1]} matmul"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = load_config(args.config, args.set)
    size = config.model.image_tokenizer.image_size
    data_dir = Path(tempfile.mkdtemp(prefix="bench_data_"))
    info = generate_dataset(data_dir, samples=16, size=size, rig="mouse6", seed=0, val_fraction=0.0)
    loader = DataLoader(
        MultiViewDataset(info["train_list"], config),
        batch_size=config.training.dataloader.batch_size_per_gpu,
        shuffle=True,
        num_workers=config.training.dataloader.num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=config.training.dataloader.num_workers > 0,
    )
    state = build_state(config, device)
    if args.compile:
        state.model = torch.compile(state.model)
    model, autocast = state.model, state.autocast

    def batches():
        while True:
            yield from loader

    stream = batches()

    def step(batch) -> None:
        train_step(state, batch)

    for _ in range(args.warmup_steps):
        step(to_device(next(stream), device))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # 1. full steps (the loop's one host read per step, for the finite check, included):
    # throughput; data wait measured separately
    data_s = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = to_device(next(stream), device)
        data_s += time.perf_counter() - t0
        step(batch)
    sync(device)
    total = time.perf_counter() - start
    step_s = total / args.steps

    # 2. breakdown on one batch: transformer fwd+bwd alone, renderer fwd+bwd alone
    batch = to_device(next(stream), device)
    cams_in = Cameras(batch["input_c2w"], batch["input_intrinsics"])
    cams_out = Cameras(batch["target_c2w"], batch["target_intrinsics"])

    def time_it(fn, reps: int = 5) -> float:
        fn()
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - t) / reps

    def transformer_only() -> None:
        with autocast():
            g = model(batch["input_images"], cams_in)
        (
            g.means.sum() + g.colors.sum() + g.opacities.sum() + g.scales.sum() + g.quats.sum()
        ).backward()

    with torch.no_grad(), autocast():
        g = model(batch["input_images"], cams_in)
    leaves = [
        t.detach().float().requires_grad_()
        for t in (g.means, g.scales, g.quats, g.opacities, g.colors)
    ]

    def renderer_only() -> None:
        gs = type(g)(*leaves)
        h, w = batch["target_images"].shape[-2:]
        rgb, alpha = render(
            gs,
            cams_out,
            h,
            w,
            batch["background"],
            backend=config.model.renderer.backend,
            near_plane=config.model.renderer.near_plane,
        )
        (rgb.mean() + alpha.mean()).backward()

    transformer_s, renderer_s = time_it(transformer_only), time_it(renderer_only)
    peak, peak_how = measured_peak_flops(device)
    flops = transformer_flops_per_step(config, config.training.dataloader.batch_size_per_gpu)
    batch_size = config.training.dataloader.batch_size_per_gpu
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}; torch {torch.__version__}")
    print(
        f"config: {args.config} {' '.join(args.set)}; parameters {count_parameters(model):,}; "
        f"batch {batch_size}; gaussians/sample {config.model.gaussians.n_gaussians + config.training.dataset.num_input_views * (size // config.model.gaussians.downsample) ** 2:,}"
    )
    print(
        f"steps/s          {1 / step_s:8.2f}   ({step_s * 1000:.1f} ms/step over {args.steps} steps)"
    )
    print(f"samples/s        {batch_size / step_s:8.2f}")
    if device.type == "cuda":
        print(f"peak GPU memory  {torch.cuda.max_memory_allocated() / 2**30:8.2f} GiB")
    print(f"data wait        {100 * data_s / total:7.1f} % of step time")
    print(f"transformer f+b  {100 * transformer_s / step_s:7.1f} % ({transformer_s * 1000:.1f} ms)")
    print(f"renderer f+b     {100 * renderer_s / step_s:7.1f} % ({renderer_s * 1000:.1f} ms)")
    print(
        f"transformer FLOPs/step {flops:.3e}; measured peak {peak / 1e12:.2f} TFLOP/s ({peak_how})"
    )
    print(f"MFU (transformer FLOPs / full step time / peak) {100 * flops / step_s / peak:6.1f} %")


if __name__ == "__main__":
    main()
