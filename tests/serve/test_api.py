"""The query API on a real milvus-lite file with the real encoders (tests/serve/conftest.py).

Expected answers are computed independently: exact top-K by numpy over the stored vectors."""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient

from simstream.index.exact import rank_key
from simstream.index.rows import brand_key

DELETED = "hp-bose-qc45"  # deleted by the catalog fixture (tests/serve/conftest.py)
TOP_K = 5


def stored(catalog) -> dict[str, np.ndarray]:
    ids = [p for p in catalog.docs if p != DELETED]
    return {pid: p.vector for pid, p in catalog.store.get_products(ids).items()}


def exact(query: np.ndarray, vectors: dict[str, np.ndarray], k: int, keep=lambda pid: True) -> list[str]:
    scored = sorted(((float(v @ query), pid) for pid, v in vectors.items() if keep(pid)), key=lambda t: rank_key(*t))
    return [pid for _, pid in scored[:k]]


def check_contributions(neighbours: list[dict]) -> None:
    for n in neighbours:
        assert n["fields"], n
        assert abs(sum(n["fields"].values()) - n["score"]) < 1e-4, n


def check_match(catalog, neighbours: list[dict]) -> None:
    """Each entry's match probability is the model's decision on its own contributions."""
    want = catalog.encoder.match.of_entries([n["fields"] for n in neighbours], catalog.encoder.weights)
    assert [n["match_probability"] for n in neighbours] == pytest.approx(want, abs=1e-4)


def test_product_view_and_its_image(client: TestClient, catalog) -> None:
    pid = "hp-sony-xm5-blk"
    doc = catalog.docs[pid]
    got = client.get(f"/v1/products/{pid}").json()
    assert (got["title"], got["brand"], got["category"], got["price"]) == (doc["title"], doc["brand"], doc["category"],
                                                                             doc["price"])
    assert got["version"] > 0 and got["image_url"] == doc["image_url"] and got["attributes"] == doc["attributes"]
    img = client.get(got["image_src"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == (catalog.settings.image_root / doc["image_url"].removeprefix("file:")).read_bytes()


def test_published_list_is_the_exact_top_k_with_freshness(client: TestClient, catalog) -> None:
    vectors = stored(catalog)
    for pid in list(vectors)[:6]:
        got = client.get(f"/v1/products/{pid}/neighbors").json()
        ids = [n["product_id"] for n in got["neighbors"]]
        assert ids == exact(vectors[pid], vectors, TOP_K, keep=lambda x: x != pid)
        assert got["source"] == "published" and got["model"] == catalog.encoder.model
        assert got["computed_at"] > 0 and got["source_event_time"] > 0
        assert all(n["product"]["title"] == catalog.docs[n["product_id"]]["title"] for n in got["neighbors"])
        check_contributions(got["neighbors"])
        check_match(catalog, got["neighbors"])  # as published by the list builder
        short = client.get(f"/v1/products/{pid}/neighbors?k=2").json()["neighbors"]
        assert short == got["neighbors"][:2]


@pytest.mark.parametrize("pid", ["no-such-product", DELETED, "bad\x01id", "a/b/c"])
def test_unknown_or_deleted_products_are_404(client: TestClient, pid: str) -> None:
    for path in (f"/v1/products/{quote(pid, safe='')}", f"/v1/products/{quote(pid, safe='')}/neighbors",
                 f"/v1/products/{quote(pid, safe='')}/neighbors?brand=sony"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["detail"], (path, r.text)


def test_filtered_neighbours_are_the_exact_filtered_top_k(client: TestClient, catalog) -> None:
    vectors = stored(catalog)
    pid = "hp-sony-xm5-blk"
    docs = catalog.docs
    cases = [
        ({"brand": "sony corp."}, lambda d: brand_key(d.get("brand")) == "sony"),
        ({"category": "electronics>audio"},
         lambda d: (d.get("category") or "").lower().replace(" ", "").startswith("electronics>audio")),
        ({"price_min": "50", "price_max": "300"}, lambda d: d.get("price") is not None and 50 <= d["price"] <= 300),
        ({"attr.shape": "headphones"}, lambda d: (d.get("attributes") or {}).get("shape") == "headphones"),
    ]
    for params, keep in cases:
        r = client.get(f"/v1/products/{pid}/neighbors", params={**params, "k": "4"})
        assert r.status_code == 200, r.text
        got = r.json()
        want = exact(vectors[pid], vectors, 4, keep=lambda x: x != pid and keep(docs[x]))
        assert want, params  # the sample catalog has matches for every case
        assert [n["product_id"] for n in got["neighbors"]] == want, params
        assert got["source"] == "live"
        check_contributions(got["neighbors"])
        check_match(catalog, got["neighbors"])  # computed with the live hits
        for n in got["neighbors"]:
            assert abs(n["score"] - float(vectors[n["product_id"]] @ vectors[pid])) < 1e-5


def test_search_ranks_by_the_query_text_alone(client: TestClient, catalog) -> None:
    vectors = stored(catalog)
    pid = "hp-sony-xm5-slv"
    q = catalog.docs[pid]["title"]
    got = client.get("/v1/search", params={"q": q, "k": "5"}).json()
    assert got["neighbors"][0]["product_id"] == pid
    assert set(got["query_fields"]) <= {"text", "title_lexical", "mpn"} and "text" in got["query_fields"]
    qv = catalog.encoder.text(q)
    assert [n["product_id"] for n in got["neighbors"]] == exact(qv, vectors, 5)
    for n in got["neighbors"]:
        assert set(n["fields"]) <= set(got["query_fields"])
        assert "match_probability" not in n  # a text is not a product: no match decision
    check_contributions(got["neighbors"])
    filtered = client.get("/v1/search", params={"q": q, "brand": "JBL"}).json()["neighbors"]
    assert [n["product_id"] for n in filtered] == exact(qv, vectors, 10, keep=lambda x: x == "hp-jbl-t510")
    assert client.get("/v1/search", params={"q": q, "brand": "Bose"}).json()["neighbors"] == []  # deleted


def test_query_by_example(client: TestClient, catalog) -> None:
    doc = {k: v for k, v in catalog.docs["hp-sony-xm5-blk"].items() if k not in ("product_id", "version", "op")}
    got = client.post("/v1/similar", json={"product": doc, "k": 3}).json()
    assert got["neighbors"][0]["product_id"] == "hp-sony-xm5-blk"
    assert got["neighbors"][0]["score"] > 0.95 and "image" in got["query_fields"]
    check_contributions(got["neighbors"])
    check_match(catalog, got["neighbors"])
    assert got["neighbors"][0]["match_probability"] >= catalog.encoder.match.threshold  # the same product
    weighted = client.post("/v1/similar", json={"product": doc, "k": 3, "weights": {"image": 0}}).json()
    assert all("match_probability" not in n for n in weighted["neighbors"])  # fitted on the stored weights only
    # the product itself, named: left out of its own results
    named = client.post("/v1/similar", json={"product": {**doc, "product_id": "hp-sony-xm5-blk"}, "k": 3}).json()
    assert "hp-sony-xm5-blk" not in [n["product_id"] for n in named["neighbors"]]
    priced = client.post("/v1/similar", json={"product": doc, "filters": {"price_max": 100}}).json()["neighbors"]
    assert priced and all(catalog.docs[n["product_id"]]["price"] <= 100 for n in priced)


@pytest.mark.parametrize("method, path, body, status", [
    ("get", "/v1/search?q=tv&color=red", None, 400),
    ("get", "/v1/search?q=tv&k=0", None, 400),
    ("get", "/v1/search?q=tv&k=101", None, 400),
    ("get", "/v1/search?q=tv&k=ten", None, 400),
    ("get", "/v1/search?q=tv&k=1&k=2", None, 400),
    ("get", "/v1/search?k=3", None, 400),
    ("get", "/v1/search?q=" + "x" * 501, None, 400),
    ("get", "/v1/search?q=tv&price_min=cheap", None, 400),
    ("get", "/v1/search?q=tv&price_min=nan", None, 400),
    ("get", "/v1/search?q=tv&price_min=-1", None, 400),
    ("get", "/v1/search?q=tv&price_min=10&price_max=5", None, 400),
    ("get", "/v1/search?q=tv&brand=%00", None, 400),
    ("get", "/v1/search?q=tv&brand=---", None, 400),
    ("get", "/v1/search?q=tv&category=", None, 400),
    ("get", "/v1/search?q=tv&category=a%1bb", None, 400),
    ("get", "/v1/search?q=tv&attr.=x", None, 400),
    ("get", "/v1/products/hp-sony-xm5-blk/neighbors?expr=price>0", None, 400),
    ("get", "/v1/products/hp-sony-xm5-blk/neighbors?k=-3", None, 400),
    ("post", "/v1/similar", {"product": {"title": "x"}, "expr": "1==1"}, 422),
    ("post", "/v1/similar", {"product": {"title": "x", "colour": "red"}}, 422),
    ("post", "/v1/similar", {"product": {"title": ""}}, 422),
    ("post", "/v1/similar", {"product": {"title": "x", "op": "delete"}}, 422),
    ("post", "/v1/similar", {"product": {"title": "x"}, "k": 0}, 400),
    ("post", "/v1/similar", {"product": {"title": "x"}, "filters": {"brand": "a\x01b"}}, 400),
    ("post", "/v1/similar", {"product": {"title": "x", "image_url": "file:../../etc/passwd"}}, 422),
    ("post", "/v1/similar", {"product": {"title": "x", "image_url": "gopher://x"}}, 422),
    ("post", "/v1/similar", b"not json", 422),
])
def test_bad_requests_get_a_4xx_with_a_message(client: TestClient, method: str, path: str, body, status: int) -> None:
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_hostile_filter_values_match_nothing_instead_of_widening(client: TestClient) -> None:
    for value in ['" or product_id != "', "sony\" || true || \"", "\\", "%", "electronics%"]:
        for name in ("category", "attr.shape"):
            r = client.get("/v1/products/hp-sony-xm5-blk/neighbors", params={name: value})
            assert r.status_code == 200, r.text
            assert r.json()["neighbors"] == [], (name, value)


def test_image_route_serves_only_stored_file_images(client: TestClient) -> None:
    assert client.get("/v1/products/..%2F..%2Fetc%2Fpasswd/image").status_code == 404
    assert client.get("/v1/products/no-such/image").status_code == 404


def test_health_readiness_metrics_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.get("/v1/search", params={"q": "headphones"})
    client.get("/v1/products/hp-sony-xm5-blk")
    text = client.get("/metrics").text
    assert 'simstream_serve_request_seconds_bucket{endpoint="/v1/search",le="0.15",method="GET",status="2xx"}' in text
    assert 'endpoint="/v1/products/{product_id:path}"' in text
    # how well the live queries and the query encoder were batched: the search above ran both
    counted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("simstream_serve_batch")}
    for work in ("rank", "encode"):
        assert counted[f'simstream_serve_batches_total{{work="{work}"}}'] >= 1, work
        assert counted[f'simstream_serve_batch_items_total{{work="{work}"}}'] >= 1, work
        assert counted[f'simstream_serve_batch_seconds_total{{work="{work}"}}'] > 0, work
        assert f'simstream_serve_batch_gather_seconds_total{{work="{work}"}}' in counted
    paths = client.get("/openapi.json").json()["paths"]
    answers = {("get", "/v1/search"): "SearchBody", ("get", "/v1/products/{product_id}"): "ProductBody",
               ("get", "/v1/products/{product_id}/neighbors"): "RankingBody", ("get", "/v1/info"): "InfoBody",
               ("post", "/v1/similar"): "ExampleBody", ("post", "/v1/recommend"): "ExampleBody",
               ("post", "/v1/batch"): "BatchBody"}
    for (method, path), model in answers.items():  # typed answers in /docs, errors beside them
        documented = paths[path][method]["responses"]
        assert documented["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + model), path
        assert documented["404"]["content"]["application/problem+json"]["schema"]["$ref"].endswith("/ProblemBody")
    # the query parameters the routes read themselves are listed too (the path's own once)
    filters = {"k", "brand", "category", "price_min", "price_max"}
    for path, names in (("/v1/products/{product_id}/neighbors", filters | {"product_id"}), ("/v1/search", filters | {"q"})):
        listed = [p["name"] for p in paths[path]["get"]["parameters"]]
        assert set(listed) == names and len(listed) == len(names), (path, listed)
    assert "simstream explorer" in client.get("/").text


def test_info_says_what_is_served(client: TestClient, catalog) -> None:
    import time

    deadline = time.monotonic() + 30
    while not (got := client.get("/v1/info").json())["published_lists"]["preloaded"]:
        assert time.monotonic() < deadline, "the published lists were never read at start"
        time.sleep(0.1)
    assert got["model"] == catalog.encoder.model and got["top_k"] == TOP_K
    assert got["fields"] and abs(sum(got["fields"].values()) - 1.0) < 1e-3  # the stored weights
    assert got["index"] == "copy" and got["products"] == len(catalog.docs) - 1  # one deleted
    # how many are held moves: a sync drops the lists written in its clock-skew window, and the
    # next request reads them again (tests/serve/test_published.py pins that down)
    assert 0 <= got["published_lists"]["held"] <= len(catalog.docs)
