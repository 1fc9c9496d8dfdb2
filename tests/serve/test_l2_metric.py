"""serve under the ``l2`` metric (simstream.metric): the sample catalog written by a model that ranks
by Euclidean distance; published and live answers equal the l2 oracle's, from the copy and from Milvus."""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from simstream.index.exact import rank_key
from simstream.index.store import VectorStore
from simstream.metric import Metric
from simstream.serve.app import create_app
from simstream.serve.queries import QueryEncoder
from simstream.settings import Settings

from tests.serve.conftest import SAMPLE, TOP_K, Catalog, sample_docs, write_catalog

L2 = Metric("l2")
SEED = "hp-sony-xm5-blk"


@pytest.fixture(scope="module")
def l2_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    data = tmp_path_factory.mktemp("serve-l2")
    server = os.environ.get("SIMSTREAM_TEST_MILVUS_URI")
    extra = {"milvus_uri": server, "collection": f"l2_{uuid.uuid4().hex[:8]}"} if server else {}
    settings = Settings(data_dir=data, image_root=SAMPLE / "images", top_k=TOP_K, metric="l2", **extra)
    encoder = QueryEncoder(settings)
    assert encoder.metric == L2 and encoder.match is None  # the decision is fitted for inner product
    store = VectorStore.connect(settings.resolved_milvus_uri, settings.collection, encoder.dim, flush_every_rows=0,
                                metric=L2)
    docs = sample_docs()
    write_catalog(store, encoder, docs)
    yield Catalog(settings, encoder, store, {d["product_id"]: d for d in docs})
    if server:
        store.milvus.drop()
    store.close()


@pytest.fixture(scope="module", params=["copy", "milvus"])
def api(request: pytest.FixtureRequest, l2_catalog: Catalog) -> Iterator[TestClient]:
    settings = l2_catalog.settings.model_copy(update={"serve_copy": "on" if request.param == "copy" else "off"})
    with TestClient(create_app(settings, milvus=l2_catalog.store.milvus, encoder=l2_catalog.encoder)) as c:
        yield c


def oracle(catalog: Catalog, query: np.ndarray, keep=lambda pid: True) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    vectors = {pid: p.vector for pid, p in catalog.store.get_products(list(catalog.docs)).items()}
    scored = sorted(((L2.pair(v, query), pid) for pid, v in vectors.items() if keep(pid)), key=lambda t: rank_key(*t))
    return [(pid, s) for s, pid in scored]


def test_answers_rank_by_distance(api: TestClient, l2_catalog: Catalog) -> None:
    me = l2_catalog.store.get_products([SEED])[SEED].vector
    want = oracle(l2_catalog, me, lambda pid: pid != SEED)
    published = api.get(f"/v1/products/{SEED}/neighbors").json()
    assert [n["product_id"] for n in published["neighbors"]] == [pid for pid, _ in want[:TOP_K]]
    assert all(n["score"] <= 0 and "match_probability" not in n for n in published["neighbors"])
    # live (an exclusion): the copy's scan or Milvus' L2 search, rescored exactly
    gone = want[0][0]
    live = api.get(f"/v1/products/{SEED}/neighbors", params={"k": "8", "exclude": gone}).json()
    expected = [(pid, s) for pid, s in want if pid != gone][:8]
    assert [n["product_id"] for n in live["neighbors"]] == [pid for pid, _ in expected]
    for n, (_, s) in zip(live["neighbors"], expected):
        assert abs(n["score"] - s) < 1e-5
        assert abs(sum(n["fields"].values()) - n["score"]) < 1e-4  # the fields' shares of the distance
    assert api.get("/v1/search", params={"q": "noise cancelling headphones"}).status_code == 200


def test_query_time_weights_are_refused_under_l2(api: TestClient) -> None:
    r = api.get(f"/v1/products/{SEED}/neighbors", params={"weights": "text:2"})
    assert r.status_code == 400 and "l2" in r.json()["detail"], r.text
