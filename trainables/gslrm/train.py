"""The GS-LRM training loop, readable top to bottom, with no Ray in it.

    python -m trainables.gslrm.train --config configs/smoke.yaml --out runs/smoke [--set key=value ...]

`train(config, out_dir, hooks)` is the loop; its body fits one screen, in execution order:
build the `TrainState` (model, AdamW with weight decay on matrices only, linear warmup +
cosine decay, grad scaler), resume it, open the data, then per batch `train_step` (forward,
losses, finite check, backward, clip, optimizer step), a log record every `log_every` steps
and a `validation_round` every `validation.val_every` steps (metrics, a picture, a checkpoint
when one is due). W&B logs offline unless asked otherwise, beside a local `metrics.jsonl`.

A caller such as the Ray Train adapter drives it through `Hooks` (see its docstring for who
calls what, when). Checkpoints are written at validation rounds, atomically, and the newest
one in `out_dir/checkpoints` is resumed automatically. Rank 0 keeps the run's journal
(`out_dir/journal.jsonl`, see `trainables.journal`): attempt_started, validated,
checkpointed, then trained, diverged or attempt_failed; pruning spares the checkpoint whose
step the journal rates best.

No per-step host sync beyond one: the loss terms are summed on the device and read at log
steps, and the finite check reads one flag per step (all-reduced first under DDP, so every
rank stops at the same step). A non-finite loss stops the run with `TrainingDiverged`
("diverged at step N") before the optimizer applies it.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from trainables.gslrm.atomic import remove_stale_temps
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
from trainables.gslrm.data.dataset import (
    MultiViewDataset,
    rig_order_config,
    validation_list_file,
)
from trainables.gslrm.evaluate import checkpoint_steps
from trainables.gslrm.losses import check_perceptual_available, compute_losses
from trainables.gslrm.metrics import compute_metrics, mask_iou, per_view_psnr
from trainables.gslrm.model import GSLRM
from trainables.gslrm.render import render
from trainables.gslrm.types import Cameras
from trainables.gslrm.version import code_version
from trainables.gslrm.visualize import save_validation_grid
from trainables.journal import TrialJournal, append_event, append_line


class TrainingDiverged(RuntimeError):
    """The loss became non-finite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"diverged at step {step}: non-finite loss (train/loss={loss})")
        self.step = step


def _identity(x: Any) -> Any:
    return x


def _no_report(metrics: dict[str, float], checkpoint: Path | None) -> None:
    return None


@dataclass
class Hooks:
    """How a caller (e.g. the Ray Train adapter) plugs into the loop; the defaults run it alone.

    Every rank of a data-parallel run calls `train` with its own Hooks (same config):

    - `device`: where this rank trains; None picks CUDA when present, else CPU.
    - `rank`, `world_size`: this rank and the number of ranks. Rank 0 (`is_main`) alone
      validates, logs, writes pictures and checkpoints; every rank trains.
    - `wrap_model(model)`: called once on every rank, after the weights were restored and
      before the first step (e.g. DDP). The loop unwraps `.module` for validation and
      checkpoints, so the wrapper must keep the plain model there.
    - `wrap_loader(loader)`: called once on every rank on the training DataLoader before the
      first step (e.g. distributed sampling); its sampler's `set_epoch` is called at each
      epoch start when it has one.
    - `report(metrics, checkpoint)`: called on every rank at the end of each validation round,
      in step order. Rank 0 gets the latest log record and validation metrics plus "step" and
      "epoch", and the checkpoint file written in this round (None when none was due); other
      ranks get ({}, None). Guaranteed: the checkpoint file is complete when report is
      called, and it may be pruned at a later round (copy or link it to keep it). An
      exception raised here ends the run (the loop does not catch it).
    - `resume_checkpoint`: a checkpoint to resume from instead of the newest file in
      out_dir/checkpoints (e.g. the one Ray Train restored after a worker failure).
    - `wandb_run_name`: the W&B run name and id (main rank only).
    - `wandb_group`, `wandb_tags`, `wandb_job_type`: W&B's grouping of runs (e.g. a study's
      name, its searched values, "trial"); empty: none.
    - `run_info`: what the caller records about the run in each `attempt_started` journal event
      (e.g. the trial id, study and W&B grouping, for a driver that rebuilds a killed W&B run).
    """

    device: torch.device | None = None
    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = _identity
    wrap_loader: Callable[[DataLoader], DataLoader] = _identity
    report: Callable[[dict[str, float], Path | None], None] = _no_report
    resume_checkpoint: Path | None = None
    wandb_run_name: str = ""
    wandb_group: str = ""
    wandb_tags: tuple[str, ...] = ()
    wandb_job_type: str = ""
    run_info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    """steps_this_call: optimizer steps this call ran (final_step - resumed_from_step);
    final_step: the trainer's step at the end; wall_s: wall-clock seconds of the loop;
    gpu_s: GPU time spanned by the training steps (CUDA events around each step, so data
    loading, validation and host-side gaps between steps are left out); 0.0 on CPU."""

    steps_this_call: int
    final_step: int
    wall_s: float
    gpu_s: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int = 0


def lr_factor(step: int, warmup: int, max_steps: int) -> float:
    """Linear warmup from 0, then cosine decay to 0, in optimizer steps."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(
    model: torch.nn.Module, config: TrainerConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings (dim >= 2) only, as FaceLift."""
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


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward_render(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    config: TrainerConfig,
    autocast: contextlib.AbstractContextManager,
) -> tuple[Tensor, Tensor]:
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


def image_diagnostics(
    rgb: Tensor, batch: dict[str, Tensor], mask_iou_threshold: float
) -> dict[str, Tensor]:
    """train/psnr and train/mask_iou with val/psnr's and val/mask_iou's definitions.

    rgb: [B, V, 3, H, W]. psnr: mean over views of whole-image PSNR (whatever the masked
    losses); mask_iou: metrics.mask_iou against the batch's own background at the study's
    `validation.mask_iou_threshold`. 0-dim tensors, detached, no host sync.
    """
    with torch.no_grad():
        render_ = rgb.detach().float().clamp(0.0, 1.0)
        return {
            "psnr": per_view_psnr(render_, batch["target_images"].float()).mean(),
            "mask_iou": mask_iou(
                render_, batch["target_alpha"], batch["background"], mask_iou_threshold
            ),
        }


# ---------------------------------------------------------------------------------------
# the state and one step


@dataclass
class TrainState:
    """What one optimizer step changes, plus what it needs to run.

    model: the (possibly DDP-wrapped) model; `plain_model` is the module inside.
    autocast: a fresh autocast context per call (bf16/fp16 on CUDA when enabled, else none).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    config: TrainerConfig
    autocast: Callable[[], contextlib.AbstractContextManager]
    step: int = 0
    world_size: int = 1

    @property
    def plain_model(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and torch.distributed.is_initialized()


def build_state(config: TrainerConfig, device: torch.device, world_size: int = 1) -> TrainState:
    """Fresh model (seeded by training.runtime.seed, the same on every rank), optimizer,
    scheduler and scaler on `device`."""
    runtime, schedule = config.training.runtime, config.training.schedule
    torch.manual_seed(runtime.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.use_tf32
        torch.backends.cudnn.allow_tf32 = runtime.use_tf32
    model = GSLRM(config.model, runtime.grad_checkpoint_every).to(device)
    optimizer = make_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, schedule.warmup, schedule.max_steps)
    )
    use_amp = device.type == "cuda" and runtime.use_amp
    amp_dtype = torch.bfloat16 if runtime.amp_dtype == "bf16" else torch.float16

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()

    # fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a no-op).
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return TrainState(model, optimizer, scheduler, scaler, config, autocast, 0, world_size)


def restore(state: TrainState, own: Path | None) -> int:
    """Load our own run's checkpoint `own` (everything), else the pretrained resume_ckpt
    (weights; optimizer, schedule and step too unless reset_training_state). Returns the step."""
    checkpointing = state.config.training.checkpointing
    if own is not None:
        report, data = load_weights(state.model, own)
        state.optimizer.load_state_dict(data["optimizer"])
        state.scheduler.load_state_dict(data["lr_scheduler"])
        state.step = report.step
        if "rng" in data:
            torch.set_rng_state(data["rng"]["torch"])
        print(f"[train] resumed from {own} at step {state.step}", flush=True)
    elif checkpointing.resume_ckpt:
        report, data = load_weights(state.model, checkpointing.resume_ckpt)
        print(f"[train] {report}", flush=True)
        if not checkpointing.reset_training_state and "optimizer" in data:
            state.optimizer.load_state_dict(data["optimizer"])
            state.scheduler.load_state_dict(data["lr_scheduler"])
            state.step = report.step
    return state.step


def _mean_over_ranks(count: Tensor) -> Tensor:
    total = count.clone()
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total / torch.distributed.get_world_size()


def train_step(state: TrainState, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """One optimizer step on `batch` (already on the device); returns the detached terms.

    Order: forward + render under autocast, losses (pixel counts averaged over ranks under
    DDP), backward, finite check (one host read; every rank agrees through an all-reduce, so
    all stop together), unscale + clip, optimizer step (the scaler skips it on fp16
    overflow), scheduler step. Terms: loss, l2_loss, ssim_loss, background_loss, alpha_loss, psnr,
    mask_iou, grad_norm, all 0-dim device tensors.
    """
    config, runtime = state.config, state.config.training.runtime
    rgb, alpha = forward_render(state.model, batch, config, state.autocast())
    terms = compute_losses(
        rgb,
        batch["target_images"],
        batch["target_alpha"],
        config.training.losses,
        _mean_over_ranks if state.distributed else _identity,
        render_alpha=alpha,
    )
    loss = terms["loss"]
    if state.step + 1 == runtime.inject_nan_loss_at_step:
        loss = loss * float("nan")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    # Checked after backward is queued, so the one host read waits for work already
    # launched instead of stalling the GPU before the backward pass.
    finite = torch.isfinite(loss.detach()).float()
    if state.distributed:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if finite.item() == 0:
        raise TrainingDiverged(state.step + 1, float(loss.detach()))
    state.scaler.unscale_(state.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), runtime.grad_clip_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.step += 1
    out = {key: value.detach() for key, value in terms.items()}
    out.update(image_diagnostics(rgb, batch, config.validation.mask_iou_threshold))
    out["grad_norm"] = grad_norm.detach()
    return out


class LogWindow:
    """Running sums of the step terms on the device, read once per log step.

    On CUDA each step is bracketed by events, so `gpu_s` adds up the GPU time the steps span
    without a per-step sync (read when the window is flushed, after the terms' sync).
    """

    def __init__(self, device: torch.device, distributed: bool):
        self.device, self.distributed = device, distributed
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.last_grad_norm: Tensor | None = None
        self.events: list[tuple[Any, Any]] = []
        self.gpu_s = 0.0
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        if self.device.type != "cuda":
            yield
            return
        begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        begin.record()
        yield
        end.record()
        self.events.append((begin, end))

    def add(self, terms: dict[str, Tensor]) -> None:
        for key, value in terms.items():
            if key == "grad_norm":
                self.last_grad_norm = value
            else:
                self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def flush(self, state: TrainState, epoch: int) -> dict[str, float]:
        """The window's record (means of train/* terms, metrics/*); starts a new window.

        Under DDP the means are averaged over ranks (a collective: every rank calls flush at
        the same steps), so train/loss is the global batch's loss as one worker computes it.
        """
        keys = sorted(self.sums)
        packed = torch.stack([self.sums[k].float() for k in keys]) / max(1, self.count)
        if self.distributed:
            torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.SUM)
            packed /= torch.distributed.get_world_size()
        values = packed.tolist()  # the window's one host sync
        for begin, end in self.events:
            self.gpu_s += begin.elapsed_time(end) / 1000.0
        now = time.perf_counter()
        record: dict[str, float] = {f"train/{k}": v for k, v in zip(keys, values, strict=True)}
        record.update(
            {
                "metrics/lr": state.scheduler.get_last_lr()[0],
                "metrics/grad_norm": float(self.last_grad_norm)
                if self.last_grad_norm is not None
                else math.nan,
                "metrics/iter_time": (now - self.started) / max(1, self.count),
                "metrics/param_update_step": state.step,
                "metrics/epoch": epoch,
                "metrics/time": time.time(),  # wall clock, for start-up and overhead figures
            }
        )
        self.sums, self.count, self.events, self.started = {}, 0, [], now
        return record


# ---------------------------------------------------------------------------------------
# data and validation


@dataclass
class RunData:
    train_set: MultiViewDataset
    train_loader: DataLoader
    generator: torch.Generator
    val_loader: DataLoader | None  # main rank only

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)


def distributed_sampler(
    dataset: MultiViewDataset, config: TrainerConfig, hooks: Hooks
) -> DistributedSampler | None:
    """Under data parallelism (world_size > 1), this rank's share of each epoch, in an order
    set by training.runtime.seed and the epoch (`batches` calls set_epoch); None for one rank.

    Ours, not Ray's: Ray's prepare_data_loader installs a DistributedSampler seeded 0 when the
    loader has none, so every seed replicate saw the same data order; it keeps one it finds.
    """
    if hooks.world_size <= 1:
        return None
    return DistributedSampler(
        dataset,
        num_replicas=hooks.world_size,
        rank=hooks.rank,
        shuffle=config.training.dataloader.shuffle,
        seed=config.training.runtime.seed,
    )


def open_data(config: TrainerConfig, device: torch.device, hooks: Hooks) -> RunData:
    """Training loader (wrapped by hooks.wrap_loader) and, on the main rank, validation."""
    dl = config.training.dataloader
    train_set = MultiViewDataset(config.training.dataset.dataset_path, config)
    generator = torch.Generator()
    sampler = distributed_sampler(train_set, config, hooks)
    train_loader = hooks.wrap_loader(
        DataLoader(
            train_set,
            batch_size=dl.batch_size_per_gpu,
            shuffle=dl.shuffle if sampler is None else False,  # a sampler does its own
            sampler=sampler,
            drop_last=len(train_set) >= dl.batch_size_per_gpu,
            num_workers=dl.num_workers,
            generator=generator,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
        )
    )
    val_loader = None
    if hooks.is_main:
        # rig order whatever the training order: the same task as the held-out test
        val_set = MultiViewDataset(
            validation_list_file(config),
            rig_order_config(config),
            max_items=config.validation.max_items,
        )
        val_loader = DataLoader(
            val_set,
            batch_size=dl.batch_size_per_gpu,
            shuffle=False,
            num_workers=min(dl.num_workers, 1),
        )
    if len(train_loader) == 0:
        raise ConfigError("training.dataloader.batch_size_per_gpu: larger than the training set")
    return RunData(train_set, train_loader, generator, val_loader)


def batches(data: RunData, start_step: int, seed: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """(epoch, batch) from `start_step` on, forever. Each epoch's order depends on seed + epoch
    only, and a resumed run skips the batches its epoch already consumed, so it sees the same
    data as an uninterrupted one."""
    step = start_step
    while True:
        epoch, skip = divmod(step, data.steps_per_epoch)
        data.train_set.set_epoch(epoch)
        data.generator.manual_seed(seed + epoch)
        sampler = getattr(data.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in itertools.islice(data.train_loader, skip, None):
            yield epoch, batch
            step += 1


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
            # psnr_fg is NaN for items without foreground: skip it, don't count it as 0
            if math.isfinite(value):
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
        if index == 0 and picture_path is not None:
            save_validation_grid(
                picture_path,
                batch["target_images"][0],
                rgb[0].float(),
                batch["target_alpha"][0],
                background=batch["background"][0],
                mask_threshold=config.validation.mask_iou_threshold,
            )
    model.train(was_training)
    return {f"val/{k}": sums[k] / counts[k] for k in sums}


def validation_round(
    state: TrainState,
    val_loader: DataLoader,
    device: torch.device,
    out_dir: Path,
    checkpoint_due: bool,
    gpu_s: float = 0.0,
) -> tuple[dict[str, float], Path | None, Path | None]:
    """Main rank only: validation metrics, the picture (when configured) and the checkpoint
    (when due, then older ones pruned, sparing the best). Each goes to the journal
    (`validated` with this attempt's GPU seconds so far `gpu_s`, `checkpointed`).
    Returns (metrics, picture, checkpoint)."""
    config = state.config
    picture = None
    if config.validation.save_pictures:
        picture = out_dir / "pictures" / f"val_{state.step:08d}.png"
    metrics = validate(state.plain_model, val_loader, config, device, state.autocast(), picture)
    append_event(out_dir, "validated", step=state.step, metrics=metrics, gpu_s=gpu_s)
    checkpoint = None
    if checkpoint_due:
        ckpt_dir = out_dir / "checkpoints"
        checkpoint = save_checkpoint(
            ckpt_dir / checkpoint_name(state.step),
            state.plain_model,
            state.optimizer,
            state.scheduler,
            state.step,
        )
        relative = str(checkpoint.relative_to(out_dir))  # the run folder may move
        append_event(out_dir, "checkpointed", step=state.step, path=relative)
        best = best_checkpoint(ckpt_dir, TrialJournal.read(out_dir), config)
        # None: no kept checkpoint has an objective value (e.g. val/lpips is never logged)
        protect = [best] if best is not None else []
        prune_checkpoints(ckpt_dir, config.training.checkpointing.keep_last, protect=protect)
    return metrics, picture, checkpoint


def best_checkpoint(ckpt_dir: Path, journal: TrialJournal, config: TrainerConfig) -> Path | None:
    """The kept checkpoint whose validated step has the best evaluation.objective in the
    journal, or None when none has a finite value (the objective is never logged): pruning
    spares it, so the `best` evaluation rule finds the best checkpointed step, not just the
    best of the newest few."""
    files = checkpoint_steps(ckpt_dir)
    objective, mode = config.evaluation.objective, config.evaluation.objective_mode
    step = journal.best_step(objective, mode, among=files)
    return files[step] if step is not None else None


# W&B summary per metric name (W&B globs only a trailing "*"): quality metrics keep their
# max, the total training loss its min.
WANDB_SUMMARIES = (
    ("val/psnr*", "max"),
    ("val/mask_iou", "max"),
    ("train/psnr*", "max"),
    ("train/mask_iou", "max"),
    ("train/loss", "min"),
)


class MetricsLog:
    """metrics.jsonl beside the run, and W&B on the main rank when enabled."""

    def __init__(self, out_dir: Path, config: TrainerConfig, hooks: Hooks):
        run_name, enabled = hooks.wandb_run_name, hooks.is_main
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
                group=hooks.wandb_group or None,
                tags=list(hooks.wandb_tags) or None,
                job_type=hooks.wandb_job_type or None,
                settings=wandb.Settings(silent=True, console="off"),
            )
            # Run summaries keep each metric's best, not its last value (a run's table row).
            for pattern, best in WANDB_SUMMARIES:
                self.wandb_run.define_metric(pattern, summary=best)

    def log(self, record: dict[str, Any], step: int, picture: Path | None = None) -> None:
        if not self.enabled:
            return
        # newline-guarded: a line torn by a killed writer is not merged with this record
        append_line(self.path, {"step": step, **record})
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


def check_can_start(config: TrainerConfig) -> None:
    """Refuse, before any work, what cannot run: no dataset, a perceptual loss."""
    if not config.training.dataset.dataset_path:
        raise ConfigError(
            "training.dataset.dataset_path: empty; generate data with "
            "`python -m trainables.gslrm.data.synthetic --out DIR` and point it at DIR/data_train.txt"
        )
    losses = config.training.losses
    check_perceptual_available(losses.perceptual_loss_weight, losses.lpips_loss_weight)


# ---------------------------------------------------------------------------------------
# the loop


def train(config: TrainerConfig, out_dir: str | Path, hooks: Hooks | None = None) -> TrainResult:
    """Train (or resume) the run in `out_dir`; see the module docstring and `Hooks`."""
    hooks, out_dir = hooks or Hooks(), Path(out_dir)
    check_can_start(config)
    device = resolve_device(hooks)
    schedule, runtime = config.training.schedule, config.training.runtime
    ckpt_dir = out_dir / "checkpoints"

    state = build_state(config, device, hooks.world_size)
    resumed_from = restore(state, hooks.resume_checkpoint or latest_checkpoint(ckpt_dir))
    torch.manual_seed(runtime.seed + hooks.rank + state.step)  # per-rank, per-resume randomness
    data = open_data(config, device, hooks)
    if hooks.is_main:  # only once the data opened: a failing re-run leaves a finished run as it was
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
        remove_stale_temps(ckpt_dir)  # what a save killed mid-write left behind
    state.model = hooks.wrap_model(state.model)
    state.model.train()

    start = time.perf_counter()
    if hooks.is_main:  # before W&B starts: a driver rebuilding a killed run's W&B needs `info`
        append_event(
            out_dir,
            "attempt_started",
            world_size=hooks.world_size,
            resumed_from_step=resumed_from,
            seed=runtime.seed,
            code_version=code_version(),
            info=dict(hooks.run_info),
        )
    log = MetricsLog(out_dir, config, hooks)
    window = LogWindow(device, state.distributed)
    last_metrics: dict[str, float] = {}
    last_ckpt_step = state.step
    try:
        remaining = max(0, schedule.max_steps - state.step)
        for epoch, batch in itertools.islice(batches(data, state.step, runtime.seed), remaining):
            with window.timed():
                terms = train_step(state, to_device(batch, device))
            window.add(terms)
            step, last = state.step, state.step == schedule.max_steps
            if step % config.training.logging.wandb.log_every == 0 or last:
                record = window.flush(state, epoch)
                log.log(record, step)
                last_metrics.update(record)
            if step % config.validation.val_every == 0 or last:
                metrics, checkpoint = {}, None
                if hooks.is_main:
                    due = step - last_ckpt_step >= config.training.checkpointing.checkpoint_every
                    metrics, picture, checkpoint = validation_round(
                        state, data.val_loader, device, out_dir, due or last, window.gpu_s
                    )
                    log.log(metrics, step, picture)
                    last_metrics.update(metrics)
                    last_ckpt_step = step if checkpoint else last_ckpt_step
                summary = {**last_metrics, "step": step, "epoch": epoch} if hooks.is_main else {}
                hooks.report(summary, checkpoint)
    except TrainingDiverged as exc:
        if hooks.is_main:
            append_event(out_dir, "diverged", step=exc.step, error=str(exc))
        raise
    except Exception as exc:
        if hooks.is_main:
            append_event(out_dir, "attempt_failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        log.close()
    result = TrainResult(
        steps_this_call=state.step - resumed_from,
        final_step=state.step,
        wall_s=time.perf_counter() - start,
        gpu_s=window.gpu_s,
        last_metrics=last_metrics,
        resumed_from_step=resumed_from,
    )
    if hooks.is_main:
        append_event(
            out_dir,
            "trained",
            final_step=result.final_step,
            steps_this_call=result.steps_this_call,
            wall_s=result.wall_s,
            gpu_s=result.gpu_s,
        )
    return result


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
    except (ValueError, RuntimeError) as exc:  # ConfigError, DataError, CheckpointError, diverged
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
