"""Calibration of the verdict engine on simulated studies with known effects (seconds, numpy).

Every cell: 4,000 simulated studies of 24 items x 6 views at 2 / 3 / 5 / 10 seeds, seed sd /
item sd 0/1, 0.5/1 and 1/1 dB, crossed, nested and block-correlated items (analysis/
calibration.py). Monte Carlo standard error of a rate p over 4,000 studies: sqrt(p (1 − p) /
4000), 0.0034 at p = 0.95 or 0.05, so the bounds below sit 4 (coverage), 3 (false better /
worse: 0.06 against a true 0.025 each) and 3 (TOST size, whose true value is <= 0.05) Monte
Carlo errors from the nominal rates. The generator is seeded: the test is deterministic.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.calibration import DESIGNS, calibrate, simulate_seed_means
from analysis.verdicts import paired_verdict, seed_tests

REPS = 4000
SEEDS = (2, 3, 5, 10)
RATIOS = ((0.0, 1.0), (0.5, 1.0), (1.0, 1.0))
MC_SE = (0.05 * 0.95 / REPS) ** 0.5


@pytest.mark.parametrize("design", DESIGNS)
def test_coverage_false_verdicts_and_tost_size(design: str) -> None:
    rng = np.random.default_rng(22)
    failures = []
    for seeds, (seed_sd, item_sd) in itertools.product(SEEDS, RATIOS):
        c = calibrate(rng, REPS, seeds, seed_sd, item_sd, design)
        if not (
            0.93 <= c.coverage <= 0.97
            and c.false_better <= 0.06
            and c.false_worse <= 0.06
            and c.tost_size <= 0.05 + 3 * MC_SE
        ):
            failures.append(c)
    assert not failures, failures


def test_the_engine_on_a_full_frame_equals_the_vectorised_tests() -> None:
    """The calibration runs the vectorised core; the public entry point gives the same numbers
    from a tidy frame of item views (so the calibration checks what the report calls)."""
    rng = np.random.default_rng(3)
    seeds, items, views = 3, 24, 6
    d = rng.normal(0.3, 1.0, (seeds, items, views)) + rng.normal(0, 0.5, (seeds, 1, 1))
    s, i, _ = np.meshgrid(range(seeds), range(items), range(views), indexing="ij")
    tidy = {"seed": s.ravel(), "item_id": [f"m{k}" for k in i.ravel()], "x": d.ravel()}
    v = paired_verdict(pd.DataFrame(tidy), "x", margin=0.5)
    core = seed_tests(d.mean(axis=2).mean(axis=1), 0.5)
    assert (v.estimate, v.ci_low, v.p_value, v.p_equivalence) == pytest.approx(
        (float(core.estimate), float(core.ci_low), float(core.p_value), float(core.p_equivalence))
    )


def test_simulated_truth_is_the_test_set_effect_for_shared_items() -> None:
    rng = np.random.default_rng(1)
    means, truth = simulate_seed_means(rng, 2000, 10, 0.0, 1.0, "crossed")
    # with no seed effect the per-seed means scatter around the shared items' mean only
    assert np.abs(means.mean(axis=1) - truth).max() < 0.25
    _, nested_truth = simulate_seed_means(rng, 10, 3, 0.0, 1.0, "nested")
    assert not nested_truth.any()
