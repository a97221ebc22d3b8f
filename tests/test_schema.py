"""trials.parquet / curves.parquet describe their own columns in the Parquet field metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis.report import main, write_report
from analysis.tables import CURVES_DESCRIPTION, TRIALS_DESCRIPTION, column_description
from tests.test_analysis import add_pairs, write_study


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study_dir = write_study(tmp_path_factory.mktemp("schema"))
    add_pairs(study_dir, (20.0, 21.0), (22.0, 23.5))
    write_report(study_dir)
    return study_dir / "report"


def descriptions(path: Path) -> dict[str, str]:
    schema = pq.read_schema(path)
    return {f.name: (f.metadata or {}).get(b"description", b"").decode() for f in schema}


def test_trials_fields_carry_their_descriptions(report_dir: Path) -> None:
    path = report_dir / "trials.parquet"
    found = descriptions(path)
    assert found["status"] == "finished | stopped_early (ASHA stopped it) | diverged | errored"
    assert found["final/val/psnr_fg"] == (
        "val/psnr_fg at the trial's last report holding it (NaN kept)"
    )
    assert found["best/val/psnr_fg"] == "best finite val/psnr_fg over the trial's reports (max)"
    assert found["best/train/loss"] == "best finite train/loss over the trial's reports (min)"
    assert found["best_step/val/mask_iou"] == "trainer step of best/val/mask_iou (earliest on ties)"
    assert found["training.optimizer.lr"].startswith("trainer config key training.optimizer.lr")
    assert found["seed"] == "training.runtime.seed of the trial"
    # every column is described, none by its bare name
    assert all(text and text != name for name, text in found.items()), found
    assert pq.read_schema(path).metadata[b"description"].decode() == TRIALS_DESCRIPTION
    # the descriptions do not disturb pandas' own round trip
    table = pd.read_parquet(path)
    assert table["n_reports"].dtype == "int64" and table["flag_stopped_early"].dtype == bool


def test_curves_fields_carry_their_descriptions(report_dir: Path) -> None:
    path = report_dir / "curves.parquet"
    found = descriptions(path)
    assert found["step"] == "trainer (optimizer) step of this report"
    assert found["training_iteration"] == "Tune's report counter (1, 2, 3, ...) of this report"
    assert (
        found["val/psnr_fg"]
        == "val/psnr_fg as logged at this trainer step (NaN when not logged here)"
    )
    assert found["metrics/lr"].startswith("metrics/lr as logged")
    assert all(text and text != name for name, text in found.items()), found
    assert pq.read_schema(path).metadata[b"description"].decode() == CURVES_DESCRIPTION


def test_a_config_key_renamed_for_a_clash_says_so() -> None:
    assert column_description("config.seed") == (
        "trainer config key seed (renamed: clashes with a column)"
    )


def test_report_help_names_the_recorded_tune_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "tune-<id>/" in text and "tune/" not in text.replace("tune-<id>/", "")
