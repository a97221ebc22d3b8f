"""What the report reads from a study's Optuna storage: objective names and directions, and the
Optuna trial number of each Tune trial (the searcher's `tune_trial_id` user attribute).

Optuna is imported only inside `read_optuna`, so grid studies never load it. Reading never
raises: a missing or unreadable storage gives `None` and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.load import StudyInfo

NUMBER_COLUMN = "optuna_number"


@dataclass(frozen=True)
class OptunaRecord:
    """objectives: metric names (Study.metric_names, or the study's objective when unnamed);
    modes: "max"/"min" per objective; numbers: Tune trial id -> Optuna trial number;
    states: Tune trial id -> Optuna state name (COMPLETE, PRUNED, FAIL, RUNNING)."""

    objectives: tuple[str, ...]
    modes: tuple[str, ...]
    numbers: dict[str, int]
    states: dict[str, str]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def read_optuna(study: StudyInfo) -> OptunaRecord | None:
    """The study's Optuna record, or None (not an Optuna study, storage missing or unreadable)."""
    if study.optuna_storage is None or not study.optuna_study_name:
        return None
    if not study.optuna_storage.is_file():
        return None
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        loaded = optuna.load_study(
            study_name=study.optuna_study_name,
            storage=f"sqlite:///{study.optuna_storage.resolve()}",
        )
        directions = loaded.directions
        names = loaded.metric_names
        trials = loaded.get_trials(deepcopy=False)
    except Exception:  # a broken storage must not cost the rest of the report
        return None
    modes = tuple("max" if d == optuna.study.StudyDirection.MAXIMIZE else "min" for d in directions)
    if names is None:
        names = (
            [study.objective]
            if len(directions) == 1
            else [f"objective {i}" for i in range(len(modes))]
        )
    numbers, states = {}, {}
    for trial in trials:
        ident = trial.user_attrs.get("tune_trial_id")
        if isinstance(ident, str):
            numbers[ident] = trial.number
            states[ident] = trial.state.name
    return OptunaRecord(tuple(names), modes, numbers, states)


def with_optuna_numbers(trials: pd.DataFrame, record: OptunaRecord | None) -> pd.DataFrame:
    """trials with an `optuna_number` column (nullable Int64; null for trials Optuna does not
    know, and for every trial of a grid study)."""
    numbers = record.numbers if record is not None else {}
    column = trials["trial_id"].astype(str).map(numbers) if len(trials) else []
    return trials.assign(**{NUMBER_COLUMN: pd.array(column, dtype="Int64")})
