"""The in-memory tombstones (index/tombstone_mirror.py) answer as the collection does."""

from __future__ import annotations

from pathlib import Path

from simstream.index.store import VectorStore
from simstream.index.tombstone_mirror import TombstoneMirror


def test_markers_by_id_and_by_time() -> None:
    m = TombstoneMirror()
    m.put({"a": 3, "b": 1}, 100)
    m.put({"c": 2}, 200)
    m.put({"a": 4}, 300)  # a newer marker replaces the older one
    assert m.versions(["a", "b", "x"]) == {"a": 4, "b": 1}
    assert m.deleted_since(200) == {"a", "c"} and m.deleted_since(301) == set()
    m.remove(["c", "x"])
    assert m.deleted_since(0) == {"a", "b"}
    assert m.purge(300) == 1  # strictly before 300: b
    assert m.versions(["a", "b"]) == {"a": 4} and len(m) == 1


def test_the_store_answers_from_memory_as_milvus_does(tmp_path: Path) -> None:
    store = VectorStore.connect(str(tmp_path / "t.db"), "t", 4, flush_every_rows=0)
    store.upsert_tombstones({"old": 1}, 1_000)  # written before the mirror exists: loaded at start
    store.load_into_memory()
    assert store.tombstones is not None and store.tombstones.versions(["old"]) == {"old": 1}
    store.upsert_tombstones({"a": 2, "b": 5}, 2_000)
    store.upsert_tombstones({"a": 3}, 3_000)
    store.delete_tombstones(["b"])
    store.purge_tombstones(1_500)
    ids = ["old", "a", "b", "z"]
    for since in (0, 1_000, 2_000, 3_000, 3_001):
        assert store.deleted_since(since) == store.milvus.deleted_since(since), since
    assert store.get_tombstones(ids) == store.milvus.read_tombstones(ids) == {"a": 3}
    store.close()


def test_other_workers_markers_arrive_with_the_sync(tmp_path: Path) -> None:
    """Beside a shared server the mirror holds other workers' markers too: they come with the side
    index's sync (one read per step, not one Strong read per question); a marker written after a
    step's first read is seen by the next step."""
    import time

    def now_ms() -> int:
        return int(time.time() * 1000)

    store = VectorStore.connect(str(tmp_path / "t.db"), "t", 4, flush_every_rows=0)
    store.milvus.exclusive = False  # as on a shared server
    store.load_into_memory()
    store.milvus.upsert_tombstones({"x": 7}, now_ms())  # another worker's delete, straight to Milvus
    assert store.get_tombstones(["x", "z"]) == {"x": 7}
    assert store.deleted_since(now_ms() - 60_000) == {"x"}
    with store.one_sync():
        assert store.get_tombstones(["y"]) == {}
        store.milvus.upsert_tombstones({"y": 1}, now_ms())
        assert store.get_tombstones(["y"]) == {}  # after this step's read
    with store.one_sync():
        assert store.get_tombstones(["y"]) == {"y": 1}
    store.milvus.upsert_tombstones({"x": 9}, now_ms())  # deleted again, at a newer version
    assert store.get_tombstones(["x"]) == {"x": 9}
    store.close()
