#!/usr/bin/env bash
# Set up talkcurate on a fresh Debian machine with Python 3.11: system packages, a venv in .venv,
# the pinned dependencies in the order that works (see requirements.txt), and the project itself.
# Safe to run again: steps that are already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium and its driver: the browse page's tests drive Debian's headless browser with Selenium.
if ! command -v ffmpeg >/dev/null || ! command -v flite >/dev/null || ! command -v chromium >/dev/null \
        || ! command -v chromedriver >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg flite chromium chromium-driver >/dev/null
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), "talkcurate needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.talkcurate-deps
wanted=$(cat requirements.txt constraints.txt requirements-nodeps.txt | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    # pip's notes about absent local package mirrors are noise; its errors still show and still fail.
    pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
    pip install torch==2.13.0                       # the CPU wheel; never let pip choose torch itself
    pip install -c constraints.txt -r requirements.txt
    pip install --no-deps -r requirements-nodeps.txt # their declared pins clash; their code runs fine
    .venv/bin/python -c "import torch, ray, av, scenedetect, webdataset, mediapipe, dlib, faiss" 2>/dev/null \
        || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
    echo "$wanted" > "$stamp"
fi
.venv/bin/python -m pip --disable-pip-version-check -q install --no-deps -e . 2> >(grep -v "^WARNING: Location" >&2)
