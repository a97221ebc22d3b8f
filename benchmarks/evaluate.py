"""Throughput of the per-item evaluation (render + score every item x view), in items/s.

    python benchmarks/evaluate.py [--config configs/smoke.yaml] [--items 24] [--batch 4]

Generates a synthetic test split, makes a run folder with one checkpoint of the config's
model and times `evaluate_run` twice: cold (views decoded and resized into the view cache)
and warm (cache hit, as in every trial after the first). Prints items/s and item-views/s on
the CPU, and on CUDA when a GPU is present (otherwise says it was not measured).

The checkpoint matters for the CPU rasteriser, whose cost grows with the screen area of the
splats: seeded random weights (--train-steps 0) give large splats (mean scale ~0.1) and a
pessimistic figure; --train-steps N trains the model N steps first (plain loop, no Ray), and
--run RUN_DIR times an existing run folder's newest checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from trainables.gslrm.checkpoint import checkpoint_name, save_checkpoint
from trainables.gslrm.config import load_config, save_config
from trainables.gslrm.data.synthetic import generate_dataset
from trainables.gslrm.evaluate import evaluate_run
from trainables.gslrm.model import GSLRM
from trainables.gslrm.train import train

REPO = Path(__file__).resolve().parent.parent


def make_run(folder: Path, config) -> Path:
    """A run folder with config.yaml and one checkpoint (step 1) of a seeded model."""
    torch.manual_seed(0)
    model = GSLRM(config.model)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(config, folder / "config.yaml")
    save_checkpoint(folder / "checkpoints" / checkpoint_name(1), model, optimizer, scheduler, 1)
    return folder


def measure(run: Path, config, device: str) -> tuple[float, float, int]:
    """(cold s, warm s, rows) of two evaluate_run calls on device."""
    times = []
    rows = 0
    for _ in range(2):
        start = time.perf_counter()
        result = evaluate_run(run, config, device=device, out_dir=run / f"eval_{device}")
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        rows = result.rows
    return times[0], times[1], rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/evaluate.py", description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs/smoke.yaml"))
    parser.add_argument("--items", type=int, default=24, help="test items")
    parser.add_argument("--batch", type=int, default=4, help="evaluation.batch_size")
    parser.add_argument("--size", type=int, default=0, help="image size (default: the config's)")
    parser.add_argument("--data", default="", help="dataset folder (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--train-steps", type=int, default=0, help="train this many steps first (0: random init)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"evaluation.batch_size={args.batch}", "evaluation.checkpoint=last"]
    if args.size:
        overrides.append(f"model.image_tokenizer.image_size={args.size}")
    size = args.size or load_config(args.config).model.image_tokenizer.image_size
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data or Path(tmp) / "data")
        samples = 16 if args.train_steps else 2  # a few training samples when it trains
        data = generate_dataset(
            data_dir, samples=samples, size=size, seed=0, test_samples=args.items
        )
        overrides += [
            f"training.dataset.dataset_path={data['train_list']}",
            f"training.dataset.cache_dir={Path(tmp) / 'cache'}",
        ]
        if args.train_steps:
            overrides += [
                f"validation.dataset_path={data['val_list']}",
                f"training.schedule.max_steps={args.train_steps}",
                f"validation.val_every={args.train_steps}",
                "training.logging.wandb.mode=disabled",
            ]
        config = load_config(args.config, overrides)
        if args.train_steps:
            start = time.perf_counter()
            train(config, Path(tmp) / "run")
            print(f"trained {args.train_steps} steps in {time.perf_counter() - start:.0f} s")
            run = Path(tmp) / "run"
        else:
            run = make_run(Path(tmp) / "run", config)
        model = config.model.transformer
        print(
            f"config {Path(args.config).name}: d {model.d}, {model.n_layer} layers, "
            f"{size} px, batch {args.batch}, {args.items} items x "
            f"{config.training.dataset.num_views} views, torch threads {torch.get_num_threads()}"
        )
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            cold, warm, rows = measure(run, config, device)
            print(
                f"{device}: cold {args.items / cold:.2f} items/s ({cold:.2f} s), warm "
                f"{args.items / warm:.2f} items/s = {rows / warm:.1f} item-views/s ({warm:.2f} s)"
            )
        if "cuda" not in devices:
            print("cuda: not measured (no GPU on this machine)")


if __name__ == "__main__":
    main()
