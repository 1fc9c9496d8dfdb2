"""The refresh-request codec and routing: which worker refreshes which list.

A request names the lists to recompute and, per list, the event time that caused it (for the
freshness metric and ``source_event_time``). It goes to the partition that owns the list's key, so
exactly one worker ever writes a given list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import orjson
from aiokafka.partitioner import murmur2

from simstream.errors import BadEvent
from simstream.streams.dead_letter import RawRecord, Rejected


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so refresh work lands where the list's key lives."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def route(ids: Iterable[str], partitions: int) -> dict[int, list[str]]:
    """Ids grouped by the partition that owns their lists (sorted, so requests are deterministic)."""
    routed: dict[int, list[str]] = {}
    for pid in sorted(ids):
        routed.setdefault(partition_for(pid, partitions), []).append(pid)
    return routed


def encode_refresh_request(ids: Sequence[str], event_times: Mapping[str, int | None]) -> bytes:
    return orjson.dumps({"ids": list(ids), "event_times": {i: event_times.get(i) for i in ids}})


def encode_refresh_requests(ids: Sequence[str], event_times: Mapping[str, int | None], max_bytes: int) -> list[bytes]:
    """``ids`` as one or more requests, each at most ``max_bytes`` (a whole catalog's worth of
    affected lists must not exceed the broker's message size)."""
    out: list[bytes] = []
    chunk: list[str] = []
    size = 32
    for pid in ids:
        entry = len(orjson.dumps(pid)) * 2 + 24  # the id in "ids" and as a key of "event_times", with a time
        if chunk and size + entry > max_bytes:
            out.append(encode_refresh_request(chunk, event_times))
            chunk, size = [], 32
        chunk.append(pid)
        size += entry
    if chunk:
        out.append(encode_refresh_request(chunk, event_times))
    return out


def _decode(raw: bytes | None) -> tuple[list[str], dict[str, int | None]]:
    """One request's ids and event times; BadEvent when it is not a refresh request."""
    try:
        doc = orjson.loads(raw or b"")
        ids, times = doc["ids"], doc.get("event_times") or {}
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids) and isinstance(times, dict)
                and all(isinstance(t, int) or t is None for t in times.values())):
            raise ValueError("ids must be strings and event_times integers")
        return ids, times
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadEvent(f"not a refresh request: {str(exc)[:200]}") from None


@dataclass
class RefreshRequest:
    """Several requests merged: every id once, with the latest event time that caused it."""

    ids: set[str] = field(default_factory=set)
    event_times: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def decode(cls, records: Sequence[RawRecord]) -> tuple["RefreshRequest", list[Rejected]]:
        """Merge the requests of ``records``; what is not a refresh request is rejected."""
        out, rejects = cls(), []
        for r in records:
            try:
                ids, times = _decode(r.value)
            except BadEvent as exc:
                rejects.append(Rejected(r, exc, "refresh-request"))
                continue
            out.ids.update(ids)
            for pid in ids:
                t = times.get(pid)
                out.event_times[pid] = max(t or 0, out.event_times.get(pid) or 0) or None
        return out, rejects

    @staticmethod
    def split(records: Sequence[RawRecord]) -> list[RawRecord]:
        """One record per requested id (same partition and offset), so that a list that fails to
        refresh can be told apart from the others it was requested with; what does not decode
        stays whole, to be rejected."""
        out: list[RawRecord] = []
        for r in records:
            try:
                ids, times = _decode(r.value)
            except BadEvent:
                out.append(r)
                continue
            out += [dataclasses.replace(r, key=pid.encode(), value=encode_refresh_request([pid], times)) for pid in ids]
        return out
