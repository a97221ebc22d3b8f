"""The loop's parts on a hand-built batch (no dataset, CPU, torch renderer): weight-decay groups,
gradient clipping, the finite check before the update, restoring a pretrained checkpoint with
and without its training state, and the running sums of a log window."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables.gslrm.checkpoint import save_checkpoint
from trainables.gslrm.config import apply_overrides, config_from_dict
from trainables.gslrm.rig import look_at_c2w, orbit_center
from trainables.gslrm.train import (
    LogWindow,
    TrainingDiverged,
    build_state,
    make_optimizer,
    restore,
    train_step,
)

CPU = torch.device("cpu")
SIZE = 16


def tiny_config(**overrides):
    config = config_from_dict(
        {
            "model": {
                "image_tokenizer": {"image_size": SIZE, "patch_size": 8},
                "transformer": {"d": 32, "d_head": 16, "n_layer": 2},
                "gaussians": {"n_gaussians": 2, "downsample": 1},
                "renderer": {"backend": "torch"},
            },
            "training": {
                "dataset": {"num_views": 3, "num_input_views": 2},
                "schedule": {"max_steps": 10, "warmup": 2},
            },
        }
    )
    return apply_overrides(config, overrides)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """One item: 2 input views and 1 target view of a rig around the origin, random images, the
    target's foreground a centre square."""
    g = torch.Generator().manual_seed(seed)
    c2w = torch.stack(
        [
            torch.from_numpy(look_at_c2w(orbit_center(2.5, az, 20.0))).float()
            for az in (0.0, 70.0, 150.0)
        ]
    )
    intrinsics = torch.tensor([20.0, 20.0, SIZE / 2, SIZE / 2]).expand(3, 4)
    alpha = torch.zeros(1, 1, 1, SIZE, SIZE)
    alpha[..., 4:12, 4:12] = 1.0
    return {
        "input_images": torch.rand(1, 2, 3, SIZE, SIZE, generator=g),
        "input_c2w": c2w[None, :2],
        "input_intrinsics": intrinsics[None, :2].clone(),
        "target_images": torch.rand(1, 1, 3, SIZE, SIZE, generator=g),
        "target_alpha": alpha,
        "target_c2w": c2w[None, 2:],
        "target_intrinsics": intrinsics[None, 2:].clone(),
        "background": torch.ones(1, 3),
    }


def test_weight_decay_only_on_matrices() -> None:
    state = build_state(tiny_config(**{"training.optimizer.weight_decay": 0.05}), CPU)
    decay, no_decay = make_optimizer(state.model, state.config, CPU).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.dim() < 2 for p in no_decay["params"])  # biases, norms
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(state.model.parameters()))


def grad_norm(model: torch.nn.Module) -> float:
    return torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    ).item()


def test_gradients_are_clipped_to_the_configured_norm() -> None:
    loose = build_state(tiny_config(**{"training.runtime.grad_clip_norm": 1e6}), CPU)
    unclipped = train_step(loose, batch())["grad_norm"].item()
    tight = build_state(tiny_config(**{"training.runtime.grad_clip_norm": unclipped / 10}), CPU)
    terms = train_step(tight, batch())
    assert terms["grad_norm"].item() == pytest.approx(unclipped, rel=1e-5)  # the norm before
    assert grad_norm(tight.model) == pytest.approx(unclipped / 10, rel=1e-4)  # the norm applied
    assert grad_norm(loose.model) == pytest.approx(unclipped, rel=1e-5)
    assert tight.step == 1 and loose.step == 1


def test_a_non_finite_loss_stops_before_the_update() -> None:
    state = build_state(tiny_config(**{"training.runtime.inject_nan_loss_at_step": 2}), CPU)
    train_step(state, batch(0))
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="diverged at step 2") as info:
        train_step(state, batch(1))
    assert info.value.step == 2 and state.step == 1
    after = state.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the NaN step changed nothing


def pretrained(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint after 3 steps of another run (other seed), with optimizer state."""
    source = build_state(tiny_config(**{"training.runtime.seed": 7}), CPU)
    for seed in range(3):
        train_step(source, batch(seed))
    path = save_checkpoint(
        tmp_path / "ckpt_0000000000000003.pt",
        source.model,
        source.optimizer,
        source.scheduler,
        source.step,
    )
    return path, {k: v.clone() for k, v in source.model.state_dict().items()}


@pytest.mark.parametrize("reset", [True, False])
def test_resume_ckpt_with_and_without_its_training_state(tmp_path: Path, reset: bool) -> None:
    path, weights = pretrained(tmp_path)
    config = tiny_config(
        **{
            "training.checkpointing.resume_ckpt": str(path),
            "training.checkpointing.reset_training_state": reset,
        }
    )
    state = build_state(config, CPU)
    assert restore(state, None) == (0 if reset else 3)
    loaded = state.model.state_dict()
    assert all(torch.equal(weights[k], loaded[k]) for k in weights)  # weights load either way
    adam_state = state.optimizer.state
    if reset:
        assert not adam_state and state.scheduler.last_epoch == 0
    else:
        assert all(s["step"].item() == 3 for s in adam_state.values())
        assert state.scheduler.last_epoch == 3


def test_own_checkpoint_wins_over_resume_ckpt(tmp_path: Path) -> None:
    path, _ = pretrained(tmp_path)
    own_state = build_state(tiny_config(), CPU)
    train_step(own_state, batch(0))
    own = save_checkpoint(
        tmp_path / "own" / "ckpt_0000000000000001.pt",
        own_state.model,
        own_state.optimizer,
        own_state.scheduler,
        1,
    )
    state = build_state(tiny_config(**{"training.checkpointing.resume_ckpt": str(path)}), CPU)
    assert restore(state, own) == 1


def test_log_window_means_over_its_steps_and_starts_again() -> None:
    state = build_state(tiny_config(), CPU)
    window = LogWindow(CPU, distributed=False)
    for loss in (1.0, 2.0, 6.0):
        window.add({"loss": torch.tensor(loss), "grad_norm": torch.tensor(loss * 10)})
    record = window.flush(state, epoch=0)
    assert record["train/loss"] == pytest.approx(3.0)
    assert record["metrics/grad_norm"] == pytest.approx(60.0)  # the last step's, not a mean
    window.add({"loss": torch.tensor(5.0), "grad_norm": torch.tensor(1.0)})
    assert window.flush(state, epoch=0)["train/loss"] == pytest.approx(5.0)
    assert window.gpu_s == 0.0  # CPU: no GPU time is claimed


def test_alpha_loss_weight_reaches_the_step() -> None:
    """train_step logs the silhouette loss from the real render and adds weight x alpha_loss to
    the total: the same model and batch with weight 0 and 2 differ by exactly 2 x alpha_loss."""
    terms = {}
    for weight in (0.0, 2.0):
        state = build_state(tiny_config(**{"training.losses.alpha_loss_weight": weight}), CPU)
        terms[weight] = train_step(state, batch())
    assert 0 < terms[0.0]["alpha_loss"].item() <= 1
    assert terms[0.0]["alpha_loss"].item() == pytest.approx(terms[2.0]["alpha_loss"].item())
    assert terms[2.0]["loss"].item() == pytest.approx(
        terms[0.0]["loss"].item() + 2.0 * terms[0.0]["alpha_loss"].item(), rel=1e-5
    )
