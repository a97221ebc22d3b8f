"""python -m analysis.plan: seeds a question needs, from the study's own seed spread."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import verdicts
from analysis.plan import main, plan_study
from tests.test_analysis import MOUSE_FG, RANDOM_FG, add_pairs, item_study, write_study


def test_seed_level_spread_when_nothing_was_evaluated(tmp_path: Path) -> None:
    """Paired differences 2.0, 2.5, 1.5 of the final val/psnr_fg: sd 0.5 over 3 seeds."""
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, RANDOM_FG, MOUSE_FG)
    text = plan_study(study_dir, detect={"psnr_fg": 0.5})
    p = verdicts.plan(0.5, 3, 0.5)
    assert (
        "foreground PSNR (final validation value): 3 seeds, sd of per-seed mean differences 0.5 "
        in text
    )
    assert f"(80% upper limit {verdicts.sd_upper(0.5, 3):.3g})" in text
    assert (
        f"detect a difference of 0.5 on foreground PSNR: {p.detect} seeds at the estimated "
        f"spread, {p.detect_upper} at its 80% upper limit" in text
    )
    assert "equivalence" not in text


def test_item_level_spread_and_defaults_to_the_study_margin(tmp_path: Path) -> None:
    text = plan_study(item_study(tmp_path))
    assert "foreground PSNR (test items, all target views): 3 seeds" in text
    assert "detect a difference of 0.5 on foreground PSNR" in text
    assert "show equivalence within ±0.5 on foreground PSNR" in text
    assert "within seeds (items)" in text


def test_upper_limit_and_power_by_hand() -> None:
    # chi2 with 2 df: 20% quantile 0.4463; sd x sqrt(2 / 0.4463) = 2.117 sd
    assert verdicts.sd_upper(1.0, 3) == pytest.approx(2.1169, abs=1e-3)
    p = verdicts.plan(1.0, 3, 0.5)
    assert p.detect == verdicts.seeds_for_detection(1.0, 0.5) and p.detect_upper > p.detect


def test_cli_checks_its_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, RANDOM_FG, MOUSE_FG)
    assert main([str(study_dir), "--equivalent", "psnr_fg=0.5"]) == 0
    assert "show equivalence within ±0.5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(study_dir), "--detect", "lpips=0.1"])
    assert main([str(tmp_path / "nothing")]) == 2
