"""Refresh requests as the refresh agent reads them: decoded once into one item per requested list.

A request (built by ``streams/messages.py`` ``refresh_requests``) names the lists to recompute and,
per list, the event time that caused it (for the freshness metric and ``source_event_time``). It
arrives on the partition that owns those lists, so exactly one worker ever writes a given list.
Each requested list becomes a ``RefreshItem`` that remembers its record, so that a list that fails
to refresh alone is dead-lettered alone, as a request for just that list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import orjson

from simstream.errors import BadEvent
from simstream.streams.dead_letter import RawRecord, Rejected
from simstream.streams.messages import encode_refresh_request

__all__ = ["RefreshItem", "Requested", "decode_requests", "merge"]


@dataclass(frozen=True, slots=True)
class RefreshItem:
    """One requested list and the record that asked for it."""

    product_id: str
    event_time: int | None
    record: RawRecord
    causes: tuple[str, ...] | None = None  # the changed products that made the list affected, if named

    def as_record(self) -> RawRecord:
        """The request for this list alone, at its record's partition and offset (its dead letter)."""
        value = encode_refresh_request([self.product_id], {self.product_id: self.event_time},
                                       None if self.causes is None else {self.product_id: self.causes})
        return dataclasses.replace(self.record, key=self.product_id.encode(), value=value)


def _decode(raw: bytes | None) -> tuple[list[str], dict[str, int | None], dict[str, tuple[str, ...]]]:
    """One request's ids, event times and causes; BadEvent when it is not a refresh request. Causes
    that are not lists of strings are ignored (a list without causes merges from everything written
    since it was recorded: slower, never wrong)."""
    try:
        doc = orjson.loads(raw or b"")
        ids, times = doc["ids"], doc.get("event_times") or {}
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids) and isinstance(times, dict)
                and all(isinstance(t, int) or t is None for t in times.values())):
            raise ValueError("ids must be strings and event_times integers")
        raw_causes = doc.get("causes")
        causes = {pid: tuple(c) for pid, c in raw_causes.items()
                  if isinstance(c, list) and all(isinstance(x, str) for x in c)} if isinstance(raw_causes, dict) else {}
        return ids, times, causes
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadEvent(f"not a refresh request: {str(exc)[:200]}") from None


def decode_requests(records: Sequence[RawRecord]) -> tuple[list[RefreshItem], list[Rejected]]:
    """Every requested list of ``records`` as an item; what is not a refresh request is rejected."""
    items: list[RefreshItem] = []
    rejects: list[Rejected] = []
    for r in records:
        try:
            ids, times, causes = _decode(r.value)
        except BadEvent as exc:
            rejects.append(Rejected(r, exc, "refresh-request"))
            continue
        items += [RefreshItem(pid, times.get(pid), r, causes.get(pid)) for pid in ids]
    return items, rejects


@dataclass
class Requested:
    """A batch of requests merged: every id once (sorted), the latest event time that caused each,
    and the union of its causes where *every* request for it named them."""

    ids: list[str]
    event_times: dict[str, int | None]
    causes: dict[str, set[str]]


def merge(items: Sequence[RefreshItem]) -> Requested:
    times: dict[str, int | None] = {}
    causes: dict[str, set[str]] = {}
    unnamed: set[str] = set()
    for item in items:
        pid = item.product_id
        times[pid] = max(item.event_time or 0, times.get(pid) or 0) or None
        if item.causes is None:
            unnamed.add(pid)
        else:
            causes.setdefault(pid, set()).update(item.causes)
    return Requested(sorted(times), times, {pid: c for pid, c in causes.items() if pid not in unnamed})
