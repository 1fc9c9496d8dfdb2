"""Errors simstream tells apart, because each one is handled differently.

SimstreamError
 ├─ BadEvent          -> dead-letter with the reason, never retried
 ├─ EncodeError       -> dead-letter (names the field that failed), never retried
 ├─ IndexRejected     -> Milvus refuses the data itself: dead-letter the record that fails alone
 ├─ IndexUnavailable  -> Milvus did not answer in time: retry; an outage is waited out
 └─ KafkaUnavailable  -> a send was not acknowledged in time: retry; an outage is waited out

Anything else raised while a batch is applied is treated like IndexRejected: the batch is narrowed
down and the record that fails alone is dead-lettered (streams/isolation.py).
"""

from __future__ import annotations


class SimstreamError(Exception):
    """Base class of every error simstream raises on purpose."""


class BadEvent(SimstreamError):
    """The input record breaks the event contract (docs/events.md)."""


class EncodeError(SimstreamError):
    """One product could not be encoded (e.g. an undecodable image)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class IndexUnavailable(SimstreamError):
    """Milvus could not be reached or did not answer within its deadline; retriable."""


class IndexRejected(SimstreamError):
    """Milvus refused the data itself (a value its schema cannot hold); retrying cannot help."""


class KafkaUnavailable(SimstreamError):
    """A send to Kafka did not complete within its deadline (broker down, paused or unreachable);
    retried until the broker answers, never dead-lettered."""
