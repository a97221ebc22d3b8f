"""The registry of named studies (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    """Synthetic data made once per (rig, size, samples, seed) when no dataset is given."""

    samples: int = 128
    size: int = 256
    rig: str = "mouse6"
    seed: int = 0
    test_samples: int = 64  # held-out test split every trial is evaluated on (data_test.txt)


@dataclass(frozen=True)
class SizePreset:
    """What a `--size` changes against the study's full (GPU) definition; plain data.

    smoke: minutes on a 2-core CPU, for CI and a first look (the model is still a blob).
    cpu: tens of minutes per trial on 2 cores; the model has learned silhouettes
    (configs/cpu.yaml, measured in docs/benchmarks.md "CPU study size").
    """

    base_config: str = "configs/smoke.yaml"
    num_samples: int = 4  # optuna studies only; a grid runs once
    overrides: dict[str, Any] = field(default_factory=dict)
    grid_seeds: tuple[int, ...] | None = None  # grid studies: fewer seeds
    grace_period_rounds: int = 1
    data: DataSpec = field(default_factory=lambda: DataSpec(samples=24, size=64, test_samples=16))


def cpu_preset(num_samples: int = 12, grace_period_rounds: int = 4) -> SizePreset:
    """--size cpu: 3,000 steps of the smoke model on 48 samples at 64 px (val mask IoU rises
    steeply to ~1,700 steps, 0.35 at 3,000); 24 held-out test items. ASHA's grace is in
    validation rounds (250 steps each): 4 rounds = 1,000 steps before a trial can be stopped."""
    return SizePreset(
        base_config="configs/cpu.yaml",
        num_samples=num_samples,
        grace_period_rounds=grace_period_rounds,
        data=DataSpec(samples=48, size=64, test_samples=24),
    )


SIZES = ("smoke", "cpu", "full")  # "full" is the study as defined below (GPU scale)


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    search: str  # "optuna" (TPE over `space`) or "grid" (every combination of `grid`)
    base_config: str = "configs/mouse_gslrm.yaml"
    space: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    linked: dict[str, str] = field(
        default_factory=dict
    )  # follower key -> key whose value it copies
    fixed: dict[str, Any] = field(default_factory=dict)  # applied to every trial
    objective: str = "val/psnr_fg"
    mode: str = "max"
    # Which checkpoint of every trial the held-out evaluation scores: "best" (by `objective` on
    # validation) or "last"; one rule for the whole study, recorded in study.json.
    checkpoint_rule: str = "best"
    num_samples: int = 1  # optuna: trials; grid: repeats of the whole grid
    sampler_seed: int = 0
    scheduler: str = "asha"  # asha | fifo
    grace_period_rounds: int = 2  # ASHA: validation rounds before a trial can be stopped
    max_concurrent: int = 1
    data: DataSpec = field(default_factory=DataSpec)
    smoke: SizePreset = field(default_factory=SizePreset)
    cpu: SizePreset = field(default_factory=cpu_preset)

    def preset(self, size: str) -> SizePreset | None:
        """The preset of a size name; None for "full" (the spec itself)."""
        if size not in SIZES:
            raise UnknownSizeError(
                f"unknown study size {size!r}; valid sizes: {', '.join(SIZES)} "
                "(python -m study.run --list shows what each changes)"
            )
        return None if size == "full" else getattr(self, size)


# The mask-IoU threshold is fixed per study (never searched); best-known losses come from the
# reference fork's masked-loss mouse config.
BEST_KNOWN_LOSSES = {
    "training.losses.masked_l2_loss": True,
    "training.losses.masked_ssim_loss": True,
    "training.losses.ssim_loss_weight": 0.5,
    "training.losses.background_loss_weight": 0.1,
    "validation.mask_iou_threshold": 0.1,
}
SEED_KEY = "training.runtime.seed"
SMOKE_SCHEDULE = {
    "training.schedule.max_steps": 40,
    "training.schedule.warmup": 5,
    "validation.val_every": 10,
    "training.checkpointing.checkpoint_every": 10,
}

STUDIES: dict[str, StudySpec] = {
    spec.name: spec
    for spec in [
        StudySpec(
            name="mouse_loss_sweep",
            description="Optuna TPE over dataset type, masked losses, mask threshold, SSIM and "
            "background weights and learning rate; ASHA stops weak trials.",
            search="optuna",
            space="mouse_loss",
            fixed={"validation.mask_iou_threshold": 0.1},
            num_samples=32,
            scheduler="asha",
            grace_period_rounds=4,
            smoke=SizePreset(num_samples=4, overrides={**SMOKE_SCHEDULE}),
        ),
        StudySpec(
            name="view_order_ablation",
            description="Does the fixed rig order beat random view order? Grid: random vs mouse "
            "x 3 seeds, best-known loss settings, no early stopping.",
            search="grid",
            grid={"mouse.use_mouse_dataset": [False, True], SEED_KEY: [0, 1, 2]},
            fixed=dict(BEST_KNOWN_LOSSES),
            num_samples=1,
            scheduler="fifo",
            smoke=SizePreset(overrides={**SMOKE_SCHEDULE}),
        ),
        StudySpec(
            name="mask_loss_ablation",
            description="Do masked losses and a background loss prevent background collapse? Grid: "
            "masked L2+SSIM off/on x background weight 0/0.1 x 3 seeds.",
            search="grid",
            grid={
                "training.losses.masked_l2_loss": [False, True],
                "training.losses.background_loss_weight": [0.0, 0.1],
                SEED_KEY: [0, 1, 2],
            },
            linked={"training.losses.masked_ssim_loss": "training.losses.masked_l2_loss"},
            fixed={
                "mouse.use_mouse_dataset": True,
                "training.losses.ssim_loss_weight": 0.5,
                "validation.mask_iou_threshold": 0.1,
            },
            num_samples=1,
            scheduler="fifo",
            smoke=SizePreset(overrides={**SMOKE_SCHEDULE}),
        ),
    ]
}


class UnknownSizeError(ValueError):
    pass


class UnknownStudyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_study(name: str) -> StudySpec:
    if name not in STUDIES:
        raise UnknownStudyError(
            f"unknown study {name!r}; valid studies: {', '.join(sorted(STUDIES))} "
            "(python -m study.run --list describes them)"
        )
    return STUDIES[name]
