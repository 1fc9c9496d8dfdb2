"""The ingest steps as plain sync functions: validate, coalesce, check versions, encode, write,
affected set. ``streams/pipeline.py`` ``ingest_steps`` calls them in that order on the worker thread
(for the agent through ``DataPath.ingest``, and for ``simstream backfill``);
nothing here touches Kafka or the event loop, so each step is testable on its own.
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from simstream.clock import now_ms
from simstream.encoders.fusion import EncodedBatch, ProductEncoder
from simstream.errors import BadEvent
from simstream.index.neighbours import Change, RecentSearches, affected_by
from simstream.index.rows import StoredProduct, product_row
from simstream.index.store import VectorStore
from simstream.records import ProductEvent
from simstream.streams.contracts import parse_event
from simstream.streams.dead_letter import RawRecord, Rejected

__all__ = ["validate", "coalesce", "VersionCheck", "encode_rejects", "refresh_causes", "Carry", "Ingest", "outcome_counts"]

#: product id -> (fused vector in this encoder's layout, field hashes) of segments to reuse
Carry = Callable[[Sequence[ProductEvent]], Mapping[str, tuple[np.ndarray, Mapping[str, str]]]]


def validate(records: Sequence[RawRecord]) -> tuple[list[ProductEvent], list[Rejected]]:
    """Parse every record against the contract; bad ones become Rejected, never exceptions."""
    events: list[ProductEvent] = []
    rejects: list[Rejected] = []
    for r in records:
        try:
            events.append(parse_event(r.key, r.value, partition=r.partition, offset=r.offset))
        except BadEvent as exc:
            rejects.append(Rejected(r, exc, "validate"))
    return events, rejects


def coalesce(events: Sequence[ProductEvent]) -> tuple[list[ProductEvent], int]:
    """Keep the highest version per product (a later offset wins a tie); returns (kept, dropped)."""
    best: dict[str, ProductEvent] = {}
    for e in events:
        if e.supersedes(best.get(e.product_id)):
            best[e.product_id] = e
    return list(best.values()), len(events) - len(best)


@dataclass
class VersionCheck:
    """What a batch does to the index: upserts and deletes newer than what is stored, and the
    duplicates whose affected set is computed again (the replay of a batch that crashed after its
    writes but before its refresh requests were durable)."""

    upserts: list[ProductEvent] = field(default_factory=list)
    deletes: list[ProductEvent] = field(default_factory=list)
    replays: list[Change] = field(default_factory=list)
    duplicates: list[ProductEvent] = field(default_factory=list)  # the events behind ``replays``
    stored: dict[str, StoredProduct] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    outcomes: Tally[str] = field(default_factory=Tally)

    @property
    def fresh(self) -> list[ProductEvent]:
        return self.upserts + self.deletes


def encode_rejects(encoded: EncodedBatch, records: Sequence[RawRecord]) -> list[Rejected]:
    """The products the encoders could not encode, as dead letters of their original records."""
    by_position = {(r.partition, r.offset): r for r in records}
    return [Rejected(by_position[(e.partition, e.offset)], exc, "encode") for e, exc in encoded.failures]


def refresh_causes(check: VersionCheck, affected: set[str]) -> dict[str, int]:
    """Per affected list, the event time that caused its refresh (the batch's latest, or the
    product's own for its own list)."""
    cause = max((e.event_time or 0 for e in check.fresh), default=0)
    times = {pid: cause for pid in affected}
    times.update({e.product_id: e.event_time for e in check.fresh if e.event_time})
    return times


class Ingest:
    """The steps that read or write the index, over one store and one encoder."""

    def __init__(self, store: VectorStore, encoder: ProductEncoder, *, candidate_pool: int,
                 recent: RecentSearches | None = None, carry: Carry | None = None) -> None:
        """``recent``: where the affected-set search keeps each changed product's exact top list for
        its own refresh (``Refresher``, same object). ``carry``: segments to reuse for products this
        index does not hold yet, from another generation's index (a migration's fill: streams/migrate.py)."""
        self.store = store
        self.encoder = encoder
        self.candidate_pool = candidate_pool
        self.recent = recent
        self.carry = carry

    def check_versions(self, latest: Sequence[ProductEvent]) -> VersionCheck:
        """Split coalesced events into stale, duplicate and fresh against the stored versions and
        delete markers."""
        ids = [e.product_id for e in latest]
        with self.store.one_sync():
            check = VersionCheck(stored=self.store.get_products(ids), tombstones=self.store.get_tombstones(ids))
        for e in latest:
            held = check.stored.get(e.product_id)
            current = max(held.version if held is not None else -1, check.tombstones.get(e.product_id, -1))
            if e.version < current:
                check.outcomes["stale"] += 1
            elif e.version == current:
                check.outcomes["duplicate"] += 1
                check.replays.append(Change(e.product_id, held.vector if held is not None and not e.is_delete else None))
                check.duplicates.append(e)
            elif e.is_delete:
                # Also when nothing is stored: the marker keeps an older upsert dead.
                check.deletes.append(e)
            else:
                check.upserts.append(e)
        return check

    def encode(self, check: VersionCheck) -> EncodedBatch:
        """Encode the upserts, re-using the stored vector of every field whose content is unchanged."""
        model = self.encoder.model
        reusable: dict[str, tuple[np.ndarray, Mapping[str, str]]] = {
            pid: (s.vector, s.hashes) for pid, s in check.stored.items() if s.model == model}
        if self.carry is not None and (others := [e for e in check.upserts if e.product_id not in reusable]):
            reusable.update(self.carry(others))
        return self.encoder.encode(check.upserts, reusable)

    def write(self, check: VersionCheck, encoded: EncodedBatch) -> list[Change]:
        """Write to Milvus: upserts, deletes and their markers. Returns every change, replays included."""
        written_at = now_ms()
        model = self.encoder.model
        self.store.upsert_products([product_row(p, v, h, model, written_at)
                                    for p, v, h in zip(encoded.products, encoded.vectors, encoded.hashes)])
        self.store.delete_tombstones([p.product_id for p in encoded.products if p.product_id in check.tombstones])
        self.store.delete_products([e.product_id for e in check.deletes if e.product_id in check.stored])
        self.store.upsert_tombstones({e.product_id: e.version for e in check.deletes}, written_at)
        check.outcomes["applied"] += len(encoded.products) + len(check.deletes)
        changes = [Change(p.product_id, v) for p, v in zip(encoded.products, encoded.vectors)]
        return changes + [Change(e.product_id, None) for e in check.deletes] + check.replays

    def affected_set(self, changes: Sequence[Change]) -> set[str]:
        """The lists that may differ after ``changes`` (call after ``write``: index/neighbours.py)."""
        if not changes:
            return set()
        with self.store.one_sync():  # read after the write, once for all the questions
            return affected_by(self.store, changes, pool=self.candidate_pool, recent=self.recent)

    def purge_tombstones(self, retention_s: float) -> None:
        """Forget delete markers older than the retention (docs/exactness.md)."""
        self.store.purge_tombstones(now_ms() - int(retention_s * 1000))


def outcome_counts(check: VersionCheck, dropped_in_batch: int) -> Mapping[str, int]:
    """applied / stale / duplicate counts of one batch (duplicates within the batch included)."""
    counts = Tally(check.outcomes)
    counts["duplicate"] += dropped_in_batch
    return counts
