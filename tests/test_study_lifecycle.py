"""A study's life beyond the happy path: refused resource requests, stopped trials, unreadable or
moved state, Ctrl-C, one checkpoint copy on disk, and what its W&B runs say.

The fast tests build study folders by hand and go through the CLI up to the point where it
must refuse (before Ray). The slow one runs a real Optuna smoke study, sends the driver SIGINT,
then copies the interrupted folder and resumes the copy and the original.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.compare import analysis_set
from analysis.load import read_study_info, read_trials
from analysis.markdown import header_section
from analysis.tables import build_trials
from tests.test_analysis import (
    add_pairs,
    base_config,
    report_line,
    row_of,
    write_study,
    write_trial,
)
from tests.test_study import TINY, TINY_64PX, dataset, free_port, study_env  # noqa: F401 - fixture
from tests.wandb_offline import read_offline_run

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "study.run", *args],
        cwd=REPO,
        env=env or study_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------- resources


def test_gpu_split_that_shares_a_gpu_is_refused_before_anything_is_written(tmp_path):
    storage = tmp_path / "studies"
    start = time.monotonic()
    out = run_cli(
        ["mouse_loss_sweep", "--smoke", "--gpus-per-trial", "1", "--workers-per-trial", "2"]
        + ["--storage", str(storage)]
    )
    assert out.returncode == 2, out.stderr
    assert "NCCL refuses duplicate GPUs" in out.stderr and "--gpus-per-trial 2" in out.stderr
    assert "Traceback" not in out.stderr
    assert not storage.exists()  # refused before the storage folder was made
    assert time.monotonic() - start < 60  # no Ray started


def test_gpu_request_on_a_cpu_cluster_is_refused_instead_of_pending(tmp_path, dataset):  # noqa: F811
    """The issue-16 hang: `--gpus-per-trial 1` on this CPU machine sat pending forever.

    RAY_ADDRESS points at a port nothing listens on: a driver that let ray.init() look for a
    cluster to join (RAY_ADDRESS, or /tmp/ray/ray_current_cluster of someone's `ray start
    --head`) would fail to connect; ours starts its own local cluster and refuses the request.
    """
    env = {**study_env(), "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    start = time.monotonic()
    out = run_cli(
        ["view_order_ablation", "--smoke", "--gpus-per-trial", "1", "--storage", str(tmp_path)]
        + TINY
        + dataset,
        env=env,
        timeout=240,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "a trial needs" in out.stderr and "GPU 1 > 0" in out.stderr, out.stderr
    assert "--gpus-per-trial" in out.stderr  # the fix
    assert time.monotonic() - start < 180
    # nothing of the study was started: a plain re-run is not told to --resume
    assert not (tmp_path / "view_order_ablation" / "study.json").exists()


# ---------------------------------------------------------------- stopped trials


def test_stopped_trial_row_has_every_config_key_seed_and_code_version(tmp_path):
    """A trial ASHA stops mid-fit never writes trial_summary.json; its run folder's config.yaml
    and run_info.json still give its whole row."""
    study_dir = write_study(tmp_path)
    add_pairs(study_dir, (20.0, 21.0), (22.0, 23.5))
    write_trial(
        study_dir,
        "s0009_00000",
        {"mouse.use_mouse_dataset": True, "training.runtime.seed": 9},
        lines=[report_line("s0009_00000", 1, 100, **{"val/psnr_fg": 30.0})],
    )
    run_dir = study_dir / "runs" / "s0009_00000"
    run_dir.mkdir(parents=True)
    nested: dict = {}
    for key, value in base_config(9, True, **{"training.losses.mask_threshold": 0.25}).items():
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(nested))
    (run_dir / "run_info.json").write_text(
        json.dumps({"trial_id": "s0009_00000", "seed": 9, "code_version": "def5678"})
    )
    study = read_study_info(study_dir)
    trials = build_trials(study, read_trials(study_dir))
    row = row_of(trials, "s0009_00000")
    assert row["status"] == "stopped_early"
    assert row["training.losses.mask_threshold"] == 0.25  # not searched: from config.yaml
    assert row["model.transformer.d"] == 256 and row["training.optimizer.lr"] == 4e-4
    assert row["seed"] == 9 and row["code_version"] == "def5678"
    # Compared at step 100 with finished trials at step 300 it would win (30 dB): left out,
    # and the report says so.
    assert "s0009_00000" not in set(analysis_set(trials, "val/psnr_fg")["trial_id"])
    header = header_section(study, trials, len(analysis_set(trials, "val/psnr_fg")))
    assert "1 stopped-early trial is left out of the best trials and the comparisons" in header


# ---------------------------------------------------------------- unreadable and moved state


def resumable_study(storage: Path, name: str = "mouse_loss_sweep") -> Path:
    """A study folder as an interrupted run leaves it (study.json, Tune state, optuna.db)."""
    study_dir = storage / name
    tune_dir = study_dir / "tune-0a1b2c3d"
    tune_dir.mkdir(parents=True)
    record = {
        "study": name,
        "objective": "val/psnr_fg",
        "mode": "max",
        "overrides": {},
        "tune_dir": tune_dir.name,
        "study_dir": str(study_dir.resolve()),
    }
    (study_dir / "study.json").write_text(json.dumps(record))
    (tune_dir / "experiment_state-2026-12-02_01-00-00.json").write_text(json.dumps({"trials": []}))
    (tune_dir / "tuner.pkl").write_bytes(b"\x80\x04N.")
    import optuna

    optuna.create_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name=name)
    return study_dir


def resume(storage: Path) -> subprocess.CompletedProcess:
    return run_cli(["mouse_loss_sweep", "--smoke", "--resume", "--storage", str(storage)])


@pytest.mark.parametrize("damage", ["tune_state", "tuner_pkl", "optuna_db"])
def test_unreadable_state_file_is_named_and_exits_2(tmp_path, damage):
    study_dir = resumable_study(tmp_path)
    tune_dir = study_dir / "tune-0a1b2c3d"
    if damage == "tune_state":
        broken = next(tune_dir.glob("experiment_state*.json"))
        broken.write_text('{"trials": [')  # truncated mid-write
    elif damage == "tuner_pkl":
        broken = tune_dir / "tuner.pkl"
        broken.write_bytes(b"")
    else:
        broken = study_dir / "optuna.db"
        broken.write_bytes(b"this is not SQLite" * 100)
    before = broken.read_bytes()
    out = resume(tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"{broken}: unreadable" in out.stderr and "Traceback" not in out.stderr
    assert broken.read_bytes() == before  # read, not repaired or overwritten


def test_resumable_fixture_passes_the_state_checks(tmp_path):
    """The fixture above is accepted by the checks (so each damage is what they refuse)."""
    from study.state import check_not_moved, check_state_files

    study_dir = resumable_study(tmp_path)
    check_not_moved(study_dir)
    check_state_files(study_dir, study_dir / "tune-0a1b2c3d")


def test_moved_study_folder_is_refused_naming_both_paths(tmp_path):
    original = resumable_study(tmp_path / "old")
    moved_storage = tmp_path / "new"
    moved_storage.mkdir()
    shutil.move(str(original), str(moved_storage / "mouse_loss_sweep"))
    out = resume(moved_storage)
    assert out.returncode == 2, out.stderr
    moved = (moved_storage / "mouse_loss_sweep").resolve()
    assert f"{moved} was created as {original.resolve()}" in out.stderr
    assert f"--storage {original.resolve().parent}" in out.stderr  # the fix


# ---------------------------------------------------------------- Ctrl-C, for real


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_ctrl_c_then_copy_and_resume(tmp_path, dataset):  # noqa: F811
    """SIGINT to a real driver while its second trial runs: exit 130 with our message (no Ray
    restore hint), report marked partial, each reported checkpoint one file on disk, the
    finished trial's W&B run finished with group, tags and max summaries. A copy of the folder
    refuses to resume (the original's optuna.db untouched); the original resumes to the end."""
    storage = tmp_path / "studies"
    study_dir = storage / "mouse_loss_sweep"
    # 64 px steps (~3 s to the first validation, not TINY's 0.6 s): SIGINT lands mid-trial
    tiny = [a for a in TINY_64PX if a not in ("--wandb", "disabled")]
    base = [
        sys.executable,
        "-m",
        "study.run",
        "mouse_loss_sweep",
        "--smoke",
        "--num-samples",
        "2",
        "--max-concurrent",
        "1",
        "--storage",
        str(storage),
        "--wandb",
        "offline",
        *tiny,
        *dataset,
    ]
    env = {**study_env(), "WANDB_MODE": "offline"}
    driver = subprocess.Popen(
        base, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # SIGINT once the second trial's trainer has started (its config.yaml): 10 steps before its
    # first validation, where ASHA may stop it and end the study (metrics.jsonl appears only then)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and driver.poll() is None:
        if len(list(study_dir.glob("tune-*/*/trial_summary.json"))) >= 1 and any(
            (run / "config.yaml").is_file() for run in _second_runs(study_dir)
        ):
            break
        time.sleep(0.2)
    assert driver.poll() is None, driver.communicate()[1][-3000:]
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert (
        "interrupted: 1 of 2 trials finished; continue with "
        f"`python -m study.run mouse_loss_sweep --resume --storage {storage}`" in stderr
    ), stderr[-3000:]
    assert "Tuner.restore" not in stdout + stderr
    report = (study_dir / "report" / "report.md").read_text()
    assert "Partial report: the study was interrupted" in report and "1 of 2" in report

    # one copy per reported checkpoint: Ray's train/<study>-<trial>/ files are links to the
    # run's own runs/<trial>/checkpoints/ files, so distinct files == distinct checkpoints
    reported = list((study_dir / "train").glob("*/checkpoint_*/ckpt_*.pt"))
    assert reported
    own = list((study_dir / "runs").glob("*/checkpoints/ckpt_*.pt"))
    checkpoints = {(p.parent.parent.name.rsplit("-", 1)[-1], p.name) for p in reported}
    checkpoints |= {(p.parent.parent.name, p.name) for p in own}
    assert len({p.stat().st_ino for p in reported + own}) == len(checkpoints)

    # the finished trial's W&B offline run (the stopped trial may have written its summary too)
    summaries = [json.loads(p.read_text()) for p in study_dir.glob("tune-*/*/trial_summary.json")]
    finished = [s for s in summaries if s["status"] == "finished"]
    assert len(finished) == 1, [(s["trial_id"], s["status"]) for s in summaries]
    finished = finished[0]
    run_dir = study_dir / "runs" / finished["trial_id"]
    wandb_files = [  # not the latest-run link
        p for p in run_dir.glob("wandb_logs/wandb/offline-run-*/run-*.wandb") if not p.is_symlink()
    ]
    found = [(str(p.relative_to(run_dir)), p.stat().st_size) for p in wandb_files]
    assert len(wandb_files) == 1, (found, (run_dir / "journal.jsonl").read_text())
    wb = read_offline_run(wandb_files[0])
    assert wb.exited and wb.group == "mouse_loss_sweep" and wb.job_type == "trial", found
    assert any(tag.startswith("ssim_loss_weight=") for tag in wb.tags), wb.tags
    assert wb.history_steps and max(wb.history_steps) == 20  # trainer steps, not Tune rounds
    psnr = pd.read_json(study_dir / "runs" / finished["trial_id"] / "metrics.jsonl", lines=True)
    assert wb.summary["val/psnr_fg"]["max"] == pytest.approx(psnr["val/psnr_fg"].max())

    # TensorBoard (Tune's logger) steps by the trainer step too
    events = next(study_dir.glob(f"tune-*/*{finished['trial_id']}*/events.out.tfevents.*"))
    assert tensorboard_steps(events, "val/psnr_fg") == [10, 20]

    # a copy refuses to resume; the original's optuna.db is untouched
    database = sha256(study_dir / "optuna.db")
    copy_storage = tmp_path / "copy"
    shutil.copytree(storage, copy_storage, symlinks=True)
    out = subprocess.run(
        base[: base.index("--storage") + 1]
        + [str(copy_storage)]
        + base[base.index("--storage") + 2 :]
        + ["--resume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and f"was created as {study_dir.resolve()}" in out.stderr, out.stderr
    assert sha256(study_dir / "optuna.db") == database

    # the original resumes to the end with the printed command alone (its plan: size, samples,
    # concurrency, --set values, from study.json): exit 0, no longer partial
    resume = [sys.executable, "-m", "study.run", "mouse_loss_sweep", "--resume"]
    final = subprocess.run(
        [*resume, "--storage", str(storage)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Partial report" not in (study_dir / "report" / "report.md").read_text()
    trials = pd.read_parquet(study_dir / "report" / "trials.parquet")
    assert len(trials) == 2 and trials["code_version"].notna().all()
    assert (trials["training.schedule.max_steps"] == 20).all()  # the stored --set, not smoke's 40


def tensorboard_steps(events_file: Path, tag_part: str) -> list[int]:
    """Steps of the scalars whose tag contains `tag_part` in a TensorBoard events file
    (TFRecord framing: uint64 length, uint32 crc, payload, uint32 crc; payload an Event)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, pos, steps = events_file.read_bytes(), 0, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        if any(tag_part in value.tag for value in event.summary.value):
            steps.append(int(event.step))
    return steps


def _second_runs(study_dir: Path) -> list[Path]:
    """Run folders of trials that have no summary yet (the one running now)."""
    done = {
        json.loads(p.read_text())["trial_id"] for p in study_dir.glob("tune-*/*/trial_summary.json")
    }
    runs = study_dir / "runs"
    return [p for p in runs.iterdir() if p.name not in done] if runs.is_dir() else []


def test_killed_trials_wandb_run_is_rebuilt_finished_from_its_run_folder(tmp_path, monkeypatch):
    """A worker killed mid-fit (ASHA stop) leaves a header-only offline run; the driver writes
    it again from metrics.jsonl, finished, at trainer steps, with group, tags and max summary."""
    from trainables.gslrm.config import load_config, save_config
    from trainables.journal import TrialJournal, append_event
    from trainables.ray_trainable import rebuild_wandb_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "runs" / "a1b2c_00001"
    killed = run_dir / "wandb_logs" / "wandb" / "offline-run-20261202_010000-a1b2c_00001"
    killed.mkdir(parents=True)
    (killed / "run-a1b2c_00001.wandb").write_bytes(b":W&B\xe1\xbe\x00")  # header only
    config = load_config(REPO / "configs" / "smoke.yaml", ["training.logging.wandb.mode=offline"])
    save_config(config, run_dir / "config.yaml")
    append_event(  # the killed attempt's start: the journal's record of the trial
        run_dir,
        "attempt_started",
        world_size=1,
        resumed_from_step=0,
        info={
            "trial_id": "a1b2c_00001",
            "study": "mouse_loss_sweep",
            "wandb": {"group": "mouse_loss_sweep", "tags": ["lr=0.0004"], "job_type": "trial"},
        },
    )
    lines = [
        {"step": 10, "train/loss": 0.5, "val/psnr_fg": 12.0},
        {"step": 20, "train/loss": 0.4, "val/psnr_fg": 11.0},
    ]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 30, "tra'
    )
    assert rebuild_wandb_run(run_dir)
    assert not killed.exists()
    (rebuilt,) = (run_dir / "wandb_logs" / "wandb").glob("offline-run-*/run-a1b2c_00001.wandb")
    # W&B's service process writes the file; on a loaded machine its last blocks can land a
    # moment after finish() returned (seen once in a full run), so read until the exit record.
    deadline = time.monotonic() + 30
    wb = read_offline_run(rebuilt)
    while not wb.exited and time.monotonic() < deadline:
        time.sleep(0.5)
        wb = read_offline_run(rebuilt)
    assert wb.exited and wb.group == "mouse_loss_sweep" and wb.job_type == "trial"
    assert wb.tags == ["lr=0.0004"] and wb.history_steps == [10, 20]
    assert wb.summary["val/psnr_fg"] == {"max": 12.0}
    assert TrialJournal.read(run_dir).loop_ended and not rebuild_wandb_run(run_dir)


@pytest.mark.parametrize(("first", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_stops_gracefully_and_a_second_aborts_at_once(monkeypatch, first, code):
    """SIGTERM (what Slurm and Kubernetes send) does what Ctrl-C does: Tune's stop signal
    (SIGUSR1) and the signal's exit code. A second signal aborts on the spot, printing the
    resume line, whatever Tune is doing (a KeyboardInterrupt used to wait for the main thread)."""
    import study.run as run_module

    stops, aborts = [], []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda *_: stops.append(True))
    monkeypatch.setattr(run_module, "abort_now", lambda exit_code: aborts.append(exit_code))
    try:
        with run_module.graceful_interrupt("python -m study.run s --resume") as interrupts:
            os.kill(os.getpid(), first)
            time.sleep(0.05)
            assert stops == [True] and not aborts
            assert interrupts.exit_code == code
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert aborts == [code]
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)
    # the handlers the process had before are back
    assert {sig: signal.getsignal(sig) for sig in before} == before
