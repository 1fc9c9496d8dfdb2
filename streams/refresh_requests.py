"""Refresh requests as the refresh agent reads them: decoded once into one item per requested list.

A request (built by ``streams/messages.py`` ``refresh_requests``) names the lists to recompute and,
per list, the event time that caused it (for the freshness metric and ``source_event_time``). It
arrives on the partition that owns those lists, so exactly one worker ever writes a given list.
Each requested list becomes a ``RefreshItem`` that remembers its record, so that a list that fails
to refresh alone is dead-lettered alone, as a request for just that list. A request with
``"every_list": true`` asks for every list its partition owns (sent to each partition at the end of
a bulk load, streams/bulk.py); ``"republish": true`` for every list it has recorded, published as it
is (sent by ``simstream migrate`` when a generation starts to publish, streams/migrate.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import orjson

from simstream.errors import BadEvent
from simstream.streams.dead_letter import RawRecord, Rejected
from simstream.streams.messages import encode_refresh_request

__all__ = ["RefreshItem", "Requests", "decode_requests", "merge"]


@dataclass(frozen=True, slots=True)
class RefreshItem:
    """One requested list and the record that asked for it."""

    product_id: str
    event_time: int | None
    record: RawRecord

    def as_record(self) -> RawRecord:
        """The request for this list alone, at its record's partition and offset (its dead letter)."""
        value = encode_refresh_request([self.product_id], {self.product_id: self.event_time})
        return dataclasses.replace(self.record, key=self.product_id.encode(), value=value)


def _decode(raw: bytes | None) -> tuple[list[str], dict[str, int | None], bool, bool]:
    """One request's ids, event times and whether it asks for every list, and for a republish;
    BadEvent when it is not a refresh request."""
    try:
        doc = orjson.loads(raw or b"")
        ids, times = doc["ids"], doc.get("event_times") or {}
        every, republish = doc.get("every_list", False), doc.get("republish", False)
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids) and isinstance(times, dict)
                and all(isinstance(t, int) or t is None for t in times.values()) and isinstance(every, bool)
                and isinstance(republish, bool)):
            raise ValueError("ids must be strings, event_times integers, every_list and republish booleans")
        return ids, times, every, republish
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadEvent(f"not a refresh request: {str(exc)[:200]}") from None


@dataclass
class Requests:
    """A batch of refresh requests, decoded."""

    items: list[RefreshItem] = dataclasses.field(default_factory=list)
    rejects: list[Rejected] = dataclasses.field(default_factory=list)
    every_list: set[int] = dataclasses.field(default_factory=set)  # partitions asking for every list they own
    republish: set[int] = dataclasses.field(default_factory=set)  # partitions asking to publish what they recorded


def decode_requests(records: Sequence[RawRecord]) -> Requests:
    """Every requested list of ``records`` as an item; what is not a refresh request is rejected."""
    out = Requests()
    for r in records:
        try:
            ids, times, every, republish = _decode(r.value)
        except BadEvent as exc:
            out.rejects.append(Rejected(r, exc, "refresh-request"))
            continue
        out.items += [RefreshItem(pid, times.get(pid), r) for pid in ids]
        if every:
            out.every_list.add(r.partition)
        if republish:
            out.republish.add(r.partition)
    return out


def merge(items: Sequence[RefreshItem]) -> tuple[list[str], dict[str, int | None]]:
    """Every id once (sorted), with the latest event time that caused it."""
    times: dict[str, int | None] = {}
    for item in items:
        times[item.product_id] = max(item.event_time or 0, times.get(item.product_id) or 0) or None
    return sorted(times), times
