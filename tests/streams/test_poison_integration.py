"""No input stops the worker: thousands of malformed and hostile events through the real worker.

A real `simstream worker` (images on, the SSRF guard at its default) on the Tansu broker and a
milvus-lite file. Generated poison records (harness/poison.py) interleaved with good products;
a loopback HTTP server stands where the hostile image URLs point. Afterwards: the worker never
exited, every record the contract refuses is in the dead-letter topic with a reason, every other
record is applied or dead-lettered, every good product has its list, and the loopback server saw
no request. SIMSTREAM_FUZZ_EVENTS sets the number of poison records (CI: 2,000; the recorded
campaign in docs/reliability.md: 10,000)."""

from __future__ import annotations

import http.server
import os
import random
import threading
import time
import uuid
from typing import Iterator

import pytest
from confluent_kafka import Consumer

from conftest import SAMPLE_IMAGES
from simstream.errors import BadEvent
from simstream.harness.embedded import EmbeddedBroker, WorkerProcess
from simstream.harness.poison import poison_events, valid_event
from simstream.settings import Settings
from simstream.streams.contracts import parse_event
from simstream.streams.kafka_config import client_config
from simstream.streams.neighbour_reader import NeighbourReader
from simstream.streams.producer import EventProducer

pytestmark = pytest.mark.integration
POISON = int(os.environ.get("SIMSTREAM_FUZZ_EVENTS", "2000"))
GOOD = 120


class Trap(http.server.BaseHTTPRequestHandler):
    """Counts every request that reaches it: the SSRF guard must let none through."""

    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def trap() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def dead_letters(settings: Settings, want: set[bytes], timeout_s: float) -> dict[bytes, dict[str, bytes]]:
    consumer = Consumer(client_config(settings, **{"group.id": f"dlq-{uuid.uuid4().hex[:6]}",
                                                   "auto.offset.reset": "earliest"}))
    consumer.subscribe([settings.dlq_topic])
    got: dict[bytes, dict[str, bytes]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while not want <= got.keys() and time.monotonic() < deadline:
            for m in consumer.consume(500, timeout=1.0):
                if not m.error():
                    got[m.key()] = dict(m.headers() or [])
    finally:
        consumer.close()
    return got


def test_poison_never_stops_the_worker(broker: EmbeddedBroker, tmp_path, trap: int) -> None:
    app = f"fz_{uuid.uuid4().hex[:6]}"
    env = {"SIMSTREAM_KAFKA": broker.url, "SIMSTREAM_DATA_DIR": str(tmp_path), "SIMSTREAM_APP_ID": app,
           "SIMSTREAM_IMAGE_ROOT": str(SAMPLE_IMAGES), "SIMSTREAM_SESSION_TIMEOUT_S": "10",
           "SIMSTREAM_TOPIC_PARTITIONS": "2", "SIMSTREAM_TOP_K": "4", "SIMSTREAM_EVENTS_TOPIC": f"{app}.products",
           "SIMSTREAM_NEIGHBORS_TOPIC": f"{app}.neighbors", "SIMSTREAM_DLQ_TOPIC": f"{app}.dlq",
           "SIMSTREAM_REFRESH_TOPIC": f"{app}.refresh", "SIMSTREAM_LOG_FORMAT": "json",
           "SIMSTREAM_IMAGE_FETCH_TIMEOUT_S": "2"}
    settings = Settings(kafka=broker.url, events_topic=env["SIMSTREAM_EVENTS_TOPIC"],
                        neighbors_topic=env["SIMSTREAM_NEIGHBORS_TOPIC"], dlq_topic=env["SIMSTREAM_DLQ_TOPIC"])
    records = [(k, v.replace(b":80/", f":{trap}/".encode()) if v else v) for k, v in poison_events(POISON, seed=11)]
    rng = random.Random(5)
    good = {f"ok-{i}": valid_event(f"ok-{i}", rng, version=7) for i in range(GOOD)}
    refused = set()
    for key, value in records:
        try:
            parse_event(key, value)
        except BadEvent:
            refused.add(key)
    assert len(refused) > POISON / 2  # the generator mostly breaks the contract, and not always

    with WorkerProcess(env, log_path=tmp_path / "worker.log") as worker:
        worker.wait_ready(timeout_s=240)
        started = time.monotonic()
        with EventProducer(settings) as producer:
            good_docs = iter(good.values())
            for i, (key, value) in enumerate(records):
                if value is None:
                    producer.tombstone(key.decode(), topic=settings.events_topic)
                else:
                    producer.send(value, key=key)
                if i % max(1, POISON // GOOD) == 0 and (doc := next(good_docs, None)) is not None:
                    producer.send(doc)
            for doc in good_docs:
                producer.send(doc)
        with NeighbourReader(settings) as reader:
            reader.wait_until(lambda got: all(got.get(pid) is not None for pid in good), timeout_s=900,
                              check=worker.check)
            assert all(reader.latest[pid].version == 7 for pid in good)  # type: ignore[union-attr]
            letters = dead_letters(settings, refused, timeout_s=300)
            # what the contract accepts is applied (its list or tombstone published) or dead-lettered
            accepted = {k.decode() for k, _ in records} - {k.decode() for k in refused | letters.keys()}
            reader.wait_until(lambda got: accepted <= got.keys(), timeout_s=300, check=worker.check)
        elapsed = time.monotonic() - started
        assert worker.running, "the worker exited"
        log_text = (tmp_path / "worker.log").read_text(errors="replace")
    print(f"{POISON} poison + {GOOD} good records in {elapsed:.0f} s; {len(letters)} dead letters")
    assert "exiting without committing" not in log_text
    missing = refused - letters.keys()
    assert not missing, f"{len(missing)} refused records not dead-lettered, e.g. {sorted(missing)[:5]}"
    assert all(h.get("x-simstream-error") and h.get("x-simstream-error-kind") for h in letters.values())
    good_letters = {k: (h.get("x-simstream-stage"), h.get("x-simstream-error-kind"), h.get("x-simstream-error"))
                    for k, h in letters.items() if k.startswith(b"ok-")}
    assert not good_letters, f"good products were dead-lettered: {sorted(good_letters.items())[:3]}"
    assert Trap.hits == 0, f"the SSRF guard let {Trap.hits} requests through to loopback"
    assert b"secret" not in b"".join(h.get("x-simstream-error", b"") for h in letters.values())
    assert "token=secret" not in log_text and "sig=secret" not in log_text  # signed URLs stay out of logs
