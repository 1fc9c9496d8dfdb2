"""Milvus failures are sorted into "refused the data" (IndexRejected: dead-letter, never retried)
and "did not answer" (IndexUnavailable: retried), and no call waits longer than its deadline."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from pymilvus import MilvusException
from pymilvus.exceptions import DataNotMatchException, ParamError

from simstream.errors import IndexRejected, IndexUnavailable
from simstream.harness.embedded import MilvusServer
from simstream.index.failures import is_rejection
from simstream.index.milvus import MilvusStore
from simstream.index.rows import MAX_BRAND_BYTES

DIM = 16  # the small_store fixture's (tests/index/conftest.py)


def row(pid: str, dim: int = DIM, brand: str = "") -> dict:
    return {"product_id": pid, "vector": np.full(dim, 0.1, np.float32).tolist(), "version": 1, "brand": brand,
            "category": "", "price": -1.0, "hashes": {}, "model": "m", "updated_at": 1, "event_time": 1}


@pytest.mark.parametrize("bad", [
    pytest.param(row("p1", dim=DIM + 3), id="wrong-dimension"),
    pytest.param(row("p1", brand="x" * (MAX_BRAND_BYTES + 1)), id="varchar-over-limit"),
    pytest.param(row("p" * 300), id="id-over-limit"),
])
def test_data_milvus_refuses_is_rejected_not_unavailable(small_store, bad):
    with pytest.raises(IndexRejected, match="refused the data"):
        small_store.upsert_products([bad])
    small_store.upsert_products([row("ok")])  # the store still works: nothing to wait out
    assert set(small_store.get_products(["ok", "p1"])) == {"ok"}


def test_invalid_filter_expression_is_rejected(small_store):
    with pytest.raises(IndexRejected):
        small_store.milvus._filter(small_store.milvus.lists, "kth_score >>= 1", ["product_id"])


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


@pytest.mark.parametrize("exc, rejected", [
    (ParamError(message="bad"), True),
    (DataNotMatchException(message="missing field"), True),
    (MilvusException(1100, "invalid parameter", 5), True),  # Milvus merr ParameterInvalid
    (MilvusException(65535, "x", 5), True),  # legacy IllegalArgument
    (MilvusException(6, "dim 4, got 5", 6), True),  # milvus-lite's validation failure
    (MilvusException(1100, "x", 5, retriable=True), False),  # the server says a retry may work
    (MilvusException(2, "service unavailable", 1), False),
    (MilvusException(8, "rate limit exceeded", 49), False),
    (MilvusException(grpc.StatusCode.UNAVAILABLE, "retry timeout"), False),
    (_Rpc(grpc.StatusCode.DEADLINE_EXCEEDED), False),
    (_Rpc(grpc.StatusCode.UNAVAILABLE), False),
    (_Rpc(grpc.StatusCode.INVALID_ARGUMENT), True),
    (ConnectionRefusedError(), False),
])
def test_failure_classification(exc, rejected):
    assert is_rejection(exc) is rejected


def test_a_frozen_server_is_unavailable_within_the_deadline(tmp_path: Path):
    """milvus-lite server SIGSTOPped: calls end with IndexUnavailable after ~timeout_s instead of
    hanging (or leaking raw gRPC errors), connecting too; after SIGCONT the same store works."""
    server = MilvusServer(tmp_path / "data", tmp_path / "server.log").start()
    assert server.proc is not None
    pid = server.proc.pid
    store = None
    try:
        store = MilvusStore.connect(server.uri, "frozen", DIM, timeout_s=2.0, flush_every_rows=0)
        store.upsert_products([row("a")])
        assert len(list(store.iter_products())) == 1  # schema cached: iterating makes no schema call
        os.kill(pid, signal.SIGSTOP)
        calls = {
            "upsert": lambda: store.upsert_products([row("b")]),
            "query": lambda: store.read_products(["a"]),
            "count": store.count_products,
            "iterate": lambda: list(store.iter_products()),
            "search": lambda: store.search_scores(np.ones((1, DIM), np.float32), 3),
            "delete": lambda: store.delete_products(["a"]),
            "flush": store.flush,
            "connect": lambda: MilvusStore.connect(server.uri, "other", DIM, timeout_s=2.0),
        }
        for name, call in calls.items():
            t0 = time.monotonic()
            with pytest.raises(IndexUnavailable):
                call()
            assert time.monotonic() - t0 < 2.0 + 2.5, name
        t0 = time.monotonic()
        assert store.ping() is False and time.monotonic() - t0 < 4.5
        os.kill(pid, signal.SIGCONT)
        assert store.count_products() >= 1
    finally:
        os.kill(pid, signal.SIGCONT)
        if store is not None:
            store.close()
        server.stop()
