"""The query features against a brute-force oracle: filters (IN / NOT / relative / exclude),
query-time weights, recommend with negatives, min_score, per_brand, cursors, batch, image-only
documents; from serve's in-memory copy and from Milvus search (SIMSTREAM_SERVE_COPY=off), which
must give the same answers. Real milvus-lite, real encoders (tests/serve/conftest.py).

The oracle is written here, independently of serve: float32 dot products one row at a time over
the stored vectors, the filters as plain predicates over the sample documents, ranked by
``index.exact.rank_key``."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from simstream.index.exact import rank_key
from simstream.serve.app import create_app

DELETED = "hp-bose-qc45"


def stored(catalog) -> dict[str, np.ndarray]:
    ids = [p for p in catalog.docs if p != DELETED]
    return {pid: p.vector for pid, p in catalog.store.get_products(ids).items()}


def oracle(query: np.ndarray, vectors: dict[str, np.ndarray], keep: Callable[[str], bool] = lambda pid: True,
           ) -> list[tuple[str, float]]:
    """Every product ``keep`` allows, ranked: float32 dot products one by one, ties by id."""
    scored = sorted(((float(v @ query), pid) for pid, v in vectors.items() if keep(pid)), key=lambda t: rank_key(*t))
    return [(pid, s) for s, pid in scored]


def ids(body: dict[str, Any]) -> list[str]:
    return [n["product_id"] for n in body["neighbors"]]


def brand(doc: dict) -> str:
    return "".join(ch for ch in (doc.get("brand") or "").lower() if ch.isalnum())


def cat(doc: dict) -> str:
    return ">".join(p.strip().lower() for p in (doc.get("category") or "").split(">"))


@pytest.fixture(scope="module")
def milvus_client(catalog) -> Iterator[TestClient]:
    """The same catalog answered without the copy: every live query a Milvus search."""
    settings = catalog.settings.model_copy(update={"serve_copy": "off"})
    with TestClient(create_app(settings, milvus=catalog.store.milvus, encoder=catalog.encoder)) as c:
        yield c


@pytest.fixture(params=["copy", "milvus"])
def api(request, client: TestClient, milvus_client: TestClient) -> TestClient:
    return client if request.param == "copy" else milvus_client


SEED = "hp-sony-xm5-blk"


def test_in_not_and_exclude_filters(api: TestClient, catalog) -> None:
    vectors, docs = stored(catalog), catalog.docs
    q = vectors[SEED]
    cases = [
        ([("brand", "Stride"), ("brand", "lumen")], lambda d: brand(d) in {"stride", "lumen"}),
        ([("brand_not", "Sony"), ("brand_not", "Thermo")], lambda d: brand(d) not in {"sony", "thermo"}),
        ([("category", "Home"), ("category", "Apparel > Shoes")],
         lambda d: cat(d).startswith("home>") or cat(d).startswith("apparel>shoes")),
        ([("category_not", "Electronics"), ("exclude", "mug-red-350"), ("exclude", "tee-sport-red")],
         lambda d: not cat(d).startswith("electronics>") and d["product_id"] not in {"mug-red-350", "tee-sport-red"}),
        ([("category", "apparel"), ("price_max", "20"), ("brand_not", "stride")],
         lambda d: cat(d).startswith("apparel>") and d["price"] <= 20 and brand(d) != "stride"),
    ]
    for params, keep in cases:
        for extra in ([("k", "4")], [("k", "4"), ("weights", "text:0.4")]):  # published-first, and live
            r = api.get(f"/v1/products/{SEED}/neighbors", params=params + extra)
            assert r.status_code == 200, r.text
            want = oracle(q, vectors, lambda pid: pid != SEED and keep(docs[pid]))[:4]
            assert ids(r.json()) == [pid for pid, _ in want], (params, extra, r.json().get("source"))
    got = api.get("/v1/search", params=[("q", "running shoe"), ("brand", "stride"), ("brand", "urbanwalk"),
                                        ("exclude", "shoe-run-blk-42")]).json()
    qv = catalog.encoder.text("running shoe")
    assert ids(got) == [pid for pid, _ in oracle(qv, vectors, lambda pid: brand(docs[pid]) in {"stride", "urbanwalk"}
                                                 and pid != "shoe-run-blk-42")][:10]


def test_relative_filters_compare_with_the_seed(api: TestClient, catalog) -> None:
    vectors, docs = stored(catalog), catalog.docs
    seed = "shoe-run-blk-42"
    cases = [
        ({"same_brand": "true"}, lambda d: brand(d) == "stride"),
        ({"same_category": "true"}, lambda d: cat(d) == "apparel>shoes>running"),
        ({"price_within_pct": "60"}, lambda d: 89 * 0.4 <= d["price"] <= 89 * 1.6),
        ({"same_brand": "true", "category_not": "sports"}, lambda d: brand(d) == "stride" and not cat(d).startswith("sports")),
        # same_category compares the seed's path exactly; category_not still leaves out a whole subtree
        ({"same_category": "true", "category_not": "apparel"}, lambda d: False),
    ]
    for params, keep in cases:
        r = api.get(f"/v1/products/{seed}/neighbors", params={**params, "k": "5", "weights": "price:0.1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["source"] == "live" and body["fallback"] == "query-time weights"
        # the oracle re-weighs on its own: see test_query_time_weights_are_exact
        want = oracle(reweighed(catalog, vectors[seed], {"price": 0.1}), vectors,
                      lambda pid: pid != seed and keep(docs[pid]))[:5]
        assert ids(body) == [pid for pid, _ in want], params
    r = api.get("/v1/products/laptop-air-13/neighbors", params={"same_brand": "true", "brand": "stride"})
    assert r.status_code == 200 and r.json()["neighbors"] == []  # the seed's brand is not among those asked
    r = api.get("/v1/search", params={"q": "shoe", "same_brand": "true"})
    assert r.status_code == 400 and "seed" in r.json()["detail"]


def reweighed(catalog, vector: np.ndarray, asked: dict[str, float]) -> np.ndarray:
    """The oracle's own re-weighting: stored weights with ``asked`` in their place, normalised
    to sum 1; each field's segment scaled by new / stored weight."""
    stored_w = dict(catalog.encoder.weights)
    new = {f: asked.get(f, w) for f, w in stored_w.items()}
    total = sum(new.values())
    out = vector.astype(np.float32).copy()
    for f, s in catalog.encoder.layout.items():
        if stored_w[f] > 0:
            out[s] *= np.float32(new[f] / total / stored_w[f])
    return out


def test_query_time_weights_are_exact(api: TestClient, catalog) -> None:
    vectors = stored(catalog)
    layout, stored_w = catalog.encoder.layout, catalog.encoder.weights
    for asked in ({"image": 0.0}, {"text": 2.0, "brand": 0.0}, {"price": 1.0, "category": 1.0}):
        spec = ",".join(f"{f}:{w}" for f, w in asked.items())
        body = api.get(f"/v1/products/{SEED}/neighbors", params={"k": "8", "weights": spec}).json()
        q = reweighed(catalog, vectors[SEED], asked)
        want = oracle(q, vectors, lambda pid: pid != SEED)[:8]
        assert ids(body) == [pid for pid, _ in want], asked
        # the score is the weighted sum of per-field cosines under the new weights
        new = {f: asked.get(f, w) for f, w in stored_w.items()}
        total = sum(new.values())
        for n in body["neighbors"]:
            v = vectors[n["product_id"]]
            cosines = {f: float(vectors[SEED][s] @ v[s]) / stored_w[f] for f, s in layout.items() if stored_w[f] > 0}
            assert math.isclose(n["score"], sum(new[f] / total * c for f, c in cosines.items()), abs_tol=2e-5)
            assert math.isclose(sum(n["fields"].values()), n["score"], abs_tol=1e-4)
            assert all(f not in n["fields"] or new[f] > 0 for f in layout)
    zero = [f for f, w in stored_w.items() if w == 0]
    bad = [("bogus:1", "unknown field"), ("text:-1", ">= 0"), ("text:x", "look like")]
    bad += [(f"{zero[0]}:1", "stored at weight 0")] if zero else []
    for spec, message in bad:
        r = api.get(f"/v1/products/{SEED}/neighbors", params={"weights": spec})
        assert r.status_code == 400 and message in r.json()["detail"], (spec, r.text)


def test_recommend_with_positive_and_negative_examples(api: TestClient, catalog) -> None:
    vectors, docs = stored(catalog), catalog.docs
    doc = {k: v for k, v in docs["tee-sport-red"].items() if k not in ("product_id", "version", "op")}
    body = {"positive": ["mug-white-350", "bottle-steel-750"], "negative": ["mug-travel-steel", doc],
            "negative_weight": 0.7, "k": 6, "filters": {"brand_not": ["kitchenly"]}}
    r = api.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    negative_doc = _document_vector(catalog, doc)
    pos = np.mean([vectors["mug-white-350"], vectors["bottle-steel-750"]], axis=0, dtype=np.float64)
    neg = np.mean([vectors["mug-travel-steel"].astype(np.float64), negative_doc.astype(np.float64)], axis=0)
    q = (pos - 0.7 * neg).astype(np.float32)
    seeds = {"mug-white-350", "bottle-steel-750", "mug-travel-steel"}
    want = oracle(q, vectors, lambda pid: pid not in seeds and brand(docs[pid]) != "kitchenly")[:6]
    assert ids(r.json()) == [pid for pid, _ in want]
    assert [n["score"] for n in r.json()["neighbors"]] == [round(s, 6) for _, s in want]
    # relative filters compare with the first positive id
    r = api.post("/v1/recommend", json={"positive": ["shoe-run-blk-42", "tee-sport-red"], "k": 5,
                                        "filters": {"same_category": True}})
    assert set(ids(r.json())) <= {pid for pid, d in docs.items() if cat(d) == "apparel>shoes>running"}
    assert api.post("/v1/recommend", json={"positive": ["no-such"]}).status_code == 404
    assert api.post("/v1/recommend", json={"positive": []}).status_code == 422


def _document_vector(catalog, doc: dict) -> np.ndarray:
    from simstream.serve.queries import ProductDocument

    return catalog.encoder.document(ProductDocument(**doc))


def test_min_score_per_brand_and_cursor_pages(api: TestClient, catalog) -> None:
    vectors, docs = stored(catalog), catalog.docs
    qv = catalog.encoder.text("steel bottle")
    ranking = oracle(qv, vectors)
    # pages of 4 through the whole ranking, by cursor, equal the oracle's ranking
    pages, cursor = [], None
    for _ in range(10):
        params = {"q": "steel bottle", "k": "4", **({"cursor": cursor} if cursor else {})}
        body = api.get("/v1/search", params=params).json()
        pages += ids(body)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [pid for pid, _ in ranking]
    # a cursor belongs to its query
    first = api.get("/v1/search", params={"q": "steel bottle", "k": "4"}).json()["next_cursor"]
    r = api.get("/v1/search", params={"q": "steel mug", "k": "4", "cursor": first})
    assert r.status_code == 400 and "another query" in r.json()["detail"]
    assert api.get("/v1/search", params={"q": "x", "cursor": "garbage!"}).status_code == 400
    # min_score cuts the ranking
    bar = ranking[5][1]
    body = api.get("/v1/search", params={"q": "steel bottle", "k": "20", "min_score": str(bar)}).json()
    assert ids(body) == [pid for pid, s in ranking if s >= bar]
    # per_brand: at most n per brand, greedily down the ranking
    for cap in (1, 2):
        seen: dict[str, int] = {}
        want = []
        for pid, _ in ranking:
            b = brand(docs[pid])
            if seen.get(b, 0) < cap:
                seen[b] = seen.get(b, 0) + 1
                want.append(pid)
        body = api.get("/v1/search", params={"q": "steel bottle", "k": "6", "per_brand": str(cap)}).json()
        assert ids(body) == want[:6], cap
        # hits read deeper than the page (per_brand skipped some) have their contributions too
        assert [pid for pid, _ in ranking].index(want[5]) >= 6, "per_brand skipped nothing: test the deeper path"
        for n in body["neighbors"]:
            assert n["fields"] and math.isclose(sum(n["fields"].values()), n["score"], abs_tol=1e-4), n


def test_published_list_filtered_first_then_live(client: TestClient, catalog) -> None:
    vectors, docs = stored(catalog), catalog.docs
    # the published list (TOP_K 5) has enough headphones / audio products for k=2: answered from it
    body = client.get(f"/v1/products/{SEED}/neighbors", params={"category": "electronics>audio", "k": "2"}).json()
    assert body["source"] == "published" and body["filters"] == {"category": ["electronics>audio"]}
    want = oracle(vectors[SEED], vectors, lambda pid: pid != SEED and cat(docs[pid]).startswith("electronics>audio"))
    assert ids(body) == [pid for pid, _ in want[:2]]
    # laptops are not in the sony's published list: live, and the response says why
    body = client.get(f"/v1/products/{SEED}/neighbors", params={"category": "electronics>computers", "k": "3"}).json()
    assert body["source"] == "live" and "fewer than k=3" in body["fallback"]
    want = oracle(vectors[SEED], vectors, lambda pid: cat(docs[pid]).startswith("electronics>computers"))
    assert ids(body) == [pid for pid, _ in want[:3]]
    # deeper than the published list: live, the published answer says it was cut
    assert client.get(f"/v1/products/{SEED}/neighbors").json()["cut_at_top_k"] is True  # 5 of 18 others
    deep = client.get(f"/v1/products/{SEED}/neighbors", params={"k": "8"}).json()
    assert deep["source"] == "live" and "TOP_K" in deep["fallback"]
    assert ids(deep) == [pid for pid, _ in oracle(vectors[SEED], vectors, lambda pid: pid != SEED)[:8]]


def test_batch_answers_each_query_as_its_route_would(api: TestClient, catalog) -> None:
    queries = [
        {"op": "neighbors", "product_id": SEED, "k": 3},
        {"op": "search", "q": "travel mug", "k": 3, "filters": {"brand": ["thermo", "kitchenly"]}},
        {"op": "neighbors", "product_id": "no-such"},
        {"op": "recommend", "positive": ["laptop-air-13"], "k": 2},
        {"op": "search", "q": "mug", "weights": {"bogus": 1}},
        {"op": "similar", "product": {"title": "red t-shirt"}, "k": 2},
    ]
    r = api.post("/v1/batch", json={"queries": queries})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 200, 404, 200, 400, 200]
    assert results[0]["body"]["neighbors"] == api.get(f"/v1/products/{SEED}/neighbors", params={"k": "3"}).json()["neighbors"]
    single = api.get("/v1/search", params=[("q", "travel mug"), ("k", "3"), ("brand", "thermo"), ("brand", "kitchenly")])
    assert ids(results[1]["body"]) == ids(single.json())
    assert "no-such" in results[2]["problem"]["detail"] and "unknown field" in results[4]["problem"]["detail"]
    assert api.post("/v1/batch", json={"queries": [{"op": "search", "q": "x"}] * 101}).status_code == 422
    assert api.post("/v1/batch", json={"queries": [{"op": "drop", "q": "x"}]}).status_code == 422


def test_image_only_query_by_example(api: TestClient, catalog) -> None:
    vectors = stored(catalog)
    image_url = catalog.docs["mug-red-350"]["image_url"]
    r = api.post("/v1/similar", json={"product": {"image_url": image_url}, "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_fields"] == ["image"]
    assert body["neighbors"][0]["product_id"] == "mug-red-350"
    for n in body["neighbors"]:
        assert set(n["fields"]) == {"image"}
    qv = _document_vector(catalog, {"image_url": image_url})
    assert ids(body) == [pid for pid, _ in oracle(qv, vectors)[:3]]
    assert api.post("/v1/similar", json={"product": {"brand": "x"}}).status_code == 422


def test_copy_and_milvus_give_the_same_answers(client: TestClient, milvus_client: TestClient) -> None:
    requests = [("get", "/v1/search", {"params": {"q": "wireless headphones", "k": "8", "price_min": "10"}}),
                ("get", f"/v1/products/{SEED}/neighbors", {"params": {"k": "9", "weights": "text:1,image:0"}}),
                ("post", "/v1/recommend", {"json": {"positive": ["tee-basic-navy-m", "shoe-run-blue-43"], "k": 7}})]
    for method, path, kw in requests:
        a = getattr(client, method)(path, **kw).json()
        b = getattr(milvus_client, method)(path, **kw).json()
        assert (a["index"], b["index"]) == ("copy", "milvus")
        assert [(n["product_id"], n["score"]) for n in a["neighbors"]] == \
            [(n["product_id"], n["score"]) for n in b["neighbors"]], path
