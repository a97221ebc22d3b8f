"""The code version a run records (trial summaries, evaluation protocols): no torch, no Ray."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_version() -> str:
    """git commit (short) of this checkout, else the installed package version, else "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mouse-gslrm-study")
    except PackageNotFoundError:
        return "unknown"
