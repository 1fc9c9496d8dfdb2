#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit, integration (real broker, worker,
# milvus-lite, pretrained weights), deployment manifests, quality and exactness checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
