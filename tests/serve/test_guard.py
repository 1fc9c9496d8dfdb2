"""Exposing the query API: API keys, the body cap (before parsing), rate limits, CORS, request
ids, deadlines and RFC 9457 problem details. Real app, real milvus-lite; a stand-in encoder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient

from simstream.index.milvus import MilvusStore
from simstream.serve.app import create_app, request_id_ok
from simstream.settings import Settings
from tests.serve.test_stores import StandIn, rows

KEY_A, KEY_B = "a-secret-key-1234", "b-secret-key-5678"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MilvusStore]:
    s = MilvusStore.connect(str(tmp_path / "g.db"), "g", 4, flush_every_rows=0)
    s.upsert_products(rows(6))
    yield s
    s.close()


def app_client(tmp_path: Path, store: MilvusStore, encoder: object = None, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path, **settings), milvus=store,  # type: ignore[arg-type]
                                 encoder=encoder or StandIn()))  # type: ignore[arg-type]


def is_problem(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["code"] == code and body["type"] == f"urn:simstream:problem:{code}"
    assert body["title"] and body["detail"] and body["request_id"] == r.headers["x-request-id"]
    return body


def test_api_keys_guard_the_api_but_not_probes_docs_or_the_page(tmp_path: Path, store: MilvusStore) -> None:
    with app_client(tmp_path, store, serve_api_keys=f"shop:{KEY_A},{KEY_B}") as c:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/"):
            assert c.get(path).status_code == 200, path
        body = is_problem(c.get("/v1/products/p1"), 401, "unauthorized")
        assert KEY_A not in body["detail"]
        assert c.get("/v1/products/p1").headers["www-authenticate"] == "Bearer"
        is_problem(c.get("/v1/products/p1", headers={"X-API-Key": KEY_A + "x"}), 401, "unauthorized")
        assert c.get("/v1/products/p1", headers={"X-API-Key": KEY_A}).status_code == 200
        assert c.get("/v1/products/p1", headers={"Authorization": f"Bearer {KEY_B}"}).status_code == 200
        with structlog.testing.capture_logs() as logs:
            c.get("/v1/products/p2", headers={"X-API-Key": KEY_A, "X-Request-ID": "req-0123456789abcdef"})
        line = next(e for e in logs if e.get("event") == "request")
        assert line["key"] == "shop" and line["request_id"] == "req-0123456789abcdef" and line["status"] == 200
        assert line["route"] == "/v1/products/{product_id:path}" and KEY_A not in repr(logs)


def test_the_body_cap_refuses_before_parsing(tmp_path: Path, store: MilvusStore) -> None:
    with app_client(tmp_path, store, serve_max_body_bytes=2048) as c:
        big = {"product": {"title": "x", "image_b64": "A" * 5000}}
        is_problem(c.post("/v1/similar", json=big), 413, "body_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
            yield b'{"product": {"title": "x", "description": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}}'
        is_problem(c.post("/v1/similar", content=chunks(), headers={"content-type": "application/json"}),
                   413, "body_too_large")
        small = c.post("/v1/recommend", json={"positive": ["p1"], "k": 2})
        assert small.status_code == 200, small.text


def test_rate_limits_are_per_key_with_retry_after(tmp_path: Path, store: MilvusStore) -> None:
    with app_client(tmp_path, store, serve_api_keys=f"a:{KEY_A},b:{KEY_B}", serve_rate_limit="3/minute") as c:
        for _ in range(3):
            assert c.get("/v1/products/p1", headers={"X-API-Key": KEY_A}).status_code == 200
        r = c.get("/v1/products/p1", headers={"X-API-Key": KEY_A})
        is_problem(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert c.get("/v1/products/p1", headers={"X-API-Key": KEY_B}).status_code == 200  # another key
        assert c.get("/healthz").status_code == 200  # probes are never limited


def test_cors_request_ids_and_problem_details(tmp_path: Path, store: MilvusStore) -> None:
    with app_client(tmp_path, store, serve_cors_origins=["https://shop.example"]) as c:
        pre = c.options("/v1/products/p1", headers={"Origin": "https://shop.example",
                                                    "Access-Control-Request-Method": "GET"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://shop.example"
        other = c.get("/v1/products/p1", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        r = c.get("/v1/products/p1", headers={"X-Request-ID": "abcdef0123456789"})
        assert r.headers["x-request-id"] == "abcdef0123456789"
        made = [c.get("/v1/products/p1").headers["x-request-id"] for _ in range(2)]  # made when not given
        assert made[0] != made[1] and all(len(m) >= 16 and request_id_ok(m) for m in made)
        is_problem(c.get("/v1/products/nope"), 404, "not_found")
        is_problem(c.get("/v1/products/p1/neighbors", params={"k": "zero"}), 400, "invalid_query")
        is_problem(c.post("/v1/similar", json={"product": {"title": "x"}, "expr": "1"}), 422, "invalid_request")
        is_problem(c.get("/no/such/route"), 404, "not_found")
        is_problem(c.post("/v1/products/p1"), 405, "method_not_allowed")
        docs = c.get("/openapi.json").json()
        for path in ("/v1/search", "/v1/similar", "/v1/recommend", "/v1/batch"):
            for method in docs["paths"][path].values():
                assert {"400", "401", "404", "413", "429", "503"} <= set(method["responses"]), path


class Slow(StandIn):
    def text(self, query: str):
        time.sleep(1.0)
        return super().text(query)


def test_a_request_past_its_deadline_is_answered_504(tmp_path: Path, store: MilvusStore) -> None:
    """The 504 goes out at the deadline (timed at the ASGI level: a test client returns only when
    the app is done, and the slow thread cannot be stopped)."""
    client = app_client(tmp_path, store, encoder=Slow(), serve_deadline_s=0.2)
    with client as c:
        sent: list[tuple[float, dict]] = []

        async def call() -> None:
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": "/v1/search", "raw_path": b"/v1/search", "query_string": b"q=x",
                     "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
                     "root_path": ""}

            async def receive() -> dict:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict) -> None:
                sent.append((time.perf_counter(), message))

            await c.app(scope, receive, send)

        t0 = time.perf_counter()
        c.portal.call(call)
        start = next((t, m) for t, m in sent if m["type"] == "http.response.start")
        assert start[1]["status"] == 504 and start[0] - t0 < 0.8
        assert c.get("/v1/products/p1").status_code == 200
