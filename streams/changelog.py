"""``simstream changelog bootstrap``: fill the catalog changelog for a catalog that predates it.

The worker writes every event it accepts to the changelog (docs/events.md); a catalog loaded before
that has products in Milvus whose source fields are nowhere simstream can read. Given the events
(a file, as ``simstream backfill`` reads it, or the events topic from its start), this writes the
record of every product whose event matches what the index holds *exactly* (same version; a delete
whose marker has that version), and counts the rest:

- ``older``: the index holds a newer version, whose source the input lacks;
- ``newer``: the index has not applied it yet: the stream will, and writes the record then;
- ``not_in_index``: neither stored nor deleted (a product the stream never saw, or whose marker
  was purged);
- ``without_source``: stored, but no input event at its version: re-publish those products from
  the catalog service (``without_source_sample`` names some).

Writing a record again is harmless (readers keep the highest version), so bootstrap may run beside
a live worker and be repeated.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from simstream.index.milvus import MilvusStore
from simstream.logs import get_logger
from simstream.records import ProductEvent
from simstream.settings import Settings
from simstream.streams.dead_letter import RawRecord
from simstream.errors import KafkaUnavailable
from simstream.streams.ingest import validate
from simstream.streams.messages import OMITTED_HEADER
from simstream.streams.neighbour_reader import Catalog, tail_consumer
from simstream.streams.outbox import Outbox
from simstream.streams.transports import ConfluentTransport

__all__ = ["BootstrapReport", "bootstrap", "bootstrap_from", "topic_records", "SAMPLE_IDS", "read_catalog"]

log = get_logger(__name__)

SAMPLE_IDS = 20  # ids named in a report's samples


@dataclass
class BootstrapReport:
    records: int = 0
    unreadable: int = 0  # did not pass the contract
    written: int = 0  # upsert records written: the index holds exactly that version
    deletes_written: int = 0  # delete records written: the index holds a marker of that version
    older: int = 0
    newer: int = 0
    not_in_index: int = 0
    without_source: int = 0
    without_source_sample: list[str] = field(default_factory=list)


def topic_records(settings: Settings, topic: str, *, quiet_s: float = 5.0, timeout_s: float = 600.0) -> Iterator[RawRecord]:
    """Every record of ``topic`` from its start, until nothing came for ``quiet_s`` (end offsets are
    not trusted: the embedded broker reports them wrongly for multi-record batches); bounded by
    ``timeout_s``."""
    consumer = tail_consumer(settings, f"simstream-changelog-bootstrap-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            for m in consumer.consume(500, timeout=0.5):
                if (err := m.error()) is not None:
                    if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue
                    raise RuntimeError(f"{topic}: {err}")
                last = time.monotonic()
                yield RawRecord(m.key(), m.value(), m.partition() or 0, m.offset() or 0, m.timestamp()[1])
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{topic} was still delivering after {timeout_s} s")
    finally:
        consumer.close()


def read_catalog(settings: Settings, *, timeout_s: float = 600.0) -> Catalog:
    """The whole changelog as it stands now: every partition read from its start until the reader
    reaches its end at or beyond the high watermark read first, so every record written before
    the call is in (the end is taken from the fetch, as ``dlq.read_dead_letters`` does: the
    embedded broker reports a watermark short of the last record of a multi-record batch).
    Records written meanwhile may be in too, which is harmless: the highest version wins, and the
    stream replays whatever came after. Raises ``TimeoutError`` after ``timeout_s``."""
    topic = settings.changelog_topic
    deadline = time.monotonic() + timeout_s
    catalog = Catalog()
    consumer = tail_consumer(settings, f"simstream-migrate-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or (meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            return catalog
        if meta.error is not None:
            raise KafkaUnavailable(f"{topic}: {meta.error}")
        high = {}
        for p in meta.partitions:
            low, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=max(0.1, deadline - time.monotonic()))
            if hi > low:
                high[p] = hi
        consumer.assign([TopicPartition(topic, p, -2) for p in high])  # -2: OFFSET_BEGINNING
        pending = set(high)
        while pending:
            if (left := deadline - time.monotonic()) <= 0:
                raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to their end within {timeout_s} s "
                                   f"({catalog.records} records read)")
            for m in consumer.consume(500, timeout=min(left, 0.5)):
                if (err := m.error()) is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if (m.offset() or 0) >= high.get(m.partition() or 0, 0):
                            pending.discard(m.partition() or 0)
                        continue
                    raise KafkaUnavailable(f"{topic}: {err}")
                headers: Any = m.headers() or []
                omitted = next((bytes(v or b"") for k, v in headers if k == OMITTED_HEADER), b"")
                catalog.apply(m.key(), m.value(), frozenset(omitted.decode().split(",")) if omitted else frozenset())
        return catalog
    except KafkaException as exc:
        raise KafkaUnavailable(f"{topic}: {exc}") from exc
    finally:
        consumer.close()


def _latest(records: Iterable[RawRecord], report: BootstrapReport) -> dict[str, ProductEvent]:
    """The highest version per product among the records that pass the contract."""
    latest: dict[str, ProductEvent] = {}
    for r in records:
        report.records += 1
        events, rejects = validate([r])
        report.unreadable += len(rejects)
        for e in events:
            if e.supersedes(latest.get(e.product_id)):
                latest[e.product_id] = e
    return latest


def _matching(milvus: MilvusStore, events: Sequence[ProductEvent], report: BootstrapReport) -> list[ProductEvent]:
    """The events among ``events`` whose version is the one the index holds; the rest counted."""
    ids = [e.product_id for e in events]
    stored = milvus.read_products(ids, with_vectors=False)
    markers = milvus.read_tombstones(ids)
    out: list[ProductEvent] = []
    for e in events:
        held = stored[e.product_id].version if e.product_id in stored else markers.get(e.product_id)
        if held is None:
            report.not_in_index += 1
        elif e.version < held:
            report.older += 1
        elif e.version > held:
            report.newer += 1
        elif e.is_delete == (e.product_id not in stored):
            out.append(e)
        else:  # the same version, but an upsert where the index deleted it, or the reverse
            report.older += 1
    return out


def bootstrap(records: Iterable[RawRecord], milvus: MilvusStore, outbox: Outbox, *, page: int = 2_000) -> BootstrapReport:
    """Write the changelog record of every product whose event in ``records`` matches the index."""
    report = BootstrapReport()
    latest = _latest(records, report)
    events = list(latest.values())
    matched: set[str] = set()
    for start in range(0, len(events), page):
        found = _matching(milvus, events[start:start + page], report)
        asyncio.run(outbox.catalog(found))
        report.written += sum(not e.is_delete for e in found)
        report.deletes_written += sum(e.is_delete for e in found)
        matched.update(e.product_id for e in found if not e.is_delete)
    missing = sorted(milvus.all_product_ids() - matched)
    report.without_source, report.without_source_sample = len(missing), missing[:SAMPLE_IDS]
    log.info("changelog bootstrapped", **{k: v for k, v in report.__dict__.items() if k != "without_source_sample"})
    return report


def bootstrap_from(settings: Settings, records: Iterable[RawRecord]) -> BootstrapReport:
    """``bootstrap`` against the live generation's index and the configured Kafka (the command line's entry)."""
    from simstream.encoders.fusion import ProductEncoder
    from simstream.streams.runtime import generation_of, open_store, read_control

    _, live = generation_of(settings, read_control(settings, wait=True), "live")  # type: ignore[misc]
    encoder = ProductEncoder(live)
    store = open_store(live.model_copy(update={"side_index": False}), encoder.dim, wait=True, metric=encoder.metric)
    try:
        with ConfluentTransport(settings) as transport:
            return bootstrap(records, store.milvus, Outbox(transport, settings))
    finally:
        store.close()
