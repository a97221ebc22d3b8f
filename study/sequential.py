"""`--until-decided`: a grid study that adds seeds through Ray Tune until its question is decided.

    python -m study.run mask_loss_ablation --size cpu --until-decided [--max-seeds 10]
        [--margin psnr_fg=0.5]

How it runs. `SeedSearcher`, a Ray Tune Searcher, proposes the grid cells of the study's own
seeds first (its preset's or --seeds; at least 2: a t interval needs 2 seeds), one trial per
cell per seed. When every trial of the proposed seeds has ended, it takes a look: per factor,
one difference per seed (treatment level minus the first level, averaged over the other
factors' levels of that seed, as the report pairs them), and the group-sequential verdicts of
analysis/sequential.py (O'Brien-Fleming-type alpha spending, Holm across factors with alpha
recycling, sequential TOST; that module says why). Every factor better, worse or equivalent,
or `max_seeds` seeds reached: the searcher says FINISHED and Tune ends the study. Otherwise
it proposes the next seed (the largest so far + 1). Seeds are added one at a time because a
look is the unit of the stopping rule: proposing seed k + 1 before look k would spend trials
a decided study does not need.

What a look reads. The confirmatory metric (the study's `primary_metric`, psnr_fg by default)
on validation at each trial's last step: the trial's final Tune result, else its journal's
last validated round (runs/<trial>/journal.jsonl). Held-out test scores exist only after the
report evaluates the checkpoints, too late to steer the study; the report's test verdicts
are then the study's results and its validation table the steering record. A trial that
diverged or failed with no value scores the metric's floor (analysis.verdicts.FLOORS: a
collapse is the failure under study, as the report scores it) and is counted per look.

Resume. The searcher's state (trial -> cell and seed, values, proposed seeds, queue) is plain
data that Tune has it save (as JSON: Searcher.save / restore) into the experiment folder
beside Tune's own state at each checkpoint, so `--resume` continues the sequence: trials Tune
restarts report to the restored searcher as before. The looks are a pure function of the
per-seed values (analysis.sequential.replay), so they are recomputed, never trusted from disk.

Record. study.json["sequential"]: the stopping rule, first look, max seeds, metric, margins,
alpha, each look (seeds, per-factor verdict, estimate, t and boundary, decided or not), the
seeds proposed and why the study stopped; the report prints it (analysis.markdown).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.sequential import Design
from analysis.verdicts import DEFAULT_MARGINS, MIN_SEEDS
from study.plan import StudyError, StudyPlan
from study.studies import SEED_KEY
from trainables.journal import TrialJournal

DEFAULT_MAX_SEEDS = 10
PRIMARY_METRIC = "psnr_fg"
RECORD_KEY = "sequential"


# ---------------------------------------------------------------------------------------
# plan: flags, checks, seeds


def parse_margins(texts: Sequence[str]) -> dict[str, float]:
    """["psnr_fg=0.5"] -> {"psnr_fg": 0.5}; an unknown metric or a bad value is refused."""
    out: dict[str, float] = {}
    for text in texts:
        name, sep, value = str(text).partition("=")
        name = name.strip().removeprefix("val/")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or name not in DEFAULT_MARGINS or not (math.isfinite(number) and number > 0):
            raise StudyError(
                f"--margin {text}: give METRIC=VALUE with VALUE > 0 and METRIC one of "
                f"{', '.join(DEFAULT_MARGINS)} (e.g. --margin psnr_fg=0.5)"
            )
        out[name] = number
    return out


def grid_factors(plan: StudyPlan) -> dict[str, list[Any]]:
    """The grid's keys other than the seed, with their levels (first level = baseline)."""
    return {key: list(values) for key, values in plan.spec.grid.items() if key != SEED_KEY}


def seed_schedule(plan: StudyPlan) -> tuple[tuple[int, ...], int]:
    """(the seeds of the first look, max seeds). The study's own seeds (--seeds, its size
    preset's, else its grid's), topped up to MIN_SEEDS and cut at max seeds."""
    last = plan.max_seeds or DEFAULT_MAX_SEEDS
    own = list(plan.grid_seeds or plan.spec.grid.get(SEED_KEY, [0]))
    while len(own) < MIN_SEEDS:
        own.append(max(own) + 1)
    return tuple(own[:last]), last


def check_plan(plan: StudyPlan) -> None:
    """Refuse --until-decided where it cannot work; also a --max-seeds / --margin without it."""
    if not plan.until_decided:
        if plan.max_seeds is not None or plan.margin_args:
            raise StudyError("--max-seeds and --margin belong to --until-decided; add it")
        return
    spec = plan.spec
    if spec.search != "grid" or SEED_KEY not in spec.grid:
        raise StudyError(
            f"--until-decided: {spec.name} is not a grid study over {SEED_KEY}; it adds seeds "
            "to grid studies (python -m study.run --list)"
        )
    if not grid_factors(plan) or all(len(v) < 2 for v in grid_factors(plan).values()):
        raise StudyError(f"--until-decided: {spec.name} has no factor with 2 levels to compare")
    if plan.max_seeds is not None and plan.max_seeds < MIN_SEEDS:
        raise StudyError(f"--max-seeds {plan.max_seeds}: at least {MIN_SEEDS}")
    if plan.num_samples != 1:
        raise StudyError("--until-decided runs each grid cell once per seed; drop --num-samples")
    parse_margins(plan.margin_args)


def comparisons(factors: Mapping[str, list[Any]]) -> dict[str, tuple[str, Any, Any]]:
    """Name -> (key, baseline level, treatment level): each later level against the first.
    A two-level factor's comparison is named by its key, others `key=level`."""
    out = {}
    for key, levels in factors.items():
        for level in levels[1:]:
            name = key if len(levels) == 2 else f"{key}={level}"
            out[name] = (key, levels[0], level)
    return out


def margins_of(plan: StudyPlan) -> dict[str, float]:
    """The study's margins: DEFAULT_MARGINS with the --margin values over them."""
    return {**DEFAULT_MARGINS, **parse_margins(plan.margin_args)}


def trial_cap(plan: StudyPlan) -> int:
    """Trials at most: every cell at every seed up to max seeds (Tune's num_samples)."""
    return len(grid_cells(grid_factors(plan))) * seed_schedule(plan)[1]


def grid_cells(factors: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(factors)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*factors.values())]


def initial_record(plan: StudyPlan) -> dict[str, Any]:
    """study.json entries of an --until-decided study, written when it starts."""
    if not plan.until_decided:
        return {}
    first, last = seed_schedule(plan)
    margins = margins_of(plan)
    design = Design(first=len(first), last=last, margins={})
    return {
        "margins": margins,
        RECORD_KEY: {
            "rule": design.rule(),
            "metric": PRIMARY_METRIC,
            "split": "validation, last step",
            "first_seeds": list(first),
            "first_look": len(first),
            "max_seeds": last,
            "margin": margins[PRIMARY_METRIC],
            "alpha": design.alpha,
            "looks": [],
            "seeds": list(first),
            "decided": False,
            "stopped": None,
        },
    }


# ---------------------------------------------------------------------------------------
# per-seed differences (pure)


def seed_differences(
    values: Mapping[tuple[int, int], float],
    cells: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    factors: Mapping[str, list[Any]],
) -> dict[str, list[float]]:
    """Per comparison, one difference per seed (in `seeds` order): treatment minus baseline
    cell value, averaged over the pairs of that seed (cells equal in every other key).
    values: (cell index, seed) -> metric value, complete for these seeds."""
    index = {tuple(sorted(c.items(), key=str)): i for i, c in enumerate(cells)}
    out: dict[str, list[float]] = {}
    for name, (key, base, level) in comparisons(factors).items():
        per_seed = []
        for seed in seeds:
            diffs = []
            for i, cell in enumerate(cells):
                if cell[key] != level:
                    continue
                partner = tuple(sorted({**cell, key: base}.items(), key=str))
                diffs.append(values[(i, seed)] - values[(index[partner], seed)])
            per_seed.append(sum(diffs) / len(diffs))
        out[name] = per_seed
    return out


def trial_value(result: Mapping[str, Any] | None, run_dir: Path, metric: str) -> float | None:
    """The metric at the trial's last step: its final Tune result, else its journal's last
    validated round; None when neither has a finite value (the caller scores the floor)."""
    key = f"val/{metric}"
    value = (result or {}).get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    curve = TrialJournal.read(run_dir).curve
    if curve:
        last = curve[max(curve)].get(key, math.nan)
        if math.isfinite(last):
            return float(last)
    return None
