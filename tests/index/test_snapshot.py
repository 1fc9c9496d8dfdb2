"""Snapshots of the in-memory copies (index/snapshot.py): restored bit for bit, caught up with
every write made since (by this process or another), refused when they do not fit."""

import math
import time
import zipfile

import numpy as np
import pytest

from simstream.index.list_mirror import ListMirror
from simstream.index.rows import HeadFacts, ListHead, StoredList, StoredProduct
from simstream.index.side import SideIndex
from simstream.index.snapshot import identity, read_snapshot, snapshot_path, write_snapshot
from simstream.index.store import VectorStore
from simstream.index.tombstone_mirror import TombstoneMirror
from simstream.vector_codec import Segment, pack, unpack, Packed

DIM = 16  # the small_store fixture's (tests/index/conftest.py)
SEGMENTS = [Segment("a", 0, 8, "f16"), Segment("b", 8, 14, "i8")]  # columns 14, 15: outside (zeros)


def now_ms() -> int:
    return int(time.time() * 1000)


def on_grid(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random vectors already on SEGMENTS' grid (as the encoder writes them)."""
    out = np.zeros((n, DIM), np.float32)
    for s in SEGMENTS:
        packed, _ = pack(rng.normal(size=(n, s.width)).astype(np.float32), s.codec)
        unpack(Packed(packed.values, packed.exponents), s.codec, out[:, s.start:s.stop])
    return out


def products(rng: np.random.Generator, ids: list[str], version: int = 1) -> list[StoredProduct]:
    vectors = on_grid(rng, len(ids))
    return [StoredProduct(pid, vectors[i], version, {"text": f"{i:016x}", "image": "0" * 16}, "m1", 100 + i, now_ms())
            for i, pid in enumerate(ids)]


def test_side_index_restores_bit_for_bit_and_searches_the_same(tmp_path):
    rng = np.random.default_rng(3)
    side = SideIndex(DIM, segments=SEGMENTS, capacity=8)
    side.put(products(rng, [f"p{i:03d}" for i in range(300)]))
    loose = products(rng, ["loose"])[0]
    loose.vector[15] = 0.5  # off the grid: kept as float32 beside it
    side.put([loose, StoredProduct("odd", on_grid(rng, 1)[0], 2, {"text": "not hex"}, "m2", 1, 2)])
    side.delete([f"p{i:03d}" for i in range(0, 300, 7)])
    arrays, tables = side.export()
    back = SideIndex.restored(DIM, arrays, tables, capacity=400, segments=SEGMENTS)
    assert sorted(back.ids()) == sorted(side.ids()) and back.loose_rows == 1
    ids = side.ids()
    got, want = back.get(ids), side.get(ids)
    for pid in ids:
        a, b = got[pid], want[pid]
        assert a.vector.tobytes() == b.vector.tobytes()
        assert (a.version, a.hashes, a.model, a.event_time, a.updated_at) == (b.version, b.hashes, b.model, b.event_time, b.updated_at)
    queries = on_grid(rng, 5)
    assert back.search_scores(queries, 10) == side.search_scores(queries, 10)
    back.put(products(rng, ["new"]))  # and it grows and writes as any index
    assert "new" in back.get(["new"])


def test_list_mirror_and_markers_restore_equal():
    mirror = ListMirror()
    facts = {"a": HeadFacts(b"d" * 16, (3, 44), np.array([0.9, 0.5], np.float32).tobytes())}
    mirror.put([ListHead("a", ("b", "c"), 0.5, 10, 7), ListHead("b", ("a",), math.nan, 11),
                ListHead("gone", (), 9e9, 12)], facts)
    arrays, tables = mirror.export()
    back = ListMirror.restored(arrays, tables)
    ids = ["a", "b", "gone", "c"]
    assert repr(back.heads(ids)) == repr(mirror.heads(ids)) and back.digests(ids) == mirror.digests(ids) == {"a": b"d" * 16}
    assert back.listers_of(["a", "c"]) == mirror.listers_of(["a", "c"]) == {"a", "b"}
    assert back.boundaries_at_most(1.0) == mirror.boundaries_at_most(1.0) == {"a": 0.5}
    markers = TombstoneMirror()
    markers.put({"x": 3, "y": 4}, 100)
    markers.put({"z": 5}, 200)
    got = TombstoneMirror.restored(*markers.export())
    assert got.versions("xyzw") == {"x": 3, "y": 4, "z": 5} and got.deleted_since(150) == {"z"}
    assert got.purge(150) == 2 and len(got) == 1


def test_a_snapshot_that_does_not_fit_is_ignored(tmp_path):
    rng = np.random.default_rng(0)
    side = SideIndex(DIM, segments=SEGMENTS)
    side.put(products(rng, ["a", "b"]))
    ident = identity("c", DIM, SEGMENTS, {"c_products": 0})
    path = snapshot_path(tmp_path, "c")
    write_snapshot(path, ident, side=side, mirror=None, tombstones=TombstoneMirror(), side_synced_at=1, mirror_synced_at=1)
    assert not list(tmp_path.glob("*.tmp*"))
    ok = read_snapshot(path, ident, capacity=10, segments=SEGMENTS)
    assert ok is not None and sorted(ok.side.ids()) == ["a", "b"] and ok.mirror is None and ok.side_synced_at == 1
    assert read_snapshot(path, identity("other", DIM, SEGMENTS, {"c_products": 0}), capacity=10) is None
    assert read_snapshot(path, identity("c", DIM, SEGMENTS[:1], {"c_products": 0}), capacity=10) is None
    assert read_snapshot(path, identity("c", DIM, SEGMENTS, {"c_products": 5}), capacity=10) is None  # made again
    assert read_snapshot(path, ident, capacity=10, max_bytes=100) is None  # over the memory it may take
    assert read_snapshot(tmp_path / "absent.npz", ident, capacity=10) is None
    torn = tmp_path / "torn.npz"
    torn.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert read_snapshot(torn, ident, capacity=10, segments=SEGMENTS) is None
    packed = tmp_path / "deflated.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert read_snapshot(packed, ident, capacity=10, segments=SEGMENTS) is None


def row(pid: str, vec: np.ndarray, version: int) -> dict:
    return {"product_id": pid, "vector": vec.tolist(), "version": version, "brand": "", "category": "",
            "price": -1.0, "hashes": {"text": f"{version:016x}"}, "model": "m", "updated_at": now_ms(),
            "event_time": version, "display": {}, "brand_key": "", "category_key": ""}


def held(store: VectorStore) -> dict:
    """Everything the copies answer, to compare a restored store with one built from Milvus."""
    assert store.side is not None and store.mirror is not None and store.tombstones is not None
    ids = sorted(store.side.ids())
    got = store.side.get(ids)
    lists = sorted(store.mirror.owners())
    return {"products": {p: (s.version, s.hashes, s.updated_at, s.vector.tobytes()) for p, s in got.items()},
            "heads": {p: (h.neighbour_ids, h.boundary, h.updated_at) for p, h in store.mirror.heads(lists).items()},
            "markers": store.tombstones.versions([f"p{i:02d}" for i in range(40)]),
            "bars": store.side.search_reaching(np.eye(DIM, dtype=np.float32)[:3], 5, 0.0)}


def test_restored_copies_catch_up_with_every_write_since(small_store, tmp_path):
    """Writes after the snapshot, by this store and straight to Milvus (another worker), and a
    row removed behind everyone's back (no marker): the restored copies equal a fresh build."""
    store, rng = small_store, np.random.default_rng(5)
    store.milvus.exclusive = False  # the foreign writes below: make the store sync like a server's
    ids = [f"p{i:02d}" for i in range(30)]
    store.upsert_products([row(p, rng.normal(size=DIM).astype(np.float32), 1) for p in ids[:20]])
    store.upsert_lists([StoredList(p, [ids[(i + 1) % 20], ids[(i + 2) % 20]], 0.1 * i, b"{}") for i, p in enumerate(ids[:10])])
    store.load_into_memory()
    path = snapshot_path(tmp_path, "u")
    assert store.save_snapshot(path) and store.side is not None
    time.sleep(0.05)
    # after the snapshot: this store's writes, a foreign write, deletes with markers, a foreign list
    store.upsert_products([row(p, rng.normal(size=DIM).astype(np.float32), 2) for p in ids[18:25]])
    store.milvus.client.upsert(store.milvus.products, [row("p26", rng.normal(size=DIM).astype(np.float32), 1)])
    store.delete_products(["p01", "p02"])
    store.upsert_tombstones({"p01": 1, "p02": 1}, now_ms())
    store.milvus.client.upsert(store.milvus.lists, [{"product_id": "p11", "dummy": [0.0, 0.0], "neighbor_ids": ["p03"],
                                                     "kth_score": 0.7, "payload": "{}", "as_of": 1, "updated_at": now_ms()}])
    store.flush()
    restored = VectorStore(store.milvus)
    restored.load_into_memory(path)
    fresh = VectorStore(store.milvus)
    fresh.load_into_memory()
    assert held(restored) == held(fresh)
    assert "p26" in held(restored)["products"] and "p01" not in held(restored)["products"]

    # a row gone without a delete marker (the sync cannot see it): the counts catch it
    store.milvus.client.delete(store.milvus.products, ids=["p05"])
    store.milvus.client.delete(store.milvus.lists, ids=["p04"])
    store.flush()
    again = VectorStore(store.milvus)
    again.load_into_memory(path)
    # the reference: a build, which reads with query_iterator; a Milvus 2.3 server gives that no
    # snapshot time and answers it at the collection's default consistency, so for a moment it may
    # still show a row just deleted (seen once in CI): wait until it does not
    for _ in range(20):
        fresh.load_into_memory()
        if "p05" not in held(fresh)["products"] and "p04" not in held(fresh)["heads"]:
            break
        time.sleep(0.5)
    assert held(again) == held(fresh) and "p05" not in held(again)["products"] and "p04" not in held(again)["heads"]


def test_a_lite_file_restores_after_its_process_wrote_past_the_snapshot(tmp_path):
    """The embedded default: one process owns the file, so the snapshot stands at the moment it
    was taken; writes after it (a crash before the next snapshot) are caught up at restart."""
    rng = np.random.default_rng(9)
    uri, path = str(tmp_path / "m.db"), snapshot_path(tmp_path, "u")
    store = VectorStore.connect(uri, "u", DIM, flush_every_rows=0, in_memory=True)
    store.upsert_products([row(f"p{i:02d}", rng.normal(size=DIM).astype(np.float32), 1) for i in range(10)])
    store.upsert_lists([StoredList("p00", ["p01"], 0.3, b"{}")])
    store.save_snapshot(path)
    time.sleep(0.05)
    store.upsert_products([row("p10", rng.normal(size=DIM).astype(np.float32), 1)])
    store.delete_products(["p03"])
    store.upsert_tombstones({"p03": 1}, now_ms())
    want = held(store)
    store.close()
    back = VectorStore.connect(uri, "u", DIM, flush_every_rows=0, in_memory=True, snapshot=path)
    try:
        assert held(back) == want
    finally:
        back.close()


def test_a_milvus_older_than_the_snapshot_is_built_from_not_restored(small_store, tmp_path):
    """Milvus restored from a backup: its rows are older than the snapshot's, which the sync (it
    reads only what is newer) cannot see; the probe of the snapshot's newest rows does."""
    store, rng = small_store, np.random.default_rng(2)
    store.milvus.exclusive = False
    vectors = {f"p{i:02d}": rng.normal(size=DIM).astype(np.float32) for i in range(10)}
    store.upsert_products([row(p, v, 1) for p, v in vectors.items()])
    store.load_into_memory()
    time.sleep(0.01)
    store.upsert_products([row("p03", vectors["p03"] * 2, 2)])  # the snapshot holds version 2
    path = snapshot_path(tmp_path, "u")
    store.save_snapshot(path)
    old = row("p03", vectors["p03"], 1)
    old["updated_at"] -= 60_000  # the backup's row: version 1, written before
    store.milvus.client.upsert(store.milvus.products, [old])
    store.flush()
    again = VectorStore(store.milvus)
    again.load_into_memory(path)
    assert not again.restored and again.side is not None
    assert again.side.get(["p03"])["p03"].version == 1


def test_a_write_between_the_sync_and_the_count_is_synced_not_checked_row_by_row(small_store, tmp_path, monkeypatch):
    """A joiner restores while other workers write: a row written after the restore's sync and
    before its count makes the counts differ once; the next sync takes it in, so the copy is not
    checked row by row (132 s at 100k beside a busy server, the soak found). With one try it is."""
    from simstream.index import store as store_module

    store, rng = small_store, np.random.default_rng(7)
    store.milvus.exclusive = False
    store.upsert_products([row(f"p{i:02d}", rng.normal(size=DIM).astype(np.float32), 1) for i in range(10)])
    store.load_into_memory()
    path = snapshot_path(tmp_path, "u")
    store.save_snapshot(path)
    time.sleep(0.05)
    def restore(tries: int, new_id: str) -> tuple[VectorStore, list[str]]:
        monkeypatch.setattr(store_module, "COUNT_CHECK_TRIES", tries)
        restored, checks, written = VectorStore(store.milvus), [], []
        sync, reconcile = restored._sync, restored._reconcile_side

        def sync_then_a_foreign_write(copies: set[str]) -> None:
            sync(copies)
            if not written:  # another worker writes right after the restore's first sync
                store.milvus.client.upsert(store.milvus.products, [row(new_id, rng.normal(size=DIM).astype(np.float32), 1)])
                store.flush()
                written.append(new_id)

        monkeypatch.setattr(restored, "_sync", sync_then_a_foreign_write)
        monkeypatch.setattr(restored, "_reconcile_side", lambda: (checks.append("products"), reconcile()))
        restored.load_into_memory(path)
        assert written == [new_id]
        return restored, checks

    restored, checks = restore(store_module.COUNT_CHECK_TRIES, "p20")
    assert checks == [] and restored.side is not None and "p20" in restored.side.ids()
    restored, checks = restore(1, "p21")
    assert checks == ["products"] and restored.side is not None and "p21" in restored.side.ids()
