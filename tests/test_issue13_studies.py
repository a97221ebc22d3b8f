"""The two studies of issue 13 end to end (real Ray, Tune, Optuna, Train workers, tiny trials):
the multi-objective smoke study's Optuna storage against its report, and the view-count grid.

Both run two trials at a time (--max-concurrent 2, one CPU per Train worker): FIFO studies whose
trials do not depend on each other's order, so the only change is that Ray's per-trial start-up
(new actor processes, each importing Ray and torch) overlaps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.test_study import TINY, dataset, run_study  # noqa: F401 - dataset is a fixture

pytestmark = pytest.mark.slow


def brute_force_front(points: dict[int, tuple[float, float]]) -> set[int]:
    """Optuna trial numbers no other point beats in both maximised objectives."""
    return {
        n
        for n, p in points.items()
        if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for m, q in points.items() if m != n)
    }


def test_pareto_smoke_storage_matches_the_report(tmp_path: Path, dataset: list[str]) -> None:  # noqa: F811
    import optuna

    storage = tmp_path / "studies"
    out = run_study(
        ["mouse_pareto_sweep", "--smoke", "--num-samples", "3", "--max-concurrent", "2"]
        + ["--storage", str(storage)]
        + TINY
        + dataset,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = storage / "mouse_pareto_sweep"
    study = optuna.load_study(
        study_name="mouse_pareto_sweep", storage=f"sqlite:///{study_dir / 'optuna.db'}"
    )
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    assert study.metric_names == ["val/psnr_bal", "val/mask_iou"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3  # FIFO: every trial runs to the end
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet").set_index("trial_id")
    for trial in complete:
        attrs = trial.user_attrs
        ident = attrs["tune_trial_id"]
        assert attrs["status"] == "finished" and (study_dir / attrs["run_folder"]).is_dir()
        assert attrs["run_folder"] == f"runs/{ident}"
        assert attrs["final/val/mask_iou"] == pytest.approx(trials.loc[ident, "final/val/mask_iou"])
        assert trials.loc[ident, "optuna_number"] == trial.number
        assert sorted(attrs["intermediate_values"], key=int) == ["10", "20"]  # trainer steps
        assert "training.losses.alpha_loss_weight" in trial.params

    expected = brute_force_front({t.number: (t.values[0], t.values[1]) for t in complete})
    report = (study_dir / "report" / "report.md").read_text()
    pareto = report.split("## Pareto front", 1)[1].split("\n## ", 1)[0]
    shown = {int(m.group(1)) for m in re.finditer(r"^\| `[^`]+` \| (\d+) \|", pareto, re.M)}
    assert shown == expected, pareto
    assert "## Tuning curves" in report and "Hypervolume of the front:" in pareto


def test_view_count_smoke_runs_each_input_view_count(tmp_path: Path, dataset: list[str]) -> None:  # noqa: F811
    storage = tmp_path / "studies"
    tiny = [*TINY, "--set", "training.schedule.max_steps=10", "--set", "training.schedule.warmup=2"]
    out = run_study(
        ["view_count_ablation", "--smoke", "--max-concurrent", "2", "--storage", str(storage)]
        + [*tiny, *dataset],
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = storage / "view_count_ablation"
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert sorted(trials["training.dataset.num_input_views"]) == [1, 2, 3, 4, 5]
    assert set(trials["status"]) == {"finished"}
    for _, row in trials.iterrows():
        # the config the trainer itself saved and ran with
        saved = yaml.safe_load((study_dir / "runs" / row["trial_id"] / "config.yaml").read_text())
        dataset_cfg = saved["training"]["dataset"]
        assert dataset_cfg["num_input_views"] == row["training.dataset.num_input_views"]
        assert dataset_cfg["num_views"] == 6 and dataset_cfg["target_has_input"] is False
        summary = json.loads(
            next(study_dir.glob(f"tune-*/{row['trial_dir']}/trial_summary.json")).read_text()
        )
        assert summary["status"] == "finished"
    report = (study_dir / "report" / "report.md").read_text()
    assert "### Input views (`training.dataset.num_input_views`): 5 levels" in report
