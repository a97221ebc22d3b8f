"""Trainer configuration: dataclasses with FaceLift-compatible YAML keys.

A config is plain data. `load_config(path, overrides)` reads YAML (safe loader), applies
dotted overrides such as ``training.losses.ssim_loss_weight=0.5`` and validates the result.
Every problem raises `ConfigError` naming the dotted key and what is wrong with it.

Keys follow FaceLift's `configs/gslrm.yaml` where FaceLift has one; keys we add are marked
"(ours)" and default to FaceLift's behaviour. Differences from FaceLift, on purpose:
- `training.schedule.max_steps` counts optimizer steps (FaceLift: `max_fwdbwd_passes`).
- `training.losses.mask_threshold` (ours) is the foreground threshold of the masked losses;
  FaceLift hard-codes alpha > 0.5, which is our default.
- `model.clip_xyz` really clips when true. FaceLift's clip never runs (its guard is always
  false), so FaceLift-trained weights behave as with `clip_xyz: false`, our default.
- `perceptual_loss_weight` defaults to 0 (VGG loss exploded on mouse images).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.gslrm.atomic import write_text_atomic


class ConfigError(ValueError):
    """A bad config key or value. The message names the dotted key."""


class _YamlLoader(yaml.SafeLoader):
    """Safe loader that also reads 1e-4 (no dot) as a float, as YAML 1.2 does."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class ImageTokenizerConfig:
    image_size: int = 256
    patch_size: int = 8
    in_channels: int = 9


@dataclass
class TransformerConfig:
    d: int = 1024
    d_head: int = 64
    n_layer: int = 24


@dataclass
class UpsamplerConfig:
    upsample_factor: int = 1


@dataclass
class GaussiansConfig:
    n_gaussians: int = 2  # free Gaussians decoded from the learned tokens
    sh_degree: int = 0
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    downsample: int = 1  # (ours) keep one Gaussian per k x k pixels; 1 = FaceLift


@dataclass
class RendererConfig:  # (ours)
    backend: str = "auto"  # auto | gsplat | torch
    near_plane: float = 0.2


@dataclass
class ModelConfig:
    image_tokenizer: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    gaussians: GaussiansConfig = field(default_factory=GaussiansConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    hard_pixelalign: bool = True
    use_custom_plucker: bool = True  # FaceLift rays: (d, closest point); false: Plücker (d, o x d)
    clip_xyz: bool = False


@dataclass
class DatasetConfig:
    dataset_path: str = ""
    num_views: int = 6
    num_input_views: int = 5
    target_has_input: bool = True
    remove_alpha: bool = True
    background_color: str = "white"  # white | black
    maximize_view_overlap: bool = False
    cache_dir: str = ""  # (ours) decoded-view cache; "" = <list file folder>/.view_cache


@dataclass
class DataloaderConfig:
    batch_size_per_gpu: int = 2
    num_workers: int = 2
    shuffle: bool = True  # (ours) false: fixed item order, e.g. to compare 1 vs N workers


@dataclass
class LossesConfig:
    l2_loss_weight: float = 1.0
    ssim_loss_weight: float = 0.0
    perceptual_loss_weight: float = 0.0
    lpips_loss_weight: float = 0.0
    masked_l2_loss: bool = False
    masked_ssim_loss: bool = False
    mask_threshold: float = 0.5  # (ours) FaceLift hard-codes 0.5
    background_loss_weight: float = 0.0
    alpha_loss_weight: float = 0.0  # (ours) silhouette loss: MSE of rendered alpha vs mask
    background_color_target: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    mask_iou_threshold: float = 0.1


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.05


@dataclass
class ScheduleConfig:
    max_steps: int = 20000
    warmup: int = 500


@dataclass
class RuntimeConfig:
    use_amp: bool = True
    amp_dtype: str = "bf16"  # bf16 | fp16 (autocast on CUDA only; CPU runs fp32)
    use_tf32: bool = True
    grad_clip_norm: float = 1.0
    grad_checkpoint_every: int = 0  # checkpoint every k-th transformer block; 0 = off
    seed: int = 777
    inject_nan_loss_at_step: int = (
        0  # (ours, for fault tests) make the loss NaN at this step; 0 = off
    )


@dataclass
class CheckpointingConfig:
    resume_ckpt: str = ""  # FaceLift-format or our checkpoint to start from
    reset_training_state: bool = True  # with resume_ckpt: load weights only
    checkpoint_every: int = 1000
    keep_last: int = (
        0  # (ours) keep only the newest k checkpoints in the run folder; 0 = all (FaceLift)
    )


@dataclass
class WandbConfig:
    project: str = "mouse-gslrm"
    exp_name: str = ""
    mode: str = "offline"  # offline | online | disabled
    log_every: int = 50


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class TrainingConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    dataloader: DataloaderConfig = field(default_factory=DataloaderConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class MouseConfig:
    use_mouse_dataset: bool = False  # the study's "dataset type": false = random, true = rig order
    normalize_cameras: bool = False  # rotate rig normal to +Z, scale mean distance to the target
    target_camera_distance: float = 2.7


@dataclass
class ValidationConfig:
    val_every: int = 1000
    dataset_path: str = ""  # "" = data_val.txt beside the training list, else the training list
    mask_iou_threshold: float = 0.1
    max_items: int = 16  # validation items per round
    save_pictures: bool = True


@dataclass
class EvaluationConfig:  # (ours) the held-out evaluation protocol, see trainables/gslrm/evaluate.py
    # FaceLift list file of the test split; "" = data_test.txt beside the training list when it
    # exists, else the validation list (the protocol record says which one was used).
    dataset_path: str = ""
    checkpoint: str = "best"  # best (by the validation objective) | last
    # validation metric that picks the `best` checkpoint: PSNR of the class-balanced MSE (mouse
    # and background weighted equally), which a cover-all render cannot win (metrics.py)
    objective: str = "val/psnr_bal"
    objective_mode: str = "max"  # max | min
    batch_size: int = 4
    # Silhouettes: predicted = mean_c |render - background| > pred_mask_threshold,
    # true = alpha > gt_alpha_threshold. Fixed per study so every trial is scored alike.
    pred_mask_threshold: float = 0.1
    gt_alpha_threshold: float = 0.5


@dataclass
class TrainerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    mouse: MouseConfig = field(default_factory=MouseConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# ---------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            finite = math.isfinite(value)
        except OverflowError:
            finite = False
        if not finite:
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _dotted_keys(cls: type, prefix: str = "") -> tuple[list[str], list[str]]:
    """(section keys, leaf keys) of a config dataclass tree, dotted, e.g. 'training.optimizer'
    and 'training.optimizer.lr'."""
    sections: list[str] = []
    leaves: list[str] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            sections.append(key)
            below = _dotted_keys(tp, key)
            sections += below[0]
            leaves += below[1]
        else:
            leaves.append(key)
    return sections, leaves


def closest_key(key: str, section: bool = False) -> str | None:
    """The valid dotted key a mistyped `key` most likely meant, or None when nothing is close.

    A key whose last part names exactly one valid key elsewhere wins ('training.lr' ->
    'training.optimizer.lr'); otherwise the most similar key by difflib's ratio (>= 0.6).
    section: suggest a section (the unknown key holds a mapping) instead of a leaf.
    """
    sections, leaves = _dotted_keys(TrainerConfig)
    candidates = sections if section else leaves
    last = key.rsplit(".", 1)[-1]
    same_name = [c for c in candidates if c.rsplit(".", 1)[-1] == last]
    pool, cutoff = (same_name, 0.0) if same_name else (candidates, 0.6)
    match = difflib.get_close_matches(key, pool, n=1, cutoff=cutoff)
    return match[0] if match else None


def _did_you_mean(key: str, section: bool = False) -> str:
    suggestion = closest_key(key, section)
    return f"; did you mean {suggestion}?" if suggestion and suggestion != key else ""


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        hint = _did_you_mean(key, section=isinstance(data[unknown[0]], dict))
        raise ConfigError(f"{key}: unknown key{hint} (valid keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainerConfig:
    """Build and validate a config from nested plain data (e.g. parsed YAML)."""
    config = _build(TrainerConfig, data or {}, "")
    validate(config)
    return config


def config_to_dict(config: TrainerConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted.key: leaf value}."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            flat.update(flatten(value, key))
        else:
            flat[key] = value
    return flat


def flat_config(config: TrainerConfig) -> dict[str, Any]:
    """Every config key by its dotted name."""
    return flatten(config_to_dict(config))


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b.c=value' -> ('a.b.c', value), the value parsed as a YAML scalar or list."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r}: expected KEY=VALUE, e.g. training.losses.ssim_loss_weight=0.5"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from None
    return key, value


def apply_overrides(config: TrainerConfig, overrides: dict[str, Any]) -> TrainerConfig:
    """Return a new validated config with dotted keys replaced."""
    data = config_to_dict(config)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            here = ".".join(parts[: depth + 1])
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(
                    f"{here}: unknown key{_did_you_mean(key)} (from override {key}={value!r})"
                )
            if depth == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ConfigError(f"{key}: is a section, set one of its keys instead")
                node[part] = value
            else:
                node = node[part]
    return config_from_dict(data)


def load_config(
    path: str | Path, overrides: dict[str, Any] | list[str] | None = None
) -> TrainerConfig:
    """Read a YAML config (safe loader) and apply overrides (dict or 'key=value' strings)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.load(path.read_text(), Loader=_YamlLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
    config = config_from_dict(data)
    if overrides:
        if isinstance(overrides, list):
            overrides = dict(parse_override(o) for o in overrides)
        config = apply_overrides(config, overrides)
    return config


def save_config(config: TrainerConfig, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


# ---------------------------------------------------------------------------------------
# range checks


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(config: TrainerConfig) -> None:
    """Cross-field and range checks; raises ConfigError naming the first bad key."""
    tok, tr, gs = config.model.image_tokenizer, config.model.transformer, config.model.gaussians
    _check(tok.patch_size > 0, "model.image_tokenizer.patch_size", "must be > 0")
    _check(
        tok.image_size > 0 and tok.image_size % tok.patch_size == 0,
        "model.image_tokenizer.image_size",
        f"must be a positive multiple of patch_size ({tok.patch_size})",
    )
    _check(
        tok.in_channels == 9,
        "model.image_tokenizer.in_channels",
        "must be 9 (RGB + 6 ray channels)",
    )
    _check(
        tr.d > 0 and tr.d_head > 0 and tr.d % tr.d_head == 0,
        "model.transformer.d",
        f"must be a positive multiple of d_head ({tr.d_head})",
    )
    _check(tr.n_layer >= 1, "model.transformer.n_layer", "must be >= 1")
    _check(gs.n_gaussians >= 0, "model.gaussians.n_gaussians", "must be >= 0")
    _check(
        gs.sh_degree == 0,
        "model.gaussians.sh_degree",
        "only 0 is supported (as in FaceLift's configs)",
    )
    _check(
        gs.upsampler.upsample_factor == 1,
        "model.gaussians.upsampler.upsample_factor",
        "only 1 is supported",
    )
    _check(
        gs.downsample >= 1 and tok.image_size % gs.downsample == 0,
        "model.gaussians.downsample",
        f"must be >= 1 and divide image_size ({tok.image_size})",
    )
    _check(
        config.model.renderer.backend in ("auto", "gsplat", "torch"),
        "model.renderer.backend",
        "must be auto, gsplat or torch",
    )
    _check(config.model.renderer.near_plane > 0, "model.renderer.near_plane", "must be > 0")

    ds = config.training.dataset
    _check(ds.num_views >= 2, "training.dataset.num_views", "must be >= 2")
    _check(
        1 <= ds.num_input_views < ds.num_views,
        "training.dataset.num_input_views",
        f"must be >= 1 and < num_views ({ds.num_views})",
    )
    _check(
        ds.background_color in ("white", "black"),
        "training.dataset.background_color",
        "must be white or black",
    )
    _check(
        not ds.maximize_view_overlap,
        "training.dataset.maximize_view_overlap",
        "true is not supported (FaceLift's version has a known angle bug); use false",
    )
    dl = config.training.dataloader
    _check(dl.batch_size_per_gpu >= 1, "training.dataloader.batch_size_per_gpu", "must be >= 1")
    _check(dl.num_workers >= 0, "training.dataloader.num_workers", "must be >= 0")

    losses = config.training.losses
    for name in (
        "l2_loss_weight",
        "ssim_loss_weight",
        "perceptual_loss_weight",
        "lpips_loss_weight",
        "background_loss_weight",
        "alpha_loss_weight",
    ):
        _check(getattr(losses, name) >= 0, f"training.losses.{name}", "must be >= 0")
    _check(0 < losses.mask_threshold < 1, "training.losses.mask_threshold", "must be in (0, 1)")
    _check(
        0 < losses.mask_iou_threshold < 1, "training.losses.mask_iou_threshold", "must be in (0, 1)"
    )
    _check(
        len(losses.background_color_target) == 3
        and all(0 <= c <= 1 for c in losses.background_color_target),
        "training.losses.background_color_target",
        "must be 3 values in [0, 1]",
    )

    opt = config.training.optimizer
    _check(opt.lr > 0, "training.optimizer.lr", "must be > 0")
    _check(0 <= opt.beta1 < 1, "training.optimizer.beta1", "must be in [0, 1)")
    _check(0 <= opt.beta2 < 1, "training.optimizer.beta2", "must be in [0, 1)")
    _check(opt.weight_decay >= 0, "training.optimizer.weight_decay", "must be >= 0")
    sched = config.training.schedule
    _check(sched.max_steps >= 1, "training.schedule.max_steps", "must be >= 1")
    _check(0 <= sched.warmup, "training.schedule.warmup", "must be >= 0")
    rt = config.training.runtime
    _check(rt.amp_dtype in ("bf16", "fp16"), "training.runtime.amp_dtype", "must be bf16 or fp16")
    _check(rt.seed >= 0, "training.runtime.seed", "must be >= 0")
    _check(rt.grad_clip_norm > 0, "training.runtime.grad_clip_norm", "must be > 0")
    _check(rt.grad_checkpoint_every >= 0, "training.runtime.grad_checkpoint_every", "must be >= 0")
    _check(
        config.training.checkpointing.checkpoint_every >= 1,
        "training.checkpointing.checkpoint_every",
        "must be >= 1",
    )
    _check(
        config.training.checkpointing.keep_last >= 0,
        "training.checkpointing.keep_last",
        "must be >= 0",
    )
    _check(
        config.training.logging.wandb.mode in ("offline", "online", "disabled"),
        "training.logging.wandb.mode",
        "must be offline, online or disabled",
    )
    _check(
        config.training.logging.wandb.log_every >= 1,
        "training.logging.wandb.log_every",
        "must be >= 1",
    )

    _check(config.mouse.target_camera_distance > 0, "mouse.target_camera_distance", "must be > 0")
    val = config.validation
    _check(val.val_every >= 1, "validation.val_every", "must be >= 1")
    _check(0 < val.mask_iou_threshold < 1, "validation.mask_iou_threshold", "must be in (0, 1)")
    _check(val.max_items >= 1, "validation.max_items", "must be >= 1")
    _validate_evaluation(config.evaluation)


def _validate_evaluation(ev: EvaluationConfig) -> None:
    _check(
        ev.checkpoint in ("best", "last"),
        "evaluation.checkpoint",
        "must be best (the checkpoint with the best validation objective) or last",
    )
    _check(
        ev.objective.startswith("val/"),
        "evaluation.objective",
        f"must be a validation metric such as val/psnr_bal, got {ev.objective!r}",
    )
    _check(ev.objective_mode in ("max", "min"), "evaluation.objective_mode", "must be max or min")
    _check(ev.batch_size >= 1, "evaluation.batch_size", "must be >= 1")
    _check(0 < ev.pred_mask_threshold < 1, "evaluation.pred_mask_threshold", "must be in (0, 1)")
    _check(0 < ev.gt_alpha_threshold < 1, "evaluation.gt_alpha_threshold", "must be in (0, 1)")
