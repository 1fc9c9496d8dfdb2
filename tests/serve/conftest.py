"""The serving tests' catalog: the bundled sample catalog through the real encoders (the shipped
fusion config, as the demo runs it) into a real milvus-lite file, with exact lists recorded the
way the refresh step records them; one product then deleted (its tombstone marker recorded)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Match

from simstream.index.neighbours import ListBuilder
from simstream.index.rows import StoredList, product_row
from simstream.index.store import VectorStore
from simstream.records import CONTRACT_FIELDS, ProductEvent
from simstream.serve.app import create_app
from simstream.serve.queries import QueryEncoder
from simstream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "harness" / "sample"
DELETED = "hp-bose-qc45"
TOP_K = 5


@dataclass
class Catalog:
    settings: Settings
    encoder: QueryEncoder
    store: VectorStore
    docs: dict[str, dict]


def sample_docs() -> list[dict]:
    return [orjson.loads(line) for line in (SAMPLE / "catalog.jsonl").read_bytes().splitlines() if line.strip()]


def write_catalog(store: VectorStore, encoder: QueryEncoder, docs: list[dict], *, depth: int = 10) -> None:
    """Encode, write, and record exact lists (index.neighbours.ListBuilder, as the refresh step does)."""
    now = int(time.time() * 1000)
    events = [ProductEvent(**{k: v for k, v in {**d, "version": now, "event_time": now}.items() if k in CONTRACT_FIELDS})
              for d in docs]
    batch = encoder.encoder.encode(events)
    assert not batch.failures, batch.failures
    store.upsert_products([product_row(p, v, h, encoder.model, now)
                           for p, v, h in zip(batch.products, batch.vectors, batch.hashes)])
    builder = ListBuilder(store, k=TOP_K, layout=encoder.layout, model=encoder.model, depth=depth,
                          match=encoder.match, weights=encoder.weights)
    products = store.get_products([e.product_id for e in events])
    built = builder.build_explained(products, {e.product_id: e.event_time for e in events}, as_of=now)
    store.upsert_lists([builder.stored_form(b) for b in built.values()])


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    """On a milvus-lite file; on a real Milvus server when scripts/with-milvus-server.sh runs the
    tests (SIMSTREAM_TEST_MILVUS_URI): then every serve test runs against the server."""
    data = tmp_path_factory.mktemp("serve")
    server = os.environ.get("SIMSTREAM_TEST_MILVUS_URI")
    extra = {"milvus_uri": server, "collection": f"serve_{uuid.uuid4().hex[:8]}"} if server else {}
    settings = Settings(data_dir=data, image_root=SAMPLE / "images", top_k=TOP_K, **extra)
    encoder = QueryEncoder(settings)
    store = VectorStore.connect(settings.resolved_milvus_uri, settings.collection, encoder.dim, flush_every_rows=0)
    docs = sample_docs()
    write_catalog(store, encoder, docs)
    # a delete, as the worker applies it: the product goes, its list becomes a tombstone marker
    store.delete_products([DELETED])
    store.upsert_lists([StoredList(DELETED, [], float("inf"), b"")])
    # the other lists no longer hold it: record them again without it
    rest = [d for d in docs if d["product_id"] != DELETED]
    builder = ListBuilder(store, k=TOP_K, layout=encoder.layout, model=encoder.model, depth=10,
                          match=encoder.match, weights=encoder.weights)
    products = store.get_products([d["product_id"] for d in rest])
    built = builder.build_explained(products, {}, as_of=int(time.time() * 1000))
    store.upsert_lists([builder.stored_form(b) for b in built.values()])
    yield Catalog(settings, encoder, store, {d["product_id"]: d for d in docs})
    if server:
        store.milvus.drop()
    store.close()


def documented(app: FastAPI) -> Callable[[httpx.Response], None]:
    """An httpx response hook: every 200 a documented route answers must validate against the
    model /docs shows for it (serve/responses.py; unknown fields refused), so the document holds."""

    def check(response: httpx.Response) -> None:
        if response.status_code != 200:
            return
        scope = {"type": "http", "path": response.request.url.path, "method": response.request.method}
        for route in app.routes:
            if isinstance(route, APIRoute) and route.matches(scope)[0] == Match.FULL:
                model = route.responses.get(200, {}).get("model")
                if model is not None:
                    response.read()
                    model.model_validate_json(response.content)
                return

    return check


@pytest.fixture(scope="session")
def client(catalog: Catalog) -> Iterator[TestClient]:
    app = create_app(catalog.settings, milvus=catalog.store.milvus, encoder=catalog.encoder)
    with TestClient(app) as c:
        c.event_hooks = {"request": [], "response": [documented(app)]}
        yield c
