"""The plain training loop: it learns, resumes exactly, stops on divergence, runs from its CLI."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from trainables.gslrm.checkpoint import read_checkpoint
from trainables.gslrm.config import load_config
from trainables.gslrm.data.dataset import MultiViewDataset
from trainables.gslrm.data.synthetic import generate_dataset
from trainables.gslrm.model import GSLRM
from trainables.gslrm.train import Hooks, TrainingDiverged, lr_factor, train, validate
from trainables.journal import TrialJournal

REPO = Path(__file__).resolve().parent.parent
# Tests that compare runs exactly pin the device and the renderer: on a GPU machine the loop
# would pick CUDA and gsplat, whose atomic-add backward is not bitwise reproducible.
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return generate_dataset(
        tmp_path_factory.mktemp("data"), samples=12, size=64, rig="mouse6", seed=5
    )


def smoke(data: dict, *overrides: str):
    return load_config(
        REPO / "configs/smoke.yaml",
        [
            f"training.dataset.dataset_path={data['train_list']}",
            f"validation.dataset_path={data['val_list']}",
            "training.logging.wandb.mode=disabled",
            "model.renderer.backend=torch",
            *overrides,
        ],
    )


def tiny(data: dict, *overrides: str):
    """32 px, 4 steps: for behaviour, not learning."""
    return smoke(
        data,
        "model.image_tokenizer.image_size=32",
        "training.schedule.max_steps=4",
        "training.schedule.warmup=1",
        "validation.val_every=2",
        "training.checkpointing.checkpoint_every=2",
        "training.logging.wandb.log_every=1",
        "validation.max_items=2",
        *overrides,
    )


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 10, 110) == 0.0
    assert lr_factor(5, 10, 110) == 0.5
    assert lr_factor(10, 10, 110) == 1.0
    assert lr_factor(60, 10, 110) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110) == pytest.approx(0.0)


def test_smoke_config_learns_foreground(tmp_path, data):
    """Masked losses on: validation foreground PSNR rises >= 3 dB over the untrained model.
    100 of the smoke config's 300 steps: the rise is there by step 50 (12.1 -> 17.5 dB here)."""
    config = smoke(
        data,
        "training.losses.masked_l2_loss=true",
        "validation.max_items=4",
        "training.schedule.max_steps=100",
    )
    assert config.training.losses.masked_l2_loss
    torch.manual_seed(config.training.runtime.seed)  # the same initial weights train() starts from
    untrained = GSLRM(config.model)
    val = DataLoader(MultiViewDataset(data["val_list"], config, max_items=4), batch_size=2)
    before = validate(untrained, val, config, torch.device("cpu"), contextlib.nullcontext(), None)
    result = train(config, tmp_path / "run")
    after = result.last_metrics
    print(
        f"val/psnr_fg {before['val/psnr_fg']:.2f} -> {after['val/psnr_fg']:.2f} dB in "
        f"{result.final_step} steps, {result.wall_s:.0f} s"
    )
    assert after["val/psnr_fg"] >= before["val/psnr_fg"] + 3.0
    assert (tmp_path / "run" / "pictures" / f"val_{result.final_step:08d}.png").is_file()


class Crash(Exception):
    pass


def test_resume_across_an_epoch_boundary_gives_the_same_losses(tmp_path, data):
    """Crash at step 4 (mid epoch 0), resume: the remaining steps cross into epoch 1 and must see
    the same batches, weights and losses as the uninterrupted run. A temp file a killed
    checkpoint save left behind is removed when the run starts again."""
    steps_per_epoch = len(MultiViewDataset(data["train_list"], tiny(data))) // 2
    assert steps_per_epoch > 4, steps_per_epoch  # step 4 is mid epoch 0
    last = steps_per_epoch + 1  # the first step of epoch 1
    config = tiny(data, f"training.schedule.max_steps={last}")
    train(config, tmp_path / "straight", Hooks(device=CPU))

    def crash_at_step_4(metrics, checkpoint):
        if metrics["step"] == 4:
            assert checkpoint is not None and checkpoint.is_file()
            raise Crash

    with pytest.raises(Crash):
        train(config, tmp_path / "interrupted", Hooks(device=CPU, report=crash_at_step_4))
    stale = tmp_path / "interrupted" / "checkpoints" / ".ckpt_0000000000000006.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    result = train(config, tmp_path / "interrupted", Hooks(device=CPU))
    assert result.resumed_from_step == 4 and result.final_step == last
    assert result.steps_this_call == last - 4
    assert not stale.exists()

    def losses(run: str) -> dict[int, float]:
        return {r["step"]: r["train/loss"] for r in read_log(tmp_path / run) if "train/loss" in r}

    straight, resumed = losses("straight"), losses("interrupted")
    for step in range(5, last + 1):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-9), step
    epochs = {
        r["step"]: r["metrics/epoch"]
        for r in read_log(tmp_path / "interrupted")
        if "metrics/epoch" in r
    }
    assert epochs[last - 1] == 0 and epochs[last] == 1


def test_run_folder_keeps_only_the_newest_checkpoints(tmp_path, data):
    reported = []
    config = tiny(
        data,
        "validation.val_every=1",
        "training.checkpointing.checkpoint_every=1",
        "training.checkpointing.keep_last=2",
    )
    train(
        config,
        tmp_path / "run",
        Hooks(report=lambda metrics, checkpoint: reported.append(checkpoint.name)),
    )
    assert reported == [f"ckpt_{step:016d}.pt" for step in (1, 2, 3, 4)]  # every one was handed on
    # the newest two, plus the best by the objective (pruning spares it, wherever it is)
    best = TrialJournal.read(tmp_path / "run").best_step(config.evaluation.objective)
    kept = sorted({*reported[-2:], f"ckpt_{best:016d}.pt"})
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == kept
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / reported[-1])["fwdbwd_pass_step"] == 4


def test_non_finite_loss_stops_with_diverged_error(tmp_path, data):
    with pytest.raises(TrainingDiverged, match="diverged at step 3") as info:
        train(tiny(data, "training.runtime.inject_nan_loss_at_step=3"), tmp_path / "run")
    assert info.value.step == 3


def test_cli_trains_logs_checkpoints_and_resumes(tmp_path, data):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "trainables.gslrm.train",
        "--config",
        str(REPO / "configs/smoke.yaml"),
        "--out",
        str(out),
        "--set",
        f"training.dataset.dataset_path={data['train_list']}",
        "--set",
        "model.image_tokenizer.image_size=32",
        "--set",
        "training.schedule.max_steps=2",
        "--set",
        "validation.val_every=2",
        "--set",
        "validation.max_items=2",
        "--set",
        "training.checkpointing.checkpoint_every=2",
        "--set",
        "training.logging.wandb.mode=offline",
        "--set",
        "training.logging.wandb.log_every=1",
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    first = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["final_step"] == 2 and "val/psnr_fg" in summary
    assert (out / "checkpoints" / "ckpt_0000000000000002.pt").is_file()
    keys = set().union(*read_log(out))
    assert {
        "train/loss",
        "train/l2_loss",
        "train/ssim_loss",
        "train/background_loss",
        "train/alpha_loss",
        "train/mask_iou",
        "val/psnr",
        "val/psnr_fg",
        "val/ssim",
        "val/mask_iou",
    } <= keys
    assert "val/lpips" not in keys  # no local LPIPS weights: left out, never faked
    assert list((out / "wandb_logs" / "wandb").glob("offline-run-*")), "no W&B offline run"

    again = subprocess.run(
        args[:-4]
        + [
            "--set",
            "training.schedule.max_steps=4",
            "--set",
            "training.logging.wandb.mode=disabled",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stdout and "at step 2" in again.stdout
