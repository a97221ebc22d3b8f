"""Console scripts in pyproject: each names an importable main, and every `python -m` entry
point of the package has one."""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables", "analysis", "search_spaces")


def console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["scripts"]


def module_entry_points() -> set[str]:
    """Dotted names of package modules with both `def main` and an `if __name__ == "__main__"`."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            has_main = any(
                isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body
            )
            runs_as_script = any(
                isinstance(node, ast.If)
                and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name)
                and node.test.left.id == "__name__"
                for node in tree.body
            )
            if has_main and runs_as_script:
                found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_script_target_is_an_importable_callable_main() -> None:
    scripts = console_scripts()
    assert "mouse-study" in scripts and scripts["mouse-study"] == "study.run:main"
    for name, target in scripts.items():
        module_name, _, attribute = target.partition(":")
        function = getattr(importlib.import_module(module_name), attribute)
        assert callable(function), name
        # console scripts call main() with no arguments: argv must be optional
        parameters = list(inspect.signature(function).parameters.values())
        assert all(p.default is not inspect.Parameter.empty for p in parameters), name


def test_every_module_entry_point_has_a_console_script() -> None:
    targets = {t.partition(":")[0] for t in console_scripts().values()}
    entry_points = module_entry_points()
    assert "trainables.gslrm.data.check" in entry_points  # the scan itself finds them
    assert entry_points - targets == set()


@pytest.mark.parametrize(
    ("script", "words"),
    [("mouse-data-check", "list_file"), ("mouse-checkpoint", "inspect")],
)
def test_installed_script_runs(script: str, words: str) -> None:
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{script} not installed in this venv yet: run `pip install -e .` again")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert words in result.stdout


def test_optuna_dashboard_is_pinned_and_opens_an_artifact_folder() -> None:
    """The README's dashboard command: a dependency of the project, so `scripts/setup.sh`
    puts the command in every venv, with the --artifact-dir flag the pictures need."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    assert any(d.startswith("optuna-dashboard==") for d in dependencies)
    path = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("optuna-dashboard not installed in this venv yet: run scripts/setup.sh")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--artifact-dir" in result.stdout
