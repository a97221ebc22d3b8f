"""Simulated studies with known effects that check the verdict engine (analysis/verdicts.py).

A study's paired differences are d[s, i, v] = effect + a_s + item terms + e_(s, i, v): seed
effect a_s ~ N(0, seed_sd), view noise e ~ N(0, VIEW_SD), and the item terms by design:
  crossed  the same test items under every seed: a shared item effect b_i ~ N(0, item_sd)
           plus a seed x item interaction ~ N(0, item_sd / 2)
  nested   each seed its own items: b_(s, i) ~ N(0, item_sd)
  blocked  crossed, with items in blocks of BLOCK consecutive frames correlated at
           BLOCK_RHO (a shared block effect carries that share of the variance), in both the
           shared and the seed x item terms: video frames, not independent poses
The truth an interval should cover is the effect on the test set the study scored: effect +
mean_i b_i for crossed / blocked designs (the item effects are fixed, shared by every seed), the
effect itself for nested ones. Everything is vectorised over replications: thousands of studies
take well under a second per cell. Used by tests/test_verdict_calibration.py and
`python benchmarks/verdicts.py --calibration`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.verdicts import ALPHA, decide, seed_tests

VIEW_SD = 0.5
ITEMS = 24
VIEWS = 6
BLOCK = 6
BLOCK_RHO = 0.8
DESIGNS = ("crossed", "nested", "blocked")


def _item_terms(
    rng: np.random.Generator, reps: int, seeds: int, items: int, sd: float, design: str
) -> tuple[np.ndarray, np.ndarray]:
    """(item terms [reps, seeds, items], the test-set truth offset [reps]) for a design."""
    if design == "nested":
        return rng.normal(0, sd, (reps, seeds, items)), np.zeros(reps)
    if design == "crossed":
        shared = rng.normal(0, sd, (reps, 1, items))
        interaction = rng.normal(0, sd / 2, (reps, seeds, items))
        return shared + interaction, shared.mean(axis=(1, 2))
    if design == "blocked":
        blocks = math.ceil(items / BLOCK)

        def correlated(shape_lead: tuple[int, int], scale: float) -> np.ndarray:
            per_block = rng.normal(0, scale * math.sqrt(BLOCK_RHO), (*shape_lead, blocks))
            own = rng.normal(0, scale * math.sqrt(1 - BLOCK_RHO), (*shape_lead, items))
            return np.repeat(per_block, BLOCK, axis=-1)[..., :items] + own

        shared = correlated((reps, 1), sd)
        interaction = correlated((reps, seeds), sd / 2)
        return shared + interaction, shared.mean(axis=(1, 2))
    raise ValueError(f"unknown design {design!r}; one of {', '.join(DESIGNS)}")


def simulate_seed_means(
    rng: np.random.Generator,
    reps: int,
    seeds: int,
    seed_sd: float,
    item_sd: float,
    design: str = "crossed",
    items: int = ITEMS,
    views: int = VIEWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed mean differences [reps, seeds] at a zero effect, and the truth [reps] they
    estimate (a nonzero effect is a shift of both: the t procedures are shift-equivariant)."""
    a = rng.normal(0, seed_sd, (reps, seeds, 1))
    terms, truth = _item_terms(rng, reps, seeds, items, item_sd, design)
    d = (a + terms)[..., None] + rng.normal(0, VIEW_SD, (reps, seeds, items, views))
    # the engine's per-seed mean: views within an item, then items with equal weight
    return d.mean(axis=3).mean(axis=2), truth


@dataclass(frozen=True)
class Calibration:
    """Rates over `reps` simulated studies of one cell, with their Monte Carlo standard errors."""

    seeds: int
    seed_sd: float
    item_sd: float
    design: str
    reps: int
    coverage: float  # of the (1 − alpha) interval, of the test-set truth
    false_better: float  # "better" at a zero effect
    false_worse: float
    tost_size: float  # "equivalent" at a true effect on the margin (either side)
    power_at_1: float  # "better" at a true effect of 1 (dB), for scale

    def mc_se(self, rate: float) -> float:
        return math.sqrt(max(rate * (1 - rate), 1e-12) / self.reps)


def calibrate(
    rng: np.random.Generator,
    reps: int,
    seeds: int,
    seed_sd: float,
    item_sd: float,
    design: str,
    margin: float = 0.5,
    alpha: float = ALPHA,
) -> Calibration:
    """Coverage, false better / worse, TOST size and power of the engine in one cell."""
    means, truth = simulate_seed_means(rng, reps, seeds, seed_sd, item_sd, design)
    # centre on the test-set truth: the zero-effect study, exactly
    null = means - truth[:, None]
    t = seed_tests(null, margin, alpha)
    words = decide(t.estimate, t.p_value, t.p_equivalence, alpha)
    half = reps // 2  # half the studies sit on +margin, half on −margin
    shifted = np.concatenate([null[:half] + margin, null[half:] - margin])
    at_margin = seed_tests(shifted, margin, alpha)
    tost = decide(at_margin.estimate, at_margin.p_value, at_margin.p_equivalence, alpha)
    strong = seed_tests(null + 1.0, margin, alpha)
    strong_words = decide(strong.estimate, strong.p_value, strong.p_equivalence, alpha)
    return Calibration(
        seeds=seeds,
        seed_sd=seed_sd,
        item_sd=item_sd,
        design=design,
        reps=reps,
        coverage=float(np.mean((t.ci_low <= 0) & (0 <= t.ci_high))),
        false_better=float(np.mean(words == "better")),
        false_worse=float(np.mean(words == "worse")),
        tost_size=float(np.mean(tost == "equivalent")),
        power_at_1=float(np.mean(strong_words == "better")),
    )
