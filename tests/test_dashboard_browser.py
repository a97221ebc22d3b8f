"""The Ray dashboard a smoke study prints, opened in headless Chromium as a person would.

Marked `browser` and left out of the default run (pyproject's addopts); scripts/install-browser.sh
installs Debian's chromium + chromium-driver, selenium comes with the dev extras. Skipped, with
the reason, without /usr/bin/chromium, /usr/bin/chromedriver or selenium.

What a person sees: the printed URL opens on an "Authentication Token Required" dialog over an
empty page; `ray get-auth-token` (what study.cluster.dashboard_sign_in tells them) prints the
token, typed into the dialog it opens the dashboard. There the Jobs page lists the study's
driver, the Actors page its running trials (class ImplicitFunc, repr run_trial) and their Ray
Train workers (RayTrainWorker), and a worker's log names its trial's Train run
(`NAME-<trial id>`). The Actors page is saved as docs/dashboard.png.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from study.cluster import dashboard_sign_in
from tests.test_study import REPO, study_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "dashboard.png"
# Chromium as root in a container, and no traffic to Google's services (this network refuses it)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
]  # fmt: skip


def browser_missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"{path} missing (scripts/install-browser.sh installs it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser(tmp_path):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def running_study(storage: Path, log: Path) -> Iterator[subprocess.Popen]:
    """A smoke study that trains far longer than the test looks at it; stopped with SIGTERM
    (the graceful stop) when the test is done."""
    command = [
        sys.executable, "-m", "study.run", "view_order_ablation", "--smoke", "--seeds", "0",
        "--storage", str(storage), "--wandb", "disabled",
        "--set", "model.image_tokenizer.image_size=32",
        "--set", "training.schedule.max_steps=100000",
        "--set", "validation.val_every=50", "--set", "training.checkpointing.checkpoint_every=50",
        "--set", "validation.max_items=2",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=study_env(), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # the second signal aborts at once
                proc.wait(timeout=60)


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float, proc=None):
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            assert proc.poll() is None, f"the study ended before {what}"
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def text_field(driver, label: str):
    """The input of a Material UI text field, found by its visible label as a person would."""
    from selenium.webdriver.common.by import By

    found = driver.find_element(By.XPATH, f"//label[normalize-space()={label!r}]")
    return driver.find_element(By.ID, found.get_attribute("for"))


def retype(field, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)


def sign_in(driver, token: str) -> None:
    """Type the token into the dialog and press its Submit button."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "input[placeholder='Enter your authentication token']")
    text_field(driver, "Authentication Token").send_keys(token)
    driver.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()
    wait_for(lambda: "Authentication Token Required" not in page_text(driver), "sign-in", 30)


def test_signed_in_dashboard_shows_the_study_its_trials_and_train_workers(
    browser, tmp_path
) -> None:
    storage = tmp_path / "studies"
    runs = storage / "view_order_ablation" / "runs"
    log = tmp_path / "study.log"
    with running_study(storage, log) as study:
        url = wait_for(
            lambda: re.search(
                r"\[study\] view_order_ablation: dashboard (http\S+)", log.read_text()
            ),
            "the dashboard URL",
            180,
            study,
        ).group(1)
        # both trials training and past a reported checkpoint: their workers have logged it
        wait_for(
            lambda: (
                runs.is_dir()
                and len([r for r in runs.iterdir() if "val/" in read(r / "metrics.jsonl")]) >= 2
            ),
            "two trials validated",
            300,
            study,
        )
        trials = sorted(r.name for r in runs.iterdir())

        # what a person sees first: the dialog over an empty overview
        browser.get(url)
        first = wait_for(
            lambda: "Authentication Token Required" in (t := page_text(browser)) and t,
            "the token dialog",
            30,
        )
        assert "No jobs yet" in first, first
        # the study's start-up sentence names the command; run it as the person would
        sentence = dashboard_sign_in(url)
        assert "`ray get-auth-token`" in sentence, sentence
        ray_cli = str(Path(sys.executable).parent / "ray")
        token = subprocess.run(
            [ray_cli, "get-auth-token"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        sign_in(browser, token)

        # Jobs: the study's driver, running, with its command line
        browser.get(f"{url}/#/jobs")
        jobs = wait_for(
            lambda: "study.run view_order_ablation" in (t := page_text(browser)) and t,
            "the study on the Jobs page",
            30,
        )
        assert "RUNNING" in jobs, jobs

        # Actors: the trials (Tune's function trainable, repr run_trial) and their Train workers
        browser.get(f"{url}/#/actors")
        wait_for(lambda: "Class" in page_text(browser), "the Actors page", 30)
        class_filter = text_field(browser, "Class")
        retype(class_filter, "ImplicitFunc")
        trial_rows = wait_for(
            lambda: len(re.findall(r"ImplicitFunc\s+-\s+run_trial\s+ALIVE", page_text(browser))),
            "the running trials on the Actors page",
            30,
        )
        assert trial_rows == len(trials) == 2, page_text(browser)
        retype(class_filter, "RayTrainWorker")
        worker_rows = wait_for(
            lambda: len(re.findall(r"RayTrainWorker\s+-\s+-\s+ALIVE", page_text(browser))),
            "the Train workers on the Actors page",
            30,
        )
        assert worker_rows == 2, page_text(browser)  # one worker per trial

        # a Train worker's page (its "Log" link): the log shown there names the trial's Train run
        from selenium.webdriver.common.by import By

        link = browser.find_element(By.XPATH, "//a[normalize-space()='Log']")
        browser.get(link.get_attribute("href"))
        wait_for(lambda: "RayTrainWorker" in page_text(browser), "a Train worker's page", 30)
        named = wait_for(
            lambda: [t for t in trials if f"view_order_ablation-{t}" in page_text(browser)],
            "the worker's log naming its trial",
            90,
        )
        assert len(named) == 1, named
        save_screenshot(browser, url)


def save_screenshot(browser, url: str) -> None:
    """docs/dashboard.png: the Actors page, unfiltered, oldest first, every actor of the study
    on one page (trials, their Train controllers and workers, Ray's helpers)."""
    browser.get(f"{url}/#/actors")
    wait_for(lambda: "Class" in page_text(browser), "the Actors page", 30)
    retype(text_field(browser, "Class"), "")
    retype(text_field(browser, "Page Size"), "20")
    # oldest first: the trials, then what each started (Train controller, then workers)
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()  # "Reverse"
    browser.set_window_size(1400, 2200)
    wait_for(lambda: "ImplicitFunc" in page_text(browser), "every actor listed", 30)
    time.sleep(1)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    # 64 colours are plenty for a page of text: a third of the size in the repository
    from PIL import Image

    with Image.open(SCREENSHOT) as shot:
        small = shot.convert("RGB").quantize(colors=64)
    small.save(SCREENSHOT, optimize=True)


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
