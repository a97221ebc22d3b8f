"""Report sections of issue 13 on hand-built study folders with hand-computed numbers: Pareto
front and hypervolume of a multi-objective Optuna study, the per-level table of a view-count
grid, interactions of a crossed grid, tuning curves and the compute line."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from PIL import Image

from analysis.report import write_report
from tests.test_analysis import base_config, curve_lines, summary_for, write_study, write_trial

# (final val/psnr_fg, final val/mask_iou) of finished trials, in Optuna's proposal order
PARETO_TRIALS = {"t4": (18.0, 0.7), "t1": (20.0, 0.5), "t3": (19.0, 0.45), "t2": (22.0, 0.4)}
GPU_S = 100.25  # summary_for's gpu_s per trial


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def write_pareto_optuna(study_dir: Path, order: list[str]) -> None:
    """A two-direction Optuna storage whose trials carry the searcher's tune_trial_id."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="mouse_pareto_sweep",
        storage=f"sqlite:///{study_dir / 'optuna.db'}",
        directions=["maximize", "maximize"],
    )
    study.set_metric_names(["val/psnr_fg", "val/mask_iou"])
    distributions = {"training.optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3)}
    for ident in order:
        finished = ident in PARETO_TRIALS
        study.add_trial(
            optuna.trial.create_trial(
                params={"training.optimizer.lr": 1e-4},
                distributions=distributions,
                values=list(PARETO_TRIALS[ident]) if finished else None,
                state=optuna.trial.TrialState.COMPLETE
                if finished
                else optuna.trial.TrialState.PRUNED,
                user_attrs={"tune_trial_id": ident, "run_folder": f"runs/{ident}"},
            )
        )


@pytest.fixture(scope="module")
def pareto_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four finished trials (t3 dominated by t1) and t5, stopped at step 200 of 300 with values
    that would dominate every other: it must not reach the front, being not final."""
    root = tmp_path_factory.mktemp("pareto")
    study_dir = write_study(
        root,
        "mouse_pareto_sweep",
        optuna_storage="optuna.db",
        optuna_study_name="mouse_pareto_sweep",
        searched_keys=["training.optimizer.lr"],
    )
    for seed, (ident, (fg, iou)) in enumerate(PARETO_TRIALS.items()):
        config = base_config(seed, True)
        write_trial(
            study_dir,
            ident,
            {"training.optimizer.lr": 1e-4},
            lines=curve_lines(ident, fg, final_iou=iou),
            summary=summary_for(ident, config),
        )
    config = base_config(9, True)
    write_trial(
        study_dir,
        "t5",
        {"training.optimizer.lr": 1e-4},
        lines=curve_lines("t5", 31.0, final_iou=0.95)[:2],  # step 200: fg 30, IoU 0.9
        summary=summary_for("t5", config, status="stopped_early", steps_run=200),
    )
    write_pareto_optuna(study_dir, ["t4", "t1", "t3", "t2", "t5"])
    write_report(study_dir)
    return study_dir


def test_pareto_table_is_the_non_dominated_finished_trials(pareto_study: Path) -> None:
    text = (pareto_study / "report" / "report.md").read_text()
    pareto = section(text, "## Pareto front")
    rows = [line for line in pareto.splitlines() if line.startswith("| `t")]
    # best foreground PSNR first: t2 (22), t1 (20), t4 (18); t3 dominated, t5 not final
    assert [row.split("|")[1].strip() for row in rows] == ["`t2`", "`t1`", "`t4`"]
    assert "| `t2` | 3 | 22.00 | 0.400 | [runs/t2](../runs/t2) |" in rows[0]
    assert "3 of 4 finished trials are non-dominated" in pareto
    # hand-computed area over (0, 0): 22 x 0.4 + 20 x (0.5 - 0.4) + 18 x (0.7 - 0.5) = 14.4
    assert "Hypervolume of the front: 14.4 " in pareto
    for name in ("pareto_front.png", "hypervolume.png", "tuning_curves.png"):
        assert f"({name})" in text
        with Image.open(pareto_study / "report" / name) as image:
            assert image.format == "PNG"


def test_trials_parquet_carries_the_optuna_number(pareto_study: Path) -> None:
    trials = pd.read_parquet(pareto_study / "report" / "trials.parquet")
    numbers = dict(zip(trials["trial_id"], trials["optuna_number"], strict=True))
    assert numbers == {"t4": 0, "t1": 1, "t3": 2, "t2": 3, "t5": 4}
    assert str(trials["optuna_number"].dtype) == "Int64"


def test_tuning_curve_and_compute_line(pareto_study: Path) -> None:
    """Best finished value 22 appears at Optuna trial 4 of 5 (t2), after 4 x 100.25 GPU-s; the
    stopped trial (200 of 300 steps in 100.25 s) saved 100 x 100.25 / 200 = 50.125 GPU-s."""
    text = (pareto_study / "report" / "report.md").read_text()
    tuning = section(text, "## Tuning curves")
    assert "Best final `val/psnr_fg` 22.00 (max), first reached at trial 4 of 5 after 401 of " in (
        tuning
    )
    header = text.split("## Best trials", 1)[0]
    assert f"**Compute**: {5 * GPU_S:.0f} GPU-s spent by all trials; early stopping saved " in (
        header
    )
    assert "about 50 GPU-s (1 stopped trial:" in header


# --- view count: a multi-level factor

VIEW_FG = {1: (10.0, 12.0), 3: (15.0, 17.0), 5: (20.0, 23.0)}  # seeds 1, 2


def test_view_count_levels_table(tmp_path: Path) -> None:
    study_dir = write_study(
        tmp_path,
        "view_count_ablation",
        searched_keys=["training.dataset.num_input_views", "training.runtime.seed"],
    )
    for views, values in VIEW_FG.items():
        for seed, fg in enumerate(values, start=1):
            ident = f"v{views}s{seed}"
            config = base_config(seed, True, **{"training.dataset.num_input_views": views})
            params = {"training.dataset.num_input_views": views, "training.runtime.seed": seed}
            write_trial(
                study_dir,
                ident,
                params,
                lines=curve_lines(ident, fg),
                summary=summary_for(ident, config),
            )
    text = (write_report(study_dir)).read_text()
    levels = section(text, "## Multi-level factors")
    assert "### Input views (`training.dataset.num_input_views`): 3 levels" in levels
    # level 1: mean 11, std sqrt(2), 95% t interval 11 +- 12.706 x 1 = [-1.71, 23.71]
    assert "| 1 | `val/psnr_fg` | 2 | 11.00 | 1.41 | [-1.71, 23.71] |" in levels
    assert "| 3 | `val/psnr_fg` | 2 | 16.00 |" in levels
    assert "| 5 | `val/psnr_fg` | 2 | 21.50 | 2.12 |" in levels
    assert "(levels_input_views.png)" in text
    assert (study_dir / "report" / "levels_input_views.png").stat().st_size > 1000
    assert "## Tuning curves" not in text  # a grid has no proposal order to learn in


# --- interactions in a crossed grid


def test_crossed_grid_reports_its_interaction(tmp_path: Path) -> None:
    """masked x background: the background weight adds 0 dB without masked losses and ~3 dB
    with them; per seed contrasts 3.0, 3.2, 2.8 -> mean 3.0, beyond noise."""
    study_dir = write_study(
        tmp_path,
        "mask_loss_ablation",
        searched_keys=[
            "training.losses.masked_l2_loss",
            "training.losses.background_loss_weight",
            "training.runtime.seed",
        ],
    )
    gains = {1: 3.0, 2: 3.2, 3: 2.8}
    for seed, gain in gains.items():
        base = 10.0 + seed
        for masked in (False, True):
            for weight in (0.0, 0.1):
                fg = base + (1.0 if masked else 0.0) + (gain if masked and weight else 0.0)
                ident = f"s{seed}m{int(masked)}b{int(weight * 10)}"
                overrides = {
                    "training.losses.masked_l2_loss": masked,
                    "training.losses.masked_ssim_loss": masked,
                    "training.losses.background_loss_weight": weight,
                }
                write_trial(
                    study_dir,
                    ident,
                    {**overrides, "training.runtime.seed": seed},
                    lines=curve_lines(ident, fg),
                    summary=summary_for(ident, base_config(seed, True, **overrides)),
                )
    text = write_report(study_dir).read_text()
    found = section(text, "## Interactions of crossed factors")
    block = found.split("### Masked L2 + SSIM losses (switched together) × Background loss")[1]
    assert "Interaction beyond noise" in block.split("\n### ", 1)[0]
    # cells of 3 trials: (off, 0) 11, 12, 13 -> 12; (on, 0) +1 -> 13; (on, > 0) +3.0/3.2/2.8 -> 16
    assert "| off | 12.00 [" in block and "| on | 13.00 [" in block
    assert "16.00 [" in block and "(n=3)" in block
    assert "Interaction contrast ((> 0 − 0) at on minus at off): 3.00" in block
