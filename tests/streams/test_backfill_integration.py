"""`simstream backfill`: the sample catalog with images and some broken lines loaded from a file
through the real encoders into milvus-lite, lists published to the real broker. Every published
list equals the exact top-K of what Milvus holds, broken lines are dead-lettered with their reason,
and a second run over the same file publishes nothing (nothing differs)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer

from conftest import SAMPLE_IMAGES
from simstream.harness.demo import sample_catalog
from simstream.harness.embedded import EmbeddedBroker
from simstream.index.exact import exact_top_k
from simstream.index.store import VectorStore
from simstream.settings import Settings
from simstream.streams.backfill import backfill_file
from simstream.streams.kafka_config import client_config
from simstream.streams.neighbour_reader import NeighbourReader

pytestmark = pytest.mark.integration
K = 4


def dead_letters(settings: Settings, want: int) -> dict[bytes | None, dict[str, bytes]]:
    consumer = Consumer(client_config(settings, **{"group.id": f"dlq-{uuid.uuid4().hex[:6]}",
                                                   "auto.offset.reset": "earliest"}))
    consumer.subscribe([settings.dlq_topic])
    dead: dict[bytes | None, dict[str, bytes]] = {}
    deadline = time.monotonic() + 60
    while len(dead) < want and time.monotonic() < deadline:
        for m in consumer.consume(10, timeout=1.0):
            if not m.error():
                dead[m.key()] = {k: v for k, v in (m.headers() or [])} | {"value": m.value()}
    consumer.close()
    return dead


def test_backfill_publishes_exact_lists_and_dead_letters_broken_lines(broker: EmbeddedBroker, tmp_path: Path):
    app = f"bf_{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka=broker.url, milvus_uri=str(tmp_path / "milvus.db"), collection=app, top_k=K,
                        image_root=SAMPLE_IMAGES, neighbors_topic=f"{app}.neighbors", dlq_topic=f"{app}.dlq",
                        events_topic=f"{app}.products", data_dir=tmp_path)
    docs, _ = sample_catalog()
    lines = [orjson.dumps({**d, "version": 3}) for d in docs]
    lines += [b"{not json", orjson.dumps({"product_id": "no-title", "op": "upsert", "version": 1}),
              orjson.dumps({"product_id": "bad-image", "title": "mug", "version": 1,
                            "image_url": "http://169.254.169.254/latest/meta-data"}),
              orjson.dumps({**docs[0], "version": 2, "title": "an older version: stale"})]
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(b"\n".join(lines) + b"\n")

    report = backfill_file(settings, catalog, batch_size=7)  # several batches
    assert (report.records, report.applied, report.dead_lettered) == (len(docs) + 4, len(docs), 3)
    assert report.lists == report.published == len(docs)

    with NeighbourReader(settings) as reader:
        got = reader.wait_until(lambda lists: len(lists) >= len(docs), timeout_s=60)
    store = VectorStore.connect(settings.resolved_milvus_uri, app, _dim(settings), flush_every_rows=0)
    try:
        stored = {p.product_id: p.vector for chunk in store.milvus.iter_products(500, with_vectors=True) for p in chunk}
    finally:
        store.close()
    ids = sorted(stored)
    assert ids == sorted(str(d["product_id"]) for d in docs)
    oracle = exact_top_k(np.stack([stored[i] for i in ids]), ids, K)
    for pid, want in zip(ids, oracle):
        nl = got[pid]
        assert nl is not None and nl.version == 3
        assert [n.product_id for n in nl.neighbours] == [nid for nid, _ in want]
        assert all(abs(n.score - s) <= 1e-5 for n, (_, s) in zip(nl.neighbours, want))
        assert all(abs(sum(n.fields.values()) - n.score) <= 1e-4 for n in nl.neighbours)  # "why similar" adds up

    dead = dead_letters(settings, 3)
    assert set(dead) == {None, b"no-title", b"bad-image"}
    assert dead[None]["value"] == b"{not json" and dead[None]["x-simstream-error-kind"] == b"BadEvent"
    assert dead[b"bad-image"]["x-simstream-stage"] == b"encode"
    assert dead[b"no-title"]["x-simstream-source-topic"] == b"backfill:catalog.jsonl"

    again = backfill_file(settings, catalog, batch_size=64)
    assert (again.applied, again.published) == (0, 0)  # same versions: stale or duplicate, no list differs


def _dim(settings: Settings) -> int:
    from simstream.encoders.fusion import ProductEncoder

    return ProductEncoder(settings).dim
