#!/bin/bash
# Debian's Chromium and its WebDriver for the `browser` tests (root, Debian 12; ~30 s here), and
# selenium in the project's environment. Then: .venv/bin/python -m pytest -m browser
set -euo pipefail
cd "$(dirname "$0")/.."
python=${STUDY_PYTHON:-.venv/bin/python}
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
"$python" -m pip install -q "selenium==4.51.0"
