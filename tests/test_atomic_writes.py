"""Interrupted writes leave the previous file readable: checkpoints and the study report.

A second writer runs in a subprocess, is stopped in the middle of writing (a patched function
writes part of the data, says so on stdout, then sleeps) and is killed with SIGKILL, so no
`finally` or exception handler gets to clean up. The earlier file must be untouched.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from analysis.report import REPORT_DIR, TEMP_PREFIX, write_report
from tests.test_analysis import MOUSE_FG, RANDOM_FG, add_finished, add_pairs, write_study
from trainables.gslrm.atomic import remove_stale_temps
from trainables.gslrm.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from trainables.gslrm.config import ModelConfig, config_from_dict
from trainables.gslrm.model import GSLRM

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120
TINY_MODEL = {
    "model": {
        "image_tokenizer": {"image_size": 16, "patch_size": 8},
        "transformer": {"d": 32, "d_head": 16, "n_layer": 1},
        "gaussians": {"n_gaussians": 2, "downsample": 1},
    }
}


def tiny_model_config() -> ModelConfig:
    return config_from_dict(TINY_MODEL).model


def subprocess_env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
    )


def start_and_kill_when(script: str, args: list[str], ready: str, check_before_kill=None) -> str:
    """Run `script`; when it prints `ready`, optionally inspect, then SIGKILL it. Returns its output."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        while True:
            readable, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
            if not readable:
                pytest.fail(
                    f"no {ready!r} from the writer within {READY_TIMEOUT_S} s:\n{''.join(output)}"
                )
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                pytest.fail(
                    f"writer exited ({proc.returncode}) before {ready!r}:\n{''.join(output)}"
                )
            output.append(line)
            if line.strip() == ready:
                break
        if check_before_kill is not None:
            check_before_kill()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the writer was not killed mid-write"
    return "".join(output)


# ---------------------------------------------------------------------------------------
# checkpoints


HALF_SAVE = textwrap.dedent("""
    import io, json, os, sys, time
    import torch
    from trainables.gslrm import checkpoint
    from trainables.gslrm.config import config_from_dict
    from trainables.gslrm.model import GSLRM

    path, model_config = sys.argv[1], config_from_dict(json.loads(sys.argv[2])).model
    torch.manual_seed(1)  # other weights than the first save
    model = GSLRM(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    real_save = torch.save

    def half_save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        print("HALF_WRITTEN", flush=True)
        time.sleep(300)

    torch.save = half_save
    checkpoint.save_checkpoint(path, model, optimizer, scheduler, 9)
    print("SAVE_RETURNED", flush=True)
""")


def save_tiny(path: Path, seed: int, step: int) -> GSLRM:
    torch.manual_seed(seed)
    model = GSLRM(tiny_model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    save_checkpoint(path, model, optimizer, scheduler, step)
    return model


def test_killed_checkpoint_save_leaves_previous_file(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    path = folder / checkpoint_name(1)
    model = save_tiny(path, seed=0, step=1)
    original = path.read_bytes()

    def mid_write() -> None:
        temps = [p for p in folder.iterdir() if p != path]
        assert temps, "the second save wrote nothing beside the checkpoint"
        assert all(p.stat().st_size > 0 for p in temps)
        assert path.read_bytes() == original, (
            "the checkpoint changed while the new one was half written"
        )

    output = start_and_kill_when(
        HALF_SAVE, [str(path), json.dumps(TINY_MODEL)], "HALF_WRITTEN", mid_write
    )
    assert "SAVE_RETURNED" not in output

    assert path.read_bytes() == original
    data = read_checkpoint(path)
    assert data["param_update_step"] == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(data["model"][name], tensor), name

    leftovers = [p for p in folder.iterdir() if p != path]
    assert leftovers, "SIGKILL leaves the half-written temp file behind"
    assert latest_checkpoint(folder) == path  # temp files are not candidates
    # The run's next start clears what the killed writer left (train() calls this).
    assert remove_stale_temps(folder) == sorted(leftovers)
    assert [p.name for p in folder.iterdir()] == [path.name]

    # A newer checkpoint that is truncated (e.g. copied in by hand) is skipped, not returned.
    newer = folder / checkpoint_name(5)
    newer.write_bytes(original[: len(original) // 2])
    found = latest_checkpoint(folder)
    assert found == path
    assert read_checkpoint(found)["param_update_step"] == 1


def test_checkpoint_save_replaces_atomically_when_it_completes(tmp_path: Path) -> None:
    """The control case: an uninterrupted second save does replace the file, temp removed."""
    path = tmp_path / checkpoint_name(1)
    save_tiny(path, seed=0, step=1)
    second = save_tiny(path, seed=1, step=2)
    data = read_checkpoint(path)
    assert data["param_update_step"] == 2
    assert all(torch.equal(data["model"][k], v) for k, v in second.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ---------------------------------------------------------------------------------------
# report


SLOW_REPORT = textwrap.dedent("""
    import sys, time
    from analysis import plots
    from analysis.report import write_report

    real_plot = plots.plot_learning_curves

    def slow_plot(*args, **kwargs):
        real_plot(*args, **kwargs)
        print("IN_PLOT", flush=True)
        time.sleep(300)

    plots.plot_learning_curves = slow_plot
    write_report(sys.argv[1])
    print("REPORT_RETURNED", flush=True)
""")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def reported_study(tmp_path: Path) -> Path:
    study = write_study(tmp_path)
    add_pairs(study, RANDOM_FG, MOUSE_FG)
    write_report(study)
    return study


def test_killed_report_leaves_previous_report(reported_study: Path) -> None:
    report = reported_study / REPORT_DIR
    before = snapshot(report)
    assert {"report.md", "trials.parquet", "curves.parquet"} <= set(before)
    # New results since the first report: a completed rewrite would change every table.
    add_finished(reported_study, "n0004_00000", 4, True, 30.0)

    def mid_report() -> None:
        (building,) = reported_study.glob(f"{TEMP_PREFIX}*")
        new_trials = building / "trials.parquet"
        assert new_trials.is_file(), "the new tables should be built before the plots"
        assert new_trials.read_bytes() != before["trials.parquet"], (
            "the rewrite would not change anything"
        )
        assert snapshot(report) == before

    output = start_and_kill_when(SLOW_REPORT, [str(reported_study)], "IN_PLOT", mid_report)
    assert "REPORT_RETURNED" not in output
    assert snapshot(report) == before
    # The interrupted build stays in its own temp folder, never in report/.
    assert not any(p.name.startswith(TEMP_PREFIX) for p in report.iterdir())
