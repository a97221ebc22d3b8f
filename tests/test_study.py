"""End-to-end studies on a 2-CPU machine: real Ray, Tune, Optuna, Train workers, tiny trials.

Each study here runs in a subprocess exactly as a user would start it, on a dataset generated
once per session, with trials shrunk through --set (20 steps, 2 validation rounds).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainables.gslrm.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
TINY_64PX = [
    "--set",
    "training.schedule.max_steps=20",
    "--set",
    "validation.val_every=10",
    "--set",
    "training.checkpointing.checkpoint_every=10",
    "--set",
    "validation.max_items=2",
    "--wandb",
    "disabled",
]
# The 64 px test data decoded at 32 px: steps ~5x cheaper (0.055 vs 0.29 s here)
TINY = ["--set", "model.image_tokenizer.image_size=32", *TINY_64PX]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("data")
    info = generate_dataset(out, samples=8, size=64, rig="mouse6", seed=3, test_samples=3)
    return [
        "--set",
        f"training.dataset.dataset_path={info['train_list']}",
        "--set",
        f"validation.dataset_path={info['val_list']}",
    ]


def study_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    # Train's controller polls its workers every 2 s by default; a test trial trains for ~2 s,
    # so a finished trial would wait up to a whole poll before the next one starts
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    return env


def run_study(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.run", *args],
        cwd=REPO,
        env=study_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """Environment of every process of the test cluster: study.run's choices (usage stats off),
    plus the auth token when this machine has one, as a real cluster would use it."""
    env = study_env()
    env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    # Nothing on a test node needs draining (no Serve); Ray 2.60 otherwise waits 30 s per node
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    token = Path(env.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in env and (env.get("RAY_AUTH_TOKEN") or token.expanduser().is_file()):
        env["RAY_AUTH_MODE"] = "token"
    return env


def node_ports() -> list[str]:
    """Ports every node on one machine needs for itself (Ray's defaults would clash)."""
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    ]
    return [f"--{name}={free_port()}" for name in names]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise AssertionError(f"Ray head did not open port {port}: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def ray_head(num_cpus: int = 2):
    """A private Ray head node on loopback (`ray start --head --block`, its own temp folder and
    ports); yields its address. Stopped by signalling that process, never `ray stop`, which
    would stop every Ray on the machine (other studies included)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Short: Ray's socket paths under it must stay below the 107-byte Unix limit
    temp_dir = tempfile.mkdtemp(prefix="rhd", dir="/tmp")
    port = free_port()
    cmd = [
        ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
        "--disable-usage-stats", *node_ports(),
    ]  # fmt: skip
    log = Path(temp_dir) / "head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=cluster_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_block_node(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def terminate(proc: subprocess.Popen, grace_s: float = 60, kill_wait_s: float = 30) -> None:
    """SIGTERM `proc`; SIGKILL its process group when it has not ended after `grace_s`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=kill_wait_s)


def stop_block_node(proc: subprocess.Popen) -> None:
    """`ray start --block` stops its own node's processes on SIGTERM; SIGKILL its group after
    a minute."""
    terminate(proc)


def descendants(root: int) -> dict[int, str]:
    """Every process below `root`: {pid: command line}, read from /proc (a process's parent is
    field 4 of its stat; the command name, field 2, may hold spaces, so split after its ")")."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid in [pid for pid, ppid in parents.items() if ppid == parent]:
            with contextlib.suppress(OSError):
                found[pid] = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                ).decode()
            frontier.append(pid)
    return found


def summaries(study_dir: Path) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in sorted(study_dir.glob("tune-*/*/trial_summary.json"))
    ]


def trial_folders(study_dir: Path) -> list[Path]:
    return sorted(p.parent for p in study_dir.glob("tune-*/*/params.json"))


def test_bad_study_and_bad_set_fail_before_ray(tmp_path):
    start = time.monotonic()
    out = run_study(["no_such_study", "--storage", str(tmp_path)])
    assert out.returncode == 2
    assert "unknown study 'no_such_study'" in out.stderr and "mouse_loss_sweep" in out.stderr
    out = run_study(
        [
            "mouse_loss_sweep",
            "--smoke",
            "--storage",
            str(tmp_path),
            "--set",
            "training.losses.ssim_weight=0.5",
        ]
    )
    assert out.returncode == 2 and "training.losses.ssim_weight" in out.stderr
    out = run_study(
        [
            "mouse_loss_sweep",
            "--smoke",
            "--storage",
            str(tmp_path),
            "--set",
            "training.losses.mask_threshold=2",
        ]
    )
    assert out.returncode == 2 and "training.losses.mask_threshold" in out.stderr
    out = run_study(["mouse_loss_sweep", "--smoke", "--resume", "--storage", str(tmp_path)])
    assert out.returncode == 2 and "nothing to resume" in out.stderr
    assert "Started a local Ray" not in out.stderr + out.stdout
    assert time.monotonic() - start < 60


def test_unreachable_address_fails_in_seconds(tmp_path):
    port = free_port()  # a port nobody listens on
    start = time.monotonic()
    out = run_study(
        [
            "mouse_loss_sweep",
            "--smoke",
            "--storage",
            str(tmp_path),
            "--address",
            f"127.0.0.1:{port}",
            *TINY,
        ]
    )
    assert out.returncode == 2 and "no Ray cluster answers" in out.stderr
    assert time.monotonic() - start < 30


def readme_command(heading: str = "## Two commands") -> str:
    """The first ```bash block under `heading` in README.md: the main job's command, verbatim."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert match, f"no bash block under {heading!r} in README.md"
    return match.group(1).strip()


@dataclass
class ReadmeRun:
    command: str
    returncode: int
    lines: list[str]
    dashboard_status: int | None
    study_dir: Path
    wall_s: float


@pytest.fixture(scope="module")
def readme_sweep(tmp_path_factory) -> ReadmeRun:
    """The README's main command exactly as written (default flags: 4 smoke trials, concurrency
    from the machine, ASHA, W&B offline), run by bash in a fresh folder that holds only links to
    the checkout's scripts/ and .venv/, as a user's clone would. Several tests read its folder.

    With Tune reusing trial actors under ASHA this command hung 3 times in 3 at the third trial
    (issue 23); CI stayed green because its sweep passed --max-concurrent 2.
    """
    command = readme_command()
    assert "study.run mouse_loss_sweep" in command
    home = tmp_path_factory.mktemp("clone")
    for name in ("scripts", ".venv"):
        (home / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(PYTHONUNBUFFERED="1")
    start = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    dashboard_status = None
    timer = threading.Timer(900, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"dashboard (http://127\.0\.0\.1:\d+)", line)
            if match and dashboard_status is None:
                with urllib.request.urlopen(f"{match.group(1)}/api/gcs_healthz", timeout=10) as r:
                    dashboard_status = r.status
        returncode = proc.wait(timeout=60)
    finally:
        timer.cancel()
    return ReadmeRun(
        command,
        returncode,
        lines,
        dashboard_status,
        home / "studies" / "mouse_loss_sweep",
        time.monotonic() - start,
    )


@pytest.mark.slow
def test_readme_main_command_finishes_every_trial(readme_sweep: ReadmeRun) -> None:
    run = readme_sweep
    assert run.returncode == 0, f"{run.command} ended {run.returncode}:\n" + "".join(
        run.lines[-60:]
    )
    assert run.dashboard_status == 200
    # and how to get past its token dialog (issue 24: nothing said so)
    assert any("ray get-auth-token" in line for line in run.lines), "".join(run.lines[:20])
    # concurrency from the machine: two 1-CPU trials on a 2-CPU machine, said at start
    said = r"\[study\] \d+ trial\(s\) at once: the cluster"
    assert any(re.search(said, line) for line in run.lines)
    assert any("4 of 4 trials finished" in line for line in run.lines), "".join(run.lines[-20:])
    record = json.loads((run.study_dir / "study.json").read_text())
    assert record["plan"]["size"] == "smoke" and record["plan"]["concurrency"] >= 1
    assert (run.study_dir / "report" / "report.md").is_file()


@pytest.mark.slow
def test_readme_sweep_trials_reach_optuna_and_tune_by_trainer_step(readme_sweep) -> None:
    """Optuna proposes, Train workers report at trainer steps, ASHA's stops are PRUNED."""
    import optuna
    import pandas as pd

    study_dir = readme_sweep.study_dir
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    # ASHA may stop weak trials at a rung (10 or 20 of 40); nothing errors
    assert len(trials) == 4 and set(trials["status"]) <= {"finished", "stopped_early"}
    assert "finished" in set(trials["status"])
    assert {p.name for p in (study_dir / "runs").iterdir()} == set(trials["trial_id"])
    assert (trials["training.checkpointing.keep_last"] == 2).all()
    for folder in trial_folders(study_dir):
        # metrics came from a Ray Train worker group: its journal and Train-reported checkpoints
        trial_id = json.loads((folder / "result.json").read_text().splitlines()[0])["trial_id"]
        assert (study_dir / "runs" / trial_id / "journal.jsonl").is_file()
        results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        steps = [r["step"] for r in results]
        assert steps == [10, 20, 30, 40][: len(steps)] and steps
        assert all(r["timesteps_total"] == r["step"] for r in results)
        assert all(str(study_dir / "train") in r["checkpoint_path"] for r in results)
    study = optuna.load_study(
        study_name="mouse_loss_sweep", storage=f"sqlite:///{study_dir / 'optuna.db'}"
    )
    State = optuna.trial.TrialState
    ended = [t for t in study.trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(ended) == 4
    statuses = dict(zip(trials["trial_id"], trials["status"], strict=True))
    for trial in ended:
        assert "mouse.use_mouse_dataset" in trial.params and "training.optimizer.lr" in trial.params
        stopped = statuses[trial.user_attrs["tune_trial_id"]] == "stopped_early"
        assert (trial.state == State.PRUNED) == stopped
        assert trial.value is not None if not stopped else trial.intermediate_values
        assert set(trial.intermediate_values) <= {10, 20, 30, 40}


@pytest.mark.slow
def test_readme_sweep_report_and_held_out_evaluation(readme_sweep) -> None:
    import pandas as pd

    study_dir = readme_sweep.study_dir
    report = (study_dir / "report" / "report.md").read_text()
    for section in ("# Study report: mouse_loss_sweep", "## Best trials", "## Flags"):
        assert section in report
    for plot in ("fg_psnr_vs_mask_iou.png", "learning_curves.png"):
        assert (study_dir / "report" / plot).stat().st_size > 1000
    # every finished trial was evaluated on the synthetic test split (16 items x 6 cameras)
    assert any("[study] evaluation: test split" in line for line in readme_sweep.lines)
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    items = pd.read_parquet(study_dir / "report" / "items.parquet")
    finished = set(trials.loc[trials["status"] == "finished", "trial_id"])
    assert finished and finished <= set(items["trial_id"])
    for trial_id in finished:
        rows = items[items["trial_id"] == trial_id]
        assert rows[["item_id", "camera"]].drop_duplicates().shape[0] == len(rows) == 16 * 6
        protocol = json.loads(
            (study_dir / "runs" / trial_id / "eval" / "protocol.json").read_text()
        )
        assert protocol["checkpoint_rule"] == "best"
    assert items["psnr_fg"].dtype == "float64"
    # W&B ran offline, as the README says, one run per trial
    assert list((study_dir / "runs").glob("*/wandb_logs/wandb/offline-run-*"))


@pytest.mark.slow
def test_asha_stops_a_trial_that_does_not_learn(tmp_path, dataset):
    """A grid whose second trial cannot learn (learning rate 1e-12): ASHA stops it at its first
    rung (step 10 of 20), the learning one runs to the end. One trial at a time
    (--max-concurrent 1), so the learning trial has reported at that rung before the stuck one
    gets there."""
    storage = tmp_path / "studies"
    script = (
        "import sys\n"
        "from study import studies, run\n"
        "spec = studies.StudySpec(name='asha_check', description='ASHA check', search='grid',\n"
        "    grid={'training.optimizer.lr': [3e-3, 1e-12]}, scheduler='asha', grace_period_rounds=1,\n"
        # foreground PSNR moves within 10 tiny steps; the union PSNR (the default objective,
        # which charges false foreground) does not yet, and this test is about ASHA
        "    objective='val/psnr_fg',\n"
        "    smoke=studies.SizePreset(overrides=dict(studies.SMOKE_SCHEDULE), grace_period_rounds=1))\n"
        "studies.STUDIES['asha_check'] = spec\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "asha_check",
            "--smoke",
            "--max-concurrent",
            "1",  # the learning trial reaches the rung first (the default would run both at once)
            "--storage",
            str(storage),
            "--set",
            "training.schedule.warmup=2",
            *TINY,
            *dataset,
        ],
        cwd=REPO,
        env=study_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = storage / "asha_check"
    steps = {}
    for folder in trial_folders(study_dir):
        params = json.loads((folder / "params.json").read_text())
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        steps[params["training.optimizer.lr"]] = max(r["step"] for r in rows)
    assert steps[3e-3] == 20  # the learning trial ran to the end
    assert steps[1e-12] < 20  # the stuck one was stopped early
    import pandas as pd

    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert trials["flag_stopped_early"].sum() == 1
    # what the stopped trial spent, from its journal (the span of its logged steps; no GPU
    # time on CPU), not NaN as when only a finished trial's summary had it
    stopped = trials[trials["flag_stopped_early"]].iloc[0]
    assert stopped["wall_s"] > 0 and stopped["gpu_s"] == 0.0


def test_linked_keys_follow_their_leader_inside_the_trial():
    from trainables.ray_trainable import TrialSettings, trial_config

    settings = TrialSettings(
        study="s",
        study_dir="/tmp/unused",
        tune_dir="/tmp/unused/tune-0",
        base_config=str(REPO / "configs/smoke.yaml"),
        linked={"training.losses.masked_ssim_loss": "training.losses.masked_l2_loss"},
    )
    for masked in (False, True):
        config = trial_config(settings, {"training.losses.masked_l2_loss": masked})
        assert config.training.losses.masked_ssim_loss is masked
