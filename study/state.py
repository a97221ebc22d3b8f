"""Checks of a study folder's saved state before `--resume` hands it to Ray and Optuna.

Ray and Optuna read their own files with no care for the user: a truncated Tune state file
ends in a `JSONDecodeError` deep in Ray, a damaged optuna.db in a SQLAlchemy traceback, and a
study folder that was moved still holds its old absolute paths (the SQLite URL in the saved
searcher, the experiment path in tuner.pkl), so a resumed copy would write into the original's
optuna.db. These checks read files only (no Ray, no Optuna import) and raise one `StudyError`
naming the file and the fix.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from study.plan import StudyError

STUDY_RECORD = "study.json"
OPTUNA_DB = "optuna.db"
# Tune's own state: the experiment state (JSON) and the pickled Tuner, both needed to restore
TUNE_STATE_GLOB = "experiment_state*.json"
TUNER_PICKLE = "tuner.pkl"
# Written when Ctrl-C ended the study early ({"finished", "planned", "time"}); the report marks
# itself partial while it exists, and the next run of the study removes it.
INTERRUPTED_FILE = "interrupted.json"


def _unreadable(path: Path, why: str) -> StudyError:
    return StudyError(
        f"{path}: unreadable ({why}); the study cannot be resumed from it. Restore the file "
        "from a backup, or start the study again with --storage DIR"
    )


def check_state_files(study_dir: Path, tune_dir: Path) -> None:
    """Refuse a resume whose Tune state or Optuna database cannot be read.

    study.json itself is checked by `study.plan.resumed_overrides`. optuna.db is opened
    read-only (a query of its studies table), so a damaged file is left as it was.
    """
    for state in sorted(tune_dir.glob(TUNE_STATE_GLOB)):
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _unreadable(state, type(exc).__name__) from None
    tuner = tune_dir / TUNER_PICKLE
    if not tuner.is_file() or tuner.stat().st_size == 0:
        raise _unreadable(tuner, "missing or empty")
    database = study_dir / OPTUNA_DB
    if database.exists():
        try:
            connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
            try:
                connection.execute("SELECT count(*) FROM studies").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise _unreadable(database, f"not an Optuna SQLite database: {exc}") from None


def recorded_study_dir(study_dir: Path) -> Path | None:
    """The absolute folder study.json says the study was created in (None: not recorded)."""
    try:
        recorded = json.loads((study_dir / STUDY_RECORD).read_text(encoding="utf-8")).get(
            "study_dir"
        )
    except (OSError, ValueError, AttributeError):
        return None
    return Path(recorded) if isinstance(recorded, str) and recorded else None


def check_not_moved(study_dir: Path) -> None:
    """Refuse to resume a study folder that was moved or copied from where it was created.

    Tune's tuner.pkl and the saved Optuna searcher hold the creation folder's absolute paths
    (the searcher's SQLite URL among them): resumed elsewhere, the copy would write trials into
    the original folder's optuna.db.
    """
    created = recorded_study_dir(study_dir)
    here = study_dir.resolve()
    if created is None or created == here:
        return
    raise StudyError(
        f"{here} was created as {created} and then moved or copied; its Tune and Optuna state "
        f"hold {created}'s absolute paths, so resuming here would write into {created}. "
        f"Resume it where it was created (move it back to {created} and pass --storage "
        f"{created.parent}), or start a new study here without --resume"
    )


def restore_error(tune_dir: Path, exc: BaseException) -> StudyError:
    """Tune.restore failed on state the checks above let through: name the folder, not Ray."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
    return StudyError(
        f"{tune_dir}: Tune could not restore the study from its state ({type(exc).__name__}: "
        f"{reason}); the study cannot be resumed from it, start it again with --storage DIR"
    )


def failed_trials(tune_dir: Path) -> int:
    """Trials whose summary says they diverged or errored in training (Tune records them as
    ended normally; its ERROR is left to lost drivers)."""
    count = 0
    for path in tune_dir.glob("*/trial_summary.json"):
        try:
            count += json.loads(path.read_text(encoding="utf-8")).get("status") in (
                "diverged",
                "errored",
            )
        except (OSError, ValueError, AttributeError):
            continue
    return count


def ended_trials(tune_dir: Path) -> int:
    """Trials Tune's newest saved state records as ended (TERMINATED or ERROR).

    After Ctrl-C the ResultGrid calls the trials it stopped TERMINATED too; the saved state
    keeps them RUNNING (they restart on --resume), so it is the count to report.
    """
    states = sorted(tune_dir.glob(TUNE_STATE_GLOB), key=lambda p: p.stat().st_mtime)
    if not states:
        return 0
    try:
        entries = json.loads(states[-1].read_text(encoding="utf-8")).get("trial_data", [])
        statuses = [json.loads(entry[0]).get("status") for entry in entries]
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return 0
    return sum(status in ("TERMINATED", "ERROR") for status in statuses)
