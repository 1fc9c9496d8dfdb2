#!/usr/bin/env bash
# Run a command next to a real Milvus 2.3.5 standalone (PyPI `milvus`, `milvus-server`) inside a
# private network namespace: milvus-server binds every interface whatever its settings say, so it
# must never see a real network. Loopback only; the server is stopped (SIGINT, by PID) afterwards.
#   usage: bash scripts/with-milvus-server.sh CMD [ARGS...]
# The command sees SIMSTREAM_TEST_MILVUS_URI=http://127.0.0.1:19530.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import milvus" 2>/dev/null; then
  # the `milvus` wheel pins an old pymilvus; install the server alone, keep the project's client
  .venv/bin/python -m pip install -q --no-deps "milvus==2.3.5"
fi
if [ -z "${SIMSTREAM_IN_NETNS:-}" ]; then
  exec env SIMSTREAM_IN_NETNS=1 unshare -n -- bash "$0" "$@"
fi
ip link set lo up
data=$(mktemp -d /tmp/milvus-server-XXXXXX)
extra=()
for role in proxy rootCoord queryCoord queryNode indexNode dataCoord dataNode; do
  extra+=(--extra-config "$role.ip=127.0.0.1")
done
# MILVUS_TIME_TICK_MS: the proxy's time tick (Milvus' default 200 ms), which bounds how long a
# Strong-consistency read waits (docs/operations.md, "Beside a Milvus server")
if [ -n "${MILVUS_TIME_TICK_MS:-}" ]; then
  extra+=(--extra-config "proxy.timeTickInterval=$MILVUS_TIME_TICK_MS")
fi
.venv/bin/milvus-server --data "$data" "${extra[@]}" >"$data/server.log" 2>&1 &
server=$!
cleanup() { kill -INT "$server" 2>/dev/null || true; for _ in $(seq 60); do kill -0 "$server" 2>/dev/null || break; sleep 1; done; kill -KILL "$server" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 180); do
  if (exec 3<>/dev/tcp/127.0.0.1/19530) 2>/dev/null; then break; fi
  kill -0 "$server" 2>/dev/null || { echo "milvus-server exited:"; tail -30 "$data/server.log"; exit 1; }
  sleep 1
done
(exec 3<>/dev/tcp/127.0.0.1/19530) 2>/dev/null || { echo "milvus-server did not listen within 180 s"; tail -30 "$data/server.log"; exit 1; }
export SIMSTREAM_TEST_MILVUS_URI=http://127.0.0.1:19530
"$@"
