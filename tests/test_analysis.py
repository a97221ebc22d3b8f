"""Tests for analysis/: synthetic study folders with known numbers -> tables, report, plots."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats

from analysis import plots
from analysis.compare import analysis_set, compare_all, compare_factor, paired_differences
from analysis.factors import DATASET_TYPE, FACTORS
from analysis.importance import parameter_importance
from analysis.load import NotAStudyError, read_study_info, read_trials
from analysis.report import main, write_report
from analysis.stats import mean_ci, t_quantile, welch_difference
from analysis.tables import build_curves, build_trials

REPO_ROOT = Path(__file__).resolve().parents[1]
T_975_DF2 = 4.302653  # Student t, two-sided 95%, 2 degrees of freedom (tables)
T_975_DF1 = 12.706205
MAX_STEPS = 300
STEPS = (100, 200, 300)
TUNE_DIR = "tune-0a1b2c3d"  # study.run names the Tune folder tune-<random id> and records it


# ---------------------------------------------------------------- synthetic study writer


def base_config(seed: int, mouse: bool, **overrides: Any) -> dict[str, Any]:
    """A full flat trainer config, as a trial summary stores it."""
    config = {
        "model.transformer.d": 256,
        "model.transformer.n_layer": 4,
        "training.dataset.dataset_path": "/data/mice/list.txt",
        "training.dataset.num_views": 6,
        "training.dataset.background_color": [1.0, 1.0, 1.0],
        "training.losses.l2_loss_weight": 1.0,
        "training.losses.ssim_loss_weight": 0.5,
        "training.losses.masked_l2_loss": True,
        "training.losses.masked_ssim_loss": True,
        "training.losses.mask_threshold": 0.1,
        "training.losses.background_loss_weight": 0.1,
        "training.optimizer.lr": 4e-4,
        "training.runtime.amp_dtype": "bf16",
        "training.runtime.seed": seed,
        "training.schedule.max_steps": MAX_STEPS,
        "mouse.use_mouse_dataset": mouse,
        "validation.val_every": 100,
    }
    config.update(overrides)
    return config


def write_study(root: Path, name: str = "view_order_ablation", **fields: Any) -> Path:
    study_dir = root / name
    (study_dir / TUNE_DIR).mkdir(parents=True)
    study = {
        "tune_dir": TUNE_DIR,
        "study": name,
        "objective": "val/psnr_fg",
        "mode": "max",
        "max_steps": MAX_STEPS,
        "searched_keys": ["mouse.use_mouse_dataset", "training.runtime.seed"],
        "optuna_storage": None,
        "optuna_study_name": None,
        "created": "2025-01-01T00:00:00",
    }
    study.update(fields)
    (study_dir / "study.json").write_text(json.dumps(study))
    return study_dir


def report_line(trial_id: str, iteration: int, step: int, **metrics: float) -> dict[str, Any]:
    """One Tune result line: our flat metric keys plus Tune's own bookkeeping."""
    return {
        **metrics,
        "metrics/lr": 1e-4 * iteration,  # trainer diagnostics: curves only
        "epoch": 0,
        "step": step,
        "training_iteration": iteration,
        "trial_id": trial_id,
        "time_total_s": 10.0 * iteration,
        "timestamp": 1_700_000_000 + iteration,
        "done": False,
        "config": {"mouse": {"use_mouse_dataset": True}},
    }


def curve_lines(
    trial_id: str,
    final_fg: float,
    *,
    final_iou: float = 0.6,
    losses: tuple[float, ...] = (0.9, 0.6, 0.4),
) -> list[dict[str, Any]]:
    """Three validation rounds ending at the given final values."""
    lines = []
    for i, (step, loss) in enumerate(zip(STEPS, losses, strict=True), start=1):
        fade = len(STEPS) - i  # earlier rounds are a bit worse
        lines.append(
            report_line(
                trial_id,
                i,
                step,
                **{
                    "train/loss": loss,
                    "train/l2_loss": loss * 0.8,
                    "train/ssim_loss": loss * 0.2,
                    "train/background_loss": 0.01,
                    "train/mask_iou": final_iou,
                    "val/psnr": final_fg + 8.0 - fade,
                    "val/psnr_fg": final_fg - fade,
                    "val/ssim": 0.9 - 0.01 * fade,
                    "val/mask_iou": final_iou - 0.05 * fade,
                },
            )
        )
    return lines


def write_trial(
    study_dir: Path,
    trial_id: str,
    params: dict[str, Any],
    *,
    lines: list[dict[str, Any]] | None = None,
    summary: dict[str, Any] | None = None,
    error_text: str | None = None,
    tune_dir: str = TUNE_DIR,
) -> Path:
    folder = (
        study_dir / tune_dir / f"train_fn_{trial_id}_0_seed={params.get('training.runtime.seed')}"
    )
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    if lines is not None:
        (folder / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if summary is not None:
        (folder / "trial_summary.json").write_text(json.dumps(summary))
    if error_text is not None:
        (folder / "error.txt").write_text(error_text)
    return folder


def summary_for(
    trial_id: str,
    config: dict[str, Any],
    status: str = "finished",
    error: str | None = None,
    steps_run: int = MAX_STEPS,
) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "status": status,
        "error": error,
        "diverged_step": 250 if status == "diverged" else None,
        "steps_run": steps_run,
        "wall_s": 123.5,
        "gpu_s": 100.25,
        "restarts": 0,
        "seed": config["training.runtime.seed"],
        "code_version": "abc1234",
        "config": config,
    }


def add_finished(
    study_dir: Path, trial_id: str, seed: int, mouse: bool, final_fg: float, **overrides: Any
) -> None:
    config = base_config(seed, mouse, **overrides)
    params = {"mouse.use_mouse_dataset": mouse, "training.runtime.seed": seed}
    write_trial(
        study_dir,
        trial_id,
        params,
        lines=curve_lines(trial_id, final_fg),
        summary=summary_for(trial_id, config),
    )


RANDOM_FG = (20.0, 21.0, 22.5)  # seeds 1, 2, 3
MOUSE_FG = (22.0, 23.5, 24.0)  # paired differences 2.0, 2.5, 1.5


def add_pairs(study_dir: Path, random_fg: tuple[float, ...], mouse_fg: tuple[float, ...]) -> None:
    for seed, (r, m) in enumerate(zip(random_fg, mouse_fg, strict=True), start=1):
        add_finished(study_dir, f"r{seed:04d}_00000", seed, False, r)
        add_finished(study_dir, f"m{seed:04d}_00000", seed, True, m)


def write_optuna_db(study_dir: Path, name: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{study_dir / 'optuna.db'}", direction="maximize"
    )
    distributions = {
        "training.optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
        "mouse.use_mouse_dataset": optuna.distributions.CategoricalDistribution([True, False]),
    }
    for i in range(10):
        lr = 1e-5 * 2.0**i
        mouse = i % 2 == 0
        value = 20.0 + 2.0 * mouse + 0.1 * math.log10(lr)
        study.add_trial(
            optuna.trial.create_trial(
                params={"training.optimizer.lr": lr, "mouse.use_mouse_dataset": mouse},
                distributions=distributions,
                value=value,
            )
        )


@pytest.fixture(scope="module")
def clear_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three seeds per dataset type, a clear mouse win; plus an errored and a diverged trial."""
    root = tmp_path_factory.mktemp("clear")
    study_dir = write_study(root, optuna_storage="optuna.db", optuna_study_name="vo")
    add_pairs(study_dir, RANDOM_FG, MOUSE_FG)
    write_trial(
        study_dir,
        "e0009_00000",
        {"mouse.use_mouse_dataset": False, "training.runtime.seed": 9},
        error_text="Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n\n",
    )
    config = base_config(7, True)
    lines = curve_lines("d0007_00000", 5.0, losses=(0.9, 5.0, float("nan")))
    write_trial(
        study_dir,
        "d0007_00000",
        {"mouse.use_mouse_dataset": True},
        lines=lines,
        summary=summary_for("d0007_00000", config, status="diverged", steps_run=250),
    )
    write_optuna_db(study_dir, "vo")
    write_report(study_dir)
    return study_dir


def load_tables(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    study = read_study_info(study_dir)
    trials = read_trials(study_dir)
    return build_trials(study, trials), build_curves(study, trials)


def row_of(trials: pd.DataFrame, trial_id: str) -> pd.Series:
    rows = trials[trials["trial_id"] == trial_id]
    assert len(rows) == 1, trial_id
    return rows.iloc[0]


# ---------------------------------------------------------------- statistics


def test_t_quantile_matches_tables() -> None:
    assert t_quantile(2) == pytest.approx(T_975_DF2, abs=1e-6)
    assert t_quantile(1) == pytest.approx(T_975_DF1, abs=1e-6)


def test_mean_ci_matches_hand_computation() -> None:
    estimate = mean_ci([20.0, 21.0, 22.5])
    mean = (20.0 + 21.0 + 22.5) / 3
    std = math.sqrt(((20 - mean) ** 2 + (21 - mean) ** 2 + (22.5 - mean) ** 2) / 2)
    half = T_975_DF2 * std / math.sqrt(3)
    assert (estimate.n, estimate.mean, estimate.std) == (3, pytest.approx(mean), pytest.approx(std))
    assert estimate.ci_low == pytest.approx(mean - half, abs=1e-5)
    assert estimate.ci_high == pytest.approx(mean + half, abs=1e-5)


def test_mean_ci_of_one_value_has_no_interval() -> None:
    estimate = mean_ci([3.0, float("nan")])
    assert estimate.n == 1 and estimate.mean == 3.0 and not estimate.has_ci


# ---------------------------------------------------------------- tables and dtypes


def test_trials_parquet_round_trip_keeps_dtypes(clear_study: Path) -> None:
    path = clear_study / "report" / "trials.parquet"
    trials = pd.read_parquet(path)
    built, _ = load_tables(clear_study)
    # the report adds the item-level flag columns (empty here: no trial was evaluated), the
    # Optuna trial number (analysis.optuna_study; null where Optuna has none) and the pictures
    # (null: no run folder here)
    item_columns = ["eval/pred_fg_fraction", "eval/gt_fg_fraction", "eval/mask_iou"]
    item_columns += ["flag_mask_covers_image", "validation_picture", "eval_picture"]
    assert trials["optuna_number"].dtype == "Int64" and trials["optuna_number"].isna().all()
    assert trials["validation_picture"].isna().all() and trials["eval_picture"].isna().all()
    pd.testing.assert_frame_equal(trials.drop(columns=[*item_columns, "optuna_number"]), built)
    schema = pq.read_schema(path)

    def arrow(name: str) -> pa.DataType:
        return schema.field(name).type

    assert trials["flag_background_collapse"].dtype == bool and arrow("flag_diverged") == pa.bool_()
    assert trials["n_reports"].dtype == "int64" and arrow("steps_run") == pa.int64()
    assert trials["final/val/psnr_fg"].dtype == "float64" and arrow("wall_s") == pa.float64()
    assert pd.api.types.is_string_dtype(trials["status"]) and pa.types.is_large_string(
        arrow("status")
    )
    assert arrow("mouse.use_mouse_dataset") == pa.bool_()
    assert arrow("training.runtime.seed") == pa.int64()
    assert arrow("training.optimizer.lr") == pa.float64()
    assert pa.types.is_large_string(arrow("training.runtime.amp_dtype"))
    # A list value is stored as JSON text.
    assert pa.types.is_large_string(arrow("training.dataset.background_color"))
    assert (
        json.loads(row_of(trials, "r0001_00000")["training.dataset.background_color"]) == [1.0] * 3
    )
    for column in trials.columns:
        assert trials[column].dtype != object, column


def test_only_the_recorded_tune_folder_holds_the_study(tmp_path: Path) -> None:
    """A start that died before Tune saved state leaves another tune-<id>/; its trials are not read."""
    study_dir = write_study(tmp_path)
    add_finished(study_dir, "a0001_00000", 1, True, 22.0)
    params = {"mouse.use_mouse_dataset": False, "training.runtime.seed": 1}
    write_trial(
        study_dir,
        "dead1_00000",
        params,
        lines=curve_lines("dead1_00000", 5.0),
        tune_dir="tune-deadbeef",
    )
    assert [t.summary["trial_id"] for t in read_trials(study_dir)] == ["a0001_00000"]
    # A study folder from before the record (one `tune/` folder) still reads.
    legacy = write_study(tmp_path / "legacy", tune_dir=None)
    write_trial(
        legacy, "old01_00000", params, lines=curve_lines("old01_00000", 9.0), tune_dir="tune"
    )
    assert [t.folder for t in read_trials(legacy)] == ["train_fn_old01_00000_0_seed=1"]


def test_curves_parquet_has_one_row_per_step(clear_study: Path) -> None:
    curves = pd.read_parquet(clear_study / "report" / "curves.parquet")
    first = curves[curves["trial_id"] == "m0001_00000"]
    assert list(first["step"]) == list(STEPS)
    assert list(first["training_iteration"]) == [1, 2, 3]
    assert first["val/psnr_fg"].tolist() == [20.0, 21.0, 22.0]
    assert curves["step"].dtype == "int64" and curves["val/mask_iou"].dtype == "float64"
    assert {"study", "trial_id", "time_total_s", "train/loss", "val/ssim"} <= set(curves.columns)
    assert first["metrics/lr"].tolist() == pytest.approx([1e-4, 2e-4, 3e-4])
    trials = pd.read_parquet(clear_study / "report" / "trials.parquet")
    assert "final/metrics/lr" not in trials.columns and "final/epoch" not in trials.columns
    assert "e0009_00000" not in set(curves["trial_id"])


def test_final_best_and_best_step(clear_study: Path) -> None:
    trials, _ = load_tables(clear_study)
    row = row_of(trials, "m0002_00000")
    assert row["final/val/psnr_fg"] == 23.5 and row["best/val/psnr_fg"] == 23.5
    assert row["best_step/val/psnr_fg"] == 300
    assert row["best/train/loss"] == 0.4 and row["best_step/train/loss"] == 300
    assert row["status"] == "finished" and row["seed"] == 2 and row["code_version"] == "abc1234"
    assert row["steps_run"] == 300 and row["wall_s"] == 123.5 and row["gpu_s"] == 100.25
    assert row["study"] == "view_order_ablation"


def test_errored_trial_without_results_keeps_its_row(clear_study: Path) -> None:
    trials, _ = load_tables(clear_study)
    row = row_of(trials, "e0009_00000")
    assert row["status"] == "errored"
    assert row["error"] == "RuntimeError: CUDA out of memory"
    assert pd.isna(row["final/val/psnr_fg"]) and pd.isna(row["steps_run"])
    assert row["mouse.use_mouse_dataset"] == False  # noqa: E712 - from params.json
    assert row["n_reports"] == 0


def test_diverged_trial_flagged_and_excluded(clear_study: Path) -> None:
    trials, _ = load_tables(clear_study)
    row = row_of(trials, "d0007_00000")
    assert row["status"] == "diverged" and row["flag_diverged"]
    analysed = analysis_set(trials, "val/psnr_fg")
    assert set(analysed["trial_id"]) == {f"{k}{s:04d}_00000" for k in "rm" for s in (1, 2, 3)}


@pytest.fixture
def flags_study(tmp_path: Path) -> Path:
    study_dir = write_study(tmp_path, "flags")
    add_finished(study_dir, "h0001_00000", 1, True, 24.0)
    config = base_config(2, True)
    collapse = curve_lines("c0002_00000", 9.0, final_iou=0.01, losses=(0.9, 0.3, 0.2))
    collapse[-1]["val/mask_iou"] = 0.01
    write_trial(
        study_dir,
        "c0002_00000",
        {"training.runtime.seed": 2},
        lines=collapse,
        summary=summary_for("c0002_00000", config),
    )
    # Stopped by ASHA at step 100: no summary, nested metrics, config only from params.json.
    line = report_line("s0003_00000", 1, 100, **{"train/loss": 0.8})
    line["val"] = {"psnr_fg": 15.0, "mask_iou": 0.3}
    write_trial(
        study_dir,
        "s0003_00000",
        {"mouse.use_mouse_dataset": False, "training.runtime.seed": 3},
        lines=[line],
    )
    # Diverged without a summary: the final loss is NaN.
    nan_loss = curve_lines("n0004_00000", 18.0, losses=(0.9, 0.5, float("nan")))
    write_trial(study_dir, "n0004_00000", {"training.runtime.seed": 4}, lines=nan_loss)
    return study_dir


def test_flags(flags_study: Path) -> None:
    trials, curves = load_tables(flags_study)
    healthy, collapse = row_of(trials, "h0001_00000"), row_of(trials, "c0002_00000")
    stopped, nan_loss = row_of(trials, "s0003_00000"), row_of(trials, "n0004_00000")
    assert collapse["flag_background_collapse"] and not healthy["flag_background_collapse"]
    assert not any(r["flag_diverged"] for r in (healthy, collapse, stopped))
    assert nan_loss["flag_diverged"] and nan_loss["status"] == "finished"
    assert stopped["status"] == "stopped_early" and stopped["flag_stopped_early"]
    assert not healthy["flag_stopped_early"]
    assert stopped["final/val/psnr_fg"] == 15.0 and stopped["final/val/mask_iou"] == 0.3
    assert stopped["mouse.use_mouse_dataset"] == False  # noqa: E712
    assert pd.isna(stopped["training.losses.mask_threshold"])  # unknown without a summary
    assert stopped["steps_run"] == 100 and stopped["wall_s"] == 10.0 and pd.isna(stopped["gpu_s"])
    assert row_of(curves, "s0003_00000")["val/psnr_fg"] == 15.0


def test_flags_in_report(flags_study: Path) -> None:
    text = write_report(flags_study).read_text()
    flags = text.split("## Flags", 1)[1].split("\n## ", 1)[0]
    assert "`c0002_00000` | finished | background collapse" in flags
    assert "`n0004_00000` | finished | diverged" in flags
    assert "`s0003_00000` | stopped_early | stopped early" in flags
    assert "h0001_00000" not in flags
    assert "Not an Optuna-searched study" in text


def test_restarted_trial_keeps_last_report_per_step_and_skips_torn_line(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path)
    lines = curve_lines("r0001_00000", 20.0)
    replay = dict(lines[1], **{"val/psnr_fg": 25.0})  # step 200 reported again after a restart
    folder = write_trial(
        study_dir,
        "r0001_00000",
        {"training.runtime.seed": 1},
        lines=[lines[0], lines[1], lines[0], replay, lines[2]],
        summary={"trial_id": "r0001_00000", "status": "running"},  # written early, never final
    )
    with (folder / "result.json").open("a") as handle:
        handle.write('{"step": 400, "val/psnr_fg"')  # killed mid-write
    trials, curves = load_tables(study_dir)
    assert curves["step"].tolist() == list(STEPS)
    assert curves["val/psnr_fg"].tolist() == [18.0, 25.0, 20.0]
    row = row_of(trials, "r0001_00000")
    assert (row["final/val/psnr_fg"], row["best/val/psnr_fg"], row["best_step/val/psnr_fg"]) == (
        20.0,
        25.0,
        200,
    )
    assert row["status"] == "finished"  # no final summary, but it reached max_steps


# ---------------------------------------------------------------- comparisons


def test_paired_comparison_matches_hand_computation(clear_study: Path) -> None:
    trials, _ = load_tables(clear_study)
    analysed = analysis_set(trials, "val/psnr_fg")
    assert sorted(paired_differences(analysed, DATASET_TYPE, "val/psnr_fg")) == [1.5, 2.0, 2.5]
    comparison = compare_factor(trials, DATASET_TYPE, "val/psnr_fg", "max")
    fg = next(m for m in comparison.metrics if m.metric == "val/psnr_fg")
    # differences 2.0, 2.5, 1.5: mean 2, sd 0.5, half width t * 0.5 / sqrt(3)
    half = T_975_DF2 * 0.5 / math.sqrt(3)
    assert fg.paired.n == 3 and fg.paired.mean == pytest.approx(2.0)
    assert fg.paired.ci_low == pytest.approx(2.0 - half, abs=1e-5)
    assert fg.paired.ci_high == pytest.approx(2.0 + half, abs=1e-5)
    # per level: random 20, 21, 22.5
    mean = 63.5 / 3
    std = math.sqrt(((20 - mean) ** 2 + (21 - mean) ** 2 + (22.5 - mean) ** 2) / 2)
    assert (fg.baseline.n, fg.baseline.mean, fg.baseline.std) == (
        3,
        pytest.approx(mean),
        pytest.approx(std),
    )
    assert fg.baseline.ci_high == pytest.approx(mean + T_975_DF2 * std / math.sqrt(3), abs=1e-5)
    assert fg.treatment.mean == pytest.approx(69.5 / 3)
    assert comparison.sentence == (
        "Fixed rig order (mouse) beats random by 2.00 dB foreground PSNR, "
        f"95% CI [{2.0 - half:.2f}, {2.0 + half:.2f}], 3 seeds (paired)."
    )
    assert "[0.76, 3.24]" in comparison.sentence


def test_report_tables_show_the_numbers(clear_study: Path) -> None:
    text = (clear_study / "report" / "report.md").read_text()
    assert "Fixed rig order (mouse) beats random by 2.00 dB foreground PSNR" in text
    # random level of val/psnr_fg: n=3, mean 21.17, std 1.26, CI [18.04, 24.29]
    assert "| `val/psnr_fg` | random | 3 | 21.17 | 1.26 | [18.04, 24.29] |" in text
    assert "| `val/psnr_fg` | 2.00 | [0.76, 3.24] | 3 |" in text


def test_noise_says_no_difference(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, (20.0, 22.0, 21.0), (21.5, 20.5, 21.2))  # diffs 1.5, -1.5, 0.2
    trials, _ = load_tables(study_dir)
    comparison = compare_factor(trials, DATASET_TYPE, "val/psnr_fg", "max")
    diffs = [1.5, -1.5, 0.2]
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = T_975_DF2 * std / math.sqrt(3)
    assert comparison.sentence == (
        "No difference beyond noise in foreground PSNR between random and mouse "
        f"(difference mouse − random {mean:.2f} dB, 95% CI [{mean - half:.2f}, {mean + half:.2f}], "
        "3 seeds (paired))."
    )


def test_baseline_can_win(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, MOUSE_FG, RANDOM_FG)
    trials, _ = load_tables(study_dir)
    sentence = compare_factor(trials, DATASET_TYPE, "val/psnr_fg", "max").sentence
    assert sentence.startswith("Random view order (random) beats mouse by 2.00 dB")


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = np.mean(b) - np.mean(a)
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


@pytest.mark.parametrize(
    ("mouse_fg", "wins"), [((23.0, 24.5), False), ((27.0, 28.0), True)], ids=["noise", "clear"]
)
def test_unpaired_uses_welch(tmp_path: Path, mouse_fg: tuple[float, ...], wins: bool) -> None:
    study_dir = write_study(tmp_path)
    for seed, value in enumerate(RANDOM_FG, start=1):
        add_finished(study_dir, f"r{seed:04d}_00000", seed, False, value)
    for seed, value in enumerate(mouse_fg, start=4):  # other seeds: no pairs
        add_finished(study_dir, f"m{seed:04d}_00000", seed, True, value)
    trials, _ = load_tables(study_dir)
    comparison = compare_factor(trials, DATASET_TYPE, "val/psnr_fg", "max")
    fg = next(m for m in comparison.metrics if m.metric == "val/psnr_fg")
    diff, low, high = welch_by_hand(list(RANDOM_FG), list(mouse_fg))
    assert fg.paired.n == 0
    assert (fg.welch.mean, fg.welch.ci_low, fg.welch.ci_high) == (
        pytest.approx(diff),
        pytest.approx(low),
        pytest.approx(high),
    )
    assert fg.difference() is fg.welch
    if wins:
        expected = (
            f"Fixed rig order (mouse) beats random by {diff:.2f} dB foreground PSNR, "
            f"95% CI [{low:.2f}, {high:.2f}], 3 vs 2 trials (unpaired, Welch)."
        )
    else:
        expected = (
            "No difference beyond noise in foreground PSNR between random and mouse "
            f"(difference mouse − random {diff:.2f} dB, 95% CI [{low:.2f}, {high:.2f}], "
            "3 vs 2 trials (unpaired, Welch))."
        )
    assert comparison.sentence == expected
    assert welch_difference(list(RANDOM_FG), list(mouse_fg)).n_other == 2


def test_one_trial_in_a_level_is_not_enough(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path)
    for seed, value in enumerate(RANDOM_FG, start=1):
        add_finished(study_dir, f"r{seed:04d}_00000", seed, False, value)
    add_finished(study_dir, "m0001_00000", 1, True, 30.0)
    trials, _ = load_tables(study_dir)
    sentence = compare_factor(trials, DATASET_TYPE, "val/psnr_fg", "max").sentence
    assert sentence.startswith("Not enough data to compare random and mouse on foreground PSNR")


def test_minimised_objective_direction(tmp_path: Path) -> None:
    # Lower train loss wins when the study minimises it.
    study_dir = write_study(tmp_path, objective="train/loss", mode="min")
    for seed in (1, 2, 3):
        add_finished(study_dir, f"r{seed:04d}_00000", seed, False, 20.0)
        config = base_config(seed, True)
        lines = curve_lines(f"m{seed:04d}_00000", 20.0, losses=(0.9, 0.5, 0.1 + 0.01 * seed))
        write_trial(
            study_dir,
            f"m{seed:04d}_00000",
            {"training.runtime.seed": seed},
            lines=lines,
            summary=summary_for(f"m{seed:04d}_00000", config),
        )
    trials, _ = load_tables(study_dir)
    sentence = compare_factor(trials, DATASET_TYPE, "train/loss", "min").sentence
    assert sentence.startswith("Fixed rig order (mouse) beats random by 0.28")


def test_only_factors_with_two_levels_are_reported(clear_study: Path) -> None:
    trials, _ = load_tables(clear_study)
    reported = [c.factor.name for c in compare_all(trials, "val/psnr_fg", "max")]
    assert reported == ["dataset_type"]


def test_background_factor_pairs_ignoring_its_own_key(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path)
    weight = "training.losses.background_loss_weight"
    for seed in (1, 2):
        add_finished(study_dir, f"z{seed:04d}_00000", seed, True, 20.0 + seed, **{weight: 0.0})
        add_finished(study_dir, f"a{seed:04d}_00000", seed, True, 22.0 + seed, **{weight: 0.1})
        add_finished(study_dir, f"b{seed:04d}_00000", seed, True, 24.0 + seed, **{weight: 0.5})
    trials, _ = load_tables(study_dir)
    factor = next(f for f in FACTORS if f.name == "background_loss")
    # Within a seed the two positive weights are averaged: 23 - 20 = 3 for each seed.
    assert paired_differences(trials, factor, "val/psnr_fg").tolist() == [3.0, 3.0]


def test_pairs_within_a_seed_are_averaged_per_seed(tmp_path: Path) -> None:
    """A 2 x 2 grid over 2 seeds: each factor has 4 pairs from 2 seeds; the seed is the unit
    (the two pairs of a seed are averaged before the interval: df 1, not 3), and the sentence
    says so."""
    study_dir = write_study(tmp_path)
    weight = "training.losses.background_loss_weight"
    for seed in (1, 2):
        for w, gain in ((0.0, 0.0), (0.1, 0.5)):
            add_finished(
                study_dir,
                f"r{seed}{int(w * 10)}_00000",
                seed,
                False,
                20.0 + seed + gain,
                **{weight: w},
            )
            add_finished(
                study_dir,
                f"m{seed}{int(w * 10)}_00000",
                seed,
                True,
                22.0 + seed + gain,
                **{weight: w},
            )
    trials, _ = load_tables(study_dir)
    dataset = next(c for c in compare_all(trials, "val/psnr_fg", "max") if c.factor is DATASET_TYPE)
    objective = next(m for m in dataset.metrics if m.metric == "val/psnr_fg")
    assert (objective.paired.n, objective.pair_seeds, objective.n_pairs) == (2, 2, 4)
    assert (
        dataset.sentence.endswith(
            "2 seeds (paired; 4 pairs averaged per seed), Holm p 0 across 2 factors."
        )
        and "2.00 dB" in dataset.sentence
    )


# ---------------------------------------------------------------- report, plots, CLI


def test_report_has_every_section_and_plot(clear_study: Path) -> None:
    report_dir = clear_study / "report"
    text = (report_dir / "report.md").read_text()
    assert text.startswith("# Study report: view_order_ablation")
    assert "**8 trials**: 6 finished, 1 diverged, 1 errored." in text
    for heading in (
        "## Best trials",
        "## Factor comparisons",
        "### Dataset type",
        "## Flags",
        "## Parameter importance (Optuna)",
        "## Plots",
        "## Files",
    ):
        assert heading in text, heading
    best = text.split("## Best trials", 1)[1].split("\n## ", 1)[0]
    assert best.index("`m0003_00000`") < best.index("`m0002_00000`")
    assert "`mouse.use_mouse_dataset`" in best
    assert "CUDA out of memory" in text
    names = ["fg_psnr_vs_mask_iou.png", "learning_curves.png", "factor_dataset_type.png"]
    for name in names:
        assert f"({name})" in text
        with Image.open(report_dir / name) as image:
            image.verify()
            assert image.format == "PNG"
    assert not list(clear_study.glob(".report-tmp-*"))


def test_importance_names_the_optuna_params(clear_study: Path) -> None:
    text = (clear_study / "report" / "report.md").read_text()
    section = text.split("## Parameter importance (Optuna)", 1)[1].split("\n## ", 1)[0]
    assert "`training.optimizer.lr`" in section and "`mouse.use_mouse_dataset`" in section


def test_importance_without_enough_trials_or_study_says_why(tmp_path: Path) -> None:
    import optuna

    study_dir = write_study(tmp_path, optuna_storage="optuna.db", optuna_study_name="few")
    optuna.create_study(study_name="few", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    few = parameter_importance(read_study_info(study_dir))
    assert few.values == {} and few.note.startswith("Too few completed Optuna trials (0")
    (study_dir / "study.json").write_text(
        json.dumps(
            {
                "study": "x",
                "objective": "val/psnr_fg",
                "optuna_storage": "optuna.db",
                "optuna_study_name": "no_such_study",
            }
        )
    )
    missing = parameter_importance(read_study_info(study_dir))
    assert missing.values == {} and missing.note.startswith("Parameter importance failed: KeyError")
    assert "\n" not in missing.note


def test_failed_rewrite_leaves_previous_report_intact(
    flags_study: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_report(flags_study)
    report_dir = flags_study / "report"
    before = {p.name: p.read_bytes() for p in report_dir.iterdir()}
    assert {"report.md", "trials.parquet", "curves.parquet"} <= set(before)
    add_finished(flags_study, "x0009_00000", 9, False, 30.0)  # the new report would differ

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("plot crashed mid-way")

    monkeypatch.setattr(plots, "plot_learning_curves", explode)
    with pytest.raises(RuntimeError, match="plot crashed"):
        write_report(flags_study)
    after = {p.name: p.read_bytes() for p in report_dir.iterdir()}
    assert after == before
    assert len(pd.read_parquet(report_dir / "trials.parquet")) == 4
    assert not list(flags_study.glob(".report-tmp-*"))
    monkeypatch.undo()
    assert main([str(flags_study)]) == 0  # the CLI entry point, in-process
    assert capsys.readouterr().out.strip() == str(report_dir / "report.md")
    assert len(pd.read_parquet(report_dir / "trials.parquet")) == 5


def test_cli_rejects_non_study_folder_without_importing_ray(tmp_path: Path) -> None:
    folder = tmp_path / "not_a_study"
    folder.mkdir()
    # -X importtime lists every module the run imported on stderr: Ray must not be among them.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "analysis.report", str(folder)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"error: {folder} is not a study folder" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "pandas" in imported  # the listing worked
    assert not {name for name in imported if name == "ray" or name.startswith("ray.")}
    with pytest.raises(NotAStudyError, match="not_a_study"):
        write_report(folder)


def test_factor_of_two_keys_has_a_level_only_where_they_agree():
    from analysis.compare import level_labels
    from analysis.factors import FACTORS

    factor = next(f for f in FACTORS if f.name == "masked_losses")
    trials = pd.DataFrame(
        {
            "training.losses.masked_l2_loss": [True, False, True, False],
            "training.losses.masked_ssim_loss": [True, False, False, True],
        }
    )
    assert list(level_labels(trials, factor)) == ["on", "off", None, None]


def linked_mask_trials(ssim_follows_l2: bool) -> pd.DataFrame:
    """Masked L2 off/on x 2 seeds, masked SSIM linked to it or varied on its own."""
    l2 = [False, True, False, True, False, True, False, True]
    ssim = l2 if ssim_follows_l2 else [False, False, True, True] * 2
    return pd.DataFrame(
        {
            "training.losses.masked_l2_loss": l2,
            "training.losses.masked_ssim_loss": ssim,
            "seed": [0, 0, 0, 0, 1, 1, 1, 1],
            "final/val/psnr_fg": [5.0, 15.0, 5.5, 15.5, 6.0, 14.0, 6.5, 14.5],
            "status": "finished",
            "flag_diverged": False,
        }
    )


def test_a_key_linked_to_another_is_reported_only_as_the_combined_factor():
    from analysis.compare import reported_factors

    # mask_loss_ablation links masked SSIM to masked L2: a "masked SSIM" section would credit
    # SSIM alone with what the two do together, so only the combined factor is compared
    linked = reported_factors(linked_mask_trials(True), "val/psnr_fg")
    assert [f.name for f in linked] == ["masked_losses"]
    # varied independently, each key is its own factor (the combined one pairs the agreeing
    # trials only)
    crossed = reported_factors(linked_mask_trials(False), "val/psnr_fg")
    assert [f.name for f in crossed] == ["masked_l2", "masked_ssim", "masked_losses"]


# ---------------------------------------------------------------- item-level evaluation

ITEM_METRIC_NAMES = (
    "psnr",
    "psnr_fg",
    "psnr_union",
    "psnr_bal",
    "psnr_int",
    "ssim_fg",
    "mask_iou",
    "coverage",
    "pred_fg_fraction",
    "gt_fg_fraction",
)
N_ITEMS = 8


def eval_protocol(**changes: Any) -> dict[str, Any]:
    protocol = {
        "metrics_version": 1,
        "item_set_hash": "ab" * 32,
        "checkpoint_rule": "last",
        "checkpoint_objective": None,
        "pred_mask_threshold": 0.1,
        "gt_alpha_threshold": 0.5,
        "image_size": 64,
        "background_color": "white",
        "view_order": "rig: inputs cameras 0-4, targets 0-5",
        "checkpoint_step": MAX_STEPS,
        "split": "test",
        "dataset_path": "/data/mice/data_test.txt",
        "n_items": N_ITEMS,
        "n_rows": N_ITEMS * 6,
    }
    protocol.update(changes)
    return protocol


def write_eval(
    study_dir: Path,
    trial_id: str,
    psnr_fg: np.ndarray,
    *,
    pred_fraction: float = 0.06,
    protocol: dict[str, Any] | None = None,
) -> None:
    """runs/<trial>/eval/ as trainables.gslrm.evaluate writes it: psnr_fg [items, 6 views]."""
    folder = study_dir / "runs" / trial_id / "eval"
    folder.mkdir(parents=True)
    n_items, n_views = psnr_fg.shape
    item, camera = np.meshgrid(range(n_items), range(n_views), indexing="ij")
    columns = {
        "item_id": pa.array([f"test_{i:06d}" for i in item.ravel()], pa.string()),
        "item_index": pa.array(item.ravel(), pa.int32()),
        "camera": pa.array(camera.ravel(), pa.int16()),
        "role": pa.array(["input" if c < 5 else "novel" for c in camera.ravel()], pa.string()),
    }
    values = {name: np.full(n_items * n_views, 0.5) for name in ITEM_METRIC_NAMES}
    values.update(psnr_fg=psnr_fg.ravel(), psnr=psnr_fg.ravel() + 10, psnr_int=psnr_fg.ravel())
    values.update(psnr_union=psnr_fg.ravel(), psnr_bal=psnr_fg.ravel() + 3)
    values.update(pred_fg_fraction=np.full(n_items * n_views, pred_fraction))
    values.update(gt_fg_fraction=np.full(n_items * n_views, 0.05))
    columns.update({name: pa.array(values[name], pa.float64()) for name in ITEM_METRIC_NAMES})
    pq.write_table(pa.table(columns), folder / "items.parquet")
    (folder / "protocol.json").write_text(json.dumps(protocol or eval_protocol()))


def item_study(tmp_path: Path, eval_changes: dict[int, dict[str, Any]] | None = None) -> Path:
    """3 seed pairs; on every test item, mouse beats random by 1 dB +- item noise."""
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, RANDOM_FG, MOUSE_FG)
    rng = np.random.default_rng(0)
    for seed in (1, 2, 3):
        base = 20 + rng.normal(0, 1.0, (N_ITEMS, 1)) + rng.normal(0, 0.3, (N_ITEMS, 6))
        write_eval(study_dir, f"r{seed:04d}_00000", base)
        mouse = base + 1.0 + rng.normal(0, 0.2, (N_ITEMS, 6))
        write_eval(study_dir, f"m{seed:04d}_00000", mouse, **(eval_changes or {}).get(seed, {}))
    return study_dir


def test_report_gathers_items_and_adds_item_level_sections(tmp_path: Path) -> None:
    study_dir = item_study(tmp_path)
    text = write_report(study_dir).read_text()
    items = pq.read_table(study_dir / "report" / "items.parquet")
    assert items.num_rows == 6 * N_ITEMS * 6  # 6 evaluated trials x items x views
    frame = items.to_pandas()
    assert str(frame["camera"].dtype) == "int16" and str(frame["seed"].dtype) == "Int64"
    assert set(frame["trial_id"]) == {f"{k}{s:04d}_00000" for k in "rm" for s in (1, 2, 3)}
    assert frame.groupby("trial_id").size().eq(N_ITEMS * 6).all()
    assert "## Evaluation protocol (item level)" in text
    assert "6 of 6 analysed trials evaluated on the **test split**" in text
    section = text.split("### Dataset type", 1)[1]
    # the seed-level tables stay, the item-level ones follow
    assert "Differences of final values" in section and "#### Item level" in section
    sentence = section.split("#### Item level", 1)[1].split("**", 2)[1]
    assert sentence.startswith(
        "Item level: Fixed rig order (mouse) beats random on foreground PSNR"
    )
    assert f"3 seeds x {N_ITEMS} items ({3 * N_ITEMS * 6} paired item-views)" in sentence
    assert "Per rig camera" in section and "| 5 | novel |" in section
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert str(trials["flag_mask_covers_image"].dtype) == "boolean"
    assert not trials["flag_mask_covers_image"].any()


def test_different_item_sets_are_refused_by_name(tmp_path: Path) -> None:
    other = {2: {"protocol": eval_protocol(item_set_hash="cd" * 32)}}
    study_dir = item_study(tmp_path, other)
    text = write_report(study_dir).read_text()
    assert (
        "Item-level comparisons refused: trial m0002_00000 was evaluated on a different item "
        "set (hash cdcdcdcdcdcd..., trial m0001_00000: abababababab...)" in text
    )
    assert "#### Item level" not in text
    assert "Differences of final values" in text  # the seed-level analysis still stands


def test_different_checkpoint_rules_are_refused_by_name(tmp_path: Path) -> None:
    other = {
        3: {"protocol": eval_protocol(checkpoint_rule="best", checkpoint_objective="val/psnr_fg")}
    }
    text = write_report(item_study(tmp_path, other)).read_text()
    assert "trial m0003_00000 was evaluated on a different checkpoint rule ('best', trial " in text


def test_mask_covering_the_image_is_flagged_next_to_background_collapse(tmp_path: Path) -> None:
    study_dir = item_study(tmp_path, {1: {"pred_fraction": 0.97}})
    text = write_report(study_dir).read_text()
    flags = text.split("## Flags", 1)[1].split("\n## ", 1)[0]
    assert "0 background collapse, 1 mask covers the image" in flags
    assert "| `m0001_00000` | finished | mask covers the image | predicted foreground 0.97" in flags
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet").set_index("trial_id")
    assert bool(trials.loc["m0001_00000", "flag_mask_covers_image"])
    assert trials.loc["m0001_00000", "eval/pred_fg_fraction"] == pytest.approx(0.97)


def test_study_without_evaluations_says_so_and_writes_an_empty_typed_items_file(
    clear_study: Path,
) -> None:
    text = (clear_study / "report" / "report.md").read_text()
    assert "No analysed trial has an item-level evaluation" in text
    items = pd.read_parquet(clear_study / "report" / "items.parquet")
    assert len(items) == 0 and "psnr_fg" in items.columns
    trials = pd.read_parquet(clear_study / "report" / "trials.parquet")
    assert trials["flag_mask_covers_image"].isna().all()


def test_margin_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study_dir = item_study(tmp_path)
    assert main([str(study_dir), "--margin", "psnr_fg=5"]) == 0
    text = (study_dir / "report" / "report.md").read_text()
    assert "`psnr_fg` ±5" in text
    assert "are equivalent on foreground PSNR within ±5.00 dB" in text  # a 1 dB gain is < 5
    with pytest.raises(SystemExit) as info:
        main([str(study_dir), "--margin", "lpips=0.1"])
    assert info.value.code == 2 and "unknown metric 'lpips'" in capsys.readouterr().err


def test_a_resumed_trials_curve_keeps_the_rounds_before_the_driver_restart(tmp_path):
    # A driver restart that restores a trial makes Tune start its result.json afresh: the
    # curve then began at the resume, and a collapsed trial whose loss fell before it was not
    # flagged. The trainer's metrics.jsonl still has the earlier validation rounds.
    from analysis.load import TrialFiles, reports_before_tune
    from analysis.tables import background_collapsed, trial_curve

    rows = [
        {"step": 10, "train/loss": 1.0},
        {"step": 10, "val/mask_iou": 0.0, "val/psnr_fg": 3.5},
        {"step": 15, "train/loss": 0.9},  # a logging step without validation: not a round
        {"step": 20, "train/loss": 0.6, "val/mask_iou": 0.0},
        {"step": 30, "val/mask_iou": 0.5},  # Tune has this round: its report wins
    ]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 40, "val/')
    tune = [{"step": 30, "train/loss": 0.4, "val/mask_iou": 0.01, "training_iteration": 1}]
    earlier = reports_before_tune(metrics, tune)
    assert [r["step"] for r in earlier] == [10, 20]
    assert earlier[0] == {"step": 10, "train/loss": 1.0, "val/mask_iou": 0.0, "val/psnr_fg": 3.5}
    trial = TrialFiles(folder="t", params={}, reports=earlier + tune, summary=None, error_text=None)
    curve = trial_curve(trial)
    assert [row["step"] for row in curve] == [10, 20, 30]
    assert curve[-1]["val/mask_iou"] == 0.01
    assert background_collapsed(curve)  # loss 1.0 -> 0.4 while the final IoU is 0.01
    assert not background_collapsed(trial_curve(TrialFiles("t", {}, tune, None, None)))
    assert reports_before_tune(tmp_path / "missing.jsonl", tune) == []
