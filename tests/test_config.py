"""Trainer config: YAML round trip, dotted overrides, and every bad value naming its key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainables.gslrm.config import (
    ConfigError,
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flat_config,
    load_config,
    parse_override,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Copy of nested `data` with `key` set, creating the leaf (so unknown keys can be planted)."""
    out = copy.deepcopy(data)
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def build_error(key: str, value: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(set_dotted(config_to_dict(TrainerConfig()), key, value))
    return str(info.value)


# ----------------------------------------------------------------------------- shipped files


def test_both_shipped_configs_are_present() -> None:
    assert {p.name for p in SHIPPED} >= {"smoke.yaml", "mouse_gslrm.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    raw = yaml.safe_load(path.read_text())
    # Values written in the file win over the dataclass defaults.
    assert config.model.image_tokenizer.image_size == raw["model"]["image_tokenizer"]["image_size"]
    assert config.training.optimizer.lr == pytest.approx(raw["training"]["optimizer"]["lr"])
    assert config.mouse.use_mouse_dataset is raw["mouse"]["use_mouse_dataset"]


def test_shipped_values() -> None:
    smoke = load_config(CONFIGS / "smoke.yaml")
    assert smoke.model.image_tokenizer.image_size == 64
    assert smoke.model.gaussians.downsample == 4
    assert smoke.training.optimizer.lr == pytest.approx(1e-3)
    full = load_config(CONFIGS / "mouse_gslrm.yaml")
    assert full.model.transformer.d == 1024 and full.model.transformer.n_layer == 24
    assert full.training.losses.ssim_loss_weight == 0.5
    assert full.training.losses.background_color_target == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_round_trip(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    saved = tmp_path / "saved.yaml"
    save_config(config, saved)
    again = load_config(saved)
    assert again == config
    assert config_to_dict(again) == config_to_dict(config)
    # The saved file is complete (every key written, not only non-defaults), so a run's saved
    # config still means the same after a default changes.
    assert sorted(_leaf_keys(yaml.safe_load(saved.read_text()))) == sorted(flat_config(config))


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.extend(_leaf_keys(value, key) if isinstance(value, dict) else [key])
    return keys


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config(path) == TrainerConfig()


def test_missing_file_and_invalid_yaml_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {image_tokenizer: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml.*invalid YAML"):
        load_config(broken)


def test_bad_key_in_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  losses:\n    ssim_los_weight: 0.5\n")
    with pytest.raises(ConfigError, match=r"^training\.losses\.ssim_los_weight: unknown key"):
        load_config(path)


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("training.losses.ssim_loss_weight=0.25", "training.losses.ssim_loss_weight", 0.25),
        ("training.schedule.max_steps=7", "training.schedule.max_steps", 7),
        ("mouse.use_mouse_dataset=false", "mouse.use_mouse_dataset", False),
        ("mouse.use_mouse_dataset=true", "mouse.use_mouse_dataset", True),
        (
            "training.losses.background_color_target=[0, 0.5, 1]",
            "training.losses.background_color_target",
            [0, 0.5, 1],
        ),
        ("training.logging.wandb.exp_name=run 1", "training.logging.wandb.exp_name", "run 1"),
        ("training.dataset.dataset_path=", "training.dataset.dataset_path", ""),
        # only the first '=' splits, the rest belongs to the value
        ("training.logging.wandb.exp_name=a=b", "training.logging.wandb.exp_name", "a=b"),
        (" training.optimizer.lr =2.0e-5", "training.optimizer.lr", 2.0e-5),
    ],
)
def test_parse_override_reads_yaml_scalars(text: str, key: str, value: Any) -> None:
    parsed_key, parsed = parse_override(text)
    assert parsed_key == key
    assert parsed == value and type(parsed) is type(value)


def test_parse_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("training.losses.ssim_loss_weight")


def test_string_overrides_through_load_config() -> None:
    config = load_config(
        CONFIGS / "smoke.yaml",
        [
            "training.losses.ssim_loss_weight=0.25",
            "training.schedule.max_steps=7",
            "mouse.use_mouse_dataset=false",
            "training.losses.background_color_target=[0, 0.5, 1]",
            "training.losses.l2_loss_weight=2",
        ],
    )
    assert config.training.losses.ssim_loss_weight == 0.25
    assert config.training.schedule.max_steps == 7
    assert config.mouse.use_mouse_dataset is False
    # ints are accepted for floats and stored as floats
    assert config.training.losses.background_color_target == [0.0, 0.5, 1.0]
    assert all(type(c) is float for c in config.training.losses.background_color_target)
    assert type(config.training.losses.l2_loss_weight) is float
    # untouched keys keep the file's values
    assert config.model.image_tokenizer.image_size == 64


def test_dict_overrides_return_a_new_config() -> None:
    base = load_config(CONFIGS / "mouse_gslrm.yaml")
    before = config_to_dict(base)
    changed = apply_overrides(
        base, {"training.losses.mask_threshold": 0.3, "model.image_tokenizer.image_size": 128}
    )
    assert changed.training.losses.mask_threshold == 0.3
    assert changed.model.image_tokenizer.image_size == 128
    assert config_to_dict(base) == before  # the input config is not mutated
    diff = {k for k, v in flat_config(changed).items() if flat_config(base)[k] != v}
    assert diff == {"training.losses.mask_threshold", "model.image_tokenizer.image_size"}


def test_every_flat_key_is_overridable() -> None:
    # Search spaces address config keys by the dotted names flat_config produces.
    config = load_config(CONFIGS / "smoke.yaml")
    assert apply_overrides(config, flat_config(config)) == config


def test_override_exponent_without_dot_is_a_number() -> None:
    assert (
        load_config(CONFIGS / "smoke.yaml", ["training.optimizer.lr=1e-4"]).training.optimizer.lr
        == 1e-4
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"training.losses.nope": 1.0}, "training.losses.nope"),
        ({"trainin.losses.l2_loss_weight": 1.0}, "trainin"),
        ({"bogus": 1}, "bogus"),
        # a key below a leaf: the leaf has no sub-keys
        ({"training.losses.l2_loss_weight.x": 1.0}, "training.losses.l2_loss_weight.x"),
    ],
)
def test_unknown_override_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainerConfig(), overrides)
    assert str(info.value).startswith(f"{key}: unknown key")


@pytest.mark.parametrize("section", ["training.losses", "model", "training.logging.wandb"])
def test_override_of_a_section_is_refused(section: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainerConfig(), {section: {}})
    assert str(info.value).startswith(f"{section}: is a section")


def test_override_is_validated() -> None:
    with pytest.raises(
        ConfigError, match=r"^training\.losses\.mask_threshold: must be in \(0, 1\)"
    ):
        load_config(CONFIGS / "smoke.yaml", ["training.losses.mask_threshold=1"])
    with pytest.raises(ConfigError, match=r"^training\.schedule\.max_steps: expected an integer"):
        load_config(CONFIGS / "smoke.yaml", ["training.schedule.max_steps=1.5"])


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("bogus", 1, "unknown key"),
        ("training.bogus", {}, "unknown key"),
        ("training.losses.l3_loss_weight", 1.0, "unknown key"),
        ("model.image_tokenizer.imagesize", 64, "unknown key"),
        ("training.losses.ssim_loss_weight", "0.5", "expected a number"),
        ("training.optimizer.lr", None, "expected a number"),
        ("training.optimizer.lr", float("nan"), "expected a finite number"),
        ("training.optimizer.lr", float("inf"), "expected a finite number"),
        ("training.losses.l2_loss_weight", True, "expected a number"),
        ("training.schedule.max_steps", 100.0, "expected an integer"),
        ("training.schedule.max_steps", True, "expected an integer"),
        ("model.image_tokenizer.image_size", "256", "expected an integer"),
        ("mouse.use_mouse_dataset", 1, "expected true/false"),
        ("mouse.use_mouse_dataset", "yes", "expected true/false"),
        ("training.dataset.dataset_path", 3, "expected a string"),
        ("training.losses.background_color_target", "white", "expected a list"),
        ("training.losses", 5, "expected a mapping"),
    ],
)
def test_wrong_type_or_unknown_key_names_the_key(key: str, value: Any, reason: str) -> None:
    message = build_error(key, value)
    assert message.startswith(f"{key}: {reason}"), message


def test_bad_list_item_names_its_index() -> None:
    message = build_error("training.losses.background_color_target", [1.0, "a", 1.0])
    assert message.startswith("training.losses.background_color_target[1]: expected a number")


def test_unknown_top_level_key_lists_valid_keys() -> None:
    message = build_error("modle", {})
    assert message.startswith("modle: unknown key")
    for valid in ("model", "training", "mouse", "validation"):
        assert valid in message


@pytest.mark.parametrize(
    "name",
    [
        "l2_loss_weight",
        "ssim_loss_weight",
        "perceptual_loss_weight",
        "lpips_loss_weight",
        "background_loss_weight",
    ],
)
def test_negative_loss_weight(name: str) -> None:
    key = f"training.losses.{name}"
    assert build_error(key, -0.1).startswith(f"{key}: must be >= 0")
    # zero is a legitimate setting (the study searches background weight 0)
    config = apply_overrides(TrainerConfig(), {key: 0.0})
    assert getattr(config.training.losses, name) == 0.0


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 1.5, -0.2])
def test_mask_threshold_outside_open_unit_interval(value: float) -> None:
    key = "training.losses.mask_threshold"
    assert build_error(key, value).startswith(f"{key}: must be in (0, 1)")


@pytest.mark.parametrize("value", [0.01, 0.5, 0.99])
def test_mask_threshold_inside_interval(value: float) -> None:
    config = apply_overrides(TrainerConfig(), {"training.losses.mask_threshold": value})
    assert config.training.losses.mask_threshold == value


@pytest.mark.parametrize(("num_views", "num_input_views"), [(6, 6), (6, 7), (4, 9), (6, 0)])
def test_num_input_views_must_be_below_num_views(num_views: int, num_input_views: int) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(
            TrainerConfig(),
            {
                "training.dataset.num_views": num_views,
                "training.dataset.num_input_views": num_input_views,
            },
        )
    assert str(info.value).startswith(
        "training.dataset.num_input_views: must be >= 1 and < num_views"
    )
    ok = apply_overrides(
        TrainerConfig(),
        {
            "training.dataset.num_views": num_views,
            "training.dataset.num_input_views": num_views - 1,
        },
    )
    assert ok.training.dataset.num_input_views == num_views - 1


@pytest.mark.parametrize(("image_size", "patch_size"), [(60, 8), (100, 16), (7, 8)])
def test_image_size_must_be_a_multiple_of_patch_size(image_size: int, patch_size: int) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(
            TrainerConfig(),
            {
                "model.image_tokenizer.image_size": image_size,
                "model.image_tokenizer.patch_size": patch_size,
            },
        )
    assert str(info.value).startswith(
        "model.image_tokenizer.image_size: must be a positive multiple"
    )
    assert f"({patch_size})" in str(info.value)


def test_image_size_multiple_of_patch_size_is_fine() -> None:
    config = apply_overrides(
        TrainerConfig(),
        {
            "model.image_tokenizer.image_size": 96,
            "model.image_tokenizer.patch_size": 16,
            "model.gaussians.downsample": 1,
        },
    )
    assert config.model.image_tokenizer.image_size == 96


def test_negative_seed_is_refused() -> None:
    assert build_error("training.runtime.seed", -1).startswith(
        "training.runtime.seed: must be >= 0"
    )


# Every other range rule of validate(): one bad value each, and the message it must give.
RANGE_RULES = [
    ("model.image_tokenizer.patch_size", 0, "must be > 0"),
    ("model.image_tokenizer.in_channels", 3, "must be 9 (RGB + 6 ray channels)"),
    ("model.transformer.d", 100, "must be a positive multiple of d_head (64)"),
    ("model.transformer.n_layer", 0, "must be >= 1"),
    ("model.gaussians.n_gaussians", -1, "must be >= 0"),
    ("model.gaussians.sh_degree", 1, "only 0 is supported"),
    ("model.gaussians.upsampler.upsample_factor", 2, "only 1 is supported"),
    ("model.gaussians.downsample", 3, "must be >= 1 and divide image_size (256)"),
    ("model.gaussians.downsample", 0, "must be >= 1"),
    ("model.renderer.backend", "cuda", "must be auto, gsplat or torch"),
    ("model.renderer.near_plane", 0.0, "must be > 0"),
    ("training.dataset.num_views", 1, "must be >= 2"),
    ("training.dataset.background_color", "grey", "must be white or black"),
    ("training.dataset.maximize_view_overlap", True, "true is not supported"),
    ("training.dataloader.batch_size_per_gpu", 0, "must be >= 1"),
    ("training.dataloader.num_workers", -1, "must be >= 0"),
    ("training.losses.mask_iou_threshold", 1.0, "must be in (0, 1)"),
    ("training.losses.background_color_target", [1.0, 1.0], "must be 3 values in [0, 1]"),
    ("training.losses.background_color_target", [1.0, 1.2, 1.0], "must be 3 values in [0, 1]"),
    ("training.optimizer.lr", 0.0, "must be > 0"),
    ("training.optimizer.beta1", 1.0, "must be in [0, 1)"),
    ("training.optimizer.beta2", -0.1, "must be in [0, 1)"),
    ("training.optimizer.weight_decay", -0.01, "must be >= 0"),
    ("training.schedule.max_steps", 0, "must be >= 1"),
    ("training.schedule.warmup", -1, "must be >= 0"),
    ("training.runtime.amp_dtype", "fp8", "must be bf16 or fp16"),
    ("training.runtime.grad_clip_norm", 0.0, "must be > 0"),
    ("training.runtime.grad_checkpoint_every", -1, "must be >= 0"),
    ("training.checkpointing.checkpoint_every", 0, "must be >= 1"),
    ("training.checkpointing.keep_last", -1, "must be >= 0"),
    ("training.logging.wandb.mode", "cloud", "must be offline, online or disabled"),
    ("training.logging.wandb.log_every", 0, "must be >= 1"),
    ("mouse.target_camera_distance", 0.0, "must be > 0"),
    ("validation.val_every", 0, "must be >= 1"),
    ("validation.mask_iou_threshold", 0.0, "must be in (0, 1)"),
    ("validation.max_items", 0, "must be >= 1"),
]


@pytest.mark.parametrize(("key", "value", "message"), RANGE_RULES, ids=lambda v: str(v))
def test_range_rule_names_the_key(key: str, value: Any, message: str) -> None:
    assert build_error(key, value).startswith(f"{key}: {message}")
