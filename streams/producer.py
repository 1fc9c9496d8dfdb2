"""Publishing product events (the catalog side): JSON Lines or CSV in, keyed records out."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator

import orjson
from confluent_kafka import KafkaException, Producer

from simstream.streams.kafka_config import client_config
from simstream.settings import Settings

_NUMERIC = {"price": float, "version": int, "event_time": int}


def with_event_defaults(doc: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """Missing ``op`` means upsert; missing ``version``/``event_time`` take ``now_ms``."""
    doc.setdefault("op", "upsert")
    doc.setdefault("version", now_ms)
    doc.setdefault("event_time", now_ms)
    return doc


def from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row (header = field names) as an event document: empty cells left out, numbers parsed."""
    doc: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "":
            continue
        doc[key] = _NUMERIC[key](value) if key in _NUMERIC else value
    return doc


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events from ``.jsonl`` / ``.json`` (one object per line) or ``.csv`` (header = field names).
    Missing ``op`` means upsert; missing ``version``/``event_time`` take the current time in ms."""
    now = int(time.time() * 1000)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows: Iterable[dict[str, Any]] = [from_csv_row(r) for r in csv.DictReader(fh)]
    else:
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    for doc in rows:
        yield with_event_defaults(doc, now)


class EventProducer:
    """A confluent-kafka producer that waits for every delivery report before it returns."""

    def __init__(self, settings: Settings, **extra: Any) -> None:
        self.settings = settings
        # murmur2, as the Java client and the worker (Faust -> aiokafka's DefaultPartitioner) partition
        # keys: librdkafka's default (CRC32) would put a key's lists that reconcile or backfill
        # publish on another partition than the worker's, and a compacted topic would keep both.
        self.producer = Producer(client_config(settings, **{"linger.ms": 5, "enable.idempotence": False, "log_level": 4,
                                                            "partitioner": "murmur2_random", **extra}))
        self.errors: list[str] = []

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.key()!r}: {err}")

    def send(self, doc: dict[str, Any] | bytes | None, *, key: str | bytes | None = None, topic: str | None = None,
             headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        value = doc if isinstance(doc, bytes) or doc is None else orjson.dumps(doc)
        if key is None and isinstance(doc, dict):
            key = str(doc.get("product_id", ""))
        while True:
            try:
                self.producer.produce(topic or self.settings.events_topic, value=value,
                                      key=key.encode() if isinstance(key, str) else key, on_delivery=self._report,
                                      headers=headers)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.5)
        self.producer.poll(0)

    def tombstone(self, key: str, *, topic: str) -> None:
        """A null value: on a compacted topic it deletes the key."""
        self.producer.produce(topic, value=None, key=key.encode(), on_delivery=self._report)
        self.producer.poll(0)

    def send_all(self, docs: Iterable[dict[str, Any]], *, topic: str | None = None) -> int:
        n = 0
        for doc in docs:
            self.send(doc, topic=topic)
            n += 1
        self.flush()
        return n

    def flush(self, timeout_s: float = 60.0) -> None:
        left = self.producer.flush(timeout_s)
        if left:
            raise KafkaException(f"{left} events not delivered after {timeout_s} s")
        if self.errors:
            raise KafkaException(f"{len(self.errors)} events failed: {self.errors[:3]}")

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.producer.close()  # stop its broker connections now, not at garbage collection
