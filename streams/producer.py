"""Publishing product events (the catalog side): JSON Lines or CSV in, keyed records out."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator

import orjson

from simstream.settings import Settings
from simstream.streams import messages
from simstream.streams.transports import ConfluentTransport

__all__ = ["EventProducer", "read_events", "with_event_defaults", "from_csv_row"]

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
    """The catalog side's producer (``simstream produce``, the demo, the harness): sends as it reads
    through ``ConfluentTransport``, so keys land on the partitions the worker's own messages use;
    ``flush`` (and leaving ``with``) waits for every delivery."""

    def __init__(self, settings: Settings, *, timeout_s: float = 60.0, **extra: Any) -> None:
        self.settings = settings
        self.transport = ConfluentTransport(settings, timeout_s=timeout_s, **extra)

    def send(self, doc: dict[str, Any] | bytes | None, *, key: str | bytes | None = None, topic: str | None = None,
             headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        value = doc if isinstance(doc, bytes) or doc is None else orjson.dumps(doc)
        if key is None and isinstance(doc, dict):
            key = str(doc.get("product_id", ""))
        self.transport.produce(messages.product_event(
            value, key=key.encode() if isinstance(key, str) else key, topic=topic or self.settings.events_topic,
            headers=[(k, v.encode() if isinstance(v, str) else v) for k, v in headers or ()]))

    def tombstone(self, key: str, *, topic: str) -> None:
        """A null value: on a compacted topic it deletes the key."""
        self.send(None, key=key, topic=topic)

    def send_all(self, docs: Iterable[dict[str, Any]], *, topic: str | None = None) -> int:
        n = 0
        for doc in docs:
            self.send(doc, topic=topic)
            n += 1
        self.flush()
        return n

    def flush(self) -> None:
        self.transport.flush()

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.transport.close()
