"""The consumed record as the agents hand it over, and a rejected one on its way to the DLQ.

A dead letter keeps the original key, value, headers and timestamp, and says why in headers of its
own: the exception's class (``x-simstream-error-kind``) and message, the step that rejected it,
the attempts, the worker version, and where the record came from (topic, partition, offset,
timestamp), so that it can be inspected and replayed byte for byte (docs/operations.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from simstream import __version__

SIMSTREAM_HEADER = "x-simstream-"
# URL credentials and query strings (signed image URLs) never reach headers or logs.
_URL_SECRETS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)?(?P<rest>[^\s?#'\"]*)"
                          r"(?P<query>\?[^\s#'\"]*)?")


def redact(text: str) -> str:
    """``text`` with the userinfo and query string of every URL in it masked."""
    def mask(m: re.Match[str]) -> str:
        userinfo = "***@" if m.group("userinfo") else ""
        query = "?***" if m.group("query") else ""
        return f"{m.group('scheme')}{userinfo}{m.group('rest')}{query}"
    return _URL_SECRETS.sub(mask, text)


def _headers_of(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Faust hands headers over as a list of pairs or a mapping; values may be str or None."""
    items = raw.items() if isinstance(raw, dict) else (raw or ())
    return tuple((str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in items)


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
        """From a Faust event (``event.message``)."""
        m = event.message
        return cls(m.key, m.value, m.partition, m.offset, int(m.timestamp * 1000) if m.timestamp else None,
                   _headers_of(getattr(m, "headers", None)))


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

    def headers(self, source_topic: str) -> list[tuple[str, bytes]]:
        """The original headers, then simstream's."""
        r = self.record
        own = [
            ("x-simstream-error-kind", self.kind),
            ("x-simstream-error", redact(str(self.error))[:1000]),
            ("x-simstream-stage", self.stage),
            ("x-simstream-source-topic", source_topic),
            ("x-simstream-source-partition", str(r.partition)),
            ("x-simstream-source-offset", str(r.offset)),
            ("x-simstream-attempts", str(self.attempts)),
            ("x-simstream-worker-version", __version__),
        ]
        if r.timestamp_ms is not None:
            own.append(("x-simstream-source-timestamp", str(r.timestamp_ms)))
        return [h for h in r.headers if not h[0].startswith(SIMSTREAM_HEADER)] + [(k, v.encode()) for k, v in own]

    def value_for_dlq(self, max_bytes: int) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        """The value to send and any extra headers: the original value when key, value and headers
        fit in ``max_bytes``; else no value and ``x-simstream-value-omitted`` with its size (the
        record stays readable at its source offset while the topic retains it)."""
        r = self.record
        size = len(r.key or b"") + len(r.value or b"") + sum(len(k) + len(v) for k, v in r.headers)
        if size <= max_bytes:
            return r.value, []
        return None, [("x-simstream-value-omitted", str(len(r.value or b"")).encode())]
