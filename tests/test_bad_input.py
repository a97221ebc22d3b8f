"""Bad input a user can hit: one clear error naming the thing, exit status 2, nothing overwritten.

Covers `python -m study.run` (every check that runs before Ray starts), the trainer CLI
`python -m trainables.gslrm.train` and `python -m trainables.gslrm.data.check` on damaged
datasets, and a finished run folder that a failing second invocation must leave byte-identical.

study.run runs in a subprocess whose `ray` module is a stub: a check that lets bad input through
reaches `ray.init`, which then exits 99 instead of starting a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from trainables.gslrm.data import check as data_check
from trainables.gslrm.data.synthetic import generate_dataset
from trainables.gslrm.train import main as train_main

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
RAY_STARTED = "Started a local Ray"
GUARD_EXIT = 99
# Runs study.run's main with a stub `ray`: reaching ray.init means a pre-Ray check failed.
STUDY_GUARD = f"""
import sys, types
ray = types.ModuleType("ray")
def _init(*args, **kwargs):
    print("TEST GUARD: ray.init reached; a pre-Ray check let the bad input through", file=sys.stderr)
    raise SystemExit({GUARD_EXIT})
ray.init = _init
sys.modules["ray"] = ray
from study.run import main
sys.exit(main(sys.argv[1:]))
"""
TINY_TRAIN = [
    "training.schedule.max_steps=1",
    "model.image_tokenizer.image_size=32",
    "training.logging.wandb.mode=disabled",
    "training.dataloader.num_workers=0",
]


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["WANDB_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def assert_one_clear_error(stderr: str, *names: str) -> None:
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, f"expected one 'error:' line, got:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    for name in names:
        assert name in error_lines[0], f"{name!r} not named in: {error_lines[0]}"


# ---------------------------------------------------------------------------------------
# study.run


def run_study(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", STUDY_GUARD, *args],
        cwd=cwd,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    result.elapsed = time.perf_counter() - start  # type: ignore[attr-defined]
    return result


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage folder already holding another study's results."""
    folder = tmp_path / "studies"
    other = folder / "view_order_ablation"
    (other / "tune").mkdir(parents=True)
    (other / "study.json").write_text(
        json.dumps({"study": "view_order_ablation", "objective": "val/psnr_fg"})
    )
    (other / "tune" / "experiment_state-2025.json").write_text("{}")
    (other / "report").mkdir()
    (other / "report" / "report.md").write_text("# earlier report\n")
    return folder


def check_study_failure(result: subprocess.CompletedProcess, *names: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != GUARD_EXIT, f"got past the pre-Ray checks:\n{output}"
    assert result.returncode == 2, output
    assert RAY_STARTED not in output
    assert_one_clear_error(result.stderr, *names)
    assert result.elapsed < 60, f"took {result.elapsed:.0f} s to refuse bad input"


def storage_under_file(tmp_path: Path) -> tuple[list[str], list[str]]:
    blocker = tmp_path / "a_regular_file"
    blocker.write_text("not a folder")
    target = blocker / "studies"  # mkdir fails even for root: its parent is a regular file
    return ["mouse_loss_sweep", "--smoke", "--storage", str(target)], [str(target), "--storage"]


STUDY_CASES: dict[str, Callable[[Path, Path], tuple[list[str], list[str]]]] = {
    # name -> (tmp_path, storage) -> (extra argv, strings the error must contain)
    "unknown_study": lambda tmp, st: (
        ["mouse_sweep_typo", "--storage", str(st)],
        ["mouse_sweep_typo", "mouse_loss_sweep", "view_order_ablation", "mask_loss_ablation"],
    ),
    "unknown_set_key": lambda tmp, st: (
        [
            "mouse_loss_sweep",
            "--smoke",
            "--storage",
            str(st),
            "--set",
            "training.optimizer.lrr=0.1",
        ],
        ["training.optimizer.lrr"],
    ),
    "mistyped_value": lambda tmp, st: (
        ["mouse_loss_sweep", "--smoke", "--storage", str(st), "--set", "training.optimizer.lr=abc"],
        ["training.optimizer.lr", "abc"],
    ),
    "set_without_value": lambda tmp, st: (
        ["mouse_loss_sweep", "--smoke", "--storage", str(st), "--set", "training.optimizer.lr"],
        ["training.optimizer.lr", "KEY=VALUE"],
    ),
    "storage_under_a_file": lambda tmp, st: storage_under_file(tmp),
    "resume_of_nothing": lambda tmp, st: (
        ["mouse_loss_sweep", "--smoke", "--storage", str(st), "--resume"],
        [str(st / "mouse_loss_sweep"), "resume"],
    ),
    "dataset_missing": lambda tmp, st: (
        [
            "mouse_loss_sweep",
            "--smoke",
            "--storage",
            str(st),
            "--set",
            "training.dataset.dataset_path=/nonexistent/list.txt",
        ],
        ["training.dataset.dataset_path", "/nonexistent/list.txt"],
    ),
    "bad_address": lambda tmp, st: (
        ["mouse_loss_sweep", "--smoke", "--storage", str(st), "--address", "no-port-here"],
        ["--address", "no-port-here"],
    ),
}


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_study_run_refuses_bad_input_before_ray(tmp_path: Path, storage: Path, case: str) -> None:
    argv, names = STUDY_CASES[case](tmp_path, storage)
    before = snapshot(storage)
    result = run_study(argv, cwd=tmp_path)
    check_study_failure(result, *names)
    after = snapshot(storage)
    assert after == before, "a refused study changed the storage folder"
    assert not (tmp_path / "studies" / "mouse_loss_sweep").exists()
    assert not (tmp_path / "studies" / "_data").exists(), (
        "data generated before the input was checked"
    )


def test_second_driver_on_a_running_study_stops(tmp_path: Path, storage: Path) -> None:
    """While one driver holds the study, a second one (fresh or --resume) is refused before Ray."""
    import fcntl

    data_list = tmp_path / "data_train.txt"
    data_list.write_text("samples/000000\n")
    with open(storage / ".mouse_loss_sweep.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(storage)
        result = run_study(
            [
                "mouse_loss_sweep",
                "--smoke",
                "--storage",
                str(storage),
                "--set",
                f"training.dataset.dataset_path={data_list}",
            ],
            cwd=tmp_path,
        )
        check_study_failure(result, "mouse_loss_sweep", "already running", "--storage")
        assert snapshot(storage) == before
    # Once the holder is gone, the same command gets past the lock (and reaches the stubbed ray.init).
    result = run_study(
        [
            "mouse_loss_sweep",
            "--smoke",
            "--storage",
            str(storage),
            "--set",
            f"training.dataset.dataset_path={data_list}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == GUARD_EXIT, result.stdout + result.stderr


def test_study_run_refuses_unwritable_storage(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:
            probe.mkdir()
        except PermissionError:
            pass
        else:
            probe.rmdir()
            pytest.skip(
                "running as root (or with CAP_DAC_OVERRIDE): chmod 0o500 does not stop writes; "
                "test_study_run_refuses_bad_input_before_ray[storage_under_a_file] covers this"
            )
        result = run_study(
            ["mouse_loss_sweep", "--smoke", "--storage", str(locked / "studies")], cwd=tmp_path
        )
        check_study_failure(result, str(locked / "studies"), "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_study_run_real_cli_unknown_study(tmp_path: Path) -> None:
    """The unguarded `python -m study.run` (an unknown name cannot reach Ray)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "study.run",
            "mouse_sweep_typo",
            "--storage",
            str(tmp_path / "studies"),
        ],
        cwd=REPO,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    result.elapsed = 0.0  # type: ignore[attr-defined]
    check_study_failure(result, "mouse_sweep_typo", "mouse_loss_sweep")
    assert not (tmp_path / "studies").exists()


def test_study_run_without_a_name_lists_how_to_find_one(tmp_path: Path) -> None:
    result = run_study([], cwd=tmp_path)
    check_study_failure(result, "--list")


# ---------------------------------------------------------------------------------------
# trainer and data.check on damaged datasets


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 samples at 32 px: samples 000000, 000001 train (one batch of 2), 000002 validates."""
    root = tmp_path_factory.mktemp("pristine")
    generate_dataset(root, samples=3, size=32, seed=0)
    assert (root / "data_train.txt").read_text().split() == ["samples/000000", "samples/000001"]
    return root


@pytest.fixture
def dataset(tmp_path: Path, pristine: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def edit_camera(root: Path, edit: Callable[[dict], None]) -> Path:
    path = root / "samples" / "000000" / "opencv_cameras.json"
    data = json.loads(path.read_text())
    edit(data["frames"][0])
    path.write_text(json.dumps(data))  # NaN is written as the bare token NaN, as Python does
    return path


def truncate_png(root: Path) -> Path:
    path = root / "samples" / "000000" / "images" / "cam_00.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def resize_png(root: Path) -> Path:
    path = root / "samples" / "000000" / "images" / "cam_00.png"
    Image.new("RGBA", (16, 16), (255, 0, 0, 255)).save(path)
    return path


def remove_sample(root: Path) -> Path:
    folder = root / "samples" / "000000"
    shutil.rmtree(folder)
    return folder


def empty_list(root: Path) -> Path:
    (root / "data_train.txt").write_text("\n# nothing here\n")
    return root / "data_train.txt"


def three_by_four(frame: dict) -> None:
    frame["w2c"] = frame["w2c"][:3]


def non_finite(frame: dict) -> None:
    frame["fx"] = float("nan")


# name -> (break the dataset, return (list file to pass, thing the error must name, extra --set))
DATA_CASES: dict[str, Callable[[Path], tuple[Path, str, list[str]]]] = {
    "missing_list_file": lambda root: (
        root / "no_such_list.txt",
        str(root / "no_such_list.txt"),
        [],
    ),
    "empty_list_file": lambda root: (root / "data_train.txt", str(empty_list(root)), []),
    "sample_folder_missing": lambda root: (root / "data_train.txt", str(remove_sample(root)), []),
    "w2c_3x4": lambda root: (root / "data_train.txt", str(edit_camera(root, three_by_four)), []),
    "non_finite_number": lambda root: (
        root / "data_train.txt",
        str(edit_camera(root, non_finite)),
        [],
    ),
    "truncated_png": lambda root: (root / "data_train.txt", str(truncate_png(root)), []),
    "png_wrong_size": lambda root: (root / "data_train.txt", str(resize_png(root)), []),
    "fewer_views_than_num_views": lambda root: (
        root / "data_train.txt",
        "fewer than num_views=8",
        ["training.dataset.num_views=8", "training.dataset.num_input_views=5"],
    ),
}


def train_argv(list_file: Path, out: Path, *sets: str) -> list[str]:
    argv = [
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        "--set",
        f"training.dataset.dataset_path={list_file}",
    ]
    for item in (*TINY_TRAIN, *sets):
        argv += ["--set", item]
    return argv


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_train_refuses_bad_data_at_load_time(
    dataset: Path,
    tmp_path: Path,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    list_file, named, sets = DATA_CASES[case](dataset)
    out = tmp_path / "run"
    code = train_main(train_argv(list_file, out, *sets))
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert_one_clear_error(captured.err, named)
    if case == "fewer_views_than_num_views":
        assert str(dataset / "samples" / "00000") in captured.err  # the sample folder is named
    # Refused while loading: no optimizer step ran, so nothing was logged or checkpointed.
    assert not (out / "metrics.jsonl").exists()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert not (out / "pictures").exists()


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_check_names_the_bad_file(
    dataset: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    list_file, named, sets = DATA_CASES[case](dataset)
    argv = [str(list_file), "--image-size", "32"]
    if sets:
        argv += ["--num-views", "8"]
    code = data_check.main(argv)
    captured = capsys.readouterr()
    assert code != 0, captured.out
    assert named in captured.out + captured.err
    assert "Traceback" not in captured.err
    # A list file that is missing or empty is exit 2; a bad sample is exit 1 with a summary.
    expected = 2 if case in ("missing_list_file", "empty_list_file") else 1
    assert code == expected, captured.out + captured.err


def test_train_cli_subprocess_exit_code_and_stderr(dataset: Path, tmp_path: Path) -> None:
    """The real CLI in its own process: exit status 2, the file named on stderr, nothing on stdout."""
    png = truncate_png(dataset)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainables.gslrm.train",
            *train_argv(dataset / "data_train.txt", tmp_path / "run"),
        ],
        cwd=REPO,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert_one_clear_error(result.stderr, str(png))
    assert "final_step" not in result.stdout
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------
# a finished run survives a failing second invocation


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, pristine: Path) -> Path:
    root = tmp_path_factory.mktemp("finished")
    data = root / "data"
    shutil.copytree(pristine, data)
    out = root / "run"
    argv = train_argv(
        data / "data_train.txt",
        out,
        "training.schedule.max_steps=2",
        "validation.val_every=2",
        "training.checkpointing.checkpoint_every=1",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        assert train_main(argv) == 0
    assert (out / "checkpoints" / "ckpt_0000000000000002.pt").is_file()
    assert (out / "metrics.jsonl").read_text().strip()
    return out


@pytest.mark.parametrize(
    "bad_set",
    ["training.optimizer.lr=abc", "training.optimizer.lrr=0.1", "model.transformer.d=100"],
)
def test_failing_set_leaves_finished_run_byte_identical(
    finished_run: Path,
    bad_set: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = snapshot(finished_run)
    data_list = finished_run.parent / "data" / "data_train.txt"
    code = train_main(
        train_argv(
            data_list,
            finished_run,
            "training.schedule.max_steps=2",
            "validation.val_every=2",
            "training.checkpointing.checkpoint_every=1",
            bad_set,
        )
    )
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert_one_clear_error(captured.err, bad_set.split("=")[0])
    assert snapshot(finished_run) == before


def test_failing_dataset_leaves_finished_run_byte_identical(
    finished_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = snapshot(finished_run)
    missing = finished_run.parent / "moved" / "data_train.txt"
    code = train_main(
        train_argv(
            missing,
            finished_run,
            "training.schedule.max_steps=2",
            "validation.val_every=2",
            "training.checkpointing.checkpoint_every=1",
        )
    )
    captured = capsys.readouterr()
    assert code == 2
    assert_one_clear_error(captured.err, str(missing))
    after = snapshot(finished_run)
    assert sorted(after) == sorted(before)
    changed = [name for name in before if after[name] != before[name]]
    assert changed == [], f"changed by a run that failed: {changed}"
