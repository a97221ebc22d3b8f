"""Pareto front, hypervolume and tuning curves against brute force and hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis.pareto import (
    hypervolume_2d,
    hypervolume_by_trial,
    non_dominated_mask,
    pareto_front,
    reference_point,
)
from analysis.tuning import best_so_far, compute_summary, spread_over_runs


def brute_force_front(points: list[tuple[float, float]]) -> set[int]:
    front = set()
    for i, p in enumerate(points):
        if any(math.isnan(v) for v in p):
            continue
        dominated = any(
            all(qv >= pv for qv, pv in zip(q, p, strict=True)) and q != p
            for j, q in enumerate(points)
            if j != i and not any(math.isnan(v) for v in q)
        )
        if not dominated:
            front.add(i)
    return front


def test_front_equals_brute_force_on_random_points() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        points = [tuple(p) for p in rng.integers(0, 6, size=(12, 2)).astype(float)]
        points[0] = (math.nan, 3.0)
        mask = non_dominated_mask(np.array(points))
        assert set(np.flatnonzero(mask)) == brute_force_front(points)


def test_hypervolume_by_hand() -> None:
    # Front (3,1), (2,2), (1,3) above (0,0): slabs 3*1 + 2*1 + 1*1 = 6; (1,1) adds nothing.
    points = np.array([[1.0, 3.0], [3.0, 1.0], [2.0, 2.0], [1.0, 1.0]])
    assert hypervolume_2d(points, (0.0, 0.0)) == pytest.approx(6.0)
    # A point below the reference in one objective adds nothing.
    assert hypervolume_2d(np.array([[5.0, -1.0]]), (0.0, 0.0)) == 0.0
    assert list(hypervolume_by_trial(points, (0.0, 0.0))) == pytest.approx([3.0, 5.0, 6.0, 6.0])


def test_hypervolume_equals_grid_count() -> None:
    rng = np.random.default_rng(7)
    points = rng.integers(1, 9, size=(6, 2)).astype(float)
    # Unit cells [x-1, x] x [y-1, y] inside the dominated region, counted one by one.
    cells = sum(
        any(px >= x and py >= y for px, py in points)
        for x, y in itertools.product(range(1, 9), range(1, 9))
    )
    assert hypervolume_2d(points, (0.0, 0.0)) == pytest.approx(cells)


def test_pareto_table_and_min_mode() -> None:
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "final/val/psnr_fg": [20.0, 22.0, 19.0, 21.0],
            "final/train/loss": [0.3, 0.5, 0.2, 0.6],
        }
    )
    front = pareto_front(trials, ["val/psnr_fg", "train/loss"], ["max", "min"])
    # d is dominated by b (lower PSNR, higher loss); c has the lowest loss; a is in between.
    assert list(front["trial_id"]) == ["b", "a", "c"]
    with pytest.raises(ValueError, match="train/loss"):
        reference_point(["val/psnr_fg", "train/loss"], ["max", "min"])
    assert reference_point(["val/psnr_fg", "val/mask_iou"], ["max", "max"]) == [0.0, 0.0]


def tuning_trials() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["t3", "t1", "t2", "t4"],
            "optuna_number": [2, 0, 1, 3],
            "status": ["finished", "finished", "stopped_early", "errored"],
            "last_step": [100, 100, 25, 10],
            "final/val/psnr_fg": [21.0, 19.0, 20.0, math.nan],
            "compute_s": [100.0, 90.0, 20.0, 5.0],
        }
    )


def test_best_so_far_in_proposal_order() -> None:
    curve = best_so_far(tuning_trials(), "val/psnr_fg", "max", "compute_s")
    assert list(curve["trial_id"]) == ["t1", "t2", "t3", "t4"]
    assert list(curve["best"]) == [19.0, 20.0, 21.0, 21.0]
    assert list(curve["compute_s"]) == [90.0, 110.0, 210.0, 215.0]
    low = best_so_far(tuning_trials(), "val/psnr_fg", "min", "compute_s")
    assert list(low["best"]) == [19.0, 19.0, 19.0, 19.0]


def test_spread_over_sampler_seeds() -> None:
    a = pd.DataFrame({"n_trials": [1, 2, 3], "best": [1.0, 2.0, 4.0]})
    b = pd.DataFrame({"n_trials": [1, 2], "best": [3.0, 3.0]})
    spread = spread_over_runs([a, b])
    assert list(spread["runs"]) == [2, 2, 1]
    assert list(spread["median"]) == [2.0, 2.5, 4.0]
    assert list(spread["min"]) == [1.0, 2.0, 4.0] and list(spread["max"]) == [3.0, 3.0, 4.0]


def test_compute_saved_by_early_stopping() -> None:
    summary = compute_summary(tuning_trials(), 100, "compute_s")
    assert summary.spent_s == 215.0
    # t2 stopped at step 25 of 100 after 20 s: 75 more steps at 0.8 s/step = 60 s saved.
    assert summary.saved_s == pytest.approx(60.0) and summary.n_stopped == 1


def test_tuning_cli_spreads_repeats_with_different_sampler_seeds(tmp_path, capsys) -> None:
    from analysis.tuning import main
    from tests.test_analysis import write_study

    bests = {0: [19.0, 21.0, 20.0], 1: [22.0, 18.0, 23.0]}
    dirs = []
    for seed, values in bests.items():
        study_dir = write_study(tmp_path / f"seed{seed}", "mouse_loss_sweep", sampler_seed=seed)
        (study_dir / "report").mkdir()
        pd.DataFrame(
            {
                "trial_id": [f"t{i}" for i in range(3)],
                "optuna_number": pd.array([0, 1, 2], dtype="Int64"),
                "status": ["finished", "finished", "stopped_early"],
                "final/val/psnr_fg": values,
                "wall_s": [10.0, 10.0, 5.0],
                "gpu_s": [0.0, 0.0, 0.0],
            }
        ).to_parquet(study_dir / "report" / "trials.parquet")
        dirs.append(str(study_dir))
    out = tmp_path / "spread.parquet"
    assert main([*dirs, "--out", str(out)]) == 0
    spread = pd.read_parquet(out)
    # seed 0: 19, 21, 21 (the stopped trial's 20 never counts); seed 1: 22, 22, 22
    assert list(spread["median"]) == [20.5, 21.5, 21.5]
    assert list(spread["min"]) == [19.0, 21.0, 21.0] and list(spread["max"]) == [22.0] * 3
    assert "sampler seed 1" in capsys.readouterr().out
    assert main([str(tmp_path / "seed0" / "nothing")]) == 2
