"""The ``l2`` metric through the index (simstream.metric): Milvus collections indexed and searched by
it, lists and affected sets exact under it, with the side index and in Milvus-search mode."""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import numpy as np
import pytest

from simstream.index.exact import exact_top_k
from simstream.index.milvus import MilvusStore
from simstream.index.neighbours import Change, ListBuilder, affected_by, contributions, stale_lists
from simstream.index.store import VectorStore
from simstream.metric import IP, Metric
from simstream.records import Neighbour, NeighbourList

from tests.index.test_neighbour_lists import put

L2 = Metric("l2")
LAYOUT = {"a": slice(0, 8), "b": slice(8, 12), "c": slice(12, 16)}


def catalog(n: int, seed: int) -> dict[str, np.ndarray]:
    """Rows whose fields are unit vectors scaled like fused segments, some fields missing (zero):
    rows of different lengths, where ``l2`` and ``ip`` rank differently."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 16), np.float32)
    for (f, s), w in zip(LAYOUT.items(), (0.6, 0.25, 0.15)):
        seg = rng.normal(size=(n, s.stop - s.start))
        x[:, s] = np.sqrt(w) * seg / np.linalg.norm(seg, axis=1, keepdims=True)
    x[rng.random(n) < 0.3, 8:12] = 0
    x[rng.random(n) < 0.3, 12:16] = 0
    return {f"p{i:03d}": x[i] for i in range(n)}


def oracle(vecs: dict[str, np.ndarray], k: int, metric: Metric = L2) -> dict[str, list[str]]:
    ids = sorted(vecs)
    return {pid: [q for q, _ in row] for pid, row in zip(ids, exact_top_k(np.stack([vecs[i] for i in ids]), ids, k,
                                                                             metric=metric))}


@pytest.fixture(params=[("milvus-lite", False), ("milvus-lite", True), ("milvus-server", False), ("milvus-server", True)],
                ids=["lite-search", "lite-side", "server-search", "server-side"])
def l2_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[VectorStore]:  # type: ignore[no-untyped-def]
    where, in_memory = request.param
    if where == "milvus-lite":
        uri, prefix = str(tmp_path / "l2.db"), "l2"
    else:
        uri = os.environ.get("SIMSTREAM_TEST_MILVUS_URI", "")
        if not uri:
            pytest.skip("no real Milvus: run via `bash scripts/with-milvus-server.sh` to include it")
        prefix = f"l2_{uuid.uuid4().hex[:8]}"
    st = VectorStore.connect(uri, prefix, 16, flush_every_rows=0, metric=L2, in_memory=in_memory)
    assert (st.side is not None) == in_memory
    yield st
    if where == "milvus-server":
        st.milvus.drop()
    st.close()


def test_lists_and_affected_sets_are_exact_under_l2(l2_store: VectorStore) -> None:
    vecs = catalog(120, seed=1)
    put(l2_store, vecs)
    want = oracle(vecs, 5)
    assert want != oracle(vecs, 5, IP)  # the metric changes the answer on these rows
    builder = ListBuilder(l2_store, k=5, layout=LAYOUT, model="m")
    assert builder.metric == L2
    lists = builder.build_explained(l2_store.get_products(list(vecs)), {})
    for pid, built in lists.items():
        nl = built.published
        assert [n.product_id for n in nl.neighbours] == want[pid], pid
        for n in nl.neighbours:
            assert n.score == round(L2.pair(vecs[pid], vecs[n.product_id]), 6)
            assert abs(sum(n.fields.values()) - n.score) < 1e-5  # the shares of the distance sum to the score
    l2_store.upsert_lists([builder.stored_form(b) for b in lists.values()])
    # move p000 next to p050: the lists it leaves and the lists it now enters are affected
    moved = (vecs["p050"] * 0.98 + 0.02 * vecs["p000"]).astype(np.float32)
    new = dict(vecs, p000=moved)
    put(l2_store, {"p000": moved})
    affected = affected_by(l2_store, [Change("p000", moved)], pool=8, max_pool=256)
    after = oracle(new, 5)
    changed = {pid for pid in vecs if after[pid] != want[pid]}
    assert changed and changed <= affected < set(vecs)


def test_a_distance_splits_into_field_shares() -> None:
    """Under ``l2`` every field either side holds has a share (-|a_f - b_f|^2 / 2): one only the
    owner holds counts against the pair; the shares sum to the score."""
    vecs = catalog(40, seed=2)
    a = vecs["p000"].copy()
    a[12:16] = 0
    rows = np.stack(list(vecs.values())[1:])
    for row, shares in zip(rows, contributions(a, rows, LAYOUT, L2)):
        want = {f: -0.5 * float(np.sum((a[s].astype(np.float64) - row[s]) ** 2)) for f, s in LAYOUT.items()
                if a[s].any() or row[s].any()}
        assert shares.keys() == want.keys()
        assert all(abs(shares[f] - want[f]) < 2e-6 for f in want)
        assert abs(sum(shares.values()) - L2.pair(a, row)) < 1e-5


def test_stale_lists_score_by_the_metric() -> None:
    vecs = catalog(6, seed=3)
    me = vecs["p000"]
    score = L2.pair(me, vecs["p001"])
    nl = NeighbourList("p000", 1, [Neighbour("p001", score, {})], "m", 0, None)
    assert stale_lists({"p000": nl}, {"p000": me}, {}, set(), k=1, metric=L2) == set()
    from simstream.index.rows import StoredProduct

    unchanged = {"p001": StoredProduct("p001", vecs["p001"], 2, {}, "m", 0)}
    assert stale_lists({"p000": nl}, {"p000": me}, unchanged, set(), k=1, metric=L2) == set()
    assert stale_lists({"p000": nl}, {"p000": me}, unchanged, set(), k=1) == {"p000"}  # its score is not the ip one


def test_a_collection_keeps_its_metric(tmp_path) -> None:
    """Milvus searches by the metric the collection is indexed by (its distance becomes the score);
    a reader adopts it, and a writer of another metric is refused instead of mixing them."""
    uri = str(tmp_path / "m.db")
    vecs = catalog(30, seed=4)
    store = MilvusStore.connect(uri, "c", 16, metric=L2, flush_every_rows=0)
    try:
        store.upsert_products([{"product_id": pid, "vector": v.tolist(), "version": 1, "brand": "", "category": "",
                                "price": -1.0, "hashes": {}, "model": "m", "updated_at": 0, "event_time": 0}
                               for pid, v in vecs.items()])
        hits = store.search_scores(np.stack([vecs["p000"]]), 5)[0]
        assert hits[0] == ("p000", pytest.approx(0.0, abs=1e-5))
        assert [pid for pid, _ in hits[1:]] == oracle(vecs, 4)["p000"]
        assert all(abs(sc - L2.pair(vecs["p000"], vecs[pid])) < 1e-5 for pid, sc in hits)
    finally:
        store.close()
    reader = MilvusStore.connect(uri, "c", None)
    try:
        assert reader.metric == L2
    finally:
        reader.close()
    with pytest.raises(ValueError, match="indexed by L2 but the model ranks by IP"):
        MilvusStore.connect(uri, "c", 16)
