#!/bin/bash
# Install Debian's Slurm and munge (root, Debian 12) and run the Slurm tests: a private one-node
# cluster that tests/slurm_cluster.py starts and stops (its own slurm.conf, ports, munge socket;
# /etc is not used). Run from the repository root:  scripts/slurm/test-slurm.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${STUDY_PYTHON:-.venv/bin/python}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
exec "$python" -m pytest -m slurm tests/test_slurm.py "$@"
