"""The refresh-request codec and routing: which worker refreshes which list.

A request names the lists to recompute and, per list, the event time that caused it (for the
freshness metric and ``source_event_time``). It goes to the partition that owns the list's key, so
exactly one worker ever writes a given list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import orjson
from aiokafka.partitioner import murmur2


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


@dataclass
class RefreshRequest:
    """Several requests merged: every id once, with the latest event time that caused it."""

    ids: set[str] = field(default_factory=set)
    event_times: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def merged(cls, values: Iterable[bytes | None]) -> "RefreshRequest":
        out = cls()
        for raw in values:
            doc = orjson.loads(raw or b'{"ids": [], "event_times": {}}')
            out.ids.update(doc["ids"])
            for pid, t in doc["event_times"].items():
                out.event_times[pid] = max(t or 0, out.event_times.get(pid) or 0) or None
        return out
