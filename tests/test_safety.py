"""Safety properties: loopback dashboard, no API key on disk, no code from checkpoints or YAML.

Nothing here starts Ray: `ray` is replaced by a stub module wherever study.run would import it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.gslrm.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint
from trainables.gslrm.config import ConfigError, load_config
from trainables.gslrm.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
SECRET = "sk-test-SECRET-123"
PRODUCT_PACKAGES = ("study", "trainables", "search_spaces", "analysis")


# ---------------------------------------------------------------------------------------
# dashboard on loopback


def test_dashboard_host_defaults_to_loopback() -> None:
    from study.plan import make_plan
    from study.run import parser

    args = parser().parse_args(["mouse_loss_sweep"])
    assert make_plan(args).dashboard_host == "127.0.0.1"
    args = parser().parse_args(["mouse_loss_sweep", "--smoke", "--dashboard-host", "0.0.0.0"])
    assert make_plan(args).dashboard_host == "0.0.0.0"


def fake_ray(calls: list[dict[str, Any]], url: str) -> types.ModuleType:
    module = types.ModuleType("ray")

    def init(**kwargs: Any) -> types.SimpleNamespace:
        calls.append(kwargs)
        return types.SimpleNamespace(dashboard_url=url)

    module.init = init  # type: ignore[attr-defined]
    return module


@pytest.fixture
def clean_auth_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Ray auth variables and an empty HOME; whatever the test sets is undone after it."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # records the original value, so undo restores it
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_start_ray_joining_a_cluster_does_not_open_a_dashboard(
    monkeypatch: pytest.MonkeyPatch, clean_auth_env: Path
) -> None:
    from study.cluster import start_ray

    calls: list[dict[str, Any]] = []
    monkeypatch.setitem(sys.modules, "ray", fake_ray(calls, "http://10.0.0.5:8265"))
    assert start_ray("10.0.0.5:6379", {"A": "1"}, "127.0.0.1") == "http://10.0.0.5:8265"
    (kwargs,) = calls
    assert kwargs["address"] == "10.0.0.5:6379"
    assert "dashboard_host" not in kwargs and "include_dashboard" not in kwargs


def test_joining_a_cluster_sends_the_local_auth_token(
    monkeypatch: pytest.MonkeyPatch, clean_auth_env: Path
) -> None:
    """`ray start --head` requires the token when ~/.ray/auth_token exists; ray.init(address=...)
    sends it only under RAY_AUTH_MODE=token."""
    from study.cluster import send_auth_token_if_available

    send_auth_token_if_available()
    assert "RAY_AUTH_MODE" not in os.environ  # no token on this machine: nothing to send
    (clean_auth_env / ".ray").mkdir()
    (clean_auth_env / ".ray" / "auth_token").write_text("0123456789abcdef")
    send_auth_token_if_available()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's explicit choice wins
    send_auth_token_if_available()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_a_cluster_that_refuses_us_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, clean_auth_env: Path
) -> None:
    from study.cluster import StudyError, start_ray

    module = types.ModuleType("ray")

    def init(**kwargs: Any) -> None:
        raise ConnectionError(
            "Failed to connect to GCS.\nFailed to connect to Ray cluster at 10.0.0.5:6379"
        )

    module.init = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", module)
    with pytest.raises(
        StudyError, match=r"--address 10.0.0.5:6379: could not join .*at 10.0.0.5:6379.*auth_token"
    ):
        start_ray("10.0.0.5:6379", {}, "127.0.0.1")


# ---------------------------------------------------------------------------------------
# the W&B API key is never written


def files_containing(folder: Path, needle: bytes) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(str(path.relative_to(folder)))
    return hits


def test_wandb_api_key_is_not_written_by_a_training_run(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "data", samples=3, size=32, seed=0)
    out = tmp_path / "run"
    env = dict(os.environ)
    env.update(
        {
            "WANDB_API_KEY": SECRET,
            # keep W&B's own folders inside tmp_path so they are searched too
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
            "WANDB_MODE": "offline",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])
            ),
        }
    )
    sets = [
        f"training.dataset.dataset_path={data['train_list']}",
        "training.schedule.max_steps=2",
        "validation.val_every=2",
        "model.image_tokenizer.image_size=32",
        "training.logging.wandb.mode=offline",
        "training.logging.wandb.log_every=1",
        "training.dataloader.num_workers=0",
        "validation.max_items=1",
    ]
    argv = [
        sys.executable,
        "-m",
        "trainables.gslrm.train",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
    ]
    for item in sets:
        argv += ["--set", item]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    offline_runs = list((out / "wandb_logs").rglob("*.wandb"))
    assert offline_runs, "no W&B offline run was written: the test would prove nothing"
    assert (out / "metrics.jsonl").is_file() and (out / "config.yaml").is_file()
    assert files_containing(tmp_path, SECRET.encode()) == []
    assert SECRET not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------
# checkpoints: weights only


class WritesMarker:
    """Unpickling this calls os.mkdir(marker): arbitrary code from a checkpoint file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "ckpts" / "ckpt_0000000000000005.pt"
    path.parent.mkdir()
    torch.save(
        {"model": {"w": torch.zeros(2)}, "param_update_step": 5, "payload": WritesMarker(marker)},
        path,
    )

    with pytest.raises(CheckpointError, match=path.name):
        read_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint ran pickled code"
    assert latest_checkpoint(path.parent) is None  # the only candidate is refused, not loaded
    assert not marker.exists()

    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()


# ---------------------------------------------------------------------------------------
# YAML: safe loader only


def test_yaml_config_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    config = tmp_path / "evil.yaml"
    config.write_text(
        SMOKE.read_text() + f'\nevil: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    with pytest.raises(ConfigError, match=str(config)):
        load_config(config)
    assert not marker.exists()

    config.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError):
        load_config(config)
    assert not marker.exists()


def test_set_override_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    override = f"training.runtime.seed=!!python/object/apply:os.system ['touch {marker}']"
    with pytest.raises(ConfigError, match="training.runtime.seed"):
        load_config(SMOKE, [override])
    assert not marker.exists()


def test_train_cli_refuses_unsafe_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainables.gslrm.train import main as train_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    marker = tmp_path / "MARKER"
    config = tmp_path / "evil.yaml"
    config.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert train_main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert str(config) in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# source scan: no unsafe deserialisation in product code

SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNSAFE_YAML_CALLS = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
PICKLE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _safe_loader_classes(tree: ast.Module) -> set[str]:
    """Names of classes in this module that derive (directly or in-module) from a safe loader."""
    safe: set[str] = set()
    changed = True
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    while changed:
        changed = False
        for cls in classes:
            bases = {_dotted(b).rsplit(".", 1)[-1] for b in cls.bases}
            if cls.name not in safe and bases & (SAFE_YAML_LOADERS | safe):
                safe.add(cls.name)
                changed = True
    return safe


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Every unsafe deserialisation call in one Python source file."""
    tree = ast.parse(source, filename)
    safe_loaders = SAFE_YAML_LOADERS | _safe_loader_classes(tree)
    problems = []

    def where(node: ast.AST) -> str:
        return f"{filename}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            names = {alias.name for alias in node.names}
            if root in PICKLE_MODULES and names & {"load", "loads", "Unpickler", "*"}:
                problems.append(
                    f"{where(node)}: from {node.module} import {', '.join(sorted(names))}"
                )
            if node.module == "torch" and "load" in names:
                problems.append(
                    f"{where(node)}: from torch import load (use torch.load(..., weights_only=True))"
                )
            if node.module == "yaml" and names & ({"load", "load_all"} | UNSAFE_YAML_CALLS):
                problems.append(f"{where(node)}: from yaml import {', '.join(sorted(names))}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        parts = name.split(".")
        keywords = {kw.arg: kw.value for kw in node.keywords}
        if (
            len(parts) >= 2
            and parts[-2] in PICKLE_MODULES
            and parts[-1] in ("load", "loads", "Unpickler")
        ):
            problems.append(f"{where(node)}: {name}(...)")
        if name == "torch.load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where(node)}: torch.load without weights_only=True")
        if name in ("np.load", "numpy.load"):
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{where(node)}: {name} with allow_pickle")
        if len(parts) == 2 and parts[0] == "yaml":
            if parts[1] in UNSAFE_YAML_CALLS:
                problems.append(f"{where(node)}: yaml.{parts[1]}")
            if parts[1] in ("load", "load_all"):
                loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
                loader_name = _dotted(loader).rsplit(".", 1)[-1] if loader is not None else ""
                if loader_name not in safe_loaders:
                    problems.append(
                        f"{where(node)}: yaml.{parts[1]} without a safe Loader "
                        f"({loader_name or 'none given'})"
                    )
    return problems


def test_scanner_finds_unsafe_calls() -> None:
    """The scanner itself: every unsafe form is reported, the safe forms are not."""
    bad = """
import pickle, yaml, torch, numpy as np
from pickle import loads
class Loose(yaml.FullLoader): pass
pickle.load(f)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.load(text, Loose)
yaml.unsafe_load(text)
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
"""
    assert len(unsafe_calls(bad, "bad.py")) == 9, unsafe_calls(bad, "bad.py")
    good = """
import yaml, torch, numpy as np
class Strict(yaml.SafeLoader): pass
class Stricter(Strict): pass
yaml.load(text, Loader=Stricter)
yaml.load(text, yaml.SafeLoader)
yaml.safe_load(text)
torch.load(path, map_location="cpu", weights_only=True)
np.load(path)
"""
    assert unsafe_calls(good, "good.py") == []


def test_product_code_has_no_unsafe_deserialisation() -> None:
    files = [p for package in PRODUCT_PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 20, "product packages not found"
    problems = [
        problem
        for path in files
        for problem in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert problems == []
    # The one checkpoint loader exists and is covered by the scan above.
    assert "torch.load(" in (REPO / "trainables" / "gslrm" / "checkpoint.py").read_text()


def test_text_scan_agrees() -> None:
    """A plain-text second opinion: every line naming `torch.load(` (code or docs) says
    weights_only=True, and no product file mentions pickle.load at all."""
    lines = 0
    for package in PRODUCT_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if "torch.load(" in line:
                    lines += 1
                    assert "weights_only=True" in line, f"{path}:{number}: {line.strip()}"
                assert "pickle.load" not in line, f"{path}:{number}: {line.strip()}"
    assert lines >= 1
