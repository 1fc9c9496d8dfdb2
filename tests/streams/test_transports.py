"""The two transports under the one interface land the same messages identically: the worker's
(Faust over aiokafka) and the tools' (confluent-kafka) — same partition, key, value, headers and
timestamp — and keyed messages land where Kafka's default partitioner (murmur2) puts them, or a
compacted neighbour topic keeps two lists for one product on two partitions (a real broker)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from simstream.harness.embedded import EmbeddedBroker
from simstream.records import Neighbour, NeighbourList
from simstream.settings import Settings
from simstream.streams import messages
from simstream.streams.dead_letter import RawRecord, Rejected
from simstream.streams.kafka_config import client_config
from simstream.streams.producer import EventProducer
from simstream.streams.transports import ConfluentTransport, FaustTransport

PARTITIONS = 4


def _topics(settings: Settings, *names: str) -> None:
    admin = AdminClient(client_config(settings))
    for f in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        f.result(timeout=30)


def _read(settings: Settings, topic: str, count: int) -> list[dict[str, Any]]:
    consumer = Consumer(client_config(settings, **{"group.id": f"g-{uuid.uuid4().hex[:6]}",
                                                   "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(seen) < count and time.monotonic() < deadline:
        for m in consumer.consume(64, timeout=1.0):
            if not m.error():
                seen.append({"partition": m.partition(), "key": m.key(), "value": m.value(),
                             "headers": [(k, v) for k, v in (m.headers() or [])], "timestamp": m.timestamp()[1]})
    consumer.close()
    return seen


def _messages(topic: str) -> list[messages.Message]:
    """One of each kind the worker sends, all to ``topic``."""
    lst = NeighbourList("p00001", 3, [Neighbour("p00002", 0.9, {"text": 0.9})], "m", 1, 2)
    record = RawRecord(b"p00007", b"{bad", 2, 41, 1_700_000_000_123, (("trace", b"t-1"),))
    rejected = Rejected(record, ValueError("not JSON: see https://u:pw@cdn.example/x?sig=S"), "validate")
    out = [messages.neighbour_list(f"p{i:05d}", lst, topic=topic) for i in range(24)]
    out.append(messages.neighbour_list("p00003", None, topic=topic))  # a tombstone
    out.append(messages.dead_letter(rejected, source_topic="src", dlq_topic=topic, max_message_bytes=1_000_000))
    out.append(messages.bare_dead_letter(rejected, source_topic="src", dlq_topic=topic))
    out += messages.refresh_requests([f"p{i:05d}" for i in range(12)], {"p00001": 5}, topic=topic,
                                     partitions=PARTITIONS, max_bytes=200)
    return out


def _landed(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    # Dead letters (the messages with headers) carry the original record's timestamp; the others
    # are stamped when produced, so their timestamps differ between the two runs.
    return sorted((r["partition"], r["key"] or b"", r["value"] or b"", tuple(r["headers"]),
                   r["timestamp"] if r["headers"] else None) for r in rows)


def test_both_transports_land_the_same_messages_identically(broker: EmbeddedBroker) -> None:
    settings = Settings(kafka=broker.url, topic_partitions=PARTITIONS)
    via_faust, via_confluent = (f"t_{uuid.uuid4().hex[:6]}" for _ in range(2))
    _topics(settings, via_faust, via_confluent)
    sent = _messages("x")

    with ConfluentTransport(settings) as confluent:
        asyncio.run(confluent.send([messages.Message(via_confluent, m.key, m.value, m.headers, m.partition,
                                                     m.timestamp_ms) for m in sent]))

    async def faust_send() -> None:
        app = faust.App(f"t-{uuid.uuid4().hex[:6]}", broker=broker.url, value_serializer="raw", key_serializer="raw")
        topic = app.topic(via_faust, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw")
        await app.producer.start()
        try:
            await FaustTransport(app, {via_faust: topic}, timeout_s=30).send(
                [messages.Message(via_faust, m.key, m.value, m.headers, m.partition, m.timestamp_ms) for m in sent])
        finally:
            await app.producer.stop()

    asyncio.run(faust_send())
    faust_rows, confluent_rows = _read(settings, via_faust, len(sent)), _read(settings, via_confluent, len(sent))
    assert len(faust_rows) == len(confluent_rows) == len(sent)
    assert _landed(faust_rows) == _landed(confluent_rows)
    everything = list(range(PARTITIONS))
    for row in confluent_rows:
        if row["key"] and row["key"].startswith(b"p000") and row["headers"] == []:  # the lists and the tombstone
            assert row["partition"] == DefaultPartitioner()(row["key"], everything, everything), row["key"]
    letter = next(r for r in confluent_rows if r["key"] == b"p00007" and r["value"] == b"{bad")
    assert letter["timestamp"] == 1_700_000_000_123 and letter["headers"][0] == ("trace", b"t-1")
    assert b"pw" not in b"".join(v or b"" for _, v in letter["headers"])  # the reason is redacted
    assert len({r["partition"] for r in confluent_rows}) == PARTITIONS  # the keys really spread: it can fail


def test_catalog_events_are_partitioned_like_the_worker(broker: EmbeddedBroker) -> None:
    settings = Settings(kafka=broker.url)
    topic = f"parts_{uuid.uuid4().hex[:6]}"
    _topics(settings, topic)
    keys = [f"p{i:05d}" for i in range(64)]
    with EventProducer(settings) as producer:
        for key in keys:
            producer.send({"product_id": key}, key=key, topic=topic)
    seen = {r["key"].decode(): r["partition"] for r in _read(settings, topic, len(keys))}
    everything = list(range(PARTITIONS))
    assert seen == {k: DefaultPartitioner()(k.encode(), everything, everything) for k in keys}
    assert len(set(seen.values())) == PARTITIONS


class _FullQueue:
    """A producer whose local queue is full for the first ``full`` tries."""

    def __init__(self, full: int) -> None:
        self.full, self.tries, self.polls = full, 0, []

    def produce(self, *args: object, **kwargs: object) -> None:
        self.tries += 1
        if self.tries <= self.full:
            raise BufferError("Local: Queue full")

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        time.sleep(timeout)
        return 0


def test_a_full_producer_queue_serves_delivery_reports_until_it_drains_or_the_deadline() -> None:
    """Backpressure is one use of the retry policy: counted as produce_queue_full, waited out by
    polling (which serves delivery reports and frees the queue), and an outage past the deadline."""
    import time

    import pytest

    from simstream import retry
    from simstream.errors import KafkaUnavailable
    from simstream.streams.messages import Message

    transport = ConfluentTransport(Settings(kafka="127.0.0.1:1"), timeout_s=1.0)
    message = Message("t", b"k", b"v", partition=0)
    counter = retry.RETRIES.labels("produce_queue_full", "BufferError")
    before = counter._value.get()
    transport.producer = _FullQueue(full=3)  # type: ignore[assignment]
    transport.produce(message)
    assert transport.producer.tries == 4 and len(transport.producer.polls) >= 2  # type: ignore[attr-defined]
    assert counter._value.get() - before == 2  # the first refusal is met before the policy
    transport.producer = _FullQueue(full=10**9)  # type: ignore[assignment]
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="stayed full"):
        transport.produce(message)
    assert 0.5 < time.monotonic() - started < 2.0
