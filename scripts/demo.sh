#!/usr/bin/env bash
# Set up (if needed) and run the demo on embedded defaults: Tansu broker, worker, milvus-lite file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/simstream demo "$@"
