"""Data loading speed: our MultiViewDataset next to FaceLift's reference loader figure.

    python benchmarks/data_loading.py [--samples 24] [--unique 4] [--sizes 128 256] [--workers 0 2]

FaceLift's loader decodes and LANCZOS-resizes 6 RGBA PNGs of 512 px per item, about 14
items/s on one core (DESIGN.md, "Loading speed"); ours should reach at least 3x that per
core at 256 px. This script

1. generates a synthetic mouse6 dataset of 512 px PNGs in a temp dir. Rendering a 512 px
   sample takes seconds, so `--unique` samples are rendered and their folders copied up
   to `--samples`: the copies are separate files, so the cache sees them as separate views;
2. times the plain decode + resize path per item on one core (`load_view(..., cache_dir=None)`
   for the 6 views, plus compositing; best of the warm passes): the reference-like cost on
   this machine. Its figure is printed in the "cold" column: there is nothing to warm;
3. times a torch DataLoader over MultiViewDataset (mouse dataset type, 5 inputs, 6 targets
   with target_has_input, batch size 1) per image size and worker count: the first pass
   with an empty view cache (cold) and the next passes with it filled (warm).

Items/s per core divides by the worker processes (1 for num_workers 0). Cold figures with
workers include starting them. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from trainables.gslrm.config import TrainerConfig, apply_overrides
from trainables.gslrm.data import dataset as dataset_module
from trainables.gslrm.data import reader
from trainables.gslrm.data.dataset import MultiViewDataset
from trainables.gslrm.data.reader import background_rgb, composite, read_list_file, read_sample
from trainables.gslrm.data.synthetic import generate_dataset

REFERENCE_ITEMS_PER_CORE = 14.0  # FaceLift loader, 6 x 512 px RGBA per item, one core
TARGET_FACTOR = 3.0
SOURCE_SIZE = 512


def build_dataset(root: Path, samples: int, unique: int, seed: int) -> Path:
    """A list file of `samples` sample folders of 512 px PNGs (copies of `unique` rendered ones)."""
    summary = generate_dataset(
        root / "rendered",
        samples=unique,
        size=SOURCE_SIZE,
        rig="mouse6",
        seed=seed,
        val_fraction=0.0,
    )
    rendered = read_list_file(summary["train_list"])
    entries = []
    for k in range(samples):
        copy = root / "samples" / f"{k:04d}"
        shutil.copytree(rendered[k % len(rendered)], copy, dirs_exist_ok=True)
        entries.append(f"samples/{copy.name}")
    list_file = root / "data_bench.txt"
    list_file.write_text("".join(f"{e}\n" for e in entries))
    return list_file


def plain_items_per_second(list_file: Path, size: int, passes: int) -> float:
    """Decode + LANCZOS resize + composite of the 6 views of every item, no cache, this
    process; best of `passes` passes (every pass decodes everything again)."""
    samples = [read_sample(folder) for folder in read_list_file(list_file)]
    background = background_rgb("white")
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        for sample in samples:
            for frame in sample.frames[:6]:
                composite(reader.load_view(frame, size, cache_dir=None), background)
        best = max(best, len(samples) / (time.perf_counter() - start))
    return best


def make_config(size: int, cache_dir: Path) -> TrainerConfig:
    return apply_overrides(
        TrainerConfig(),
        {
            "model.image_tokenizer.image_size": size,
            "model.gaussians.downsample": 1,
            "training.dataset.num_views": 6,
            "training.dataset.num_input_views": 5,
            "training.dataset.target_has_input": True,
            "training.dataset.cache_dir": str(cache_dir),
            "mouse.use_mouse_dataset": True,
        },
    )


def timed_pass(loader: DataLoader) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - start)


def loader_items_per_second(
    list_file: Path, size: int, workers: int, cache_dir: Path, warm_passes: int
) -> tuple[float, float]:
    """(cold, warm) items/s for one DataLoader; warm is the best of `warm_passes` passes."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    ds = MultiViewDataset(list_file, make_config(size, cache_dir))
    # persistent workers: the warm passes then measure loading, not process start-up
    loader = DataLoader(
        ds, batch_size=1, shuffle=False, num_workers=workers, persistent_workers=workers > 0
    )
    cold = timed_pass(loader)
    warm = max(timed_pass(loader) for _ in range(warm_passes))
    return cold, warm


def count_calls(module: object, name: str) -> tuple[list[int], Callable[[], None]]:
    """Wrap module.name to count calls (main process only); returns (counter, undo)."""
    original = getattr(module, name)
    counter = [0]

    def wrapper(*args: object, **kwargs: object) -> object:
        counter[0] += 1
        return original(*args, **kwargs)

    setattr(module, name, wrapper)
    return counter, lambda: setattr(module, name, original)


def views_per_item(list_file: Path, size: int, cache_dir: Path) -> tuple[float, float]:
    """(load_view calls, PNG decodes) per item during a cold pass with num_workers 0."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    ds = MultiViewDataset(list_file, make_config(size, cache_dir))
    loads, undo_loads = count_calls(dataset_module, "load_view")
    decodes, undo_decodes = count_calls(reader, "decode_view")
    try:
        for index in range(len(ds)):
            ds[index]
    finally:
        undo_loads()
        undo_decodes()
    return loads[0] / len(ds), decodes[0] / len(ds)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--unique", type=int, default=4, help="samples actually rendered")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--warm-passes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep", type=Path, default=None, help="build the dataset here and keep it"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # One intra-op thread: "per core" should mean one core, and DataLoader workers use one anyway.
    torch.set_num_threads(1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        start = time.perf_counter()
        list_file = build_dataset(root, args.samples, min(args.unique, args.samples), args.seed)
        print(
            f"dataset: {args.samples} samples x 6 views of {SOURCE_SIZE} px RGBA PNG "
            f"({min(args.unique, args.samples)} rendered, built in {time.perf_counter() - start:.1f} s), "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}"
        )
        target = REFERENCE_ITEMS_PER_CORE * TARGET_FACTOR
        rows = []
        for size in args.sizes:
            plain = plain_items_per_second(list_file, size, args.warm_passes)
            rows.append((size, "plain decode+resize (no cache)", 1, plain, None))
            for workers in args.workers:
                cold, warm = loader_items_per_second(
                    list_file, size, workers, root / "cache", args.warm_passes
                )
                rows.append(
                    (size, f"DataLoader num_workers={workers}", max(1, workers), cold, warm)
                )

        print(
            f"\nreference: FaceLift loader ~{REFERENCE_ITEMS_PER_CORE:.0f} items/s per core "
            f"(6 x {SOURCE_SIZE} px decode + LANCZOS); goal >= {target:.0f} items/s per core at 256 px\n"
        )
        header = f"{'px':>4}  {'loader':<32} {'cold it/s':>9} {'/core':>7} {'warm it/s':>9} {'/core':>7} {'warm/ref':>8}"
        print(header)
        print("-" * len(header))
        for size, name, cores, cold, warm in rows:
            if warm is None:
                print(
                    f"{size:>4}  {name:<32} {cold:>9.1f} {cold / cores:>7.1f} {'-':>9} {'-':>7} "
                    f"{cold / cores / REFERENCE_ITEMS_PER_CORE:>7.1f}x"
                )
            else:
                print(
                    f"{size:>4}  {name:<32} {cold:>9.1f} {cold / cores:>7.1f} {warm:>9.1f} "
                    f"{warm / cores:>7.1f} {warm / cores / REFERENCE_ITEMS_PER_CORE:>7.1f}x"
                )

        loads, decodes = views_per_item(list_file, args.sizes[-1], root / "cache")
        print(
            f"\nper item, cold, num_workers=0 at {args.sizes[-1]} px: {loads:.0f} load_view calls, "
            f"{decodes:.0f} PNG decodes (6 views; targets repeat the 5 inputs)"
        )
        warm_at = {(size, name): warm for size, name, _, _, warm in rows if warm is not None}
        best = warm_at.get((256, "DataLoader num_workers=0"))
        if best is not None:
            verdict = "meets" if best >= target else "MISSES"
            print(
                f"warm, one core, 256 px: {best:.1f} items/s -> {verdict} the {target:.0f} items/s goal"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
