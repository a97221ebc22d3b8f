"""`SeedSearcher`: the Ray Tune Searcher of an `--until-decided` grid study.

study/sequential.py says what it does and why; this module imports Ray, so study.search
imports it only when it builds the Tuner.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from analysis.sequential import Design, Look, look_record, replay
from analysis.verdicts import FLOORS
from study.plan import StudyPlan
from study.sequential import (
    PRIMARY_METRIC,
    RECORD_KEY,
    comparisons,
    grid_cells,
    grid_factors,
    margins_of,
    seed_differences,
    seed_schedule,
    trial_value,
)
from study.studies import SEED_KEY
from trainables.gslrm.atomic import write_json_atomic

logger = logging.getLogger(__name__)


def make_sequential_searcher(plan: StudyPlan):
    """The SeedSearcher of an --until-decided plan."""
    first, last = seed_schedule(plan)
    return SeedSearcher(
        factors=grid_factors(plan),
        first_seeds=first,
        max_seeds=last,
        metric=plan.spec.objective,
        mode=plan.spec.mode,
        margin=margins_of(plan)[PRIMARY_METRIC],
        study_dir=str(plan.study_dir),
    )


class SeedSearcher(Searcher):
    """Proposes grid cells seed by seed and stops when the looks decide (module docstring)."""

    def __init__(
        self,
        *,
        factors: Mapping[str, list[Any]],
        first_seeds: Sequence[int],
        max_seeds: int,
        metric: str,
        mode: str,
        margin: float,
        study_dir: str,
        confirmatory: str = PRIMARY_METRIC,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.factors = {k: list(v) for k, v in factors.items()}
        self.cells = grid_cells(self.factors)
        self.max_seeds = int(max_seeds)
        self.confirmatory = confirmatory
        self.study_dir = str(study_dir)
        names = list(comparisons(self.factors))
        self.design = Design(
            first=len(first_seeds), last=self.max_seeds, margins=dict.fromkeys(names, margin)
        )
        # state (plain data: saved as JSON by save, read back by restore)
        self.seeds: list[int] = list(first_seeds)
        self.queue: list[tuple[int, int]] = [
            (i, s) for s in first_seeds for i in range(len(self.cells))
        ]
        self.trials: dict[str, tuple[int, int]] = {}
        self.values: dict[tuple[int, int], float] = {}
        self.floored: list[str] = []  # trials scored at the floor (no finite value)
        self.finished = False
        self.stopped: str | None = None

    # --- Tune's Searcher API

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the grid and the metric are the searcher's own

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.finished:
            return self.FINISHED
        if not self.queue:
            return None  # the next look waits for running trials
        cell, seed = self.queue.pop(0)
        self.trials[trial_id] = (cell, seed)
        return {**self.cells[cell], SEED_KEY: seed}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self.trials:
            return
        key = self.trials[trial_id]
        if key in self.values:
            return
        run_dir = Path(self.study_dir) / "runs" / trial_id
        value = trial_value(result, run_dir, self.confirmatory)
        if value is None:
            self.floored.append(trial_id)
            value = FLOORS.get(self.confirmatory, 0.0)
        self.values[key] = value
        self._maybe_look()

    def save(self, checkpoint_path: str) -> None:
        # JSON, not pickle: the state is plain data, and reading a study folder must never
        # run code (tests/test_safety.py)
        with open(checkpoint_path, "w", encoding="utf-8") as handle:
            json.dump(self._state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, encoding="utf-8") as handle:
            self._set_state(json.load(handle))

    # --- the sequence

    def _state(self) -> dict[str, Any]:
        """The searcher's progress as JSON data (tuples as lists, keys as strings)."""
        return {
            "seeds": list(self.seeds),
            "queue": [list(item) for item in self.queue],
            "trials": {trial: list(key) for trial, key in self.trials.items()},
            "values": [[cell, seed, value] for (cell, seed), value in self.values.items()],
            "floored": list(self.floored),
            "finished": self.finished,
            "stopped": self.stopped,
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.seeds = [int(s) for s in state["seeds"]]
        self.queue = [(int(cell), int(seed)) for cell, seed in state["queue"]]
        self.trials = {str(t): (int(c), int(s)) for t, (c, s) in state["trials"].items()}
        self.values = {(int(c), int(s)): float(v) for c, s, v in state["values"]}
        self.floored = [str(t) for t in state["floored"]]
        self.finished = bool(state["finished"])
        self.stopped = state["stopped"]

    def complete(self) -> bool:
        """Every cell of every proposed seed has a value."""
        return all((i, s) in self.values for s in self.seeds for i in range(len(self.cells)))

    def looks(self) -> list[Look]:
        """The looks so far, replayed from the values of the complete seeds."""
        done = [s for s in self.seeds if all((i, s) in self.values for i in range(len(self.cells)))]
        diffs = seed_differences(self.values, self.cells, done, self.factors)
        return replay(diffs, self.design)

    def _maybe_look(self) -> None:
        if self.queue or not self.complete():
            return
        history = self.looks()
        last = history[-1] if history else None
        if last is not None and last.decided:
            self.finished, self.stopped = True, "decided"
        elif len(self.seeds) >= self.max_seeds:
            self.finished, self.stopped = True, "max seeds"
        else:
            seed = max(self.seeds) + 1
            self.seeds.append(seed)
            self.queue = [(i, seed) for i in range(len(self.cells))]
        self._record(history)
        if last is not None:
            seed = self.seeds[-1]
            words = ", ".join(f"{n} {f.verdict}" for n, f in last.factors.items())
            print(
                f"[study] look at {last.seeds} seeds: {words}; "
                + (f"stopping ({self.stopped})" if self.finished else f"adding seed {seed}"),
                flush=True,
            )

    def _record(self, history: list[Look]) -> None:
        """Write the looks into study.json["sequential"] (the rest of the record is kept)."""
        path = Path(self.study_dir) / "study.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("sequential: %s unreadable; looks not recorded", path)
            return
        entry = dict(record.get(RECORD_KEY) or {})
        entry.update(
            looks=[look_record(look) for look in history],
            seeds=list(self.seeds),
            decided=self.stopped == "decided",
            stopped=self.stopped,
            floored_trials=list(self.floored),
        )
        record[RECORD_KEY] = entry
        write_json_atomic(path, record)
