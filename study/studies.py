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
    # Tune's metric: progress line, best checkpoint, ASHA. PSNR of the class-balanced MSE (mouse
    # and background weighted equally): painting the whole image cannot win it (gslrm/metrics.py)
    objective: str = "val/psnr_bal"
    mode: str = "max"
    # Which checkpoint of every trial the held-out evaluation scores: "best" (by `objective` on
    # validation) or "last"; one rule for the whole study, recorded in study.json.
    checkpoint_rule: str = "best"
    # Several objectives (all in `mode`): a multi-objective Optuna search; `objective` must be
    # the first. Empty: a single-objective search over `objective`.
    objectives: tuple[str, ...] = ()
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

    def __post_init__(self) -> None:
        # Tune's metric (best checkpoint, progress) and Optuna's first objective must agree.
        if self.objectives and self.objectives[0] != self.objective:
            raise ValueError(
                f"study {self.name}: objectives {self.objectives} must start with its "
                f"objective {self.objective!r}"
            )
        if self.objectives and self.search != "optuna":
            raise ValueError(f"study {self.name}: several objectives need search='optuna'")


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
            name="mouse_pareto_sweep",
            description="Optuna multi-objective TPE over the mouse_loss space plus the "
            "silhouette loss weight, maximising PSNR on the silhouette union and mask IoU together; no early "
            "stopping (ASHA ranks by one metric and would cut trials on the other's front).",
            search="optuna",
            space="mouse_pareto",
            objective="val/psnr_bal",
            objectives=("val/psnr_bal", "val/mask_iou"),
            fixed={"validation.mask_iou_threshold": 0.1},
            num_samples=32,
            # Two objectives, one scheduler metric: ASHA keeps the top 1/2 of a rung by one
            # number, so a trial with the best IoU and a middling PSNR (a Pareto point) is
            # stopped as readily as a bad one. Every trial runs to the end; the budget is spent
            # on fewer, complete trials whose final values are comparable.
            scheduler="fifo",
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
        StudySpec(
            name="view_count_ablation",
            description="How many of the rig's 6 cameras must the model see? Grid: 1..5 input "
            "views (the other views are the targets) x 3 seeds, best-known loss settings, "
            "fixed rig order, no early stopping.",
            search="grid",
            grid={"training.dataset.num_input_views": [1, 2, 3, 4, 5], SEED_KEY: [0, 1, 2]},
            fixed={
                **BEST_KNOWN_LOSSES,
                "mouse.use_mouse_dataset": True,
                "training.dataset.num_views": 6,
                # Targets are only the views the model did not see: with 5 inputs that is 1
                # view, with 1 input 5 views; scoring inputs too would reward copying them.
                "training.dataset.target_has_input": False,
            },
            num_samples=1,
            scheduler="fifo",
            smoke=SizePreset(overrides={**SMOKE_SCHEDULE}, grid_seeds=(0,)),
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
