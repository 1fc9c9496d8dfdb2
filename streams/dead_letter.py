"""The consumed record as the agents hand it over, and a rejected one on its way to the DLQ.

A dead letter carries the original key and bytes and says why in its headers: the exception's
class (``x-simstream-error-kind``), its message, the step that rejected it, and where the record
came from (topic, partition, offset), so it can be inspected and replayed (docs/events.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simstream.errors import SimstreamError


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed Kafka record."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int | None = None

    @classmethod
    def of(cls, event: Any) -> "RawRecord":
        """From a Faust event (``event.message``)."""
        m = event.message
        return cls(m.key, m.value, m.partition, m.offset, int(m.timestamp * 1000) if m.timestamp else None)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that goes to the dead-letter topic, with the error that rejected it."""

    record: RawRecord
    error: SimstreamError
    stage: str

    @property
    def kind(self) -> str:
        return type(self.error).__name__

    def headers(self, source_topic: str) -> list[tuple[str, bytes]]:
        return [
            ("x-simstream-error-kind", self.kind.encode()),
            ("x-simstream-error", str(self.error)[:1000].encode()),
            ("x-simstream-stage", self.stage.encode()),
            ("x-simstream-source-topic", source_topic.encode()),
            ("x-simstream-source-partition", str(self.record.partition).encode()),
            ("x-simstream-source-offset", str(self.record.offset).encode()),
        ]
