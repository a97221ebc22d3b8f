"""Trial pictures as Optuna artifacts, so optuna-dashboard shows them on each trial's page.

    optuna-dashboard sqlite:///STUDY_DIR/optuna.db --artifact-dir STUDY_DIR/artifacts

What is uploaded, per Optuna-searched trial (files found by `trainables.pictures`):
    val_<step>.png    the run's last validation picture (runs/<trial>/pictures/, highest step)
    eval_<step>.png   its evaluation picture (runs/<trial>/eval/picture.png, the evaluated
                      checkpoint's step), once a complete evaluation names it
Both are the five labelled rows of `trainables.gslrm.visualize`. The store is a
`FileSystemArtifactStore` at STUDY_DIR/artifacts; optuna.db keeps only artifact ids, so a
study folder moved or copied whole keeps its pictures.

When: the searcher calls `upload_trial_pictures` as a trial ends (finished, stopped early,
errored: with whatever pictures it has), *before* it tells Optuna the trial's state. That
order is forced: Optuna (and optuna-dashboard) refuse any attribute, artifacts included, on
a finished trial, and only the searcher holds the trial's Optuna handle. A Tune Callback's
on_trial_complete would come too late for the same reason. Each upload is a row in optuna.db,
so it survives a driver restart; a restart that ends the same trial again finds the pictures
there and uploads nothing (`get_all_artifact_meta`, by file name).

At the end of a study (`picture_callbacks`: a Tune Callback's on_experiment_end, also after
Ctrl-C) `upload_study_pictures` catches up with pictures that appeared later: a trial still
running in Optuna (an interrupted study) gets them on its own page; a finished trial, which
Optuna will not touch again, gets them as study artifacts named `<tune trial id>_<name>`
(e.g. a run re-evaluated by `python -m analysis.evaluate`). Same-name files are never uploaded
twice, so the pass can run any number of times: `python -m study.artifacts STUDY_DIR`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.trial import FrozenTrial, Trial

from trainables.pictures import run_pictures

logger = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
OPTUNA_DB = "optuna.db"
PNG = "image/png"

Target = Trial | FrozenTrial | optuna.Study


@dataclass(frozen=True)
class Upload:
    """One picture to upload: the artifact's file name and the file on disk."""

    name: str
    path: Path


def artifact_store(study_dir: str | Path) -> FileSystemArtifactStore:
    """The study's artifact store, STUDY_DIR/artifacts (created)."""
    folder = Path(study_dir) / ARTIFACTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def study_storage(study_dir: str | Path) -> optuna.storages.RDBStorage:
    """The study folder's Optuna storage, optuna.db."""
    return optuna.storages.RDBStorage(f"sqlite:///{Path(study_dir) / OPTUNA_DB}")


def picture_uploads(run_dir: str | Path) -> list[Upload]:
    """The run's pictures under their artifact names: val_<step>.png, eval_<step>.png."""
    pictures = run_pictures(run_dir)
    found = []
    if pictures.validation is not None:
        found.append(Upload(pictures.validation.path.name, pictures.validation.path))
    if pictures.evaluation is not None:
        step = pictures.evaluation.step
        name = f"eval_{step:08d}.png" if step is not None else "eval.png"
        found.append(Upload(name, pictures.evaluation.path))
    return found


def uploaded_names(target: Target, storage: optuna.storages.BaseStorage) -> set[str]:
    """File names of the artifacts already on a trial or study."""
    return {meta.filename for meta in get_all_artifact_meta(target, storage=storage)}


@contextmanager
def named_copy(path: Path, name: str) -> Iterator[Path]:
    """A copy of `path` called `name`: Optuna names an artifact after its file, and every
    run's evaluation picture is called picture.png."""
    with tempfile.TemporaryDirectory(prefix=".upload_") as folder:
        copy = Path(folder) / name
        shutil.copyfile(path, copy)
        yield copy


def upload_missing(
    store: FileSystemArtifactStore,
    storage: optuna.storages.BaseStorage,
    target: Target,
    uploads: Sequence[Upload],
) -> list[str]:
    """Upload the pictures whose name the target does not have yet; returns the names."""
    have = uploaded_names(target, storage)
    done = []
    for upload in uploads:
        if upload.name in have:
            continue
        with named_copy(upload.path, upload.name) as copy:
            upload_artifact(
                artifact_store=store,
                file_path=str(copy),
                study_or_trial=target,
                storage=storage,
                mimetype=PNG,
            )
        done.append(upload.name)
    return done


def trial_state(trial: Trial | FrozenTrial) -> optuna.trial.TrialState:
    """The trial's state as the storage has it now (a Trial handle does not carry one)."""
    if isinstance(trial, FrozenTrial):
        return trial.state
    return trial.storage.get_trial(trial._trial_id).state


def upload_trial_pictures(study_dir: str | Path, trial: Trial) -> list[str]:
    """The searcher's hook as a trial ends: its run's pictures onto the (still running)
    Optuna trial, those it lacks; returns the names uploaded.

    A trial Optuna already finished (a restarted driver ending it again) gets nothing here:
    Optuna would refuse the record after the file was written, leaving an orphan file.
    """
    folder = trial.user_attrs.get("run_folder")
    if not folder or trial_state(trial).is_finished():
        return []
    uploads = picture_uploads(Path(study_dir) / folder)
    if not uploads:
        return []  # e.g. errored before its first validation round: no store folder either
    return upload_missing(artifact_store(study_dir), trial.storage, trial, uploads)


@dataclass
class PassSummary:
    """What one catch-up pass uploaded: names per Tune trial id."""

    on_trials: dict[str, list[str]]
    on_study: dict[str, list[str]]

    @property
    def count(self) -> int:
        groups = [*self.on_trials.values(), *self.on_study.values()]
        return sum(len(names) for names in groups)


def catch_up_trial(
    study_dir: Path,
    study: optuna.Study,
    trial: FrozenTrial,
    storage: optuna.storages.BaseStorage,
    summary: PassSummary,
) -> None:
    """Upload one trial's pictures it lacks: onto the trial while Optuna still lets it be
    written (running), else onto the study under `<tune trial id>_<name>`."""
    folder, tune_id = trial.user_attrs.get("run_folder"), trial.user_attrs.get("tune_trial_id")
    if not folder or not tune_id:
        return  # not a trial this project's searcher started
    uploads = picture_uploads(study_dir / folder)
    if not uploads:
        return
    store = artifact_store(study_dir)
    if not trial.state.is_finished():
        done = upload_missing(store, storage, trial, uploads)
        if done:
            summary.on_trials[tune_id] = done
        return
    on_trial = uploaded_names(trial, storage)
    late = [Upload(f"{tune_id}_{u.name}", u.path) for u in uploads if u.name not in on_trial]
    done = upload_missing(store, storage, study, late)
    if done:
        summary.on_study[tune_id] = done


def upload_study_pictures(study_dir: str | Path) -> PassSummary:
    """The catch-up pass over every study in STUDY_DIR/optuna.db (see the module docstring);
    idempotent. A folder without optuna.db (a grid study) has nothing to do."""
    study_dir = Path(study_dir)
    summary = PassSummary({}, {})
    if not (study_dir / OPTUNA_DB).is_file():
        return summary
    storage = study_storage(study_dir)
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            catch_up_trial(study_dir, study, trial, storage, summary)
    return summary


def report_pass(study_dir: str | Path) -> None:
    """Run the catch-up pass and say what it did; a failure is a warning (the study's
    results and report do not depend on it)."""
    try:
        summary = upload_study_pictures(study_dir)
    except Exception as exc:  # noqa: BLE001 - pictures are a convenience, never the study's end
        print(f"[study] warning: trial pictures not uploaded to Optuna ({exc})", flush=True)
        return
    if summary.count:
        print(
            f"[study] optuna-dashboard: {summary.count} late trial picture(s) uploaded",
            flush=True,
        )


def picture_callbacks(search: str, study_dir: str | Path) -> list[Any]:
    """The Tune callbacks of a study: for an Optuna search, one whose on_experiment_end runs
    the catch-up pass; none for a grid (no Optuna storage)."""
    if search != "optuna":
        return []
    from ray.tune import Callback

    folder = str(study_dir)

    class _LatePictures(Callback):
        # Holds only the folder's path: Tune pickles its callbacks with the Tuner, and a
        # restored study (--resume) runs them again.
        def on_experiment_end(self, trials: list, **info: Any) -> None:
            report_pass(folder)

    return [_LatePictures()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.artifacts",
        description="Upload the trial pictures an Optuna study folder lacks (last validation "
        "picture, evaluation picture) to its artifact store, for optuna-dashboard "
        "--artifact-dir STUDY_DIR/artifacts. Never uploads a file name twice.",
    )
    parser.add_argument("study_dir", type=Path, help="study folder holding optuna.db and runs/")
    args = parser.parse_args(argv)
    if not (args.study_dir / OPTUNA_DB).is_file():
        print(f"error: {args.study_dir / OPTUNA_DB}: no Optuna storage there", file=sys.stderr)
        return 2
    summary = upload_study_pictures(args.study_dir)
    for label, groups in (("trial", summary.on_trials), ("study", summary.on_study)):
        for tune_id, names in groups.items():
            print(f"{tune_id}: {', '.join(names)} (on the {label})")
    print(f"{summary.count} picture(s) uploaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
