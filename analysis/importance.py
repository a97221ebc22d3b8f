"""Optuna parameter importance for Optuna-searched studies, or one line saying why there is none.

Optuna is imported only here and only when a study has an Optuna storage, so reports of
grid studies do not pay for it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from analysis.load import StudyInfo

# Importance from fewer completed trials than this is noise dressed up as a ranking.
MIN_COMPLETED_TRIALS = 3


@dataclass(frozen=True)
class Importance:
    values: dict[str, float]  # param name -> normalised importance, most important first
    note: str  # why values is empty, or which evaluator produced them


def parameter_importance(study: StudyInfo) -> Importance:
    """Importances from the study's optuna.db; never raises (failures become the note)."""
    if study.optuna_storage is None or not study.optuna_study_name:
        return Importance({}, "Not an Optuna-searched study (study.json names no Optuna storage).")
    if not study.optuna_storage.is_file():
        return Importance({}, f"Optuna storage {study.optuna_storage.name} is missing.")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        loaded = optuna.load_study(
            study_name=study.optuna_study_name,
            storage=f"sqlite:///{study.optuna_storage.resolve()}",
        )
        complete = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < MIN_COMPLETED_TRIALS:
            return Importance(
                {},
                f"Too few completed Optuna trials ({len(complete)}) for importance; "
                f"need at least {MIN_COMPLETED_TRIALS}.",
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A multi-objective study has no single value per trial: rank for the first
            # objective (the study's own), as the note says.
            multi = len(loaded.directions) > 1
            values = optuna.importance.get_param_importances(
                loaded, target=(lambda t: t.values[0]) if multi else None
            )
    except Exception as error:  # any failure is reported in the report, never fatal
        message = " ".join(str(error).split())[:300]
        return Importance({}, f"Parameter importance failed: {type(error).__name__}: {message}")
    if not values:
        return Importance({}, "Optuna found no parameters to rank (no searched parameters).")
    note = f"Optuna's default evaluator over {len(complete)} completed trials (sums to 1)."
    if multi:
        note += f" Multi-objective study: importance for the first objective ({study.objective})."
    return Importance({name: float(v) for name, v in values.items()}, note)
