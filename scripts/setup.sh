#!/usr/bin/env bash
# Create .venv (Python 3.11) and install simstream with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  # A fresh venv with the CUDA build of torch takes about 7 GB; say so plainly before pip fails
  # half-way with "No space left on device".
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "${free_kb:-0}" -lt $((7 * 1024 * 1024)) ]; then
    echo "setup: only $((free_kb / 1024)) MB free under $(pwd); a new .venv needs about 7 GB (torch CUDA build)." >&2
    echo "setup: free some disk space and run again." >&2
    exit 1
  fi
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision pinned to the builds on this machine's disk (a CUDA build that also runs on CPU).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# Strict editable mode: setuptools maps the repository's folders (streams/, encoders/, index/, ...)
# under the one import name `simstream` through a link tree in build/, which mypy can read too.
# A new module appears there when this script runs again.
.venv/bin/python -m pip install -q -e ".[test,multilingual]" --config-settings editable_mode=strict
# The explorer page test (tests/serve/test_explorer_page.py) drives Debian's chromium through
# playwright (which cannot download browsers here): install it when missing and we are root.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "setup: could not install chromium; the explorer page test will skip" >&2
fi
