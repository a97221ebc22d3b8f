"""The GS-LRM training loop, readable top to bottom, with no Ray in it.

    python -m trainables.gslrm.train --config configs/smoke.yaml --out runs/smoke [--set key=value ...]

`train(config, out_dir, hooks)` is the whole loop: AdamW (weight decay on matrices only),
linear warmup + cosine decay, gradient clipping, the configured losses, validation every
`validation.val_every` steps (metrics, a picture, a checkpoint when one is due), W&B logging
(offline unless asked otherwise) and a local `metrics.jsonl`. A caller such as the Ray Train
adapter drives it through `Hooks`: it can wrap the model and data loader (DDP, distributed
sampling), receive every validation report with the checkpoint written at that step, and hand
in a checkpoint to resume from. Checkpoints are written at validation rounds, atomically, and
the newest one in `out_dir/checkpoints` is resumed automatically.

A non-finite loss stops the run with `TrainingDiverged` ("diverged at step N").
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from trainables.gslrm.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_weights,
    prune_checkpoints,
    save_checkpoint,
)
from trainables.gslrm.config import (
    ConfigError,
    TrainerConfig,
    flat_config,
    load_config,
    save_config,
)
from trainables.gslrm.data.dataset import MultiViewDataset, validation_list_file
from trainables.gslrm.losses import LossWeights, check_perceptual_available, compute_losses
from trainables.gslrm.metrics import compute_metrics
from trainables.gslrm.model import GSLRM
from trainables.gslrm.render import render
from trainables.gslrm.types import Cameras
from trainables.gslrm.visualize import save_validation_grid


class TrainingDiverged(RuntimeError):
    """The loss became non-finite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"diverged at step {step}: non-finite loss (train/loss={loss})")
        self.step = step


def _identity(x: Any) -> Any:
    return x


@dataclass
class Hooks:
    """How a caller (e.g. the Ray Train adapter) plugs into the loop; defaults run it alone."""

    device: torch.device | None = None
    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = _identity
    wrap_loader: Callable[[DataLoader], DataLoader] = _identity
    # Called on every rank at each validation round: (metrics, checkpoint file written now or None).
    report: Callable[[dict[str, float], Path | None], None] = lambda metrics, ckpt: None
    resume_checkpoint: Path | None = None  # overrides the newest file in out_dir/checkpoints
    wandb_run_name: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    steps_run: int
    final_step: int
    wall_s: float
    gpu_s: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int = 0


def loss_weights(config: TrainerConfig) -> LossWeights:
    losses = config.training.losses
    return LossWeights(
        l2_loss_weight=losses.l2_loss_weight,
        ssim_loss_weight=losses.ssim_loss_weight,
        masked_l2_loss=losses.masked_l2_loss,
        masked_ssim_loss=losses.masked_ssim_loss,
        mask_threshold=losses.mask_threshold,
        background_loss_weight=losses.background_loss_weight,
        background_color_target=tuple(losses.background_color_target),
        mask_iou_threshold=losses.mask_iou_threshold,
    )


def lr_factor(step: int, warmup: int, max_steps: int) -> float:
    """Linear warmup from 0, then cosine decay to 0, in optimizer steps."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(
    model: torch.nn.Module, config: TrainerConfig, device: torch.device
) -> torch.optim.AdamW:
    opt = config.training.optimizer
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": opt.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), fused=device.type == "cuda"
    )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward_render(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    config: TrainerConfig,
    autocast: contextlib.AbstractContextManager,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs -> Gaussians -> target-view renders: rgb [B, Vt, 3, H, W], alpha [B, Vt, 1, H, W]."""
    with autocast:
        gaussians = model(
            batch["input_images"], Cameras(batch["input_c2w"], batch["input_intrinsics"])
        )
    h, w = batch["target_images"].shape[-2:]
    renderer = config.model.renderer
    return render(
        gaussians,
        Cameras(batch["target_c2w"], batch["target_intrinsics"]),
        h,
        w,
        batch["background"],
        backend=renderer.backend,
        near_plane=renderer.near_plane,
    )


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: DataLoader,
    config: TrainerConfig,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
    picture_path: Path | None,
) -> dict[str, float]:
    """Mean of per-batch validation metrics; saves the picture of the first item."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for index, batch in enumerate(loader):
        batch = to_device(batch, device)
        rgb, _ = forward_render(model, batch, config, autocast)
        metrics = compute_metrics(
            rgb,
            batch["target_images"],
            batch["target_alpha"],
            batch["background"],
            config.validation.mask_iou_threshold,
        )
        for key, value in metrics.items():
            if math.isfinite(
                value
            ):  # psnr_fg is NaN for items without foreground: skip, don't zero
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
        if index == 0 and picture_path is not None:
            save_validation_grid(
                picture_path,
                batch["target_images"][0],
                rgb[0].float(),
                batch["target_alpha"][0],
                batch["background"][0],
            )
    model.train(was_training)
    return {f"val/{k}": sums[k] / counts[k] for k in sums}


class MetricsLog:
    """metrics.jsonl beside the run, and W&B on the main rank when enabled."""

    def __init__(self, out_dir: Path, config: TrainerConfig, run_name: str, enabled: bool):
        self.path = out_dir / "metrics.jsonl"
        self.wandb_run = None
        self.enabled = enabled
        mode = config.training.logging.wandb.mode
        if enabled and mode != "disabled":
            import wandb

            wandb_dir = out_dir / "wandb_logs"
            wandb_dir.mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(
                project=config.training.logging.wandb.project,
                name=run_name or config.training.logging.wandb.exp_name or out_dir.name,
                id=(run_name or out_dir.name).replace("/", "_")[:64],
                resume="allow",
                dir=str(wandb_dir),
                mode=mode,
                config=flat_config(config),
                settings=wandb.Settings(silent=True, console="off"),
            )

    def log(self, record: dict[str, Any], step: int, picture: Path | None = None) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **record}) + "\n")
        if self.wandb_run is not None:
            payload = dict(record)
            if picture is not None and picture.is_file():
                import wandb

                payload["images/val/gt_vs_pred_0"] = wandb.Image(str(picture))
            self.wandb_run.log(payload, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def resolve_device(hooks: Hooks) -> torch.device:
    if hooks.device is not None:
        return hooks.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(config: TrainerConfig, out_dir: str | Path, hooks: Hooks | None = None) -> TrainResult:
    hooks = hooks or Hooks()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not config.training.dataset.dataset_path:
        raise ConfigError(
            "training.dataset.dataset_path: empty; generate data with "
            "`python -m trainables.gslrm.data.synthetic --out DIR` and point it at DIR/data_train.txt"
        )
    losses_cfg, schedule, runtime = (
        config.training.losses,
        config.training.schedule,
        config.training.runtime,
    )
    check_perceptual_available(losses_cfg.perceptual_loss_weight, losses_cfg.lpips_loss_weight)
    device = resolve_device(hooks)

    torch.manual_seed(runtime.seed)  # same initial weights on every rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.use_tf32
        torch.backends.cudnn.allow_tf32 = runtime.use_tf32
    model = GSLRM(config.model, runtime.grad_checkpoint_every).to(device)
    optimizer = make_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, schedule.warmup, schedule.max_steps)
    )

    # Resume order: our own run's newest checkpoint, then the pretrained resume_ckpt.
    step = 0
    ckpt_dir = out_dir / "checkpoints"
    own = hooks.resume_checkpoint or latest_checkpoint(ckpt_dir)
    if own is not None:
        report, data = load_weights(model, own)
        optimizer.load_state_dict(data["optimizer"])
        scheduler.load_state_dict(data["lr_scheduler"])
        step = report.step
        if "rng" in data:
            torch.set_rng_state(data["rng"]["torch"])
        print(f"[train] resumed from {own} at step {step}", flush=True)
    elif config.training.checkpointing.resume_ckpt:
        report, data = load_weights(model, config.training.checkpointing.resume_ckpt)
        print(f"[train] {report}", flush=True)
        if not config.training.checkpointing.reset_training_state and "optimizer" in data:
            optimizer.load_state_dict(data["optimizer"])
            scheduler.load_state_dict(data["lr_scheduler"])
            step = report.step
    resumed_from = step
    torch.manual_seed(runtime.seed + hooks.rank + step)

    dl = config.training.dataloader
    train_set = MultiViewDataset(config.training.dataset.dataset_path, config)
    generator = torch.Generator()
    train_loader = hooks.wrap_loader(
        DataLoader(
            train_set,
            batch_size=dl.batch_size_per_gpu,
            shuffle=dl.shuffle,
            drop_last=len(train_set) >= dl.batch_size_per_gpu,
            num_workers=dl.num_workers,
            generator=generator,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
        )
    )
    val_loader = None
    if hooks.is_main:
        val_set = MultiViewDataset(
            validation_list_file(config), config, max_items=config.validation.max_items
        )
        val_loader = DataLoader(
            val_set,
            batch_size=dl.batch_size_per_gpu,
            shuffle=False,
            num_workers=min(dl.num_workers, 1),
        )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError("training.dataloader.batch_size_per_gpu: larger than the training set")
    if (
        hooks.is_main
    ):  # only once the data opened, so a failing re-run leaves a finished run as it was
        save_config(config, out_dir / "config.yaml")

    model = hooks.wrap_model(model)
    plain_model = getattr(model, "module", model)  # validation runs outside DDP
    use_amp = device.type == "cuda" and runtime.use_amp
    amp_dtype = torch.bfloat16 if runtime.amp_dtype == "bf16" else torch.float16

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()

    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    weights = loss_weights(config)
    log = MetricsLog(out_dir, config, hooks.wandb_run_name, enabled=hooks.is_main)
    log_every = config.training.logging.wandb.log_every

    model.train()
    running: dict[str, float] = {}
    running_count = 0
    last_ckpt_step = step
    last_metrics: dict[str, float] = {}
    start = time.perf_counter()
    step_start = start
    try:
        while step < schedule.max_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            train_set.set_epoch(epoch)
            generator.manual_seed(runtime.seed + epoch)
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            # Skip the batches this epoch already consumed, so a resumed run sees the same data.
            for batch in itertools.islice(train_loader, skip, None):
                batch = to_device(batch, device)
                rgb, _ = forward_render(model, batch, config, autocast())
                terms = compute_losses(rgb, batch["target_images"], batch["target_alpha"], weights)
                loss = terms["loss"]
                if step + 1 == runtime.inject_nan_loss_at_step:
                    loss = loss * float("nan")
                finite = torch.isfinite(loss).float()
                if hooks.world_size > 1 and torch.distributed.is_initialized():
                    # every rank must stop together, or the others wait forever in all-reduce
                    torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
                if finite.item() == 0:
                    raise TrainingDiverged(step + 1, float(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), runtime.grad_clip_norm
                )
                scaler.step(optimizer)  # skips the update when gradients are non-finite (fp16)
                scaler.update()
                scheduler.step()
                step += 1

                for key, value in terms.items():
                    running[f"train/{key}"] = running.get(f"train/{key}", 0.0) + float(
                        value.detach()
                    )
                running_count += 1
                if step % log_every == 0 or step == schedule.max_steps:
                    now = time.perf_counter()
                    record = {k: v / running_count for k, v in running.items()}
                    record.update(
                        {
                            "metrics/lr": scheduler.get_last_lr()[0],
                            "metrics/grad_norm": float(grad_norm),
                            "metrics/iter_time": (now - step_start) / running_count,
                            "metrics/param_update_step": step,
                            "metrics/epoch": epoch,
                        }
                    )
                    record["metrics/time"] = (
                        time.time()
                    )  # wall clock, for start-up and overhead figures
                    log.log(record, step)
                    last_metrics.update(record)
                    running, running_count, step_start = {}, 0, now

                if step % config.validation.val_every == 0 or step == schedule.max_steps:
                    metrics: dict[str, float] = {}
                    picture = None
                    if hooks.is_main:
                        if config.validation.save_pictures:
                            picture = out_dir / "pictures" / f"val_{step:08d}.png"
                        metrics = validate(
                            plain_model, val_loader, config, device, autocast(), picture
                        )
                        log.log(metrics, step, picture)
                        last_metrics.update(metrics)
                    checkpoint = None
                    due = step - last_ckpt_step >= config.training.checkpointing.checkpoint_every
                    if hooks.is_main and (due or step == schedule.max_steps):
                        checkpoint = save_checkpoint(
                            ckpt_dir / checkpoint_name(step),
                            plain_model,
                            optimizer,
                            scheduler,
                            step,
                        )
                        prune_checkpoints(ckpt_dir, config.training.checkpointing.keep_last)
                        last_ckpt_step = step
                    hooks.report(
                        {**last_metrics, "step": step, "epoch": epoch} if hooks.is_main else {},
                        checkpoint,
                    )
                if step >= schedule.max_steps:
                    break
    finally:
        log.close()
    wall = time.perf_counter() - start
    return TrainResult(
        steps_run=step - resumed_from,
        final_step=step,
        wall_s=wall,
        gpu_s=wall if device.type == "cuda" else 0.0,
        last_metrics=last_metrics,
        resumed_from_step=resumed_from,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainables.gslrm.train",
        description="Train GS-LRM without Ray. Resumes from OUT/checkpoints when it holds a checkpoint.",
    )
    parser.add_argument("--config", required=True, help="trainer YAML, e.g. configs/smoke.yaml")
    parser.add_argument(
        "--out", required=True, help="run folder (checkpoints, metrics.jsonl, pictures)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. training.losses.ssim_loss_weight=0.5",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        config = load_config(args.config, args.set)
        result = train(config, args.out)
    except (ConfigError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:  # DataError, CheckpointError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "final_step": result.final_step,
                "wall_s": round(result.wall_s, 1),
                **{k: v for k, v in result.last_metrics.items() if k.startswith("val/")},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
