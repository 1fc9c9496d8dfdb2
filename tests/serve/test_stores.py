"""The API over collections the sample catalog does not cover: one made before the ``display``
field existed (the worker and serve must still read it), and stored image URLs that try to leave
the image root. Real milvus-lite; the query encoder is a small stand-in (no text search here)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pymilvus import DataType, MilvusClient

from simstream.index.milvus import MilvusStore
from simstream.index.rows import product_row
from simstream.records import ProductEvent
from simstream.serve.app import create_app
from simstream.settings import Settings

PNG = (Path(__file__).resolve().parents[2] / "harness" / "sample" / "images" / "mug-red-350.png").read_bytes()


class StandIn:
    """What the app needs of a QueryEncoder, for a 4-dimensional store."""

    dim = 4
    layout = {"text": slice(0, 2), "price": slice(2, 4)}
    model = "stand-in"

    def text(self, query: str) -> np.ndarray:
        return np.array([1, 0, 0, 0], np.float32)


def old_schema(path: str) -> None:
    """The products collection as simstream created it before issue 14 (no display field)."""
    c = MilvusClient(uri=path)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=256)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=4)
    s.add_field("version", DataType.INT64)
    s.add_field("brand", DataType.VARCHAR, max_length=256)
    s.add_field("category", DataType.VARCHAR, max_length=1000)
    s.add_field("price", DataType.DOUBLE)
    s.add_field("hashes", DataType.JSON)
    s.add_field("model", DataType.VARCHAR, max_length=256)
    s.add_field("updated_at", DataType.INT64)
    s.add_field("event_time", DataType.INT64)
    idx = c.prepare_index_params()
    idx.add_index("vector", index_type="FLAT", metric_type="IP")
    c.create_collection("old_products", schema=s, index_params=idx, consistency_level="Strong")
    c.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(path)


def rows(n: int, **fields: object) -> list[dict]:
    rng = np.random.default_rng(3)
    return [product_row(ProductEvent(f"p{i}", "upsert", 1, title=f"title {i}", brand="Acme", price=float(i),
                                     **fields),  # type: ignore[arg-type]
                        rng.normal(size=4).astype(np.float32), {}, "stand-in", 1) for i in range(n)]


def test_a_collection_without_display_fields_still_works(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    old_schema(path)
    store = MilvusStore.connect(path, "old", 4, flush_every_rows=0)
    try:
        assert not store.products_display
        store.upsert_products(rows(5))  # the worker's rows carry display: dropped for this collection
        store.insert_products([dict(rows(6)[5])])
        assert set(store.read_products(["p0", "p5"])) == {"p0", "p5"}
        app = create_app(Settings(data_dir=tmp_path), milvus=store, encoder=StandIn())  # type: ignore[arg-type]
        with TestClient(app) as client:
            got = client.get("/v1/products/p1").json()
            assert got["brand"] == "Acme" and got["price"] == 1.0 and got["title"] is None
            assert client.get("/v1/products/p1/neighbors?price_max=3").status_code == 200
            # serve's copy reads brand and category from their columns; attributes need display
            assert client.get("/v1/products/p1/neighbors?brand=acme").status_code == 200
            r = client.get("/v1/products/p1/neighbors?attr.colour=red")
            assert r.status_code == 409 and "display" in r.json()["detail"]
        # live queries from Milvus (no copy): brand needs the brand_key column, which it lacks
        app = create_app(Settings(data_dir=tmp_path, serve_copy="off"), milvus=store, encoder=StandIn())  # type: ignore[arg-type]
        with TestClient(app) as client:
            assert client.get("/v1/products/p1/neighbors?price_max=3").status_code == 200
            r = client.get("/v1/products/p1/neighbors?brand=acme")
            assert r.status_code == 409 and "display" in r.json()["detail"]
    finally:
        store.close()


@pytest.mark.parametrize("url", ["file:../outside.png", "file:///etc/passwd", "file:%2e%2e/outside.png",
                                 "file:sub/../../outside.png", "file:link.png", "file:notes.txt"])
def test_the_image_route_stays_inside_the_image_root(tmp_path: Path, url: str) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "outside.png").write_bytes(PNG)
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "notes.txt").write_text("not an image")
    (root / "ok.png").write_bytes(PNG)
    store = MilvusStore.connect(str(tmp_path / "img.db"), "img", 4, flush_every_rows=0)
    try:
        store.upsert_products(rows(1, image_url=url) + [dict(rows(2, image_url="file:ok.png")[1])])
        app = create_app(Settings(data_dir=tmp_path, image_root=root), milvus=store, encoder=StandIn())  # type: ignore[arg-type]
        with TestClient(app) as client:
            r = client.get("/v1/products/p0/image")
            assert r.status_code == 404 and r.content != PNG
            ok = client.get("/v1/products/p1/image")
            assert ok.status_code == 200 and ok.content == PNG
    finally:
        store.close()


def test_the_copy_follows_writes_and_deletes_made_after_it_was_built(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's copy is built at start and kept current by polling Milvus: rows written since,
    delete markers written since, and (by the count check) a row deleted without a marker."""
    from simstream.serve import copy as copy_module

    monkeypatch.setattr(copy_module, "RECONCILE_EVERY", 1)
    store = MilvusStore.connect(str(tmp_path / "sync.db"), "sync", 4, flush_every_rows=0)
    try:
        store.upsert_products(rows(6))
        settings = Settings(data_dir=tmp_path, serve_sync_s=60)  # synced by hand below
        app = create_app(settings, milvus=store, encoder=StandIn())  # type: ignore[arg-type]
        with TestClient(app) as client:
            services = app.state.services
            assert services.copy is not None and len(services.copy) == 6

            def live() -> list[str]:
                body = client.get("/v1/products/p0/neighbors", params={"price_max": "1000", "k": "20"}).json()
                assert body["index"] == "copy" and body["fallback"] == "no published list yet"
                return sorted(n["product_id"] for n in body["neighbors"])

            assert live() == ["p1", "p2", "p3", "p4", "p5"]
            before = services.copy.synced_at
            now = int(time.time() * 1000)
            store.upsert_products([{**r, "updated_at": now} for r in rows(8)[6:]])  # p6, p7, written now
            store.delete_products(["p2"])
            store.upsert_tombstones({"p2": 2}, now)
            assert live() == ["p1", "p2", "p3", "p4", "p5"]  # not yet synced
            assert services.sync() == 3
            assert services.copy.synced_at > before
            assert live() == ["p1", "p3", "p4", "p5", "p6", "p7"]
            # a row deleted without a marker: the count check finds it
            store.delete_products(["p3"])
            services.sync()
            assert live() == ["p1", "p4", "p5", "p6", "p7"]
            # a changed row (a new price) is read again: it leaves the price filter's range
            store.upsert_products([{**rows(8)[7], "price": 5000.0, "updated_at": int(time.time() * 1000)}])
            services.sync()
            assert live() == ["p1", "p4", "p5", "p6"]
    finally:
        store.close()


def test_the_copy_syncs_by_itself_when_another_writer_shares_the_store(tmp_path: Path) -> None:
    """Given a store (the demo: the worker writes through it), the copy is polled in the
    background; opened by serve itself on a milvus-lite file, nothing else can write it."""
    store = MilvusStore.connect(str(tmp_path / "bg.db"), "bg", 4, flush_every_rows=0)
    try:
        store.upsert_products(rows(3))
        app = create_app(Settings(data_dir=tmp_path, serve_sync_s=0.05), milvus=store, encoder=StandIn())  # type: ignore[arg-type]
        with TestClient(app) as client:
            assert app.state.services.written_elsewhere
            store.upsert_products([{**r, "updated_at": int(time.time() * 1000)} for r in rows(5)[3:]])
            deadline = time.monotonic() + 20
            while client.get("/v1/products/p4").status_code != 200:
                assert time.monotonic() < deadline, "the background sync never applied the new rows"
                time.sleep(0.05)
    finally:
        store.close()


def test_serve_on_a_fresh_install_says_what_to_do_instead_of_a_traceback(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from simstream.cli import main

    monkeypatch.setenv("SIMSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SIMSTREAM_LOG_FORMAT", "console")
    result = CliRunner().invoke(main, ["serve", "--port", "1"])  # never binds: it stops before
    assert result.exit_code == 1, result.output
    assert "no catalog to serve" in result.output and "simstream_products does not exist" in result.output
    assert "Traceback" not in result.output


def test_simstream_serve_answers_from_a_milvus_lite_file_it_opens_itself(tmp_path: Path, catalog) -> None:
    """The real process: ``simstream serve`` opens the file once (one client for the catalog check
    and the app), answers by id and a live filtered query from its copy, and stops on SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from simstream.harness.embedded import free_port, stop_process
    from simstream.index.exact import rank_key
    from simstream.vector_codec import canonical_rows

    encoder = catalog.encoder
    store = MilvusStore.connect(str(tmp_path / "simstream.db"), "simstream", encoder.dim, flush_every_rows=0)
    try:
        vectors = np.random.default_rng(5).normal(size=(12, encoder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        canonical_rows(vectors, encoder.encoder.segments)
        store.upsert_products([product_row(ProductEvent(f"p{i}", "upsert", 1, title=f"mug {i}",
                                                        brand="Acme" if i % 2 else "Other", price=float(i)),
                                           v, {}, encoder.model, 1) for i, v in enumerate(vectors)])
        store.flush()
    finally:
        store.close()  # released: serve opens the file itself
    port = free_port()
    env = {**os.environ, "SIMSTREAM_DATA_DIR": str(tmp_path), "SIMSTREAM_ENCODER_BACKEND": "torch",
           "SIMSTREAM_LOG_FORMAT": "json", "SIMSTREAM_SERVE_RATE_LIMIT": ""}
    proc = subprocess.Popen([sys.executable, "-m", "simstream", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.3)
        assert httpx.get(f"{base}/v1/products/p3", timeout=10).json()["brand"] == "Acme"
        got = httpx.get(f"{base}/v1/products/p3/neighbors", params={"k": 3, "brand": "acme"}, timeout=30).json()
        ids = [n["product_id"] for n in got["neighbors"]]
        order = sorted(((float(vectors[int(p[1:])] @ vectors[3]), p) for p in ("p1", "p5", "p7", "p9", "p11")),
                       key=lambda t: rank_key(*t))
        assert got["source"] == "live" and ids == [p for _, p in order[:3]]
    finally:
        stop_process(proc, signal.SIGINT, 30)
    assert proc.returncode == 0, proc.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
