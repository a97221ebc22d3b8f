"""Faults injected into real studies: a killed Train worker, a diverging trial, a trial that
raises, drivers killed at random points, and two studies sharing one cluster."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_study import (
    REPO,
    TINY,
    TINY_64PX,
    descendants,
    ray_head,
    study_env,
    summaries,
)
from trainables.gslrm.data.synthetic import generate_dataset
from trainables.journal import TrialJournal


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return generate_dataset(
        tmp_path_factory.mktemp("data"), samples=8, size=64, rig="mouse6", seed=4
    )


def data_args(data: dict) -> list[str]:
    return [
        "--set",
        f"training.dataset.dataset_path={data['train_list']}",
        "--set",
        f"validation.dataset_path={data['val_list']}",
    ]


def custom_study(name: str, grid: dict) -> str:
    """A driver script that registers a grid study, then runs study.run's main."""
    return (
        "import sys\n"
        "from study import studies, run\n"
        f"studies.STUDIES[{name!r}] = studies.StudySpec(name={name!r}, description='fault test',\n"
        f"    search='grid', grid={grid!r}, scheduler='fifo',\n"
        "    smoke=studies.SizePreset(overrides=dict(studies.SMOKE_SCHEDULE)))\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )


def ray_train_worker_pids(driver_pid: int, name: str = "RayTrainWorker") -> list[int]:
    """Ray processes named `name` (Train workers; "ImplicitFunc": Tune trial drivers)
    descending from this test's driver (its local Ray's raylet is the driver's child), never
    those of other studies running on the same machine."""
    return [pid for pid, command in descendants(driver_pid).items() if name in command]


@pytest.mark.slow
def test_killed_worker_then_lost_driver_resume_from_their_checkpoints(tmp_path, data):
    """One trial, two faults: its Train worker is SIGKILLed after a checkpoint (Ray Train restarts
    the worker group from it), then its Tune trial driver is SIGKILLed (what losing the driver's
    node does): Tune retries the trial (FailureConfig, issue 23) and its Train run resumes from
    its last checkpoint again. The trial ends finished, evaluated, with compute summed over its
    three attempts."""
    storage = tmp_path / "studies"
    cmd = [
        sys.executable,
        "-m",
        "study.run",
        "mouse_loss_sweep",
        "--smoke",
        "--num-samples",
        "1",
        "--storage",
        str(storage),
        "--max-failures",
        "2",
        *TINY_64PX,  # 64 px steps: seconds between checkpoints
        "--set",
        "training.schedule.max_steps=40",
        *data_args(data),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=study_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    study_dir = storage / "mouse_loss_sweep"

    def newest_reported_checkpoint() -> int:
        """The newest checkpoint step the trainer has handed to Ray Train (its journal's
        `reported` events): a checkpoint file on disk may not have reached Train yet."""
        steps = [
            e["step"]
            for run in (study_dir / "runs").glob("*")
            for e in TrialJournal.read(run).of("reported")
        ]
        return max(steps, default=0)

    def kill_after(step: int, name: str) -> int | None:
        """SIGKILL the `name` processes once a checkpoint past `step` reached Ray Train; its
        step. The kill waits 2 s more, so Train's controller (polling every 0.5 s here) has
        recorded that checkpoint; a checkpoint interval is 10 steps of ~0.3 s."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            newest = newest_reported_checkpoint()
            if newest > step and ray_train_worker_pids(proc.pid, name):
                time.sleep(2)
                for pid in ray_train_worker_pids(proc.pid, name):
                    os.kill(pid, signal.SIGKILL)
                return newest
            time.sleep(0.3)
        return None

    worker_killed_after = kill_after(0, "RayTrainWorker")
    assert worker_killed_after is not None, "no worker with a checkpoint to kill"
    driver_killed_after = kill_after(worker_killed_after, "ImplicitFunc")
    output, _ = proc.communicate(timeout=900)
    assert driver_killed_after is not None, "no trial driver killed: " + output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    (summary,) = summaries(study_dir)
    assert summary["status"] == "finished" and summary["steps_run"] == 40, summary
    assert summary["evaluation"] is not None
    journal = TrialJournal.read(Path(summary["run_dir"]))
    # each new worker group resumed from the checkpoint at or after the one seen before the kill
    resumed = [a.started["resumed_from_step"] for a in journal.attempts]
    assert len(resumed) >= 3 and resumed[-1] >= driver_killed_after, resumed
    assert any(step >= worker_killed_after for step in resumed[1:-1]), resumed
    # every attempt's time counts: the killed ones' logged spans, then the finished one's
    assert summary["wall_s"] == pytest.approx(journal.compute().wall_s)
    assert summary["wall_s"] > journal.attempts[-1].wall_s
    assert not list(Path(summary["run_dir"]).glob(".resume_*"))  # resumed in place
    # Tune saw the lost driver (its one error) and retried it
    (error_file,) = study_dir.glob("tune-*/*/error.txt")
    assert "Failure # 1" in error_file.read_text()
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert int(trials["restarts"].iloc[0]) >= 2 and trials["status"].iloc[0] == "finished"


@pytest.mark.slow
def test_diverged_and_errored_trials_are_recorded_and_the_study_goes_on(tmp_path, data):
    broken = tmp_path / "broken"
    shutil.copytree(Path(data["val_list"]).parent, broken)
    first_val = (broken / Path(data["val_list"]).name).read_text().split()[0]
    png = sorted((broken / first_val).rglob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:200])  # a corrupt image met at the first validation
    grid = {
        "validation.dataset_path": [data["val_list"], str(broken / "data_val.txt")],
        "training.runtime.inject_nan_loss_at_step": [0, 15],
    }
    storage = tmp_path / "studies"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            custom_study("fault_check", grid),
            "fault_check",
            "--smoke",
            "--storage",
            str(storage),
            "--max-failures",
            "0",
            "--max-concurrent",
            "2",
            *TINY,
            "--set",
            f"training.dataset.dataset_path={data['train_list']}",
        ],
        cwd=REPO,
        env=study_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = storage / "fault_check"
    by_case = {
        (
            s["config"]["validation.dataset_path"] == data["val_list"],
            s["config"]["training.runtime.inject_nan_loss_at_step"],
        ): s
        for s in summaries(study_dir)
    }
    assert by_case[(True, 0)]["status"] == "finished"
    diverged = by_case[(True, 15)]
    assert diverged["status"] == "diverged" and diverged["diverged_step"] == 15
    for case in ((False, 0), (False, 15)):
        assert by_case[case]["status"] == "errored"
        assert (
            png.name in by_case[case]["error"] and "cannot decode image" in by_case[case]["error"]
        )
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert sorted(trials["status"]) == ["diverged", "errored", "errored", "finished"]
    # the trials' own failures end them without a Tune error, so Tune never retries them
    assert not list(study_dir.glob("tune-*/*/error.txt"))
    assert "(3 errored or diverged)" in out.stdout, out.stdout[-2000:]
    assert trials.loc[trials["status"] == "diverged", "flag_diverged"].all()
    report = (study_dir / "report" / "report.md").read_text()
    assert "diverged" in report


@pytest.mark.slow
def test_driver_killed_twice_resume_finishes_exactly(tmp_path, data):
    """Kill the driver (and the Ray it started) once right after its first trial finished, then
    kill the resumed driver at a random point; a last --resume ends with exactly the 2 trials,
    one run folder each, and a plain re-run of the finished study is refused. (Two trials are
    all it takes: one finished before the first kill, one running through both kills.)"""
    storage = tmp_path / "studies"
    study_dir = storage / "mouse_loss_sweep"
    base = [
        sys.executable,
        "-m",
        "study.run",
        "mouse_loss_sweep",
        "--smoke",
        "--num-samples",
        "2",
        "--storage",
        str(storage),
        *TINY,
        *data_args(data),
    ]

    def start(cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=study_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=60)

    first = start(base)
    deadline = time.monotonic() + 600
    while not summaries(study_dir) and time.monotonic() < deadline:
        time.sleep(2)
    assert summaries(study_dir), "first trial never finished"
    time.sleep(5)  # let the second trial start
    kill(first)
    resumed = start(base + ["--resume"])
    time.sleep(random.Random(7).uniform(15, 60))
    kill(resumed)

    final = subprocess.run(
        base + ["--resume"], cwd=REPO, env=study_env(), capture_output=True, text=True, timeout=900
    )
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert len(trials) == 2 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"finished", "stopped_early"}, trials[
        "status"
    ]  # ASHA may stop some
    assert {p.name for p in (study_dir / "runs").iterdir()} == set(trials["trial_id"])
    again = subprocess.run(base, cwd=REPO, env=study_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # not silently re-run


@pytest.mark.slow
def test_two_studies_on_one_cluster_do_not_mix(tmp_path, data):
    env = study_env()
    with ray_head(num_cpus=4) as address:
        common = [
            "--smoke",
            "--address",
            address,
            "--storage",
            str(tmp_path),
            *TINY,
            "--set",
            "training.schedule.max_steps=10",  # one validation round: what mixes is the folders
            *data_args(data),
        ]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "study.run", *args, *common],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for args in (
                ["mouse_loss_sweep", "--num-samples", "1"],
                ["view_order_ablation", "--seeds", "0"],
            )
        ]
        outputs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    sweep, ablation = (
        summaries(tmp_path / "mouse_loss_sweep"),
        summaries(tmp_path / "view_order_ablation"),
    )
    assert len(sweep) == 1 and len(ablation) == 2
    # the grid study joined the `ray start --head` cluster and ran its whole grid there
    assert {s["status"] for s in ablation} == {"finished"}
    assert {s["config"]["mouse.use_mouse_dataset"] for s in ablation} == {False, True}
    assert {s["study"] for s in sweep} == {"mouse_loss_sweep"}
    assert {s["study"] for s in ablation} == {"view_order_ablation"}
    for study, rows in (("mouse_loss_sweep", sweep), ("view_order_ablation", ablation)):
        runs = {p.name for p in (tmp_path / study / "runs").iterdir()}
        assert runs == {s["trial_id"] for s in rows}
        assert len(list((tmp_path / study).glob("tune-*"))) == 1
        trials = pd.read_parquet(tmp_path / study / "report" / "trials.parquet")
        assert set(trials["trial_id"]) == runs
