"""report.md's trial tables link each trial to its pictures (relative links from report/ into
runs/<trial>/), and trials.parquet names them; a trial without pictures gets a dash."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis.report import write_report
from tests.test_analysis import base_config, curve_lines, summary_for, write_study, write_trial
from tests.test_report_sections import PARETO_TRIALS, section, write_pareto_optuna

LINK = re.compile(r"\]\((\.\./runs/[^)]+)\)")


def add_pictures(study_dir: Path, trial_id: str, steps: list[int], eval_step: int | None) -> None:
    run = study_dir / "runs" / trial_id
    (run / "pictures").mkdir(parents=True)
    for step in steps:
        Image.new("RGB", (4, 4)).save(run / "pictures" / f"val_{step:08d}.png")
    if eval_step is not None:
        (run / "eval").mkdir()
        Image.new("RGB", (4, 4)).save(run / "eval" / "picture.png")
        protocol = {"picture": "picture.png", "checkpoint_step": eval_step}
        (run / "eval" / "protocol.json").write_text(json.dumps(protocol))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Pareto study of test_report_sections (t1..t4 finished, t5 stopped early) with
    pictures: t2 both, t4 validation only, t5 (stopped) its validation pictures, t1/t3 none."""
    root = tmp_path_factory.mktemp("pictures")
    study_dir = write_study(
        root,
        "mouse_pareto_sweep",
        optuna_storage="optuna.db",
        optuna_study_name="mouse_pareto_sweep",
        searched_keys=["training.optimizer.lr"],
    )
    for seed, (ident, (fg, iou)) in enumerate(PARETO_TRIALS.items()):
        write_trial(
            study_dir,
            ident,
            {"training.optimizer.lr": 1e-4},
            lines=curve_lines(ident, fg, final_iou=iou),
            summary=summary_for(ident, base_config(seed, True)),
        )
    write_trial(
        study_dir,
        "t5",
        {"training.optimizer.lr": 1e-4},
        lines=curve_lines("t5", 31.0, final_iou=0.95)[:2],
        summary=summary_for("t5", base_config(9, True), status="stopped_early", steps_run=200),
    )
    write_pareto_optuna(study_dir, ["t4", "t1", "t3", "t2", "t5"])
    add_pictures(study_dir, "t2", [100, 200, 300], eval_step=200)
    add_pictures(study_dir, "t4", [100], eval_step=None)
    add_pictures(study_dir, "t5", [100, 200], eval_step=None)
    write_report(study_dir)
    return study_dir


def row(text: str, trial_id: str) -> str:
    (found,) = [line for line in text.splitlines() if line.startswith(f"| `{trial_id}`")]
    return found


def rank_row(text: str, trial_id: str) -> str:
    (found,) = [line for line in text.splitlines() if f"| `{trial_id}` |" in line]
    return found


T2_LINKS = (
    "[validation](../runs/t2/pictures/val_00000300.png), [evaluation](../runs/t2/eval/picture.png)"
)


def test_best_trials_and_pareto_rows_link_the_last_validation_and_evaluation_picture(
    study: Path,
) -> None:
    text = (study / "report" / "report.md").read_text()
    best = section(text, "## Best trials")
    assert "| pictures |" in best
    assert f"| {T2_LINKS} |" in rank_row(best, "t2")
    assert "| [validation](../runs/t4/pictures/val_00000100.png) |" in rank_row(best, "t4")
    assert "| — |" in rank_row(best, "t1")  # no pictures: a dash, no dead link
    assert "../runs/t1" not in best
    pareto = section(text, "## Pareto front")
    assert f"| [runs/t2](../runs/t2) | {T2_LINKS} |" in row(pareto, "t2")


def test_a_stopped_trial_is_linked_from_the_flags_table(study: Path) -> None:
    flags = section((study / "report" / "report.md").read_text(), "## Flags")
    assert "| trial | status | flags | detail | pictures |" in flags
    assert row(flags, "t5").endswith("| [validation](../runs/t5/pictures/val_00000200.png) |")


def test_every_picture_link_resolves_from_the_report_folder(study: Path) -> None:
    links = LINK.findall((study / "report" / "report.md").read_text())
    pictures = [link for link in links if link.endswith(".png")]
    assert len(set(pictures)) == 4  # t2 x2, t4, t5
    for link in pictures:
        assert (study / "report" / link).resolve().is_file(), link


def test_trials_parquet_names_the_pictures(study: Path) -> None:
    trials = pd.read_parquet(study / "report" / "trials.parquet").set_index("trial_id")
    assert trials.loc["t2", "validation_picture"] == "runs/t2/pictures/val_00000300.png"
    assert trials.loc["t2", "eval_picture"] == "runs/t2/eval/picture.png"
    assert pd.isna(trials.loc["t1", "validation_picture"])
    assert pd.isna(trials.loc["t4", "eval_picture"])
