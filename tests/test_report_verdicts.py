"""The report's verdicts come from analysis.verdicts: one confirmatory question per factor,
everything else labelled exploratory, seeds won instead of P(better), the study's margins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis.compare import compare_factor
from analysis.factors import DATASET_TYPE
from analysis.report import write_report
from tests.test_analysis import (
    MOUSE_FG,
    N_ITEMS,
    RANDOM_FG,
    add_pairs,
    item_study,
    load_tables,
    write_eval,
    write_study,
)


def item_section(text: str) -> str:
    return text.split("#### Item level", 1)[1].split("\n## ", 1)[0]


def test_confirmatory_row_first_every_other_row_exploratory(tmp_path: Path) -> None:
    text = write_report(item_study(tmp_path)).read_text()
    section = item_section(text)
    assert "P(" not in text and "bootstrap" not in text
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    verdict_rows = [r for r in rows if r.startswith(("| exploratory", "| **confirmatory"))]
    assert verdict_rows[0].startswith("| **confirmatory** | all | `psnr_fg` |")
    assert sum("**confirmatory**" in r for r in verdict_rows) == 1
    assert len(verdict_rows) == 24  # 8 metrics x 3 view roles
    assert "| 3 of 3 |" in verdict_rows[0]  # seeds won, not a probability
    assert "Per rig camera, exploratory (uncorrected" in section
    assert "Confirmatory question: `psnr_fg` on all target views" in text
    assert "Seeds for 80% power" in section


def test_study_json_margins_and_primary_question_are_used(tmp_path: Path) -> None:
    study_dir = item_study(tmp_path)
    record = json.loads((study_dir / "study.json").read_text())
    record.update(margins={"psnr_fg": 5.0, "bogus": 1}, primary_role="novel")
    (study_dir / "study.json").write_text(json.dumps(record))
    text = write_report(study_dir).read_text()
    assert "`psnr_fg` ±5," in text and "(from study.json;" in text
    assert "Confirmatory question: `psnr_fg` on novel target views" in text
    # a 1 dB gain is inside ±5 dB: equivalent, and the sentence is about the novel views
    assert "are equivalent on foreground PSNR within ±5.00 dB" in item_section(text)
    assert "| **confirmatory** | novel | `psnr_fg` |" in item_section(text)


def test_seed_level_sentence_says_equivalent_within_the_margin(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, (20.0, 21.0, 22.5), (20.1, 21.05, 22.55))  # diffs 0.1, 0.05, 0.05
    trials, _ = load_tables(study_dir)
    comparison = compare_factor(trials, DATASET_TYPE, "val/psnr_fg", "max")
    assert comparison.sentence.startswith(
        "random and mouse are equivalent in foreground PSNR within ±0.50 dB (difference "
        "mouse − random 0.07 dB, 90% CI ["
    )
    fg = next(m for m in comparison.metrics if m.metric == "val/psnr_fg")
    assert fg.verdict is not None and fg.verdict.seeds_won == 3
    # the study's own margin, narrower than the spread allows: no longer equivalent
    strict = compare_factor(trials, DATASET_TYPE, "val/psnr_fg", "max", {"psnr_fg": 0.05})
    assert strict.sentence.startswith("No difference beyond noise in foreground PSNR")


def test_the_page_says_why_validation_and_test_disagree(tmp_path: Path) -> None:
    """Validation: mouse better by 2 dB in every seed. Test items: per-seed shifts +0.6,
    -0.5, +0.1 dB, an inconclusive verdict: the page must say the two differ and why."""
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, RANDOM_FG, MOUSE_FG)
    rng = np.random.default_rng(0)
    for seed, shift in zip((1, 2, 3), (0.6, -0.5, 0.1), strict=True):
        base = 20 + rng.normal(0, 1.0, (N_ITEMS, 6))
        write_eval(study_dir, f"r{seed:04d}_00000", base)
        write_eval(study_dir, f"m{seed:04d}_00000", base + shift)
    text = write_report(study_dir).read_text()
    assert "Fixed rig order (mouse) beats random by 2.00 dB foreground PSNR" in text
    assert "Item level: inconclusive on foreground PSNR" in text
    assert (
        "*Validation and test disagree on `psnr_fg` here (validation: mouse better; test: "
        "inconclusive).*" in text
    )
