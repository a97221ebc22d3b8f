"""Group-sequential verdicts over seeds: a study adds seeds until every factor is decided.

A grid study run with `--until-decided` (study/sequential.py) looks at its results after every
complete seed, from its first look (the study's own seeds, at least MIN_SEEDS) to `max_seeds`,
and stops when every factor's confirmatory verdict is better, worse or equivalent. Testing
with the fixed-n engine (analysis/verdicts.py) at every look would inflate its error rates (up
to ~0.15 false "better or worse" over 8 looks); this module keeps them.

Method: group-sequential t tests with Lan-DeMets O'Brien-Fleming-type alpha spending.
- Looks: after each complete seed n = first, first + 1, ..., last; information fraction
  n / last. Spending alpha(tau) = 2 - 2 Phi(z_(1 - alpha/2) / sqrt(tau)) (Lan & DeMets 1983),
  which spends almost nothing at the first looks and nearly all of alpha at the last.
- Statistic: the one-sample t statistic of the per-seed mean differences (seeds are the
  unit, as in the fixed-n engine), df = n - 1. Its sequence over looks is pivotal under a null
  (normal per-seed means: its distribution does not depend on the seed spread), so the
  boundaries are computed once, by simulating that sequence from standard normals
  (BOUNDARY_PATHS paths, a fixed RNG seed: reproducible), exactly for small df. Z-scale
  boundaries from tables would be too narrow at 2-5 seeds.
- better / worse: |t| crosses the two-sided boundary at level alpha (alpha / 2 a side).
  Holm across the study's factors with alpha recycling (Maurer & Bretz 2013, graphical
  procedures for group-sequential designs): a factor is tested at alpha / m, m the factors
  not yet found different; a rejection passes its alpha on at the same and later looks.
  Maurer-Bretz also allow re-testing earlier looks at the recycled level; not doing so is
  conservative.
- equivalent: TOST with both one-sided t statistics, (mean + m) / se and (m - mean) / se,
  crossing the one-sided boundary at level alpha (same spending). At a true difference on the
  margin the statistic of the near side is a central t, so the sequential TOST has size <=
  alpha (intersection-union). Checked first at a look, as the fixed engine does; TOST is not
  in the Holm family (an equivalence claim per factor is not made likelier by more factors).
- A decided factor keeps its verdict (its trial, in group-sequential terms, stopped). Every
  false claim is a boundary crossing of the fully monitored sequence, so stopping early for
  other factors' sake or at max seeds cannot raise an error rate.
- At the last look an undecided factor is inconclusive.

Why not the alternatives: Pocock boundaries spend alpha evenly and so cost power at the last
look, where a 3-to-10-seed study is most likely to decide; an anytime-valid confidence
sequence (Howard et al. 2021; confseq) needs a known variance bound or pays a wide price at
2-10 observations; SPRT needs a point alternative and a known sd. With looks fixed in advance
(one per seed, at most `last`), alpha spending is exact and tight.

Checked by simulation (tests/test_sequential_calibration.py) reusing analysis.calibration's
studies: false better / worse and TOST size at the margin, expected seeds used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

from analysis.verdicts import ALPHA, MIN_SEEDS

BOUNDARY_PATHS = 200_000  # simulated null t sequences per boundary table (MC se of a level ~0.0005)
BOUNDARY_SEED = 20261204
DECIDED = ("better", "worse", "equivalent")
RULE = (
    "group-sequential t tests over per-seed mean differences, one look per complete seed; "
    "Lan-DeMets O'Brien-Fleming-type alpha spending (two-sided {alpha} for better/worse, Holm "
    "with alpha recycling across factors; one-sided {alpha} per side for TOST equivalence); "
    "stop when every factor is better, worse or equivalent, or at {last} seeds"
)


def obf_spending(tau: np.ndarray | float, alpha: float = ALPHA) -> np.ndarray:
    """Lan-DeMets O'Brien-Fleming-type spending: alpha spent by information fraction tau."""
    tau = np.asarray(tau, dtype=float)
    z = stats.norm.ppf(1 - alpha / 2)
    return 2.0 - 2.0 * stats.norm.cdf(z / np.sqrt(tau))


def looks(first: int, last: int) -> tuple[int, ...]:
    """Seed counts at the looks: one per complete seed from `first` (>= MIN_SEEDS) to `last`."""
    first = max(MIN_SEEDS, first)
    if last < first:
        raise ValueError(f"max seeds {last} is below the first look's {first} seeds")
    return tuple(range(first, last + 1))


def t_paths(means: np.ndarray, at: Sequence[int], shift: float = 0.0) -> np.ndarray:
    """t statistics of (mean - shift) / se over the first n seeds, for n in `at`: [..., looks].
    Zero spread gives +-inf (or 0 when the mean equals the shift): decided by sign."""
    x = np.asarray(means, dtype=float)
    out = []
    for n in at:
        head = x[..., :n]
        est = head.mean(axis=-1) - shift
        se = head.std(axis=-1, ddof=1) / math.sqrt(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(se > 0, est / se, np.sign(est) * np.inf)
        out.append(np.nan_to_num(t, nan=0.0, posinf=np.inf, neginf=-np.inf))
    return np.stack(out, axis=-1)


@lru_cache(maxsize=64)
def boundaries(first: int, last: int, alpha: float, two_sided: bool) -> tuple[float, ...]:
    """Critical t values, one per look, spending alpha by obf_spending over n / last.

    Simulated: the null t sequence is pivotal, so standard normal per-seed means give it
    exactly; at each look the boundary is set so that the paths crossing there first are the
    alpha spent at that look (inf when that is less than one path: no rejection possible).
    """
    at = looks(first, last)
    rng = np.random.default_rng(BOUNDARY_SEED)
    t = t_paths(rng.standard_normal((BOUNDARY_PATHS, last)), at)
    stat = np.abs(t) if two_sided else t
    spent = obf_spending(np.array(at) / last, alpha)
    alive = np.ones(BOUNDARY_PATHS, dtype=bool)
    crit, previous = [], 0.0
    for k in range(len(at)):
        count = int(math.floor((spent[k] - previous) * BOUNDARY_PATHS))
        previous = spent[k]
        candidates = np.sort(stat[alive, k])[::-1]
        c = float(candidates[count]) if 0 < count < len(candidates) else math.inf
        crit.append(c)
        alive &= ~(stat[:, k] > c)
    return tuple(crit)


@dataclass(frozen=True)
class Design:
    """The stopping rule of one study: looks from `first` to `last` seeds, margins, alpha."""

    first: int
    last: int
    margins: Mapping[str, float]  # per comparison name
    alpha: float = ALPHA

    @property
    def looks(self) -> tuple[int, ...]:
        return looks(self.first, self.last)

    def rule(self) -> str:
        return RULE.format(alpha=self.alpha, last=self.last)


# ---------------------------------------------------------------------------------------
# vectorised single-comparison procedure (the calibration simulates thousands of studies)


def sequential_verdicts(
    means: np.ndarray, margin: float, first: int, last: int, alpha: float = ALPHA
) -> tuple[np.ndarray, np.ndarray]:
    """One comparison (a family of one), vectorised: (verdict [...], seeds used [...]) for
    per-seed means [..., last] observed one seed at a time from look `first` on."""
    at = looks(first, last)
    two = np.array(boundaries(at[0], last, alpha, True))
    one = np.array(boundaries(at[0], last, alpha, False))
    t0 = t_paths(means, at)
    lower = t_paths(means, at, shift=-margin)  # (mean + m) / se
    upper = -t_paths(means, at, shift=margin)  # (m - mean) / se
    equivalent = (lower > one) & (upper > one)
    different = np.abs(t0) > two
    verdict = np.full(t0.shape[:-1], "inconclusive", dtype=object)
    used = np.full(t0.shape[:-1], last)
    open_ = np.ones(t0.shape[:-1], dtype=bool)
    for k, n in enumerate(at):
        eq = open_ & equivalent[..., k]
        diff = open_ & ~eq & different[..., k]
        verdict[eq] = "equivalent"
        verdict[diff & (t0[..., k] > 0)] = "better"
        verdict[diff & (t0[..., k] < 0)] = "worse"
        used[eq | diff] = n
        open_ &= ~(eq | diff)
    return verdict, used


# ---------------------------------------------------------------------------------------
# a study's looks, replayed from its per-seed differences (stateless: resume-safe)


@dataclass(frozen=True)
class FactorLook:
    """One comparison at one look."""

    verdict: str  # better | worse | equivalent | inconclusive (undecided so far)
    estimate: float
    t: float
    bound: float  # the two-sided boundary it was tested against at this look (Holm level)
    decided_at: int | None  # seeds at the look that decided it


@dataclass(frozen=True)
class Look:
    seeds: int
    factors: dict[str, FactorLook]

    @property
    def decided(self) -> bool:
        return all(f.verdict in DECIDED for f in self.factors.values())


def replay(differences: Mapping[str, Sequence[float]], design: Design) -> list[Look]:
    """Every look so far, in order, from each comparison's per-seed differences (seed order).

    Looks are taken at design.looks up to the number of seeds every comparison has. Decisions
    stay as first made; Holm's level at a look counts the comparisons not yet found different.
    """
    names = list(differences)
    if not names:
        return []
    have = min(len(differences[name]) for name in names)
    at = [n for n in design.looks if n <= have]
    state: dict[str, FactorLook] = {}
    history: list[Look] = []
    for k, n in enumerate(at):
        x = {name: np.asarray(differences[name][:n], dtype=float) for name in names}
        t0 = {name: float(t_paths(x[name], [n])[0]) for name in names}
        current = dict(state)
        # equivalence first, at its own level
        one_sided = boundaries(design.looks[0], design.last, design.alpha, False)[k]
        for name in names:
            if name in current and current[name].verdict in DECIDED:
                continue
            m = design.margins[name]
            low = float(t_paths(x[name], [n], shift=-m)[0])
            high = -float(t_paths(x[name], [n], shift=m)[0])
            if low > one_sided and high > one_sided:
                current[name] = FactorLook("equivalent", float(x[name].mean()), t0[name], 0, n)
        # Holm with recycling among the rest
        while True:
            found = sum(1 for f in current.values() if f.verdict in ("better", "worse"))
            level = design.alpha / max(1, len(names) - found)
            bound = boundaries(design.looks[0], design.last, level, True)[k]
            newly = [
                name
                for name in names
                if not (name in current and current[name].verdict in DECIDED)
                and abs(t0[name]) > bound
            ]
            for name in names:
                if name in current and current[name].verdict in DECIDED:
                    continue
                word = "better" if t0[name] > 0 else "worse"
                decided = name in newly
                current[name] = FactorLook(
                    word if decided else "inconclusive",
                    float(x[name].mean()),
                    t0[name],
                    bound,
                    n if decided else None,
                )
            if not newly:
                break
        state = current
        history.append(Look(seeds=n, factors=dict(state)))
    return history


def look_record(look: Look) -> dict:
    """A look as study.json stores it."""
    return {
        "seeds": look.seeds,
        "decided": look.decided,
        "verdicts": {
            name: {
                "verdict": f.verdict,
                "estimate": _json_float(f.estimate),
                "t": _json_float(f.t),
                "bound": _json_float(f.bound),
                "decided_at": f.decided_at,
            }
            for name, f in look.factors.items()
        },
    }


def _json_float(value: float) -> float | str:
    return round(value, 6) if math.isfinite(value) else str(value)


# ---------------------------------------------------------------------------------------
# the report's section


def report_section(record: Mapping | None) -> str | None:
    """ "Sequential design": the stopping rule, why the study stopped, and every look; None for
    a study not run with --until-decided (study.json without a `sequential` entry)."""
    entry = record.get("sequential") if isinstance(record, Mapping) else None
    if not isinstance(entry, Mapping):
        return None
    looks_ = [look for look in entry.get("looks") or [] if isinstance(look, Mapping)]
    stopped = entry.get("stopped")
    state = {
        "decided": "stopped: every factor decided",
        "max seeds": "stopped at the maximum number of seeds, not every factor decided",
    }.get(str(stopped), "still running or interrupted: no stop yet")
    seeds = entry.get("seeds") or []
    lines = [
        "## Sequential design (--until-decided)",
        "",
        f"Stopping rule: {entry.get('rule', '?')}. Confirmatory metric: "
        f"{entry.get('metric', '?')} ({entry.get('split', '?')}), equivalence margin "
        f"±{entry.get('margin', '?')}; first look at {entry.get('first_look', '?')} seeds, at "
        f"most {entry.get('max_seeds', '?')} seeds. Seeds started: {len(seeds)} "
        f"({', '.join(str(s) for s in seeds)}); {state}. The verdicts in this table carry the "
        "sequential procedure's error rates (alpha spent across looks). The held-out (test) "
        "verdicts elsewhere in this report are fixed-n verdicts at the final seed count: the "
        "stop depended on validation results that correlate with them, so their nominal rates "
        "hold only approximately.",
    ]
    if entry.get("floored_trials"):
        lines.append(
            f"Trials scored at the metric's floor (no value): {len(entry['floored_trials'])}."
        )
    if not looks_:
        lines += ["", "No look yet (the first seeds are still running)."]
        return "\n".join(lines)
    names = list(dict.fromkeys(n for look in looks_ for n in (look.get("verdicts") or {})))
    header = "| seeds | " + " | ".join(names) + " | decided |"
    rows = [header, "|---" * (len(names) + 2) + "|"]
    for look in looks_:
        verdicts = look.get("verdicts") or {}
        cells = []
        for name in names:
            v = verdicts.get(name) or {}
            d, t, bound = v.get("estimate"), v.get("t"), v.get("bound")
            numbers = all(isinstance(x, int | float) for x in (d, t, bound))
            detail = f" (d {d:+.2f}, t {t:.2f} vs ±{bound:.2f})" if numbers and bound > 0 else ""
            cells.append(f"{v.get('verdict', '?')}{detail}")
        rows.append(
            f"| {look.get('seeds')} | "
            + " | ".join(cells)
            + f" | {'yes' if look.get('decided') else 'no'} |"
        )
    return "\n".join([*lines, "", *rows])
