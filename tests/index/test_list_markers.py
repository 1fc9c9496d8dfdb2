"""List tombstone markers (a deleted product's list: empty payload, boundary TOMBSTONE_BOUNDARY) are
purged with the product tombstones, from Milvus and from the list mirror, by one rule evaluated at
delete time: a list recorded again after the cutoff survives."""

from __future__ import annotations

import time

import numpy as np

from simstream.clock import now_ms
from simstream.index.rows import StoredList
from simstream.index.store import VectorStore

IDS = ["gone", "back", "fresh", "real", "dead"]


def marker(pid: str) -> StoredList:
    return StoredList(pid, [], 0.0, b"")


def test_old_markers_are_purged_and_lists_recorded_again_survive(small_store: VectorStore):
    store = small_store
    store.load_into_memory()
    assert store.mirror is not None
    rng = np.random.default_rng(0)
    store.upsert_products([{"product_id": "dead", "vector": rng.normal(size=store.dim).astype(np.float32).tolist(),
                            "version": 1, "brand": "", "category": "", "price": -1.0, "hashes": {}, "model": "m",
                            "updated_at": 1, "event_time": 1}])
    store.delete_products(["dead"])
    store.upsert_tombstones({"dead": 2}, deleted_at=now_ms())
    store.upsert_lists([marker("gone"), marker("back"), marker("dead"), StoredList("real", ["x"], 0.3, b"{}")])
    time.sleep(0.02)
    cutoff = now_ms()
    time.sleep(0.02)
    store.upsert_lists([StoredList("back", ["x", "y"], 0.2, b"{}"), marker("fresh")])  # re-created; deleted later

    store.purge_tombstones(cutoff)

    kept = {"back", "fresh", "real"}
    assert set(store.milvus.read_list_heads(IDS)) == kept
    assert set(store.list_heads(IDS)) == kept  # the mirror
    assert store.get_tombstones(["dead"]) == {}
    assert store.list_heads(["back"])["back"].neighbour_ids == ("x", "y")
    assert store.milvus.read_lists(["back"])["back"].payload == b"{}"
    assert store.listers_of(["x"]) == {"back", "real"}
    side, mirror = store.side, store.mirror
    store.side = store.mirror = None
    try:  # Milvus alone answers the same
        assert set(store.list_heads(IDS)) == kept and store.listers_of(["x"]) == {"back", "real"}
    finally:
        store.side, store.mirror = side, mirror


def test_purge_without_the_mirror(small_store: VectorStore):
    store = small_store
    store.upsert_lists([marker("gone"), StoredList("real", ["x"], 0.3, b"{}")])
    time.sleep(0.02)
    store.purge_tombstones(now_ms())
    assert set(store.list_heads(IDS)) == {"real"}
