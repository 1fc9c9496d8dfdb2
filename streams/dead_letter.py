"""The consumed record as the agents hand it over, and a rejected one on its way to the DLQ.

A dead letter keeps the original key, value, headers and timestamp, and says why in headers of its
own, appended after the original ones: the exception's class (``x-simstream-error-kind``) and
message, the step that rejected it, the attempts, the worker version, when it was rejected, and
where the record came from (topic, partition, offset, timestamp), so that it can be inspected and
replayed byte for byte (streams/dlq.py, ``simstream dlq``, docs/operations.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from simstream import __version__
from simstream.limits import MAX_ERROR_HEADER_BYTES
from simstream.redact import redact

__all__ = ["SIMSTREAM_HEADER", "KIND_HEADER", "RawRecord", "Rejected"]

SIMSTREAM_HEADER = "x-simstream-"
KIND_HEADER = "x-simstream-error-kind"  # the first of simstream's headers: everything before it is the original's
def _clip(text: str, max_bytes: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``max_bytes`` without splitting a character."""
    return text.encode()[:max_bytes].decode("utf-8", "ignore").encode()


def _headers_of(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Faust hands headers over as a list of pairs or a mapping; values may be str or None."""
    items = raw.items() if isinstance(raw, dict) else (raw or ())
    return tuple((k.decode() if isinstance(k, bytes) else str(k),
                  v if isinstance(v, bytes) else str(v if v is not None else "").encode()) for k, v in items)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed Kafka record."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, event: Any) -> "RawRecord":
        """From a Faust event (``event.message``; its timestamp is in seconds)."""
        m = event.message
        return cls(m.key, m.value, m.partition, m.offset, round(m.timestamp * 1000) if m.timestamp else None,
                   _headers_of(getattr(m, "headers", None)))

    @property
    def size(self) -> int:
        """Key, value and header bytes (what counts against Kafka's request limit)."""
        return len(self.key or b"") + len(self.value or b"") + sum(len(k.encode()) + len(v) for k, v in self.headers)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that goes to the dead-letter topic, with the error that rejected it."""

    record: RawRecord
    error: BaseException
    stage: str
    attempts: int = 1

    @property
    def kind(self) -> str:
        return type(self.error).__name__

    @property
    def reason(self) -> str:
        """The error message with URL secrets masked (for headers and logs)."""
        return redact(str(self.error) or repr(self.error))

    def headers(self, source_topic: str) -> list[tuple[str, bytes]]:
        """The original headers, unchanged and in order, then simstream's (``KIND_HEADER`` first)."""
        r = self.record
        own: list[tuple[str, bytes]] = [
            (KIND_HEADER, self.kind.encode()),
            ("x-simstream-error", _clip(self.reason, MAX_ERROR_HEADER_BYTES)),
            ("x-simstream-stage", self.stage.encode()),
            ("x-simstream-source-topic", source_topic.encode()),
            ("x-simstream-source-partition", str(r.partition).encode()),
            ("x-simstream-source-offset", str(r.offset).encode()),
        ]
        if r.timestamp_ms is not None:
            own.append(("x-simstream-source-timestamp", str(r.timestamp_ms).encode()))
        own += [
            ("x-simstream-attempts", str(self.attempts).encode()),
            ("x-simstream-worker-version", __version__.encode()),
            ("x-simstream-rejected-at", str(int(time.time() * 1000)).encode()),
        ]
        return list(r.headers) + own

    def value_for_dlq(self, max_bytes: int) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        """The value to send and any extra headers: the original value when key, value and headers
        fit in ``max_bytes``; else no value and ``x-simstream-value-omitted`` with its size (the
        record stays readable at its source offset while the topic retains it; replay reads it there)."""
        r = self.record
        if r.size <= max_bytes:
            return r.value, []
        return None, [("x-simstream-value-omitted", str(len(r.value or b"")).encode())]
