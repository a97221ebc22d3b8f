"""study.artifacts against a real SQLite Optuna storage, without Ray: which pictures go up,
when Optuna lets them (a running trial; never a finished one, and no orphan file then), the
catch-up pass, no duplicates however often it runs, read back through Optuna's own API, and
served by optuna-dashboard's WSGI app as the CLI's --artifact-dir would."""

from __future__ import annotations

import io
import json
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.artifacts import download_artifact, get_all_artifact_meta
from PIL import Image

from study import artifacts
from trainables.journal import append_event


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def png(path: Path, shade: int) -> Path:
    """A small PNG whose pixels tell it apart from the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (shade, 255 - shade, 7)).save(path, format="PNG")
    return path


def make_run(study_dir: Path, tune_id: str, steps: list[int], eval_step: int | None) -> Path:
    """runs/<tune_id>: validation pictures at `steps` and, with eval_step, a complete
    evaluation whose protocol names its picture."""
    run = study_dir / "runs" / tune_id
    for step in steps:
        png(run / "pictures" / f"val_{step:08d}.png", step)
    if eval_step is not None:
        png(run / "eval" / "picture.png", 200)
        protocol = {"picture": "picture.png", "checkpoint_step": eval_step}
        (run / "eval" / "protocol.json").write_text(json.dumps(protocol))
    return run


def new_study(study_dir: Path) -> optuna.Study:
    study_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(study_name="s", storage=artifacts.study_storage(study_dir))


def open_trial(study: optuna.Study, tune_id: str) -> optuna.Trial:
    """An Optuna trial as the searcher leaves it while Tune runs it."""
    trial = study.ask()
    trial.set_user_attr("tune_trial_id", tune_id)
    trial.set_user_attr("run_folder", f"runs/{tune_id}")
    return trial


def frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return study._storage.get_trial(trial._trial_id)


def metas(target, study: optuna.Study) -> dict[str, str]:
    """{file name: artifact id} of a trial or study, through Optuna's own API."""
    found = get_all_artifact_meta(target, storage=study._storage)
    names = [m.filename for m in found]
    assert len(names) == len(set(names)), f"duplicate uploads: {names}"
    return {m.filename: m.artifact_id for m in found}


def downloaded(study_dir: Path, artifact_id: str, tmp_path: Path) -> bytes:
    target = tmp_path / f"download-{artifact_id}"
    download_artifact(
        artifact_store=artifacts.artifact_store(study_dir),
        artifact_id=artifact_id,
        file_path=str(target),
    )
    return target.read_bytes()


def stored_files(study_dir: Path) -> list[str]:
    folder = study_dir / artifacts.ARTIFACTS_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_running_trial_gets_its_last_validation_and_evaluation_picture_once(
    tmp_path: Path,
) -> None:
    study_dir = tmp_path / "study"
    study = new_study(study_dir)
    run = make_run(study_dir, "t1", [10, 20], eval_step=10)
    trial = open_trial(study, "t1")
    assert artifacts.upload_trial_pictures(study_dir, trial) == [
        "val_00000020.png",
        "eval_00000010.png",
    ]
    assert artifacts.upload_trial_pictures(study_dir, trial) == []  # a restarted driver
    study.tell(trial, 1.0)
    found = metas(frozen(study, trial), study)
    assert sorted(found) == ["eval_00000010.png", "val_00000020.png"]
    assert (
        downloaded(study_dir, found["val_00000020.png"], tmp_path)
        == (run / "pictures" / "val_00000020.png").read_bytes()
    )
    assert (
        downloaded(study_dir, found["eval_00000010.png"], tmp_path)
        == (run / "eval" / "picture.png").read_bytes()
    )
    assert all(
        m.mimetype == "image/png" for m in get_all_artifact_meta(trial, storage=study._storage)
    )
    assert len(stored_files(study_dir)) == 2


def test_a_trial_with_no_pictures_or_already_finished_gets_nothing_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    study_dir = tmp_path / "study"
    study = new_study(study_dir)
    empty = open_trial(study, "t0")  # errored before its first validation round
    assert artifacts.upload_trial_pictures(study_dir, empty) == []
    make_run(study_dir, "t1", [10], eval_step=None)
    told = open_trial(study, "t1")
    study.tell(told, state=optuna.trial.TrialState.PRUNED)
    # Optuna would refuse the record only after writing the file: checked before, no orphan
    assert artifacts.upload_trial_pictures(study_dir, told) == []
    assert stored_files(study_dir) == []
    assert metas(frozen(study, told), study) == {}


def test_the_catch_up_pass_uploads_late_pictures_once(tmp_path: Path) -> None:
    study_dir = tmp_path / "study"
    study = new_study(study_dir)
    # interrupted: Tune never ended it, so it is still running in Optuna
    make_run(study_dir, "running", [10], eval_step=None)
    running = open_trial(study, "running")
    # finished with its validation picture, evaluated again later (a new checkpoint step)
    make_run(study_dir, "late", [10, 20], eval_step=None)
    late = open_trial(study, "late")
    artifacts.upload_trial_pictures(study_dir, late)
    study.tell(late, 2.0)
    make_run(study_dir, "late", [], eval_step=20)
    # a trial without this project's attributes (started by hand) is left alone
    study.tell(study.ask(), 3.0)

    summary = artifacts.upload_study_pictures(study_dir)
    assert summary.on_trials == {"running": ["val_00000010.png"]}
    assert summary.on_study == {"late": ["late_eval_00000020.png"]}
    assert sorted(metas(frozen(study, running), study)) == ["val_00000010.png"]
    assert sorted(metas(frozen(study, late), study)) == ["val_00000020.png"]
    on_study = metas(study, study)
    assert sorted(on_study) == ["late_eval_00000020.png"]
    eval_bytes = (study_dir / "runs" / "late" / "eval" / "picture.png").read_bytes()
    assert downloaded(study_dir, on_study["late_eval_00000020.png"], tmp_path) == eval_bytes

    before = stored_files(study_dir)
    assert artifacts.upload_study_pictures(study_dir).count == 0
    assert artifacts.main([str(study_dir)]) == 0
    assert stored_files(study_dir) == before
    # the interrupted trial resumed and finished: its newer pictures go on the trial
    make_run(study_dir, "running", [20], eval_step=20)
    assert artifacts.upload_trial_pictures(study_dir, running) == [
        "val_00000020.png",
        "eval_00000020.png",
    ]


def test_a_study_folder_moved_whole_keeps_its_pictures(tmp_path: Path) -> None:
    study_dir = tmp_path / "study"
    study = new_study(study_dir)
    make_run(study_dir, "t1", [10], eval_step=10)
    trial = open_trial(study, "t1")
    artifacts.upload_trial_pictures(study_dir, trial)
    study.tell(trial, 1.0)
    moved = tmp_path / "elsewhere"
    study_dir.rename(moved)
    again = optuna.load_study(study_name="s", storage=artifacts.study_storage(moved))
    found = metas(again.trials[0], again)
    assert (
        downloaded(moved, found["eval_00000010.png"], tmp_path)
        == (moved / "runs" / "t1" / "eval" / "picture.png").read_bytes()
    )


def wsgi_get(app, path: str) -> tuple[str, bytes]:
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    return status[0], body


def test_optuna_dashboard_serves_the_trial_pictures(tmp_path: Path) -> None:
    dashboard = pytest.importorskip("optuna_dashboard")
    study_dir = tmp_path / "study"
    study = new_study(study_dir)
    run = make_run(study_dir, "t1", [10], eval_step=10)
    trial = open_trial(study, "t1")
    artifacts.upload_trial_pictures(study_dir, trial)
    study.tell(trial, 1.0)
    # what `optuna-dashboard sqlite:///STUDY/optuna.db --artifact-dir STUDY/artifacts` builds
    app = dashboard.wsgi(
        artifacts.study_storage(study_dir),
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(study_dir / "artifacts")),
    )
    status, body = wsgi_get(app, f"/api/studies/{study._study_id}")
    assert status.startswith("200")
    listed = json.loads(body)["trials"][0]["artifacts"]
    assert sorted(a["filename"] for a in listed) == ["eval_00000010.png", "val_00000010.png"]
    by_name = {a["filename"]: a["artifact_id"] for a in listed}
    path = f"/artifacts/{study._study_id}/{trial._trial_id}/{by_name['eval_00000010.png']}"
    status, body = wsgi_get(app, path)
    assert status.startswith("200")
    assert body == (run / "eval" / "picture.png").read_bytes()
    assert Image.open(io.BytesIO(body)).size == (6, 4)


def test_the_searcher_uploads_before_it_tells_optuna(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune.search.optuna")
    from search_spaces import define_by_run, get_space
    from study.searcher import StudySearcher

    def make(hook) -> StudySearcher:
        return StudySearcher(
            space=define_by_run(get_space("mouse_pareto"), {}),
            metrics=["val/psnr_fg"],
            mode="max",
            sampler=optuna.samplers.RandomSampler(seed=0),
            storage=artifacts.study_storage(tmp_path),
            study_name="s",
            study_dir=str(tmp_path),
            max_steps=20,
            on_trial_end=hook,
        )

    searcher = make(artifacts.upload_trial_pictures)
    assert searcher.suggest("done") is not None
    make_run(tmp_path, "done", [10, 20], eval_step=20)
    append_event(tmp_path / "runs" / "done", "attempt_started", world_size=1)
    append_event(tmp_path / "runs" / "done", "trained", final_step=20)
    searcher.on_trial_complete("done", {"step": 20, "val/psnr_fg": 12.0})
    study = optuna.load_study(study_name="s", storage=artifacts.study_storage(tmp_path))
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(metas(trial, study)) == ["eval_00000020.png", "val_00000020.png"]

    def broken(study_dir: Path, trial: optuna.Trial) -> None:
        raise OSError("disk full")

    other = make(broken)
    assert other.suggest("errored") is not None
    other.on_trial_complete("errored", {}, error=True)  # the upload failed: still recorded
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
