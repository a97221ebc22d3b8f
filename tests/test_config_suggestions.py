"""Unknown config keys name the valid key that was most likely meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables.gslrm.config import (
    ConfigError,
    TrainerConfig,
    apply_overrides,
    closest_key,
    load_config,
)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("training.optimizer.lrr", "training.optimizer.lr"),  # one letter off
        ("training.lr", "training.optimizer.lr"),  # right name, wrong section
        ("training.seed", "training.runtime.seed"),
        ("training.optimiser.lr", "training.optimizer.lr"),  # British spelling of a section
        ("model.image_tokenizer.imagesize", "model.image_tokenizer.image_size"),
        ("training.losses.ssim_los_weight", "training.losses.ssim_loss_weight"),
    ],
)
def test_override_typo_suggests_the_valid_key(typo: str, meant: str) -> None:
    assert closest_key(typo) == meant
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainerConfig(), {typo: 1e-4})
    assert f"did you mean {meant}?" in str(info.value)


def test_yaml_typo_suggests_the_valid_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  optimizer:\n    lrr: 1.0e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(
        "training.optimizer.lrr: unknown key; did you mean training.optimizer.lr? (valid keys here:"
    )


def test_yaml_section_typo_suggests_a_section(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  optimiser:\n    lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"did you mean training\.optimizer\?"):
        load_config(path)


def test_nothing_close_gets_no_suggestion() -> None:
    assert closest_key("zzzzqqqq") is None
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainerConfig(), {"zzzzqqqq": 1})
    assert "did you mean" not in str(info.value)
    assert str(info.value).startswith("zzzzqqqq: unknown key (from override")
