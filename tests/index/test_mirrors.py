"""The in-memory side index and list mirror answer exactly what Milvus answers, including writes
made by *another* worker (written straight to Milvus, bypassing this store's memory)."""

import time

import numpy as np
import pytest

from simstream.index.rows import StoredList
from simstream.index.store import VectorStore

DIM = 16  # the small_store fixture's (tests/index/conftest.py)


def now_ms() -> int:
    return int(time.time() * 1000)


def product_row(pid: str, vec: np.ndarray, version: int) -> dict:
    return {"product_id": pid, "vector": vec.tolist(), "version": version, "brand": "", "category": "",
            "price": -1.0, "hashes": {"text": f"h{version}"}, "model": "m", "updated_at": now_ms(),
            # serve's fields: Milvus 2.3.5 ignores nullable/default values, so a writer sends them all
            "event_time": version, "display": {}, "brand_key": "", "category_key": ""}


def list_row(pid: str, ids: list[str], kth: float, payload: str) -> dict:
    return {"product_id": pid, "dummy": [0.0, 0.0], "neighbor_ids": ids, "kth_score": kth, "payload": payload, "as_of": 7,
            "updated_at": now_ms()}


def milvus_answers(store: VectorStore, ids: list[str], since: int, x: float) -> dict:
    """The same questions with the memory switched off: plain Milvus queries."""
    side, mirror = store.side, store.mirror
    store.side = store.mirror = None
    try:
        return answers(store, ids, since, x)
    finally:
        store.side, store.mirror = side, mirror


def answers(store: VectorStore, ids: list[str], since: int, x: float) -> dict:
    products = store.get_products(ids)
    changed = store.changed_since(since)
    return {
        "products": {p: (s.version, s.hashes, s.event_time, s.vector.round(5).tolist()) for p, s in products.items()},
        "changed": {p: (s.version, s.vector.round(5).tolist()) for p, s in changed.items()},
        "listers": {p: store.listers_of([p]) for p in ids},
        "kth": {p: round(v, 4) for p, v in store.list_boundaries(ids).items()},
        "loose": {p: round(v, 4) for p, v in store.lists_with_boundary_at_most(x).items()},
        "heads": {p: (h.neighbour_ids, round(h.boundary, 4), h.as_of) for p, h in store.list_heads(ids).items()},
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_memory_answers_equal_milvus_answers(small_store, seed):
    rng = np.random.default_rng(seed)
    store = small_store
    # Foreign writes below go straight through the client, as a second worker on a shared server
    # would; a milvus-lite file is exclusive to one process, so make this store sync like a server's.
    store.milvus.exclusive = False
    assert store.milvus.lists_stamped
    ids = [f"p{i:02d}" for i in range(30)]
    versions = {p: 0 for p in ids}

    def write(pid: str, foreign: bool) -> None:
        versions[pid] += 1
        row = product_row(pid, rng.normal(size=DIM).astype(np.float32), versions[pid])
        if foreign:
            store.milvus.client.upsert(store.milvus.products, [row])
        else:
            store.upsert_products([row])

    for pid in ids[:20]:
        write(pid, foreign=False)
    store.upsert_lists([StoredList(p, list(rng.choice(ids, 3, replace=False)), float(rng.uniform(-1, 1)), b"{}")
                        for p in ids[:10]])
    store.load_into_memory()  # built from what Milvus holds now
    assert store.side is not None and store.mirror is not None
    started = now_ms()
    for _ in range(6):
        for _ in range(8):
            pid = str(rng.choice(ids))
            foreign = bool(rng.random() < 0.5)
            op = rng.random()
            if op < 0.5:
                write(pid, foreign)
            elif op < 0.65:
                if foreign:
                    store.milvus.client.delete(store.milvus.products, ids=[pid])
                    store.upsert_tombstones({pid: versions[pid]}, now_ms())
                else:
                    store.delete_products([pid])
                    store.upsert_tombstones({pid: versions[pid]}, now_ms())
            else:
                members = list(rng.choice(ids, int(rng.integers(0, 4)), replace=False))
                kth = float(rng.uniform(-1, 1)) if len(members) == 3 else float("-inf")
                tomb = rng.random() < 0.2
                if foreign:
                    payload = "" if tomb else "{}"
                    store.milvus.client.upsert(store.milvus.lists, [list_row(pid, [] if tomb else members,
                                                               3.0e38 if tomb else max(kth, -3.0e38), payload)])
                else:
                    store.upsert_lists([StoredList(pid, [] if tomb else members, float("inf") if tomb else kth,
                                                   b"" if tomb else b"{}")])
        x = float(rng.uniform(-1, 1))
        assert answers(store, ids, started, x) == milvus_answers(store, ids, started, x)
        # the searches see foreign writes too
        q = rng.normal(size=(3, DIM)).astype(np.float32)
        mem = [[p for p, _ in row] for row in store.search_scores(q, 5)]
        side = store.side
        store.side = None
        try:
            assert mem == [[p for p, _ in row] for row in store.search_scores(q, 5)]
        finally:
            store.side = side


def test_exclusive_file_store_needs_no_sync(tmp_path):
    """A milvus-lite file opens in one process only: the store trusts its memory, and its own
    writes keep that memory equal to Milvus."""
    store = VectorStore.connect(str(tmp_path / "x.db"), "ex", DIM, flush_every_rows=0)
    assert store.milvus.exclusive
    store.load_into_memory()
    rng = np.random.default_rng(3)
    ids = [f"p{i}" for i in range(12)]
    store.upsert_products([product_row(p, rng.normal(size=DIM).astype(np.float32), 1) for p in ids])
    store.delete_products(ids[:2])
    store.upsert_lists([StoredList(p, ids[2:5], 0.1, b"{}") for p in ids[5:]] + [StoredList(ids[2], [], float("inf"), b"")])
    assert answers(store, ids, 0, 0.5) == milvus_answers(store, ids, 0, 0.5)
    store.close()


def test_lists_collection_from_before_deep_lists_still_works(tmp_path):
    """An older lists collection (no updated_at / as_of): Milvus answers the list questions, no
    mirror, heads come back with as_of 0 so nothing merges."""
    from pymilvus import DataType, MilvusClient

    uri = str(tmp_path / "old.db")
    store = VectorStore.connect(uri, "old", DIM, flush_every_rows=0)
    store.milvus.client.drop_collection(store.milvus.lists)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=256)
    s.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
    s.add_field("neighbor_ids", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=1000, max_length=256)
    s.add_field("kth_score", DataType.FLOAT)
    s.add_field("payload", DataType.VARCHAR, max_length=65_535)
    idx = store.milvus.client.prepare_index_params()
    idx.add_index("dummy", index_type="FLAT", metric_type="L2")
    store.milvus.client.create_collection(store.milvus.lists, schema=s, index_params=idx)
    store.close()

    store = VectorStore.connect(uri, "old", DIM, flush_every_rows=0)
    assert not store.milvus.lists_stamped
    store.load_into_memory()
    assert store.mirror is None
    store.upsert_lists([StoredList("a", ["b", "c"], 0.25, b"{}", as_of=123)])
    heads = store.list_heads(["a"])
    assert heads["a"].neighbour_ids == ("b", "c") and heads["a"].as_of == 0
    assert store.listers_of(["b"]) == {"a"} and store.list_boundaries(["a"]) == {"a": 0.25}
    store.close()


def test_one_sync_reads_other_workers_writes_once_per_step(small_store, monkeypatch):
    """Inside ``one_sync`` both copies sync with Milvus at the step's first read (their reads go
    out together), and not again: a foreign write after that read is seen by the next step, not by
    this one. Outside it, every read syncs the copy it reads (a Strong read on a server waits for
    its time tick: a step pays that once)."""
    store = small_store
    store.milvus.exclusive = False  # as on a shared server: sync with writes made by others
    rng = np.random.default_rng(5)
    store.upsert_products([product_row(f"p{i}", rng.normal(size=DIM).astype(np.float32), 1) for i in range(6)])
    store.upsert_lists([StoredList("p0", ["p1", "p2"], 0.1, b"{}", as_of=1)])
    store.load_into_memory()
    syncs: list[str] = []
    stamps, heads = store.milvus.write_stamps_since, store.milvus.list_heads_since
    monkeypatch.setattr(store.milvus, "write_stamps_since", lambda since: syncs.append("side") or stamps(since))
    monkeypatch.setattr(store.milvus, "list_heads_since", lambda since: syncs.append("mirror") or heads(since))

    with store.one_sync():
        assert store.get_products(["p1"]).keys() == {"p1"}  # the first read: both copies sync
        foreign = rng.normal(size=DIM).astype(np.float32)
        store.milvus.client.upsert(store.milvus.products, [product_row("p9", foreign, 1)])
        store.milvus.client.upsert(store.milvus.lists, [list_row("p9", ["p1"], 0.2, "{}")])
        assert store.get_products(["p9"]) == {}  # written after this step's read
        assert store.listers_of(["p1"]) == {"p0"}
        store.changed_since(0), store.list_heads(["p0"]), store.listers_of(["p2"])
    assert sorted(syncs) == ["mirror", "side"]
    with store.one_sync():  # the next step sees both
        assert store.listers_of(["p1"]) == {"p0", "p9"}
        assert store.get_products(["p9"]).keys() == {"p9"}
    assert sorted(syncs) == ["mirror", "mirror", "side", "side"]
    store.get_products(["p1"]), store.get_products(["p2"])  # outside: every read syncs what it reads
    assert (syncs.count("side"), syncs.count("mirror")) == (4, 2)


def test_changes_after_a_view_are_exactly_the_writes_a_step_did_not_see(small_store, monkeypatch):
    """A refresh re-checks its lists against the writes applied to the side index after it read
    (its own later writes and other workers', puts and deletes), not against every write of the
    last seconds; a view older than the delete log reaches falls back to Milvus, by time."""
    import simstream.index.side as side_module

    store = small_store
    store.milvus.exclusive = False  # as on a shared server: other workers' writes arrive by sync
    rng = np.random.default_rng(11)
    started = now_ms()
    store.upsert_products([product_row(f"p{i}", rng.normal(size=DIM).astype(np.float32), 1) for i in range(6)])
    store.load_into_memory()
    with store.one_sync():
        store.get_products(["p0"])
        view = store.view()
    store.upsert_products([product_row("p1", rng.normal(size=DIM).astype(np.float32), 2)])  # own write
    store.milvus.client.upsert(store.milvus.products, [product_row("p2", rng.normal(size=DIM).astype(np.float32), 2)])
    store.milvus.client.delete(store.milvus.products, ids=["p3"])  # another worker's delete
    store.upsert_tombstones({"p3": 2}, now_ms())
    store.delete_products(["p4"])
    store.upsert_tombstones({"p4": 2}, now_ms())
    changed, deleted = store.changes_after(view, started)
    assert changed.keys() == {"p1", "p2"} and deleted == {"p3", "p4"}
    assert changed["p2"].version == 2
    # by time, everything written since ``started`` comes back: the superset it replaces
    assert store.changes_after(None, started)[0].keys() == {"p0", "p1", "p2", "p5"}
    assert store.changes_after(store.view(), now_ms()) == ({}, set())
    monkeypatch.setattr(side_module, "DELETE_LOG", 1)
    store.delete_products(["p5"])
    store.delete_products(["p0"])  # the log forgets p5's delete: views before it cannot be answered
    assert store.side is not None and store.side.changes_after(view) is None
    changed, deleted = store.changes_after(view, started)
    assert changed.keys() == {"p1", "p2"} and {"p3", "p4"} <= deleted
