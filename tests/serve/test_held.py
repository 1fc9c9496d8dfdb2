"""What the event loop answers itself (``Catalog.held_*``) is what a request thread would answer,
and anything that could wait (a Milvus read, a pass, a list not held) is left to the thread."""

from __future__ import annotations

from fastapi.testclient import TestClient

from simstream.serve.catalog import Catalog as ServeCatalog
from simstream.serve.filters import Filters
from simstream.serve.ranking import MilvusLive
from simstream.serve.requests import NeighborsQuery
from tests.serve.conftest import DELETED, Catalog


def test_held_answers_equal_the_threads_and_leave_the_rest(client: TestClient, catalog: Catalog) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    assert services.copy is not None, "the sample catalog fits: serve holds its copy"
    services.preload()
    served: ServeCatalog = services.catalog
    none = Filters.from_query([], set())[0]
    ids = [pid for pid in catalog.docs if pid != DELETED]
    for pid in ids:
        assert served.held_product(pid) == served.product(pid)
        for k in (None, 1, 3):
            q = NeighborsQuery(product_id=pid, **({"k": k} if k else {}))
            held = served.held_neighbors(q, none)
            assert held is not None and held == served.neighbors(q, none)
            assert held["source"] == "published"
    pid = ids[0]
    # what may wait, or needs the seed or a ranking, is the thread's
    assert served.held_product(DELETED) is None and served.held_product("no-such-product") is None
    assert served.held_neighbors(NeighborsQuery(product_id=DELETED), none) is None
    assert served.held_neighbors(NeighborsQuery(product_id=pid, weights={"text": 2.0}), none) is None
    assert served.held_neighbors(NeighborsQuery(product_id=pid, min_score=0.1), none) is None
    assert served.held_neighbors(NeighborsQuery(product_id=pid, per_brand=1), none) is None
    assert served.held_neighbors(NeighborsQuery(product_id=pid, k=50), none) is None  # deeper than TOP_K
    brand = Filters.from_query([("brand", "Sony")], set())[0]
    assert served.held_neighbors(NeighborsQuery(product_id=pid), brand) is None
    # without the copy every read is a Milvus call: nothing is held
    milvus = ServeCatalog(served.milvus, MilvusLive(served.milvus), served.encoder, max_k=served.max_k,
                          top_k=served.top_k, lists=served.lists)
    assert milvus.held_product(pid) is None and milvus.held_neighbors(NeighborsQuery(product_id=pid), none) is None
