"""Dead letters you can act on: read the DLQ topic, summarise it, and replay records byte for byte.

The worker writes each rejected record to the DLQ with its original key, value, headers and
timestamp, and appends headers of its own (streams/dead_letter.py, ``Rejected.headers``). Here
plain confluent-kafka clients (no Faust, no consumer group offsets) read the topic from its start
to its end, parse those headers into ``DeadLetter``, and re-publish chosen letters to the topic
they came from: same key, value, original headers (simstream's stripped) and timestamp, to the
partition they were read from, so the worker sees exactly what the catalog service sent. A letter
whose value was too big for the DLQ (``x-simstream-value-omitted``) is re-read from its source
offset first, while that topic still retains it. ``simstream dlq`` is the command line.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from simstream.errors import KafkaRefused, KafkaUnavailable
from simstream.settings import Settings
from simstream.redact import redact
from simstream.streams.dead_letter import KIND_HEADER, SIMSTREAM_HEADER
from simstream.streams.kafka_config import client_config
from simstream.streams import messages
from simstream.streams.messages import Headers, Message
from simstream.streams.transports import ConfluentTransport

__all__ = ["DlqError", "DeadLetter", "Group", "parse_since", "read_dead_letters", "summary", "replay"]

class DlqError(RuntimeError):
    """Reading or replaying dead letters failed (broker unreachable, deliveries not confirmed)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the DLQ topic, its simstream headers parsed."""

    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None  # None also when the value was omitted (``value_omitted`` is then its size)
    headers: Headers  # the original record's headers, in order
    timestamp_ms: int | None  # the DLQ record's timestamp: the original record's
    kind: str  # exception class name
    error: str  # its message (URL secrets masked by the worker)
    stage: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    source_timestamp_ms: int | None
    attempts: int | None
    version: str | None  # the simstream version that rejected it
    rejected_at_ms: int | None
    value_omitted: int | None = None

    @classmethod
    def from_message(cls, m: KafkaMessage) -> "DeadLetter":
        raw = list(_headers(m))
        # simstream's headers start at the last KIND_HEADER; everything before it is the original's
        start = max((i for i, (k, _) in enumerate(raw) if k == KIND_HEADER), default=None)
        if start is None:  # not written by the worker: no simstream block to split off
            original, own = [h for h in raw if not h[0].startswith(SIMSTREAM_HEADER)], {}
        else:
            original = raw[:start]
            own = {k: (v or b"").decode("utf-8", "replace") for k, v in raw[start:]}
        ts_type, ts = m.timestamp()
        return cls(
            dlq_partition=m.partition() or 0, dlq_offset=m.offset() or 0, key=m.key(), value=m.value(),
            headers=tuple(original), timestamp_ms=ts if ts_type and ts >= 0 else None,
            kind=own.get(KIND_HEADER, "unknown"), error=own.get("x-simstream-error", ""),
            stage=own.get("x-simstream-stage", "unknown"), source_topic=own.get("x-simstream-source-topic"),
            source_partition=_int(own.get("x-simstream-source-partition")),
            source_offset=_int(own.get("x-simstream-source-offset")),
            source_timestamp_ms=_int(own.get("x-simstream-source-timestamp")),
            attempts=_int(own.get("x-simstream-attempts")), version=own.get("x-simstream-worker-version"),
            rejected_at_ms=_int(own.get("x-simstream-rejected-at")),
            value_omitted=_int(own.get("x-simstream-value-omitted")))

    @property
    def at(self) -> datetime | None:
        """When it was dead-lettered (older workers did not say: the original record's time)."""
        ms = self.rejected_at_ms if self.rejected_at_ms is not None else self.timestamp_ms
        return datetime.fromtimestamp(ms / 1000, timezone.utc) if ms is not None else None

    @property
    def original_timestamp_ms(self) -> int | None:
        return self.source_timestamp_ms if self.source_timestamp_ms is not None else self.timestamp_ms

    def matches(self, *, since: datetime | None = None, reason: str | None = None, stage: str | None = None) -> bool:
        """``reason``: the exception class name (any case) or a substring of the message."""
        if since is not None and (self.at is None or self.at < since):
            return False
        if stage is not None and self.stage != stage:
            return False
        if reason is not None and reason.lower() != self.kind.lower() and reason.lower() not in self.error.lower():
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """For ``simstream dlq show --json``: text fields, URL secrets in the value masked."""
        doc = asdict(self)
        doc["key"] = _text(self.key)
        doc["error"] = redact(self.error)  # older workers did not mask it
        doc["value"] = redact(_text(self.value)) if self.value is not None else None
        doc["value_bytes"] = len(self.value) if self.value is not None else self.value_omitted
        doc["headers"] = [[k, redact(_text(v)) if v is not None else None] for k, v in self.headers]
        doc["at"] = self.at.isoformat() if self.at else None
        return doc


@dataclass(frozen=True, slots=True)
class Group:
    """Dead letters of one (kind, stage)."""

    kind: str
    stage: str
    count: int
    first: datetime | None
    last: datetime | None
    value_omitted: int = 0


def _headers(m: KafkaMessage) -> Headers:
    """A message's headers as (str, bytes | None) pairs, in order."""
    raw = m.headers() or ()
    items = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, v.encode() if isinstance(v, str) else v) for k, v in items)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _text(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", "replace")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """ISO-8601 (``2024-05-01T12:00``, ``...Z``, ``...+02:00``; no zone = UTC) or a duration back
    from now: ``90s``, ``30m``, ``2h``, ``7d``, ``1w``."""
    if m := _DURATION.match(text):
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: not ISO-8601 (2024-05-01T12:00Z) or a duration (30m, 2h, 7d)") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def _consumer(settings: Settings, **extra: Any) -> Consumer:
    """Assign-only reader: its group id is throwaway, it never commits."""
    return Consumer(client_config(settings, **{
        "group.id": f"simstream-dlq-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        "log_level": 3,
        **extra,
    }))


def read_dead_letters(settings: Settings, *, since: datetime | None = None, reason: str | None = None,
                      stage: str | None = None, timeout_s: float = 30.0, topic: str | None = None) -> list[DeadLetter]:
    """Every dead letter from the start of the DLQ topic to its end, in topic order per partition,
    filtered (``DeadLetter.matches``). Bounded: a partition is done when the reader reaches its end
    at or beyond the high watermark read at the start; raises ``TimeoutError`` after ``timeout_s``.
    (The end is taken from the fetch, not only from the watermark: Tansu reports a watermark
    short of the last record for multi-record batches.)"""
    topic = topic or settings.dlq_topic
    deadline = time.monotonic() + timeout_s
    consumer = _consumer(settings, **{"enable.partition.eof": True})
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise DlqError(f"{topic}: {exc}") from exc
        if meta is None or (meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            return []  # nothing was ever dead-lettered
        if meta.error is not None:
            raise DlqError(f"{topic}: {meta.error}")
        high: dict[int, int] = {}
        for p in meta.partitions:
            low, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=max(0.1, deadline - time.monotonic()))
            if hi > low:
                high[p] = hi
        if not high:
            return []
        consumer.assign([TopicPartition(topic, p, -2) for p in high])  # -2: OFFSET_BEGINNING
        letters: list[DeadLetter] = []
        pending = set(high)
        while pending:
            if (left := deadline - time.monotonic()) <= 0:
                raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to their end within "
                                   f"{timeout_s} s ({len(letters)} dead letters read)")
            for m in consumer.consume(500, timeout=min(left, 0.5)):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if (m.offset() or 0) >= high.get(m.partition() or 0, 0):
                            pending.discard(m.partition() or 0)
                        continue
                    raise DlqError(f"{topic}: {err}")
                letter = DeadLetter.from_message(m)
                if letter.matches(since=since, reason=reason, stage=stage):
                    letters.append(letter)
        return letters
    finally:
        consumer.close()


def summary(letters: Iterable[DeadLetter]) -> list[Group]:
    """Counts by (kind, stage) with the first and last time, biggest group first."""
    groups: dict[tuple[str, str], list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        groups[(letter.kind, letter.stage)].append(letter)
    out = []
    for (kind, stage), members in groups.items():
        times = sorted(t for t in (m.at for m in members) if t is not None)
        out.append(Group(kind, stage, len(members), times[0] if times else None, times[-1] if times else None,
                         sum(m.value_omitted is not None for m in members)))
    return sorted(out, key=lambda g: (-g.count, g.kind, g.stage))


@dataclass(frozen=True, slots=True)
class _Original:
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None


def _fetch_original(consumer: Consumer, letter: DeadLetter, topic: str, timeout_s: float) -> _Original | str:
    """The record at the letter's source offset, or why it cannot be had."""
    p, offset = letter.source_partition, letter.source_offset
    if p is None or offset is None:
        return "value omitted and no source offset"
    consumer.assign([TopicPartition(topic, p, offset)])
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        for m in consumer.consume(1, timeout=min(left, 0.5)):
            if m.error() is not None:
                return f"{topic}[{p}]@{offset}: {m.error()}"
            if m.offset() != offset or m.key() != letter.key:
                return f"{topic}[{p}]@{offset} is no longer retained (read offset {m.offset()})"
            ts_type, ts = m.timestamp()
            return _Original(m.key(), m.value(), _headers(m), ts if ts_type and ts >= 0 else None)
    return f"{topic}[{p}]@{offset} not readable within {timeout_s} s (no longer retained?)"


def replay(settings: Settings, letters: Sequence[DeadLetter], *, topic: str | None = None, timeout_s: float = 30.0,
           fetch_timeout_s: float = 5.0, on_skip: Callable[[DeadLetter, str], None] | None = None) -> int:
    """Re-publish ``letters`` to their source topic (or ``topic``) with the original key, value,
    headers and timestamp; to the source partition unless ``topic`` overrides it (then Kafka's
    murmur2 key partitioner, streams/messages.py ``partition_for``). Letters whose value was omitted are read
    from the source offset first; those that cannot be had (or have no source topic) go to
    ``on_skip(letter, why)``. Sent through ``ConfluentTransport``: acks from all replicas,
    idempotent, in source order per partition;
    raises ``DlqError`` unless every record was confirmed within ``timeout_s``. Returns how many."""
    plan: list[Message] = []
    reader: Consumer | None = None
    skip = on_skip or (lambda letter, why: None)
    try:
        for letter in sorted(letters, key=lambda d: (d.source_topic or "", d.source_partition or 0, d.source_offset or 0)):
            target = topic or letter.source_topic
            if not target:
                skip(letter, "no x-simstream-source-topic header: give --topic")
                continue
            if letter.value_omitted is None:
                original = _Original(letter.key, letter.value, letter.headers, letter.original_timestamp_ms)
            else:
                reader = reader or _consumer(settings, **{"auto.offset.reset": "error"})
                fetched = _fetch_original(reader, letter, letter.source_topic or target, fetch_timeout_s)
                if isinstance(fetched, str):
                    skip(letter, fetched)
                    continue
                original = fetched
            partition = letter.source_partition if topic is None else None
            plan.append(messages.replayed(original, topic=target, partition=partition))
    finally:
        if reader is not None:
            reader.close()
    if not plan:
        return 0
    largest = max(m.size for m in plan)
    # Acks from all replicas, idempotent: a replay must not reorder or duplicate within a partition.
    transport = ConfluentTransport(settings, timeout_s=timeout_s, **{
        "acks": "all", "enable.idempotence": True, "message.max.bytes": max(settings.max_message_bytes, largest + 100_000),
        "log_level": 3})
    try:
        transport.send_now(plan)
    except KafkaUnavailable as exc:
        raise DlqError(f"{exc}; replaying again duplicates the others (the worker counts them as duplicates)") from exc
    except KafkaRefused as exc:
        raise DlqError(f"of {len(plan)} records: {exc}") from exc
    finally:
        transport.close()
    return len(plan)
