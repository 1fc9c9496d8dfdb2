"""Errors simstream tells apart, because each one is handled differently.

SimstreamError
 ├─ BadEvent              -> dead-letter with the reason, never retried
 ├─ EncodeError           -> dead-letter (names the field that failed), never retried
 ├─ IndexRejected         -> Milvus refuses the data itself (wrong dimension, value over a VARCHAR
 │                           limit, invalid expression, schema mismatch): dead-letter the record
 │                           that fails alone, never retried
 ├─ IndexUnavailable      -> Milvus did not answer in time (connect failure, DEADLINE_EXCEEDED,
 │                           UNAVAILABLE, server busy or rate-limited): retry; an outage is waited out
 ├─ KafkaUnavailable      -> a send was not acknowledged in time: retry; an outage is waited out
 ├─ KafkaRefused          -> the broker refused a message itself (too large, invalid): a dead letter
 │                           goes again as a bare pointer; anything else is narrowed down
 └─ MemoryBudgetExceeded  -> the in-memory copies of the index would not fit the process's memory
                             limit: refuse to start (names the numbers and the settings to change)

Anything else raised while a batch is applied is treated like IndexRejected: the batch is narrowed
down and the record that fails alone is dead-lettered (streams/isolation.py).
"""

from __future__ import annotations

__all__ = [
    "SimstreamError", "BadEvent", "EncodeError", "IndexUnavailable", "IndexRejected", "KafkaUnavailable",
    "KafkaRefused", "MemoryBudgetExceeded",
]


class SimstreamError(Exception):
    """Base class of every error simstream raises on purpose."""


class BadEvent(SimstreamError):
    """The input record breaks the event contract (docs/events.md)."""


class EncodeError(SimstreamError):
    """One product could not be encoded (e.g. an undecodable image)."""

    def __init__(self, field: str, message: str, *, transient: bool = False) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.transient = transient  # True: a retriable cause (timeout, 503, reset) outlasted the retries


class IndexUnavailable(SimstreamError):
    """Milvus could not be reached or did not answer within its deadline; retriable."""


class IndexRejected(SimstreamError):
    """Milvus refused the data itself (a value its schema cannot hold); retrying cannot help."""


class KafkaUnavailable(SimstreamError):
    """A send to Kafka did not complete within its deadline (broker down, paused or unreachable);
    retried until the broker answers, never dead-lettered."""


class KafkaRefused(SimstreamError):
    """Kafka refused a message itself (over the size limit, invalid); sending it again as it is
    cannot help."""


class MemoryBudgetExceeded(SimstreamError):
    """The in-memory copies of the index would not fit within the process's memory limit; raised
    before building them, so the pod fails with a reason instead of being OOM-killed mid-build."""
