"""End to end: a tiny grid study with --until-decided --max-seeds 3 on real Ray Tune trials,
stopped by SIGTERM after its first look and resumed: the sequence goes on where it stopped."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_faults import custom_study
from tests.test_study import REPO, TINY, dataset, study_env  # noqa: F401 - dataset: a fixture

NAME = "sequential_tiny"
# A small effect against the seed spread: undecided at the first look (2 seeds), so the study
# adds a seed (the masked-loss switch, by contrast, is "better" already at 2 seeds)
FACTOR = "training.losses.ssim_loss_weight"
GRID = {FACTOR: [0.5, 0.55], "training.runtime.seed": [0, 1]}


def env() -> dict[str, str]:
    """The study's environment with this checkout first on the path: the driver script lives
    outside the repo, and an installed copy of the package must not win (nor in Ray workers)."""
    out = study_env()
    out["PYTHONPATH"] = ":".join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    return out


def sequential_entry(study_dir: Path) -> dict:
    try:
        return json.loads((study_dir / "study.json").read_text()).get("sequential") or {}
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_until_decided_records_its_looks_and_resumes_after_sigterm(tmp_path, dataset):  # noqa: F811
    storage = tmp_path / "studies"
    study_dir = storage / NAME
    driver = tmp_path / "driver.py"
    driver.write_text(custom_study(NAME, GRID))
    command = [
        sys.executable, str(driver), NAME, "--smoke", "--until-decided", "--max-seeds", "3",
        "--margin", "psnr_fg=0.5", "--storage", str(storage), *TINY, *dataset,
    ]  # fmt: skip
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if sequential_entry(study_dir).get("looks"):
                break
            time.sleep(0.5)
        first_look = sequential_entry(study_dir)
        assert first_look.get("looks"), log.read_text()[-4000:]
        if proc.poll() is None and first_look.get("stopped") is None:
            proc.send_signal(signal.SIGTERM)  # the next seed's trials are starting
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = log.read_text()
    record = json.loads((study_dir / "study.json").read_text())
    assert record["plan"]["until_decided"] is True and record["plan"]["max_seeds"] == 3
    assert record["margins"]["psnr_fg"] == 0.5
    entry = record["sequential"]
    assert entry["first_seeds"] == [0, 1] and entry["max_seeds"] == 3
    assert "O'Brien-Fleming" in entry["rule"]
    look = entry["looks"][0]
    assert look["seeds"] == 2
    assert set(look["verdicts"]) == {FACTOR}
    assert re.search(r"\[study\] look at 2 seeds", first), first[-4000:]
    if look["decided"]:  # decided at 2 seeds: nothing left to resume
        assert proc.returncode == 0 and entry["stopped"] == "decided", first[-4000:]
        return
    assert proc.returncode == 143, first[-4000:]
    assert entry["seeds"] == [0, 1, 2] and entry["stopped"] is None

    resumed = subprocess.run(
        [sys.executable, str(driver), NAME, "--resume", "--storage", str(storage)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    second = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, second[-4000:]
    entry = sequential_entry(study_dir)
    assert [look["seeds"] for look in entry["looks"]] == [2, 3], entry
    assert entry["stopped"] in ("decided", "max seeds") and entry["seeds"] == [0, 1, 2]
    assert entry["looks"][0] == look  # the first look replays unchanged
    # one trial per cell per seed, none run twice: 2 cells x 3 seeds
    summaries = list((study_dir / "runs").glob("*/journal.jsonl"))
    assert len(summaries) == 6, summaries
    report = (study_dir / "report" / "report.md").read_text()
    assert "## Sequential design (--until-decided)" in report
    assert "| 3 |" in report and "Seeds started: 3 (0, 1, 2)" in report
