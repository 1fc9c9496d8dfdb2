"""Dead letters you can act on: written the way the worker writes them, read, summarised, filtered
and replayed byte for byte onto the input topic, on the real Tansu broker; plus the pieces
(redaction, the size rule, header layout) on their own."""

from __future__ import annotations

import asyncio

import dataclasses
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Iterator

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from simstream import __version__
from simstream.cli import main
from simstream.errors import EncodeError
from simstream.settings import Settings
from simstream.streams.dead_letter import RawRecord, Rejected
from simstream.streams.outbox import Outbox
from simstream.streams.transports import ConfluentTransport
from simstream.streams.dlq import DeadLetter, parse_since, read_dead_letters, replay, summary
from simstream.streams.ingest import validate
from simstream.streams.kafka_config import client_config

SECRET_URL = "https://u:p@cdn.example/x.png?sig=SECRET"
HUGE = 1_200_000  # an input record bigger than a Kafka request may be


# --- the pieces ------------------------------------------------------------------------------

def record(value: bytes | None = b"{}", key: bytes | None = b"k", headers=()) -> RawRecord:
    return RawRecord(key, value, 3, 41, 1_700_000_000_123, tuple(headers))


def test_value_for_dlq_keeps_the_value_when_the_record_fits_else_names_its_size():
    rej = Rejected(record(b"v" * 100, headers=[("h", b"x" * 10)]), ValueError("no"), "validate")
    assert rej.value_for_dlq(1000) == (b"v" * 100, [])
    assert rej.value_for_dlq(100 + 1 + 1 + 10) == (b"v" * 100, [])  # key + value + header name and value
    assert rej.value_for_dlq(100) == (None, [("x-simstream-value-omitted", b"100")])


def test_headers_keep_the_original_ones_first_then_say_why():
    original = [("trace-id", b"t1"), ("dup", b"1"), ("dup", b"2"), ("x-simstream-stage", b"theirs")]
    rej = Rejected(record(headers=original), RuntimeError(f"é{SECRET_URL} " + "é" * 2000), "ingest", attempts=3)
    headers = rej.headers("simstream.products")
    assert headers[:4] == original  # unchanged, in order, even a name that looks like ours
    own = dict(headers[4:])
    assert [k for k, _ in headers[4:]][0] == "x-simstream-error-kind" and own["x-simstream-error-kind"] == b"RuntimeError"
    assert own["x-simstream-stage"] == b"ingest" and own["x-simstream-attempts"] == b"3"
    assert own["x-simstream-source-topic"] == b"simstream.products"
    assert (own["x-simstream-source-partition"], own["x-simstream-source-offset"]) == (b"3", b"41")
    assert own["x-simstream-source-timestamp"] == b"1700000000123"
    assert own["x-simstream-worker-version"] == __version__.encode()
    assert len(own["x-simstream-error"]) <= 1000 and own["x-simstream-error"].decode()  # whole characters
    assert b"SECRET" not in b"".join(v for _, v in headers) and b"u:p" not in own["x-simstream-error"]


def test_raw_record_of_a_faust_event_normalises_headers_and_timestamp():
    for raw in ([("a", b"1"), ("b", None)], {"a": b"1", "b": "2"}, None):
        msg = SimpleNamespace(key=b"k", value=b"v", partition=1, offset=7, timestamp=1_700_000_000.5, headers=raw)
        r = RawRecord.of(SimpleNamespace(message=msg))
        assert (r.partition, r.offset, r.timestamp_ms) == (1, 7, 1_700_000_000_500)
        assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in r.headers)
        assert r.headers[:1] == ((("a", b"1"),) if raw else ())


def test_parse_since_accepts_iso_and_durations():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now=now) == now - timedelta(hours=2)
    assert parse_since("30m", now=now) == now - timedelta(minutes=30)
    assert parse_since("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert parse_since("2024-05-01T10:00") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


# --- on the broker ---------------------------------------------------------------------------

def headers_of(m: Any) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, v or b"") for k, v in (m.headers() or []))


def consume_all(settings: Settings, topic: str, start: dict[int, int], n: int, timeout_s: float = 15) -> list[Any]:
    """``n`` records of ``topic`` from offsets ``start`` (partition -> offset)."""
    consumer = Consumer(client_config(settings, **{"group.id": f"t-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                                                   "fetch.wait.max.ms": 100, "log_level": 3}))
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += [m for m in consumer.consume(50, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    assert len(got) == n, f"{len(got)} of {n} records of {topic} within {timeout_s} s"
    return got


@pytest.fixture(scope="module")
def dead(broker) -> Iterator[SimpleNamespace]:
    """Five rejected input records in the DLQ, written as the worker writes them."""
    run = f"dlq-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka=broker.url, events_topic=f"{run}.events", dlq_topic=f"{run}.dlq")
    admin = AdminClient(client_config(settings))
    for f in admin.create_topics([NewTopic(settings.events_topic, 2, 1), NewTopic(settings.dlq_topic, 2, 1)]).values():
        f.result(10)
    now = int(time.time() * 1000)
    doc = {"op": "upsert", "version": 1, "event_time": now}
    sent = [  # key, value, headers, partition: what the catalog service sends
        (b"broken-1", b"{not json", [("trace-id", b"t1"), ("content-type", b"application/json")], 0),
        (b"no-title", orjson.dumps({"product_id": "no-title", **doc}), [("trace-id", b"t2"), ("dup", b"1"), ("dup", b"2")], 1),
        (b"huge", orjson.dumps({"product_id": "huge", "title": "t", "description": "x" * HUGE, **doc}), [("trace-id", b"t3")], 0),
        (b"bad-image", orjson.dumps({"product_id": "bad-image", "title": "t", "image_url": SECRET_URL, **doc}), [], 1),
        (b"odd", orjson.dumps({"product_id": "odd", "title": "t", **doc}), [("trace-id", b"t5")], 0),
    ]
    catalog = Producer(client_config(settings, **{"message.max.bytes": 3_000_000, "log_level": 3}))
    for i, (key, value, headers, partition) in enumerate(sent):
        catalog.produce(settings.events_topic, key=key, value=value, headers=headers, partition=partition,
                        timestamp=now - 1000 * (len(sent) - i))
    assert catalog.flush(15) == 0
    catalog.close()
    # the worker's side: read the records, reject them, dead-letter them with the worker's own sender
    originals = {m.key(): m for m in consume_all(settings, settings.events_topic, {0: 0, 1: 0}, len(sent))}
    records = {k: RawRecord(k, m.value(), m.partition(), m.offset(), m.timestamp()[1], headers_of(m))
               for k, m in originals.items()}
    _, rejects = validate([records[b"broken-1"], records[b"no-title"], records[b"huge"]])
    rejects += [Rejected(records[b"bad-image"], EncodeError("image", f"cannot fetch {SECRET_URL}: HTTP 403"), "encode"),
                Rejected(records[b"odd"], RuntimeError("milvus said no"), "ingest", attempts=3)]
    assert [r.record.key for r in rejects] == [b"broken-1", b"no-title", b"huge", b"bad-image", b"odd"]
    with ConfluentTransport(settings) as transport:  # the Outbox is the worker's, over the tools' transport
        asyncio.run(Outbox(transport, settings).dead_letters(rejects, settings.events_topic))
    yield SimpleNamespace(settings=settings, originals=originals, rejects=rejects)


def by_key(letters: list[DeadLetter]) -> dict[bytes | None, DeadLetter]:
    return {d.key: d for d in letters}


def test_dead_letters_keep_the_original_and_say_why(dead):
    letters = by_key(read_dead_letters(dead.settings, timeout_s=15))
    assert set(letters) == set(dead.originals)
    for key, m in dead.originals.items():
        d = letters[key]
        assert d.headers == headers_of(m) and d.original_timestamp_ms == m.timestamp()[1]
        assert (d.source_topic, d.source_partition, d.source_offset) == (dead.settings.events_topic, m.partition(), m.offset())
        assert d.version == __version__ and d.at is not None
    assert letters[b"broken-1"].value == b"{not json" and letters[b"broken-1"].kind == "BadEvent"
    assert letters[b"huge"].value is None and letters[b"huge"].value_omitted == len(dead.originals[b"huge"].value())
    assert (letters[b"odd"].kind, letters[b"odd"].stage, letters[b"odd"].attempts) == ("RuntimeError", "ingest", 3)
    # secrets in an error message never reach the DLQ
    assert "SECRET" not in letters[b"bad-image"].error and "u:p" not in letters[b"bad-image"].error
    assert "cdn.example/x.png" in letters[b"bad-image"].error


def test_summary_counts_by_kind_and_stage(dead):
    groups = summary(read_dead_letters(dead.settings, timeout_s=15))
    assert [(g.kind, g.stage, g.count) for g in groups] == [
        ("BadEvent", "validate", 3), ("EncodeError", "encode", 1), ("RuntimeError", "ingest", 1)]
    assert groups[0].value_omitted == 1 and groups[0].first is not None and groups[0].first <= groups[0].last


def test_filters_by_reason_stage_and_time(dead):
    def keys(**kw: Any) -> set[bytes | None]:
        return set(by_key(read_dead_letters(dead.settings, timeout_s=15, **kw)))

    assert keys(reason="badevent") == {b"broken-1", b"no-title", b"huge"}
    assert keys(reason="required property") == {b"no-title"}  # a substring of the message
    assert keys(stage="encode") == {b"bad-image"}
    assert keys(reason="BadEvent", stage="encode") == set()
    assert len(keys(since=parse_since("1h"))) == 5 and keys(since=datetime.now(timezone.utc) + timedelta(hours=1)) == set()
    assert read_dead_letters(Settings(kafka=dead.settings.kafka, dlq_topic=f"none-{uuid.uuid4().hex}"), timeout_s=5) == []


def test_replay_republishes_byte_identical_records(dead):
    s = dead.settings
    letters = read_dead_letters(s, timeout_s=15)
    start = {p: 1 + max(m.offset() for m in dead.originals.values() if m.partition() == p) for p in (0, 1)}
    assert replay(s, letters, timeout_s=15) == 5
    again = {m.key(): m for m in consume_all(s, s.events_topic, start, 5)}
    assert set(again) == set(dead.originals)
    for key, m in dead.originals.items():
        r = again[key]
        assert (r.partition(), r.key(), r.value(), headers_of(r), r.timestamp()[1]) == \
               (m.partition(), m.key(), m.value(), headers_of(m), m.timestamp()[1]), key
    assert len(again[b"huge"].value()) > HUGE  # read back from its source offset


def test_replay_reports_what_it_cannot_have(dead):
    huge = by_key(read_dead_letters(dead.settings, reason="BadEvent", timeout_s=15))[b"huge"]
    gone = dataclasses.replace(huge, source_offset=10_000)
    skipped: list[str] = []
    assert replay(dead.settings, [gone], fetch_timeout_s=1, on_skip=lambda d, why: skipped.append(why)) == 0
    assert len(skipped) == 1 and "10000" in skipped[0]


def test_cli_summary_show_and_dry_run(dead):
    env = {"SIMSTREAM_KAFKA": dead.settings.kafka, "SIMSTREAM_DLQ_TOPIC": dead.settings.dlq_topic,
           "SIMSTREAM_EVENTS_TOPIC": dead.settings.events_topic, "SIMSTREAM_LOG_LEVEL": "WARNING"}
    runner = CliRunner()
    out = runner.invoke(main, ["dlq", "summary"], env=env)
    assert out.exit_code == 0 and "5 dead letters" in out.output and "BadEvent" in out.output, out.output
    out = runner.invoke(main, ["dlq", "show", "--json", "--reason", "EncodeError"], env=env)
    assert out.exit_code == 0, out.output
    shown = [orjson.loads(line) for line in out.output.splitlines()]
    assert [d["key"] for d in shown] == ["bad-image"] and "SECRET" not in out.output and "u:p@" not in out.output
    out = runner.invoke(main, ["dlq", "show", "--limit", "2"], env=env)
    assert out.exit_code == 0 and out.output.count("\n  key ") == 2, out.output
    out = runner.invoke(main, ["dlq", "replay", "--dry-run", "--reason", "BadEvent"], env=env)
    assert out.exit_code == 0 and "would replay 3" in out.output, out.output
    out = runner.invoke(main, ["dlq", "replay", "--since", "soon"], env=env)
    assert out.exit_code == 1 and "--since" in out.output
