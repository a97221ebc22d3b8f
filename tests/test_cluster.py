"""A study on a 3-node cluster on this machine, with a lost node and a pre-empted driver.

Head: no CPUs, so it holds only what a study puts on it (trial drivers and their Train
controllers, by the head node's own resource). Two worker nodes of 1 CPU each stand in for GPU
nodes: each Train worker needs one CPU, so each node runs one trial's worker, and the study's
default concurrency (what the cluster holds) is 2.

Mid-study one worker node's raylet is SIGKILLed and the node started again: its trial's Train
worker dies with it, Ray Train restarts the worker group from the last checkpoint once the node
is back, and the trial ends finished and evaluated (its driver sat on the head, untouched). Then
the driver gets SIGTERM (what Slurm sends before a time limit) mid-trial: exit 143 and the resume
line; that line, run with no other flag, brings back the cluster address, the workers and the
concurrency from study.json and finishes the study.

The cluster is private to the test (its own temp folder and ports) and stopped by signalling the
`ray start --block` processes it started, never `ray stop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_study import (
    REPO,
    cluster_env,
    descendants,
    free_port,
    node_ports,
    stop_block_node,
    summaries,
    wait_for_port,
)
from trainables.gslrm.data.synthetic import generate_dataset
from trainables.journal import metric_records

pytestmark = pytest.mark.slow


class Cluster:
    """A head and worker nodes started with `ray start --block`; nodes can be killed and
    started again by name."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.ray_bin = str(Path(sys.executable).parent / "ray")
        # Short: Ray's socket paths under it must stay below the 107-byte Unix limit
        self.temp_dir = tempfile.mkdtemp(prefix="r3n", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def common(self, cpus: int) -> list[str]:
        return [
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--temp-dir={self.temp_dir}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            *node_ports(),
        ]

    def start_head(self) -> None:
        cmd = [
            self.ray_bin, "start", "--head", f"--port={self.port}", *self.common(0),
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
        ]  # fmt: skip
        self._start("head", cmd)
        wait_for_port(self.port, self.procs["head"], self.logs / "ray_head.log")

    def start_worker(self, name: str) -> None:
        self._start(name, [self.ray_bin, "start", f"--address={self.address}", *self.common(1)])

    def _start(self, name: str, cmd: list[str]) -> None:
        with (self.logs / f"ray_{name}.log").open("a") as out:
            self.procs[name] = subprocess.Popen(
                cmd, env=cluster_env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill_raylet(self, name: str) -> None:
        """SIGKILL the raylet of node `name` (a lost machine); its `ray start --block` ends."""
        raylets = [
            pid
            for pid, command in descendants(self.procs[name].pid).items()
            if Path(command.split(" ", 1)[0]).name == "raylet"
        ]
        assert raylets, f"no raylet under node {name}"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[name].wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGKILL)  # what the node left behind

    def alive_workers(self) -> int:
        import ray

        return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            if self.procs[name].poll() is None:
                stop_block_node(self.procs[name])
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def three_node_cluster(logs: Path) -> Iterator[Cluster]:
    cluster = Cluster(logs)
    try:
        cluster.start_head()
        # one node at a time: two `ray start` joining at once on 2 busy cores may stall
        for count, name in enumerate(("w1", "w2"), start=2):
            cluster.start_worker(name)
            wait_for_nodes(cluster.address, count, logs)
        yield cluster
    finally:
        cluster.stop()


def wait_for_nodes(address: str, count: int, logs: Path, timeout_s: float = 180) -> None:
    """Until the cluster has `count` alive nodes (asked from a short-lived process, so this test
    process never holds a Ray connection)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", probe, address],
            env=cluster_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    tails = {p.name: p.read_text()[-1500:] for p in sorted(logs.glob("ray_*.log"))}
    raise AssertionError(f"cluster at {address} did not reach {count} alive nodes: {tails}")


def validated_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in metric_records(run_dir) if "val/psnr_fg" in r]


def wait_until(predicate, driver: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"driver ended before {what}"
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_lost_node_and_preempted_driver_on_a_three_node_cluster(tmp_path: Path) -> None:
    data = generate_dataset(
        tmp_path / "data", samples=8, size=64, rig="mouse6", seed=3, test_samples=3
    )
    storage = tmp_path / "studies"
    study_dir = storage / "view_order_ablation"
    runs = study_dir / "runs"
    env = {**cluster_env(), "WANDB_MODE": "disabled"}
    env.pop("RAY_AUTH_MODE", None)  # study.run decides from the token file, as for a user
    with three_node_cluster(tmp_path) as cluster:
        command = [
            sys.executable, "-m", "study.run", "view_order_ablation", "--smoke",
            "--seeds", "0,1", "--address", cluster.address, "--storage", str(storage),
            "--wandb", "disabled",
            "--set", f"training.dataset.dataset_path={data['train_list']}",
            "--set", f"validation.dataset_path={data['val_list']}",
            "--set", "validation.max_items=2",
        ]  # fmt: skip
        out_log = tmp_path / "driver1.log"
        with out_log.open("w") as out:
            driver = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        try:
            # both first trials running on the two worker nodes, one past its first checkpoint
            wait_until(
                lambda: (
                    runs.is_dir()
                    and len(list(runs.iterdir())) >= 2
                    and any(validated_steps(r) for r in runs.iterdir())
                ),
                driver,
                600,
                "two trials running, one checkpointed",
            )
            cluster.kill_raylet("w2")
            time.sleep(3)
            cluster.start_worker("w2")
            wait_for_nodes(cluster.address, 3, tmp_path)
            # the next trials: SIGTERM once a third trial has validated (two remain unfinished)
            wait_until(
                lambda: (
                    len([r for r in runs.iterdir() if validated_steps(r)]) >= 3
                    and len(summaries(study_dir)) >= 2
                ),
                driver,
                600,
                "a third trial validated",
            )
            driver.send_signal(signal.SIGTERM)
            driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
        first = out_log.read_text()
        assert driver.returncode == 143, first[-4000:]
        assert re.search(r"\[study\] 2 trial\(s\) at once: the cluster", first), first[-4000:]
        resume_line = re.search(r"continue with `(python -m study\.run [^`]+)`", first)
        assert resume_line, first[-4000:]
        assert resume_line.group(1) == (
            f"python -m study.run view_order_ablation --resume --storage {storage}"
        )
        interrupted = json.loads((study_dir / "interrupted.json").read_text())
        assert interrupted["signal"] == "SIGTERM"

        # the printed line alone: address, workers, seeds and concurrency from study.json
        resumed = subprocess.run(
            [sys.executable, *resume_line.group(1).split()[1:]],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        second = resumed.stdout + resumed.stderr
        assert resumed.returncode == 0, second[-4000:]
        assert "2 trial(s) at once: as the study started" in second, second[-4000:]

    import pandas as pd

    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert len(trials) == 4, trials[["trial_id", "status"]]
    assert (trials["status"] == "finished").all(), trials[["trial_id", "status", "error"]]
    items = pd.read_parquet(study_dir / "report" / "items.parquet")
    assert set(items["trial_id"]) == set(trials["trial_id"])  # every trial evaluated
    final = {s["trial_id"]: s for s in summaries(study_dir) if s["status"] == "finished"}
    assert len(final) == 4
    # the trial on the lost node restarted its Train workers; its driver (on the head) did not
    assert any(s["restarts"] >= 1 for s in final.values()), final
    assert all(s["steps_run"] == 40 for s in final.values())
