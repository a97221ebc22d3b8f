"""scripts/slurm/study.sbatch on a real Slurm: a one-node cluster this module starts and stops.

Marked `slurm` and left out of the default run (pyproject's addopts): it needs Debian's
slurm-wlm and munge and runs three Ray studies. `scripts/slurm/test-slurm.sh` installs the
packages and runs `pytest -m slurm`. Skipped, with the reason, where the daemons cannot start.

1. A smoke study submitted with `sbatch` finishes (exit 0) and leaves its report.
2. A second one gets `scancel --signal=TERM --batch` mid-study (what `--signal=B:TERM@120` does
   before the time limit): the script's trap forwards it to the driver, which saves and exits
   143, and so does the job; the same sbatch command submitted again passes --resume and
   finishes every trial.
3. A SIGTERM while Ray is still starting: no driver, no study folder, Ray stopped, exit 143.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmCluster, SlurmUnavailable
from tests.test_study import REPO, TINY, cluster_env, free_port, node_ports
from trainables.gslrm.data.synthetic import generate_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SBATCH = REPO / "scripts" / "slurm" / "study.sbatch"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    # Short: slurmd's and munged's socket paths must stay below the Unix limit
    folder = Path(tempfile.mkdtemp(prefix="slm", dir="/tmp"))
    cluster = SlurmCluster(folder)
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"Slurm daemons cannot start here: {exc}")
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)  # the jobs' own output stays in tmp_path


@pytest.fixture(scope="module")
def data_args(tmp_path_factory) -> list[str]:
    info = generate_dataset(
        tmp_path_factory.mktemp("data"), samples=8, size=64, rig="mouse6", seed=3, test_samples=3
    )
    return [
        "--set", f"training.dataset.dataset_path={info['train_list']}",
        "--set", f"validation.dataset_path={info['val_list']}",
    ]  # fmt: skip


def job_env(cluster: SlurmCluster, tmp_path: Path) -> dict[str, str]:
    """What a user's shell would hold at submission, plus private Ray ports and folders: other
    Ray clusters on this machine keep theirs. sbatch passes the whole environment to the job."""
    env = {**cluster_env(), **{"SLURM_CONF": str(cluster.conf)}}
    env.pop("RAY_AUTH_MODE", None)  # the script decides, as for a user
    env.update(
        STUDY_PYTHON=sys.executable,
        RAY_HEAD_IP="127.0.0.1",
        RAY_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        RAY_TEMP_DIR=tempfile.mkdtemp(prefix="rsl", dir="/tmp"),
        RAY_START_ARGS=" ".join([*node_ports(), f"--ray-client-server-port={free_port()}"]),
        # a token of the job's own, made by the script: the user's ~/.ray is left alone
        RAY_AUTH_TOKEN_PATH=str(tmp_path / "auth_token"),
    )
    return env


def submit(cluster: SlurmCluster, env: dict, log: Path, args: list[str]) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", f"--output={log}", "--open-mode=append", str(SBATCH), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().split(";")[0]


def job_field(cluster: SlurmCluster, job: str, name: str) -> str:
    out = cluster.command("scontrol", "show", "job", job, "-o").stdout
    found = re.search(rf"\b{name}=(\S+)", out)
    return found.group(1) if found else ""


def wait_job(cluster: SlurmCluster, job: str, log: Path, timeout_s: float = 900) -> str:
    """Until the job has ended; returns its ExitCode (e.g. "0:0", "143:0")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_field(cluster, job, "JobState")
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", ""):
            return job_field(cluster, job, "ExitCode")
        time.sleep(2)
    cluster.command("scancel", job, check=False)
    raise AssertionError(f"job {job} still running after {timeout_s} s: {read(log)[-4000:]}")


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def validated(run_dir: Path) -> bool:
    text = read(run_dir / "metrics.jsonl")
    return any("val/psnr_fg" in line for line in text.splitlines())


def finished_trials(study_dir: Path) -> list[dict]:
    import pandas as pd

    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    return trials[["trial_id", "status"]].to_dict("records")


def study_args(storage: Path, data_args: list[str]) -> list[str]:
    return [
        "view_order_ablation", "--smoke", "--seeds", "0", "--storage", str(storage),
        *data_args, *TINY,
    ]  # fmt: skip


def test_sbatch_runs_a_smoke_study_to_its_report(slurm, data_args, tmp_path) -> None:
    storage = tmp_path / "studies"
    log = tmp_path / "job.out"
    start = time.monotonic()
    job = submit(slurm, job_env(slurm, tmp_path), log, study_args(storage, data_args))
    exit_code = wait_job(slurm, job, log)
    text = read(log)
    print(f"[slurm test] job {job}: {time.monotonic() - start:.0f} s from sbatch to the end")
    assert exit_code == "0:0", text[-4000:]
    assert "Ray head up" in text and "Ray stopped" in text, text[-4000:]
    assert re.search(r"--address 127\.0\.0\.1:\d+", text), text[-4000:]
    # the driver joined after the dashboard was up, so it prints the dashboard's address
    assert re.search(r"\[study\] view_order_ablation: dashboard http://\S+", text), text[-4000:]
    # Ray's steps ended by SIGTERM to `ray start --block`, not killed by srun
    assert "forcing job termination" not in text and "Killed" not in text, text[-4000:]
    study_dir = storage / "view_order_ablation"
    assert (study_dir / "report" / "report.md").is_file(), text[-4000:]
    trials = finished_trials(study_dir)
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials), trials
    assert json.loads((study_dir / "study.json").read_text())["plan"]["address"].startswith(
        "127.0.0.1:"
    )
    # the token file the script made is private to the user
    assert (tmp_path / "auth_token").stat().st_mode & 0o077 == 0


def test_preempted_job_saves_and_the_same_sbatch_resumes_it(slurm, data_args, tmp_path) -> None:
    storage = tmp_path / "studies"
    study_dir = storage / "view_order_ablation"
    env = job_env(slurm, tmp_path)
    args = study_args(storage, data_args)
    log1, log2 = tmp_path / "job1.out", tmp_path / "job2.out"
    job = submit(slurm, env, log1, args)
    deadline = time.monotonic() + 600
    while not any(validated(r) for r in (study_dir / "runs").glob("*")):
        assert time.monotonic() < deadline, read(log1)[-4000:]
        assert job_field(slurm, job, "JobState") in ("PENDING", "RUNNING"), read(log1)[-4000:]
        time.sleep(0.5)
    signalled = time.monotonic()
    slurm.command("scancel", "--signal=TERM", "--batch", job)
    exit_code = wait_job(slurm, job, log1, timeout_s=300)
    first = read(log1)
    print(f"[slurm test] job {job}: ended {time.monotonic() - signalled:.0f} s after SIGTERM")
    assert exit_code == "143:0", first[-4000:]
    assert "SIGTERM: asking the driver" in first, first[-4000:]
    assert "driver exited 143" in first and "Ray stopped" in first, first[-4000:]
    assert "interrupted:" in first, first[-4000:]
    assert json.loads((study_dir / "interrupted.json").read_text())["signal"] == "SIGTERM"

    start = time.monotonic()
    job2 = submit(slurm, env, log2, args)  # the same command, unchanged
    exit_code = wait_job(slurm, job2, log2)
    second = read(log2)
    print(f"[slurm test] resumed job {job2}: {time.monotonic() - start:.0f} s")
    assert exit_code == "0:0", second[-4000:]
    assert "resuming view_order_ablation" in second, second[-4000:]
    assert re.search(r"study\.run view_order_ablation --resume --storage", second), second[-4000:]
    assert not (study_dir / "interrupted.json").exists()
    trials = finished_trials(study_dir)
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials), trials


def test_a_signal_while_ray_starts_skips_the_study_and_stops_ray(slurm, data_args, tmp_path):
    """Pre-empted before the driver starts: no study is begun, Ray is stopped, exit 143."""
    storage = tmp_path / "studies"
    log = tmp_path / "job.out"
    job = submit(slurm, job_env(slurm, tmp_path), log, study_args(storage, data_args))
    # the script's first line is printed once its trap is in place; Ray takes seconds to start
    deadline = time.monotonic() + 120
    while "1 node(s)" not in read(log):
        assert time.monotonic() < deadline, read(log)[-4000:]
        time.sleep(0.2)
    slurm.command("scancel", "--signal=TERM", "--batch", job)
    exit_code = wait_job(slurm, job, log, timeout_s=300)
    text = read(log)
    assert exit_code == "143:0", text[-4000:]
    assert "SIGTERM before the driver started" in text, text[-4000:]
    assert "python -m study.run" not in text and "Ray stopped" in text, text[-4000:]
    assert not (storage / "view_order_ablation").exists()
