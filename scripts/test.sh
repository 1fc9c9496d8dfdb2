#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit, integration (real broker, worker,
# milvus-lite, pretrained weights), deployment manifests, quality and exactness checks; then the
# Milvus-backed tests once more against a real Milvus 2.3.5 server in a private network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# mypy reads the installed `simstream` package: the editable link tree maps the folders under it.
.venv/bin/python -m mypy -p simstream
.venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ]; then
  if unshare -n true 2>/dev/null; then
    echo "--- the same index and pipeline tests on a real Milvus 2.3.5 server ---"
    bash scripts/with-milvus-server.sh .venv/bin/python -m pytest -q \
      tests/index tests/streams/test_worker_integration.py tests/harness/test_migration_proof.py \
      tests/harness/test_elastic_proof.py tests/serve/test_api.py tests/serve/test_query_features.py
  else
    echo "SKIPPED real-Milvus phase: this machine cannot create a private network namespace (unshare -n)"
  fi
fi
