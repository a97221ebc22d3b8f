#!/usr/bin/env bash
# Creates .venv in the project root and installs everything the project needs.
# Without a GPU it installs the pinned CPU build of torch first, so that pyproject's
# `torch>=2.4` is already satisfied and pip does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    $PIP install -q --upgrade pip
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            $PIP install -q "torch>=2.4"
        else
            $PIP install -q "torch==2.13.0"
        fi
    fi
    $PIP install -q -e ".[dev]"
    touch .venv/.installed
fi
