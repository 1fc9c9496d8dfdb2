"""Reading simstream's compacted topics from the start: the neighbour topic the way a recommender
does (the latest value per key), and the catalog changelog the way a migration does (the highest
version per product)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaError

from simstream.errors import BadEvent
from simstream.records import NeighbourList, ProductEvent
from simstream.streams.contracts import parse_event
from simstream.streams.kafka_config import client_config
from simstream.settings import Settings

__all__ = ["tail_consumer", "NeighbourReader", "Catalog", "CatalogReader"]


def tail_consumer(settings: Settings, group: str, **overrides: Any) -> Consumer:
    """A consumer that reads a topic from its start in its own group, without committing, and
    notices new partitions and topics within a second (the neighbour topic's readers)."""
    return Consumer(client_config(settings, **{
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "topic.metadata.refresh.interval.ms": 1000,
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        **overrides,
    }))


class NeighbourReader:
    """Tails the neighbour topic from the beginning and keeps the latest list per product
    (None after a tombstone). Counts messages; it never trusts end offsets (Tansu reports them
    wrongly for multi-record batches)."""

    def __init__(self, settings: Settings, *, topic: str | None = None, group: str | None = None) -> None:
        self.topic = topic or settings.neighbors_topic
        self.consumer = tail_consumer(settings, group or f"simstream-reader-{uuid.uuid4().hex[:8]}")
        self.consumer.subscribe([self.topic])
        self.latest: dict[str, NeighbourList | None] = {}
        self.messages = 0
        self.last_message_at = 0.0

    def poll(self, seconds: float) -> int:
        """Consume for up to ``seconds``; returns how many messages arrived."""
        got = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msgs = self.consumer.consume(500, timeout=min(left, 0.5))
            for m in msgs:
                if (err := m.error()) is not None:
                    if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue
                    raise RuntimeError(f"{self.topic}: {err}")
                self._apply(m.key(), m.value())
                got += 1
            if msgs:
                self.last_message_at = time.monotonic()
        self.messages += got
        return got

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        """Keep one consumed record: the latest list per product (None after a tombstone)."""
        self.latest[(key or b"").decode()] = NeighbourList.from_json(value) if value is not None else None

    def wait_until(self, done: Callable[[dict[str, NeighbourList | None]], bool], *, timeout_s: float,
                   quiet_s: float = 3.0, check: Callable[[], None] | None = None) -> dict[str, NeighbourList | None]:
        """Poll until ``done(latest)`` holds and nothing new came for ``quiet_s``; bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check is not None:
                check()  # e.g. raise when the worker died: no point in waiting out the timeout
            self.poll(0.5)
            if done(self.latest) and time.monotonic() - self.last_message_at >= quiet_s:
                return self.latest
        raise TimeoutError(f"{self.topic} did not settle within {timeout_s} s "
                           f"({len(self.latest)} keys, {self.messages} messages)")

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> "NeighbourReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class Catalog:
    """The changelog as a migration reads it: per product the accepted event of the highest version
    (deletes included), and the fields its record left out (``OMITTED_HEADER``)."""

    latest: dict[str, ProductEvent] = field(default_factory=dict)
    omitted: dict[str, frozenset[str]] = field(default_factory=dict)
    records: int = 0
    unreadable: int = 0

    def apply(self, key: bytes | None, value: bytes | None, omitted: frozenset[str]) -> None:
        self.records += 1
        try:
            event = parse_event(key, value)
        except BadEvent:
            self.unreadable += 1
            return
        if event.supersedes(self.latest.get(event.product_id)):
            self.latest[event.product_id] = event
            if omitted:
                self.omitted[event.product_id] = omitted
            else:
                self.omitted.pop(event.product_id, None)


class CatalogReader(NeighbourReader):
    """Tails the catalog changelog (``SIMSTREAM_CHANGELOG_TOPIC``) from the beginning and keeps,
    per product, the accepted event of the highest version (``Catalog``): compaction keeps a key's
    last offset, not its highest version, and two workers may briefly both write a product around a
    rebalance. A delete stays as its delete event (``op == "delete"``). A record that does not parse
    is counted in ``unreadable`` and skipped (the changelog holds only events that passed validation)."""

    def __init__(self, settings: Settings, *, group: str | None = None) -> None:
        super().__init__(settings, topic=settings.changelog_topic, group=group)
        self.catalog = Catalog()
        self.latest = self.catalog.latest  # type: ignore[assignment]

    @property
    def unreadable(self) -> int:
        return self.catalog.unreadable

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        self.catalog.apply(key, value, frozenset())

    def __enter__(self) -> "CatalogReader":
        return self
