"""End to end: a smoke sweep leaves every ended trial's pictures in Optuna's artifact store,
readable through Optuna's own API; a re-run of the report, a second upload pass and a
--resume add no duplicates, and a picture that appears after its trial ended (a run evaluated
again by hand) is caught up once by the resumed study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import download_artifact, get_all_artifact_meta
from PIL import Image

from study import artifacts
from tests.test_study import REPO, TINY, dataset, run_study, study_env  # noqa: F401 - fixture
from trainables.gslrm.checkpoint import checkpoint_name
from trainables.pictures import last_validation_picture

NAME = "mouse_loss_sweep"
State = optuna.trial.TrialState


def load_study(study_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=artifacts.study_storage(study_dir))


def snapshot(study_dir: Path) -> dict[str, list[str]]:
    """Every artifact name on every trial and on the study, and the store's files."""
    study = load_study(study_dir)
    found = {"study": sorted(m.filename for m in get_all_artifact_meta(study))}
    for trial in study.get_trials():
        metas = get_all_artifact_meta(trial, storage=study._storage)
        found[str(trial.number)] = sorted(m.filename for m in metas)
    found["store"] = sorted(p.name for p in (study_dir / "artifacts").iterdir())
    return found


def downloaded(study_dir: Path, artifact_id: str, tmp_path: Path) -> bytes:
    target = tmp_path / artifact_id
    download_artifact(
        artifact_store=artifacts.artifact_store(study_dir),
        artifact_id=artifact_id,
        file_path=str(target),
    )
    return target.read_bytes()


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=study_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_trial_pictures(study_dir: Path, trial: optuna.trial.FrozenTrial, tmp_path: Path) -> None:
    """An ended trial holds its last validation picture, and once evaluated its evaluation
    picture, byte for byte, under its own name, once each."""
    study = load_study(study_dir)
    run = study_dir / trial.user_attrs["run_folder"]
    metas = {m.filename: m for m in get_all_artifact_meta(trial, storage=study._storage)}
    assert len(metas) == len(get_all_artifact_meta(trial, storage=study._storage))
    last = last_validation_picture(run)
    assert last is not None
    expected = {last.path.name: last.path}
    protocol_file = run / "eval" / "protocol.json"
    if trial.state == State.COMPLETE:  # finished trials are evaluated at their end
        step = json.loads(protocol_file.read_text())["checkpoint_step"]
        expected[f"eval_{step:08d}.png"] = run / "eval" / "picture.png"
    assert set(metas) == set(expected), trial.number
    for name, path in expected.items():
        assert metas[name].mimetype == "image/png"
        assert downloaded(study_dir, metas[name].artifact_id, tmp_path) == path.read_bytes()


@pytest.mark.slow
def test_smoke_sweep_pictures_reach_optuna_once(tmp_path, dataset) -> None:  # noqa: F811
    args = [NAME, "--smoke", "--num-samples", "2", *TINY, *dataset, "--storage", str(tmp_path)]
    out = run_study(args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = tmp_path / NAME
    ended = [t for t in load_study(study_dir).trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(ended) == 2 and any(t.state == State.COMPLETE for t in ended)
    for trial in ended:
        check_trial_pictures(study_dir, trial, tmp_path)
        run = study_dir / trial.user_attrs["run_folder"]
        if trial.state == State.COMPLETE:  # the five labelled rows, drawn for the evaluation
            with Image.open(run / "eval" / "picture.png") as picture:
                with Image.open(last_validation_picture(run).path) as validation:
                    assert picture.format == "PNG" and picture.height == validation.height
    report = (study_dir / "report" / "report.md").read_text()
    finished = [t for t in ended if t.state == State.COMPLETE]
    for trial in finished:
        assert f"(../{trial.user_attrs['run_folder']}/eval/picture.png)" in report
    before = snapshot(study_dir)
    assert sum(len(names) for key, names in before.items() if key.isdigit()) >= 3

    rerun = python("-m", "analysis.report", str(study_dir))
    assert rerun.returncode == 0, rerun.stderr
    second = python("-m", "study.artifacts", str(study_dir))
    assert second.returncode == 0 and "0 picture(s) uploaded" in second.stdout, second.stdout
    assert snapshot(study_dir) == before

    # evaluated again by hand, at another checkpoint: a picture after the trial's end
    trial = finished[0]
    run = study_dir / trial.user_attrs["run_folder"]
    step = json.loads((run / "eval" / "protocol.json").read_text())["checkpoint_step"]
    other = next(
        p
        for p in sorted((run / "checkpoints").glob("ckpt_*.pt"))
        if p.name != checkpoint_name(step)
    )
    again = python("-m", "analysis.evaluate", str(run), "--checkpoint", str(other))
    assert again.returncode == 0, again.stderr
    new_step = json.loads((run / "eval" / "protocol.json").read_text())["checkpoint_step"]
    late = f"{trial.user_attrs['tune_trial_id']}_eval_{new_step:08d}.png"

    resumed = run_study([NAME, "--resume", "--storage", str(tmp_path)])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = snapshot(study_dir)
    assert after["study"] == [late]  # caught up once, on the study: Optuna froze the trial
    assert {k: v for k, v in after.items() if k not in ("study", "store")} == {
        k: v for k, v in before.items() if k not in ("study", "store")
    }
    assert len(after["store"]) == len(before["store"]) + 1
    meta = next(m for m in get_all_artifact_meta(load_study(study_dir)) if m.filename == late)
    assert (
        downloaded(study_dir, meta.artifact_id, tmp_path)
        == (run / "eval" / "picture.png").read_bytes()
    )
    assert python("-m", "study.artifacts", str(study_dir)).returncode == 0
    assert snapshot(study_dir) == after
