"""serve follows the live generation: after a switch (the control record's ``live``) it opens the new
generation's collections and query encoder and swaps them in, without a restart."""

from __future__ import annotations

import numpy as np

import orjson

from simstream.streams.contracts import parse_event
from simstream.generations import ControlRecord, Generation, Migration, model_settings
from simstream.encoders.fusion import ProductEncoder
from simstream.index.control import ControlStore
from simstream.index.milvus import MilvusStore
from simstream.index.rows import product_row
from simstream.serve.app import Services
from simstream.settings import Settings


def make_event(pid: str):
    return parse_event(pid.encode(), orjson.dumps({"product_id": pid, "op": "upsert", "version": 1, "title": pid}))


def test_serve_swaps_in_the_new_live_generation(tmp_path) -> None:
    base = Settings(data_dir=tmp_path, milvus_uri=str(tmp_path / "m.db"), image_enabled=False)
    encoder = ProductEncoder(base)
    store = MilvusStore.connect(base.resolved_milvus_uri, "simstream", encoder.dim, flush_every_rows=0)
    vector = np.zeros(encoder.dim, np.float32)
    vector[0] = 1.0
    store.upsert_products([product_row(make_event("old-one"), vector, {}, encoder.model, 1)])
    store.close()  # serve opens the file itself (one milvus-lite server per file and process)
    services = Services(base, None, None)
    try:
        services.open()
        assert services.generation == "" and services.milvus.products == "simstream_products"
        # serve opened the file itself: no other process can write it, so nothing is polled in
        # the background (this test writes through serve's own client to stand in for one)
        assert not services.written_elsewhere
        assert services.follow() is False  # no record: the first generation stays
        m = services.milvus
        shadow = MilvusStore(m.client, m.uri, "simstream__g1", encoder.dim)
        shadow.upsert_products([product_row(make_event("new-one"), vector, {}, encoder.model, 1)])
        g1 = Generation("g1", model_settings(base.model_copy(update={"top_k": 12})), None, encoder.model, {}, 1)
        record = ControlRecord(1, "g1", "", "g1", {"g1": g1}, Migration("", "g1", "done"), 1)
        ControlStore(m.client, "simstream", timeout_s=10).write(record, expect_epoch=None)
        assert services.follow() is True
        assert services.generation == "g1" and services.milvus.products == "simstream__g1_products"
        assert services.settings.top_k == 12
        assert services.current.lists is not None and services.current.lists.preloaded  # warm when swapped in
        assert services.catalog.product("new-one")["product_id"] == "new-one"
        assert services.follow() is False
    finally:
        services.close()
