"""Exact top-k from milvus-lite equals numpy brute force; the affected set and race checks."""

import numpy as np
import pytest

from simstream.index.neighbours import Change, ListBuilder, affected_by, in_rank_order, rank_key, stale_lists
from simstream.index.rows import StoredProduct
from simstream.index.store import VectorStore


def put(store, vectors):
    store.upsert_products([{"product_id": pid, "vector": v.tolist(), "version": 1, "brand": "", "category": "",
                            "price": -1.0, "hashes": {}, "model": "m", "updated_at": 0, "event_time": 0}
                           for pid, v in vectors.items()])


def unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def oracle(vectors, pid, k):
    me = vectors[pid]
    scored = sorted(((float(v @ me), q) for q, v in vectors.items() if q != pid), key=lambda t: rank_key(*t))
    return [q for _, q in scored[:k]]


def test_in_rank_order_is_rank_keys_order_with_each_score_rounded_once():
    """Scores equal to 1e-6 tie and go by id; the exact score rides along, the rounded one is
    what the published list shows."""
    rng = np.random.default_rng(7)
    base = rng.uniform(-1, 1, 40).round(3)  # many exact ties, and near-ties below the rounding
    scored = [(float(b + rng.choice([0.0, 2e-7, -2e-7, 3e-6])), f"p{rng.integers(0, 10**6):07d}") for b in base]
    ranked = in_rank_order(scored)
    assert [(sc, nid) for _, nid, sc in ranked] == sorted(scored, key=lambda t: rank_key(*t))
    assert [-neg for neg, _, _ in ranked] == [round(sc, 6) for _, _, sc in ranked]


def test_lists_equal_brute_force_with_ties_by_id(small_store):
    rng = np.random.default_rng(0)
    vecs = {f"p{i:03d}": v for i, v in enumerate(unit(rng, 200))}
    vecs["twin-b"] = vecs["twin-a"] = vecs["p000"].copy()  # exact ties
    put(small_store, vecs)
    builder = ListBuilder(small_store, k=5, layout={"all": slice(0, 16)}, model="m")
    products = small_store.get_products(list(vecs))
    lists = builder.build_explained(products, {})
    for pid in vecs:
        assert [n.product_id for n in lists[pid].published.neighbours] == oracle(vecs, pid, 5)
    assert [n.product_id for n in lists["p000"].published.neighbours][:2] == ["twin-a", "twin-b"]


@pytest.mark.parametrize("pool, max_pool", [(8, 256), (1, 1)])  # (1, 1): the exact tail does all the work
def test_affected_set_covers_entering_and_leaving(small_store, pool, max_pool):
    rng = np.random.default_rng(1)
    vecs = {f"p{i:03d}": v for i, v in enumerate(unit(rng, 100))}
    put(small_store, vecs)
    builder = ListBuilder(small_store, k=5, layout={"all": slice(0, 16)}, model="m")
    lists = builder.build_explained(small_store.get_products(list(vecs)), {})
    small_store.upsert_lists([builder.stored_form(b) for b in lists.values()])
    # move p000 next to p050: lists holding p000 (leave) and lists p000 now enters must be affected
    moved = vecs["p050"] * 0.99 + 0.01 * vecs["p000"]
    moved /= np.linalg.norm(moved)
    new = dict(vecs, p000=moved)
    put(small_store, {"p000": moved})
    affected = affected_by(small_store, [Change("p000", moved)], pool=pool, max_pool=max_pool)
    for pid in vecs:
        if oracle(new, pid, 5) != [n.product_id for n in lists[pid].published.neighbours]:
            assert pid in affected, pid
    assert affected < set(vecs)  # and it is not simply everyone


def test_stale_lists_spots_concurrent_writes():
    rng = np.random.default_rng(2)
    v = unit(rng, 4)
    from simstream.records import Neighbour, NeighbourList
    nl = NeighbourList("a", 1, [Neighbour("b", float(v[0] @ v[1]), {})], "m", 0, None)
    me = {"a": v[0]}
    assert stale_lists({"a": nl}, me, {}, {"b"}, k=1) == {"a"}  # holds a deleted product
    beat = StoredProduct("c", v[0].copy(), 1, {}, "m", 0)  # c now equals a: beats everything
    assert stale_lists({"a": nl}, me, {"c": beat}, set(), k=1) == {"a"}
    weak = StoredProduct("c", -v[0], 1, {}, "m", 0)
    assert stale_lists({"a": nl}, me, {"c": weak}, set(), k=1) == set()


def brute_deep(vecs, pid, depth):
    """(deep ids, boundary) the way ListBuilder.build records them, by brute force."""
    me = vecs[pid]
    scored = sorted(((float(v @ me), q) for q, v in vecs.items() if q != pid), key=lambda t: rank_key(*t))
    return [q for _, q in scored[:depth]], (scored[depth - 1][0] if len(scored) > depth else float("-inf"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_equals_brute_force_over_rounds_of_changes(seed):
    """Owners' lists merged with changed products (moves, deletes, new products, exact ties) equal
    brute force whenever merge answers; it answers most of the time."""
    from simstream.index.rows import ListHead

    rng = np.random.default_rng(seed)
    k, depth = 5, 10
    vecs = {f"p{i:03d}": v for i, v in enumerate(unit(rng, 120))}
    vecs["p001"] = vecs["p000"].copy()  # an exact tie
    builder = ListBuilder(None, k=k, layout={"a": slice(0, 8), "b": slice(8, 16)}, model="m", depth=depth)
    owners = [f"p{i:03d}" for i in range(40, 60)]  # owners never change themselves
    heads = {}
    for o in owners:
        deep, boundary = brute_deep(vecs, o, depth)
        heads[o] = ListHead(o, tuple(deep), boundary, 0, 1)
    answered = asked = 0
    for rnd in range(8):
        changed = set()
        for _ in range(int(rng.integers(1, 12))):
            pid = f"p{int(rng.integers(0, 140)):03d}"
            if pid in owners:
                continue
            changed.add(pid)
            op = rng.random()
            if op < 0.2 and pid in vecs:
                del vecs[pid]
            elif op < 0.35:  # move next to an owner: enters its list
                near = vecs[owners[int(rng.integers(0, len(owners)))]] + 0.05 * unit(rng, 1)[0]
                vecs[pid] = near / np.linalg.norm(near)
            elif op < 0.45 and rnd % 2 and vecs:  # an exact twin of another product
                vecs[pid] = vecs[str(rng.choice(sorted(vecs)))].copy()
            else:
                vecs[pid] = unit(rng, 1)[0]
        for o in owners:
            asked += 1
            prod = StoredProduct(o, vecs[o], 1, {}, "m", 0)
            reach = [(c, vecs[c]) for c in sorted(changed & vecs.keys())]  # every live changed one: a superset
            # A head that carries its members' scores is merged without their vectors.
            members = {} if heads[o].scores else vecs
            got = builder.merge(prod, heads[o], reach, changed, members, None, as_of=rnd + 2)
            deep, boundary = brute_deep(vecs, o, depth)
            if got is None:
                heads[o] = ListHead(o, tuple(deep), boundary, 0, rnd + 2)
                continue
            answered += 1
            assert [n.product_id for n in got.published.neighbours] == oracle(vecs, o, k), (rnd, o)
            assert got.deep[:k] == oracle(vecs, o, k)
            outside = [float(v @ vecs[o]) for q, v in vecs.items() if q != o and q not in got.deep]
            assert all(s <= got.boundary + 1e-5 for s in outside), (rnd, o)
            assert got.scores == tuple(float(vecs[m] @ vecs[o]) for m in got.deep)
            carried = got.packed_scores if (rnd + owners.index(o)) % 2 else b""  # both kinds of head
            heads[o] = ListHead(o, tuple(got.deep), float(np.float32(got.boundary)), 0, rnd + 2, scores=carried)
    assert answered >= asked // 2, (answered, asked)


def test_explained_lists_carry_each_fields_share():
    """``explain`` adds, per entry, each field's share of the score (fields present in both), the
    shares summing to the score; lists built unexplained cannot be recorded."""
    from simstream.index.rows import ListHead

    rng = np.random.default_rng(5)
    vecs = {f"p{i:02d}": v for i, v in enumerate(unit(rng, 30))}
    vecs["p03"][8:] = 0  # field "b" absent: no share of it
    layout = {"a": slice(0, 8), "b": slice(8, 16)}

    class Vectors:
        def snapshot_vectors(self, ids):
            return {i: vecs[i] for i in ids if i in vecs}

    builder = ListBuilder(Vectors(), k=4, layout=layout, model="m", depth=6)
    owners = ["p00", "p01", "p02"]
    built = {}
    for o in owners:
        deep, boundary = brute_deep(vecs, o, 6)
        head = ListHead(o, tuple(deep), boundary, 0, 1)
        built[o] = builder.merge(StoredProduct(o, vecs[o], 1, {}, "m", 0), head, [], set(), vecs, None, as_of=2)
        assert built[o] is not None and not built[o].explained
        with pytest.raises(ValueError):
            builder.stored_form(built[o])
    out = builder.explain(built, vecs)
    for o in owners:
        nl = out[o].published
        assert [n.product_id for n in nl.neighbours] == oracle(vecs, o, 4)
        for n in nl.neighbours:
            want = {f: float(vecs[o][s].astype(np.float64) @ vecs[n.product_id][s]) for f, s in layout.items()
                    if vecs[o][s].any() and vecs[n.product_id][s].any()}
            assert n.fields.keys() == want.keys()
            assert all(abs(n.fields[f] - want[f]) < 2e-6 for f in want)
            assert abs(sum(n.fields.values()) - n.score) < 1e-5
        builder.stored_form(out[o])


def test_a_loose_list_whose_owner_is_gone_needs_nothing(tmp_path) -> None:
    """With ``pool=1`` the search row of the changed product ``a`` holds only ``a``, so every other
    list is reached by the exact tail of ``affected_by`` alone. It must flag the list ``a`` now
    enters (b's), leave the one it does not enter (e's), and skip a recorded list whose owner is
    gone (deleted, its tombstone refresh still pending) instead of failing on an empty stack."""
    import time

    from simstream.index.rows import StoredList
    from simstream.index.store import VectorStore as Store

    before = {"b": [0.0, 1.0, 0.0, 0.0], "c": [0.0, 0.6, 0.8, 0.0], "e": [-0.6, -0.8, 0.0, 0.0]}
    after = dict(before, a=[0.6, 0.8, 0.0, 0.0])  # a moves next to b
    vecs = {pid: np.array(v, np.float32) for pid, v in after.items()}
    store = Store.connect(str(tmp_path / "g.db"), "g", 4, flush_every_rows=0, in_memory=True)
    now = int(time.time() * 1000)
    row = {"version": 1, "brand": "", "category": "", "price": -1.0, "hashes": {}, "model": "m",
           "updated_at": now, "event_time": 0}
    store.upsert_products([dict(row, product_id=pid, vector=v) for pid, v in after.items()])
    # Lists recorded before a moved (top-1, boundary = the score of the last id kept), and one
    # whose owner "gone" is not in the store.
    recorded = {"b": (["c"], 0.6), "e": (["c"], -0.48), "gone": (["b"], -1.0)}
    store.upsert_lists([StoredList(o, ids, bar, b"{}") for o, (ids, bar) in recorded.items()])
    # Brute force over the new vectors: the lists of present owners whose top-1 is no longer the recorded one.
    changed = {o for o, (ids, _) in recorded.items() if o in vecs and oracle(vecs, o, 1) != ids}
    assert changed == {"b"}  # the premise: a enters b's list (0.8 > 0.6), not e's (-1.0 < -0.48)
    got = affected_by(store, [Change("a", vecs["a"])], pool=1, max_pool=1)
    assert got == {"a"} | changed  # a itself, b's list; not e's, not gone's
    store.close()


def test_one_pass_reach_equals_the_candidate_searches(tmp_path, monkeypatch) -> None:
    """With the side index and the list mirror, ``affected_by`` compares every row with its own
    list's boundary in the search pass (``VectorStore.search_reaching``); it must flag every list
    the candidate searches and their exact tail flag, across writes, deletes and re-recorded lists
    (the boundaries it compares with are kept beside the rows)."""
    from simstream.index.store import VectorStore as Store

    rng = np.random.default_rng(21)
    store = Store.connect(str(tmp_path / "r.db"), "r", 16, flush_every_rows=0, in_memory=True)
    vecs = {f"p{i:03d}": v for i, v in enumerate(unit(rng, 300))}
    put(store, vecs)
    builder = ListBuilder(store, k=5, layout={"all": slice(0, 16)}, model="m", depth=8)
    store.upsert_lists([builder.stored_form(b) for b in builder.build_explained(store.get_products(list(vecs)), {}).values()])
    for rnd in range(4):
        moved = {pid: unit(rng, 1)[0] for pid in rng.choice(sorted(vecs), 6, replace=False)}
        put(store, moved)
        vecs.update(moved)
        gone = str(rng.choice(sorted(set(vecs) - moved.keys())))
        store.delete_products([gone])
        del vecs[gone]
        changes = [Change(p, v) for p, v in moved.items()] + [Change(gone, None)]
        one_pass = affected_by(store, changes, pool=4)
        with monkeypatch.context() as m:
            m.setattr(store, "search_reaching", lambda *a, **k: None)
            searched = affected_by(store, changes, pool=4, max_pool=16)
        assert searched <= one_pass
        assert len(one_pass - searched) <= 2, one_pass - searched  # only rows within the error bound
        # re-record the affected lists, as the refresh would
        fresh = builder.build_explained(store.get_products(sorted(one_pass & vecs.keys())), {})
        store.upsert_lists([builder.stored_form(b) for b in fresh.values()])
    store.close()


def test_the_side_index_holds_each_rows_list_boundary(tmp_path) -> None:
    from simstream.index.rows import StoredList
    from simstream.index.store import VectorStore as Store

    store = Store.connect(str(tmp_path / "s.db"), "s", 16, flush_every_rows=0, in_memory=True)
    rng = np.random.default_rng(3)
    store.upsert_lists([StoredList("late", ["a"], 0.25, b"{}"), StoredList("x", ["a"], 0.5, b"{}")])
    put(store, dict(zip(["x", "late", "y"], unit(rng, 3))))  # "late" arrives after its list
    side = store.side
    assert side is not None
    bars = dict(zip(side.ids(), side._bars[[side._row[p] for p in side.ids()]].tolist()))
    assert bars == {"x": 0.5, "late": 0.25, "y": np.inf}
    store.upsert_lists([StoredList("x", [], float("inf"), b"")])  # a tombstone marker: no bar
    store.delete_products(["late"])
    put(store, {"z": unit(rng, 1)[0]})  # reuses late's row
    bars = dict(zip(side.ids(), side._bars[[side._row[p] for p in side.ids()]].tolist()))
    assert bars == {"x": np.inf, "y": np.inf, "z": np.inf}
    store.close()



def test_field_shares_of_pairs_are_each_pairs_own_contributions() -> None:
    """``FieldShares.pairs`` (serve's pass: every query's hits at once) gives each (query, row)
    pair the contributions ``contributions`` gives it alone: the same fields (a field missing
    from either side has no share) and the same shares to rounding."""
    from simstream.index.neighbours import FieldShares, contributions

    layout = {"text": slice(0, 6), "brand": slice(6, 9), "price": slice(10, 12)}  # column 9 in no field
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(40, 12)).astype(np.float32)
    rows = rng.normal(size=(40, 12)).astype(np.float32)
    queries[::3, 6:9] = 0  # some queries hold no brand
    rows[::4, 10:12] = 0  # some rows no price
    got = FieldShares(layout).pairs(queries, rows)
    for q, r, fields in zip(queries, rows, got):
        alone = contributions(q, [r], layout)[0]
        assert fields.keys() == alone.keys()
        assert all(abs(fields[f] - alone[f]) <= 2e-6 for f in fields), (fields, alone)
    assert FieldShares(layout).pairs(queries[:0], rows[:0]) == []


def test_published_entries_carry_the_match_probability_the_oracle_computes(small_store):
    """With a match decision every published entry gets its probability, computed from the entry's
    contributions; the oracle's from the two stored vectors agrees, and a list built without a
    decision carries none (the wire form then has no such key)."""
    from simstream.index.neighbours import match_probabilities
    from simstream.match import MatchModel
    from simstream.records import NeighbourList

    rng = np.random.default_rng(11)
    vecs = {f"p{i:03d}": v for i, v in enumerate(unit(rng, 60))}
    for pid in ("p001", "p007", "p020"):
        vecs[pid][8:] = 0  # field "b" missing on these
    put(small_store, vecs)
    layout = {"a": slice(0, 8), "b": slice(8, 16)}
    weights = {"a": 0.6, "b": 0.4}
    match = MatchModel(("a", "b"), (3.0, 2.0, -0.5, -0.7), 0.5, 0.5)
    with pytest.raises(ValueError, match="weights"):
        ListBuilder(small_store, k=5, layout=layout, model="m", match=match)
    builder = ListBuilder(small_store, k=5, layout=layout, model="m", match=match, weights=weights)
    plain = ListBuilder(small_store, k=5, layout=layout, model="m")
    products = small_store.get_products(list(vecs))
    lists = builder.build_explained(products, {})
    without = plain.build_explained(products, {})
    missing_seen = False
    for pid, b in lists.items():
        entries = b.published.neighbours
        want = match_probabilities(match, weights, layout, vecs[pid], np.stack([vecs[n.product_id] for n in entries]))
        assert [n.match_probability for n in entries] == pytest.approx(want, abs=1e-4)
        assert all(0.0 <= n.match_probability <= 1.0 for n in entries)
        missing_seen |= any("b" not in n.fields for n in entries)
        wire = NeighbourList.from_json(b.published.to_json())
        assert [n.match_probability for n in wire.neighbours] == [n.match_probability for n in entries]
        assert all(n.match_probability is None for n in without[pid].published.neighbours)
        assert b"match_probability" not in without[pid].published.to_json()
    assert missing_seen
