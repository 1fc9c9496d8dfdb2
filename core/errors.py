"""Errors simstream tells apart, because each one is handled differently.

SimstreamError
 ├─ BadEvent          -> dead-letter with the reason, never retried
 ├─ EncodeError       -> dead-letter (names the field that failed), never retried
 └─ IndexUnavailable  -> retry the batch with backoff, then crash so nothing is committed
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
    """Milvus could not be reached or refused a write; retriable."""
