"""The real path: Tansu broker on loopback, `simstream worker` (Faust) in a subprocess, a milvus-lite
file, real pretrained weights; events in through confluent-kafka, assertions on what a consumer
reads from the neighbour and dead-letter topics. No fakes here."""

from __future__ import annotations

import os
import time
import uuid
from typing import Iterator

import orjson
import pytest
from confluent_kafka import Consumer

from conftest import SAMPLE_IMAGES
from simstream.harness.demo import sample_catalog
from simstream.harness.embedded import EmbeddedBroker, WorkerProcess
from simstream.streams.kafka_config import client_config
from simstream.streams.neighbour_reader import CatalogReader, NeighbourReader
from simstream.streams.producer import EventProducer
from simstream.settings import Settings

pytestmark = pytest.mark.integration
K = 4


@pytest.fixture(scope="module")
def env(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    app = f"it_{uuid.uuid4().hex[:6]}"
    real_milvus = os.environ.get("SIMSTREAM_TEST_MILVUS_URI")  # set by scripts/with-milvus-server.sh
    milvus = {"SIMSTREAM_MILVUS_URI": real_milvus, "SIMSTREAM_COLLECTION": app} if real_milvus else {}
    return {**milvus,
        "SIMSTREAM_KAFKA": broker.url, "SIMSTREAM_DATA_DIR": str(tmp_path_factory.mktemp("worker")),
        "SIMSTREAM_IMAGE_ROOT": str(SAMPLE_IMAGES), "SIMSTREAM_SESSION_TIMEOUT_S": "6",
        "SIMSTREAM_TOPIC_PARTITIONS": "2", "SIMSTREAM_TOP_K": str(K), "SIMSTREAM_APP_ID": app,
        "SIMSTREAM_EVENTS_TOPIC": f"{app}.products", "SIMSTREAM_NEIGHBORS_TOPIC": f"{app}.neighbors",
        "SIMSTREAM_DLQ_TOPIC": f"{app}.dlq", "SIMSTREAM_REFRESH_TOPIC": f"{app}.refresh",
        "SIMSTREAM_CHANGELOG_TOPIC": f"{app}.catalog",
        "SIMSTREAM_BATCH_WITHIN_S": "0.3", "SIMSTREAM_LOG_FORMAT": "json",
    }


@pytest.fixture(scope="module")
def settings_(env: dict[str, str]) -> Settings:
    return Settings(kafka=env["SIMSTREAM_KAFKA"], events_topic=env["SIMSTREAM_EVENTS_TOPIC"],
                    neighbors_topic=env["SIMSTREAM_NEIGHBORS_TOPIC"], dlq_topic=env["SIMSTREAM_DLQ_TOPIC"],
                    changelog_topic=env["SIMSTREAM_CHANGELOG_TOPIC"])


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[WorkerProcess]:
    w = WorkerProcess(env).start()
    try:
        w.wait_ready(timeout_s=240)
        yield w
    finally:
        code = w.stop()
        print(f"worker exit code {code}; log tail:\n{w.tail(15)}")


@pytest.fixture(scope="module")
def reader(settings_: Settings, worker: WorkerProcess) -> Iterator[NeighbourReader]:
    with NeighbourReader(settings_) as r:
        yield r


@pytest.fixture(scope="module")
def catalog(settings_: Settings, worker: WorkerProcess, reader: NeighbourReader) -> dict[str, dict]:
    """The sample catalog (text + drawn images) published once; tests below build on it in order."""
    docs, _ = sample_catalog()
    with EventProducer(settings_) as producer:
        for d in docs:
            producer.send({**d, "version": 10, "event_time": int(time.time() * 1000)})
    ids = [str(d["product_id"]) for d in docs]
    reader.wait_until(lambda got: all(got.get(i) is not None for i in ids), timeout_s=240, check=worker.check)
    return {str(d["product_id"]): d for d in docs}


def settle(reader: NeighbourReader, worker: WorkerProcess, done, timeout_s: float = 120):
    return reader.wait_until(done, timeout_s=timeout_s, quiet_s=3, check=worker.check)


def test_creates_publish_a_full_list_per_product(catalog, reader):
    for pid in catalog:
        nl = reader.latest[pid]
        assert nl is not None and nl.product_id == pid and nl.version == 10 and len(nl.neighbours) == K
        scores = [n.score for n in nl.neighbours]
        assert scores == sorted(scores, reverse=True) and pid not in [n.product_id for n in nl.neighbours]
        for n in nl.neighbours:
            assert sum(n.fields.values()) == pytest.approx(n.score, abs=1e-4)
        assert "image" in nl.neighbours[0].fields and "text" in nl.neighbours[0].fields
    # real embeddings: near-duplicates find each other first
    assert reader.latest["hp-sony-xm5-blk"].neighbours[0].product_id == "hp-sony-xm5-slv"
    assert reader.latest["tee-basic-navy-m"].neighbours[0].product_id == "tee-basic-navy-l"


def test_update_moves_a_product_to_another_neighbourhood(catalog, reader, worker, settings_):
    mug = dict(catalog["mug-red-350"], version=11, event_time=int(time.time() * 1000),
               title="Sony WH-1000XM5 wireless noise cancelling headphones, red", brand="Sony",
               category="Electronics > Audio > Headphones", price=399.0, image_url="file:hp-sony-xm5-blk.png")
    with EventProducer(settings_) as producer:
        producer.send(mug)
    got = settle(reader, worker, lambda g: g["mug-red-350"].version == 11
                 and "mug-red-350" in [n.product_id for n in g["hp-sony-xm5-blk"].neighbours])
    assert got["mug-red-350"].neighbours[0].product_id.startswith("hp-sony")
    # It left the lists of the neighbourhood it came from, except its old family's own (a mug's
    # top-4 among 20 products may still reach it); it may enter any Electronics list.
    holders = [p for p in catalog if "mug-red-350" in [n.product_id for n in got[p].neighbours]]
    assert all(p.startswith("mug-") or str(catalog[p]["category"]).startswith("Electronics") for p in holders), holders


def test_delete_publishes_a_tombstone_and_leaves_every_list(catalog, reader, worker, settings_):
    with EventProducer(settings_) as producer:
        producer.send({"product_id": "hp-jbl-t510", "op": "delete", "version": 11, "event_time": int(time.time() * 1000)})
    got = settle(reader, worker, lambda g: "hp-jbl-t510" in g and g["hp-jbl-t510"] is None)
    for pid, nl in got.items():
        if nl is not None:
            assert "hp-jbl-t510" not in [n.product_id for n in nl.neighbours], pid
            assert len(nl.neighbours) == K


def test_duplicate_and_stale_events_publish_nothing(catalog, reader, worker, settings_):
    settle(reader, worker, lambda g: True)
    before = reader.messages
    now = int(time.time() * 1000)
    with EventProducer(settings_) as producer:
        producer.send({**catalog["laptop-air-13"], "version": 10, "event_time": now})  # duplicate
        producer.send({**catalog["laptop-pro-15"], "version": 3, "title": "old title", "event_time": now})  # stale
        producer.send({"product_id": "hp-jbl-t510", "op": "upsert", "version": 9, "title": "JBL", "event_time": now})
        # a marker event that must be processed *after* the above, on the same partition as laptop-air-13
        producer.send({**catalog["laptop-air-13"], "version": 12, "price": 1099.0, "event_time": now})
    got = settle(reader, worker, lambda g: g["laptop-air-13"].version == 12)
    assert got["laptop-pro-15"].version == 10 and "hp-jbl-t510" in got and got["hp-jbl-t510"] is None
    # only the price change went out: laptop-air-13's own list (+ lists whose scores for it moved)
    changed_keys = reader.messages - before
    assert 1 <= changed_keys <= 1 + 2 * K


def test_malformed_messages_go_to_the_dlq_and_the_worker_keeps_going(catalog, reader, worker, settings_):
    now = int(time.time() * 1000)
    with EventProducer(settings_) as producer:
        producer.send(b"{not json", key="broken-1")
        producer.send({"product_id": "no-title", "op": "upsert", "version": 1, "event_time": now})
        producer.send({"product_id": "bad-image", "op": "upsert", "version": 1, "title": "x",
                       "image_url": "file:../../etc/passwd", "event_time": now})
        producer.send({**catalog["bottle-steel-1l"], "version": 12, "price": 29.0, "event_time": now})
    settle(reader, worker, lambda g: g["bottle-steel-1l"].version == 12)
    assert worker.running
    consumer = Consumer(client_config(settings_, **{"group.id": f"dlq-{uuid.uuid4().hex[:6]}",
                                                    "auto.offset.reset": "earliest"}))
    consumer.subscribe([settings_.dlq_topic])
    dead: dict[bytes, dict[str, bytes]] = {}
    deadline = time.monotonic() + 60
    while len(dead) < 3 and time.monotonic() < deadline:
        for m in consumer.consume(10, timeout=1.0):
            if not m.error():
                dead[m.key()] = {k: v for k, v in (m.headers() or [])} | {"value": m.value()}
    consumer.close()
    assert set(dead) == {b"broken-1", b"no-title", b"bad-image"}
    assert dead[b"broken-1"]["value"] == b"{not json"  # the original bytes, untouched
    assert dead[b"broken-1"]["x-simstream-error-kind"] == b"BadEvent"
    assert b"title" in dead[b"no-title"]["x-simstream-error"]
    assert dead[b"bad-image"]["x-simstream-error-kind"] == b"EncodeError"
    assert dead[b"bad-image"]["x-simstream-source-offset"].isdigit()
    assert "no-title" not in reader.latest and "bad-image" not in reader.latest


def test_the_catalog_changelog_holds_each_products_latest_accepted_state(catalog, reader, worker, settings_):
    """After the tests above: the source fields of every accepted event, the highest version per
    product, a delete as its delete record; nothing stale, duplicated into a lower version,
    malformed or refused by the encoders."""
    settle(reader, worker, lambda g: g["bottle-steel-1l"].version == 12)
    with CatalogReader(settings_) as changelog:
        got = changelog.wait_until(lambda g: g.get("bottle-steel-1l") is not None  # type: ignore[union-attr, arg-type]
                                   and g["bottle-steel-1l"].version == 12, timeout_s=60, quiet_s=2)
        assert changelog.unreadable == 0
    assert set(got) == set(catalog)
    mug, jbl, air, pro = (got[p] for p in ("mug-red-350", "hp-jbl-t510", "laptop-air-13", "laptop-pro-15"))
    assert (mug.version, mug.brand, mug.image_url) == (11, "Sony", "file:hp-sony-xm5-blk.png")
    assert (jbl.op, jbl.version) == ("delete", 11)  # the later upsert at version 9 was stale
    assert (air.version, air.price) == (12, 1099.0) and (pro.version, pro.title) == (10, catalog["laptop-pro-15"]["title"])
    assert got["tee-basic-navy-m"].description == catalog["tee-basic-navy-m"].get("description")


def test_metrics_and_health_endpoints(worker, catalog):
    import urllib.request

    base = f"http://127.0.0.1:{worker.web_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
        assert orjson.loads(r.read())["status"] == "ok"
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'simstream_events_total{outcome="applied"}' in text and "simstream_freshness_seconds_bucket" in text
