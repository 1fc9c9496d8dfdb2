"""The refresh merges instead of searching where it provably may: a changed product's own list from
the ingest's search around it, and young recorded heads while old ones are searched (no cliff)."""

from __future__ import annotations

import numpy as np

from simstream.clock import now_ms
from simstream.index.exact import rank_key
from simstream.index.neighbours import Change, ListBuilder, RecentSearches, affected_by
from simstream.index.rows import StoredList
from simstream.index.store import VectorStore
from simstream.streams.refresh import Refresher

K, DEPTH, DIM = 5, 10, 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write(store: VectorStore, vecs: dict[str, np.ndarray], at: int) -> None:
    store.upsert_products([{"product_id": pid, "vector": v.tolist(), "version": 1, "brand": "", "category": "",
                            "price": -1.0, "hashes": {}, "model": "m", "updated_at": at, "event_time": 0}
                           for pid, v in vecs.items()])


def oracle(vecs: dict[str, np.ndarray], pid: str) -> list[str]:
    me = vecs[pid]
    scored = sorted(((float(v @ me), q) for q, v in vecs.items() if q != pid), key=lambda t: rank_key(*t))
    return [q for _, q in scored[:K]]


def setup(tmp_path, rng, n=300, **kwargs):  # type: ignore[no-untyped-def]
    store = VectorStore.connect(str(tmp_path / "r.db"), "r", DIM, flush_every_rows=0, in_memory=True)
    vecs = {f"p{i:03d}": v for i, v in enumerate(unit(rng, n))}
    write(store, vecs, now_ms() - 600_000)
    recent = RecentSearches()
    refresher = Refresher(store, ListBuilder(store, k=K, layout={"all": slice(0, DIM)}, model="m", depth=DEPTH),
                          recent=recent, **kwargs)
    first = refresher.plan(sorted(vecs), {}, search_all=True)
    refresher.record(first)
    return store, vecs, recent, refresher


def published(plan, pid):  # type: ignore[no-untyped-def]
    return [n.product_id for n in plan.built[pid].neighbours]


def test_a_changed_products_own_list_merges_from_the_ingest_search(tmp_path) -> None:
    rng = np.random.default_rng(1)
    store, vecs, recent, refresher = setup(tmp_path, rng)
    moved = {"p007": unit(rng, 1)[0], "p008": unit(rng, 1)[0]}
    vecs.update(moved)
    write(store, moved, now_ms())
    affected_by(store, [Change(pid, v) for pid, v in moved.items()], pool=40, recent=recent)
    # written after the search: a twin next to p007 must still enter its list
    twin = (vecs["p007"] + 0.01 * unit(rng, 1)[0])
    vecs["p999"] = twin / np.linalg.norm(twin)
    write(store, {"p999": vecs["p999"]}, now_ms())
    # p008 changes again before its refresh: its recorded search is for another vector
    vecs["p008"] = unit(rng, 1)[0]
    write(store, {"p008": vecs["p008"]}, now_ms())
    plan = refresher.plan(["p007", "p008"], {})
    assert (plan.merged, plan.searched) == (1, 1)
    assert published(plan, "p007") == oracle(vecs, "p007") and published(plan, "p007")[0] == "p999"
    assert published(plan, "p008") == oracle(vecs, "p008")
    assert len(recent) == 0  # each search is used once, or forgotten
    store.close()


def test_old_heads_are_searched_while_young_ones_still_merge(tmp_path, monkeypatch) -> None:
    """With a merge bound of 30 changes: the heads recorded before 60 writes are searched, the ones
    recorded after them merge, and every list is exact (before, a single old head made every list
    of the cycle search)."""
    rng = np.random.default_rng(2)
    store, vecs, recent, refresher = setup(tmp_path, rng, max_merge_changes=30)
    old_heads = [f"p{i:03d}" for i in range(100, 110)]
    churn = {f"p{i:03d}": unit(rng, 1)[0] for i in range(200, 260)}
    vecs.update(churn)
    write(store, churn, now_ms())
    young = [f"p{i:03d}" for i in range(110, 120)]
    from simstream.streams import refresh

    later = now_ms() + 10_000  # recorded after the churn, beyond the race lookback: young heads
    monkeypatch.setattr(refresh, "now_ms", lambda: later)
    refresher.record(refresher.plan(young, {}))
    monkeypatch.undo()
    plan = refresher.plan(old_heads + young, {})
    assert plan.searched == len(old_heads) and plan.merged == len(young)
    for pid in old_heads + young:
        assert published(plan, pid) == oracle(vecs, pid), pid
    store.close()


def test_count_written_since_any_order_of_times(tmp_path) -> None:
    rng = np.random.default_rng(3)
    store = VectorStore.connect(str(tmp_path / "c.db"), "c", DIM, flush_every_rows=0, in_memory=True)
    stamps = rng.integers(1_000, 2_000, 200)
    for i, t in enumerate(stamps):
        write(store, {f"x{i:03d}": unit(rng, 1)[0]}, int(t))
    store.delete_products(["x000", "x001"])
    live = stamps[2:]
    asks = [1_500, 999, 2_001, 1_200, 1_500, int(stamps[5])]
    assert store.count_written_since(asks) == [int((live >= t).sum()) for t in asks]
    store.close()


def test_unchanged_lists_are_diffed_from_digests_without_reading_payloads(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(4)
    store, vecs, recent, refresher = setup(tmp_path, rng, n=120)
    read: list[str] = []
    real_get = store.get_lists
    monkeypatch.setattr(store, "get_lists", lambda ids: read.extend(ids) or real_get(ids))
    owners = sorted(vecs)[:30]
    again = refresher.plan(owners, {})
    assert again.publish == {} and again.unchanged == 30 and read == []
    moved = {"p100": vecs["p005"] * 0.999 + 0.001}  # next to p005: its list changes
    vecs.update(moved)
    write(store, moved, now_ms())
    changed = refresher.plan(["p005"], {})
    assert list(changed.publish) == ["p005"] and read == []
    assert published(changed, "p005")[0] == "p100" == oracle(vecs, "p005")[0]
    store.close()


def test_a_head_recorded_by_another_writer_drops_the_digest() -> None:
    from simstream.index.list_mirror import ListMirror
    from simstream.index.rows import HeadFacts, ListHead

    mirror = ListMirror()
    mirror.put([ListHead("a", ("b", "c"), 0.5, 10, 9)], {"a": HeadFacts(b"d" * 16, (1, 8), b"\0" * 8)})
    assert mirror.digests(["a", "b"]) == {"a": b"d" * 16}
    mirror.put([ListHead("a", ("c", "b"), 0.4, 11, 10)])  # synced from another worker
    assert mirror.digests(["a"]) == {}


def restarted(tmp_path, store, refresher):  # type: ignore[no-untyped-def]
    """The same catalog opened again, as by a worker after a restart (heads loaded from Milvus)."""
    store.close()
    again = VectorStore.connect(str(tmp_path / "r.db"), "r", DIM, flush_every_rows=0, in_memory=True)
    return again, Refresher(again, ListBuilder(again, k=K, layout={"all": slice(0, DIM)}, model="m", depth=DEPTH),
                            recent=RecentSearches())


def test_a_restarted_worker_merges_and_diffs_from_the_facts_recorded_with_the_lists(tmp_path, monkeypatch) -> None:
    """The writer records beside each list its digest, the owner's row and the members' exact
    scores (``HeadFacts``); a worker that loads the heads afterwards reads them back for the heads
    it touches, so its first refresh decodes no member and reads no payload back, with lists equal
    to brute force."""
    rng = np.random.default_rng(5)
    store, vecs, recent, refresher = setup(tmp_path, rng)
    recorded = store.list_heads(sorted(vecs))
    store, refresher = restarted(tmp_path, store, refresher)
    assert store.milvus.lists_facts and store.mirror is not None
    assert not any(h.scores for h in store.mirror.heads(sorted(vecs)).values())  # loaded without them
    heads = store.list_heads(["p010", "p011"])
    for pid, head in heads.items():  # read back bit for bit, with the owner's row
        assert (head.scores, head.owner) == (recorded[pid].scores, recorded[pid].owner) and head.scores
    assert store.list_digests(["p010", "p011"]).keys() == {"p010", "p011"}
    moved = {"p200": (vecs["p012"] + 0.02 * unit(rng, 1)[0])}
    moved["p200"] /= np.linalg.norm(moved["p200"])
    vecs.update(moved)
    write(store, moved, now_ms())
    decoded: list[set[str]] = []
    payloads: list[list[str]] = []
    real_vectors, real_lists = store.snapshot_vectors, store.get_lists
    monkeypatch.setattr(store, "snapshot_vectors", lambda ids: decoded.append(set(ids)) or real_vectors(ids))
    monkeypatch.setattr(store, "get_lists", lambda ids: payloads.append(list(ids)) or real_lists(ids))
    plan = refresher.plan(["p012", "p013"], {})
    assert plan.merged == 2 and decoded[0] == set() and payloads == [[]]
    for pid in ("p012", "p013"):
        assert published(plan, pid) == oracle(vecs, pid)
    assert published(plan, "p012")[0] == "p200"
    store.close()


def test_heads_carry_their_members_scores_and_merges_use_them(tmp_path, monkeypatch) -> None:
    """A head this worker recorded carries its members' exact scores; a head recorded without
    them (an older writer: no facts in Milvus) gets them once a refresh merged it unchanged,
    without a record; a merge of a head with scores decodes none of its members, and the lists
    still equal brute force."""
    rng = np.random.default_rng(4)
    store, vecs, recent, refresher = setup(tmp_path, rng)
    heads = store.list_heads(sorted(vecs))
    assert all(np.frombuffer(h.scores, np.float32).tolist() == [float(vecs[m] @ vecs[pid]) for m in h.neighbour_ids]
               for pid, h in heads.items())
    # recorded again as an older writer would, without facts
    assert store.mirror is not None
    payloads = store.get_lists(sorted(vecs))
    store.mirror.put(store.milvus.upsert_lists([StoredList(pid, list(h.neighbour_ids), h.boundary,
                                                           payloads[pid].payload, h.as_of)
                                                for pid, h in heads.items()], now_ms()))
    assert not any(h.scores for h in store.list_heads(sorted(vecs)).values())
    plan = refresher.plan(["p010", "p011"], {})
    assert plan.merged == 2 and not plan.record  # nothing changed: nothing recorded...
    kept = store.list_heads(["p010", "p011"])
    assert all(h.scores for h in kept.values())  # ...but the scores are held from now on
    # a product moves next to p010: its merge reads the members' scores, decodes only the mover
    moved = {"p200": (vecs["p010"] + 0.02 * unit(rng, 1)[0])}
    moved["p200"] /= np.linalg.norm(moved["p200"])
    vecs.update(moved)
    write(store, moved, now_ms())
    decoded: list[set[str]] = []
    real = store.snapshot_vectors
    monkeypatch.setattr(store, "snapshot_vectors", lambda ids: decoded.append(set(ids)) or real(ids))
    plan = refresher.plan(["p010"], {})
    assert plan.merged == 1
    assert decoded[0] == set()  # the merge decoded no member
    assert published(plan, "p010") == oracle(vecs, "p010") and published(plan, "p010")[0] == "p200"
    assert all(n.fields for n in plan.built["p010"].neighbours)
    store.close()


def test_a_list_refreshed_right_after_its_owners_write_merges_later(tmp_path) -> None:
    """A product's own list is refreshed within seconds of its write (inside the race lookback of
    its head's ``as_of``), as every list of a streamed catalog is. Its head knows the owner's row it
    was made from (``ListHead.owner``), so the next refresh, while that row is unchanged, merges
    instead of searching; and once the owner is written again it is searched."""
    rng = np.random.default_rng(6)
    store, vecs, recent, refresher = setup(tmp_path, rng)
    moved = {"p020": unit(rng, 1)[0]}
    vecs.update(moved)
    write(store, moved, now_ms())
    affected_by(store, [Change("p020", moved["p020"])], pool=40, recent=recent)
    own = refresher.plan(["p020"], {})
    refresher.record(own)
    head = store.list_heads(["p020"])["p020"]
    stored = store.get_products(["p020"])["p020"]
    assert head.owner == (stored.version, stored.updated_at) and stored.updated_at >= head.as_of - 5_000
    near = {"p201": vecs["p020"] + 0.02 * unit(rng, 1)[0]}
    near["p201"] /= np.linalg.norm(near["p201"])
    vecs.update(near)
    write(store, near, now_ms())
    plan = refresher.plan(["p020"], {})
    assert (plan.merged, plan.searched) == (1, 0)
    assert published(plan, "p020") == oracle(vecs, "p020") and published(plan, "p020")[0] == "p201"
    refresher.record(plan)
    vecs["p020"] = unit(rng, 1)[0]  # the owner moves: its head is for another vector
    write(store, {"p020": vecs["p020"]}, now_ms())
    plan = refresher.plan(["p020"], {})
    assert (plan.merged, plan.searched) == (0, 1)
    assert published(plan, "p020") == oracle(vecs, "p020")
    store.close()


def test_every_list_from_the_all_pairs_pass_and_writes_during_it(tmp_path, monkeypatch) -> None:
    """Lists planned from an all-pairs pass equal searched ones, count as computed when the pass
    began, and a product written while the pass ran sends the lists it may enter to the re-check."""
    rng = np.random.default_rng(9)
    store, vecs, recent, refresher = setup(tmp_path, rng)
    scan = refresher.every_list_pass()
    assert scan is not None
    scan.advance(pairs=1_000)
    assert scan.done
    searches = []
    monkeypatch.setattr(type(store.side), "_top", lambda self, *a, **k: searches.append(a) or iter(()))
    plan = refresher.plan(sorted(vecs), {}, search_all=True, scan=scan)
    assert not searches  # every list rescored from the pass's candidates
    monkeypatch.undo()
    assert plan.started == scan.started_ms
    assert all(published(plan, pid) == oracle(vecs, pid) for pid in vecs)
    # a twin of p010 written after the pass began: its list is re-checked, not silently missed
    scan = refresher.every_list_pass()
    assert scan is not None
    scan.advance(pairs=1_000)
    twin = vecs["p010"] + 0.01 * unit(rng, 1)[0]
    vecs["p998"] = twin / np.linalg.norm(twin)
    write(store, {"p998": vecs["p998"]}, now_ms())
    plan = refresher.plan(["p010", "p011"], {}, search_all=True, scan=scan)
    assert published(plan, "p010") == oracle(vecs, "p010") and published(plan, "p010")[0] == "p998"
    store.close()


def test_list_owners_from_memory_equal_those_read_from_milvus(tmp_path) -> None:
    """Products and recorded lists (a deleted product's marker included), from the side index and
    the list mirror when they exist, else read from Milvus: the same ids."""
    from simstream.index.rows import StoredList

    rng = np.random.default_rng(4)
    store, vecs, recent, refresher = setup(tmp_path, rng, n=40)
    store.upsert_lists([StoredList("gone", [], float("inf"), b"")])  # a list whose owner was deleted
    write(store, {"late": unit(rng, 1)[0]}, now_ms())  # a product with no list yet
    want = sorted(set(vecs) | {"gone", "late"})
    assert store.list_owners() == want
    store.close()
    cold = VectorStore.connect(str(tmp_path / "r.db"), "r", DIM, flush_every_rows=0)  # no copies in memory
    try:
        assert cold.side is None and cold.list_owners() == want
    finally:
        cold.close()


def test_searches_never_taken_are_bounded() -> None:
    """A search whose list another worker refreshes is never taken: the oldest go first, so the
    memory they hold stays a few batches' worth (the worker sizes it from its batch size)."""
    from simstream.settings import Settings
    from simstream.index.neighbours import RECENT_SEARCHES_MIN

    rng = np.random.default_rng(3)
    recent = RecentSearches(capacity=4, depth=2)
    vectors = unit(rng, 6)
    for i, v in enumerate(vectors):
        recent.put(f"p{i}", v, 0, [(f"q{j}", 1.0 - j / 10) for j in range(4)], False)
    assert len(recent) == 4
    assert recent.take("p0", vectors[0], 2) is None and recent.take("p5", vectors[5], 2) is not None
    assert RECENT_SEARCHES_MIN >= 16 * Settings().batch_size  # the default holds 16 batches
