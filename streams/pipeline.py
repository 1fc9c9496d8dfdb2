"""The data path as plain sync steps: validate -> coalesce -> encode -> upsert -> affected -> refresh.

Nothing here touches Kafka or the event loop; the Faust agents in ``streams/app.py`` call these in a
worker thread and do the sending. Each step is testable on its own.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import orjson

from simstream.encoders.fusion import ProductEncoder
from simstream.index.list_mirror import ListHead, stored_boundary
from simstream.index.neighbours import BuiltList, Change, ListBuilder, affected_by, now_ms, stale_lists
from simstream.index.store import StoredList, StoredProduct, VectorStore
from simstream.streams import metrics
from simstream.streams.contracts import parse_event
from simstream.records import NeighbourList, ProductEvent
from simstream.errors import BadEvent
from simstream.logs import get_logger

log = get_logger(__name__)

RACE_LOOKBACK_MS = 5_000  # clock skew allowance when re-checking concurrent writes
MAX_RECHECKS = 3


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed Kafka record, as the agent hands it over."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that goes to the dead-letter topic, with why."""

    record: RawRecord
    kind: str  # BadEvent | EncodeError
    message: str
    stage: str

    def headers(self, source_topic: str) -> list[tuple[str, bytes]]:
        return [
            ("x-simstream-error-kind", self.kind.encode()),
            ("x-simstream-error", self.message[:1000].encode()),
            ("x-simstream-stage", self.stage.encode()),
            ("x-simstream-source-topic", source_topic.encode()),
            ("x-simstream-source-partition", str(self.record.partition).encode()),
            ("x-simstream-source-offset", str(self.record.offset).encode()),
        ]


# --- step 1: validate ---------------------------------------------------------------------
def validate(records: Sequence[RawRecord]) -> tuple[list[ProductEvent], list[Rejected]]:
    """Parse every record against the contract; bad ones become Rejected, never exceptions."""
    events: list[ProductEvent] = []
    rejects: list[Rejected] = []
    for r in records:
        try:
            events.append(parse_event(r.key, r.value, partition=r.partition, offset=r.offset))
        except BadEvent as exc:
            rejects.append(Rejected(r, "BadEvent", str(exc), "validate"))
    return events, rejects


# --- step 2: coalesce ---------------------------------------------------------------------
def coalesce(events: Sequence[ProductEvent]) -> tuple[list[ProductEvent], int]:
    """Keep the highest version per product (a later offset wins a tie); returns (kept, dropped)."""
    best: dict[str, ProductEvent] = {}
    for e in events:
        cur = best.get(e.product_id)
        if cur is None or (e.version, e.offset) >= (cur.version, cur.offset):
            best[e.product_id] = e
    return list(best.values()), len(events) - len(best)


@dataclass
class IngestResult:
    affected: set[str] = field(default_factory=set)
    event_times: dict[str, int] = field(default_factory=dict)
    rejects: list[Rejected] = field(default_factory=list)
    outcomes: Tally[str] = field(default_factory=Tally)


class Ingestor:
    """Steps 3-5 for one batch: version check, encode, write to Milvus, find affected lists."""

    def __init__(self, store: VectorStore, encoder: ProductEncoder, *, candidate_pool: int,
                 tombstone_retention_s: float) -> None:
        self.store = store
        self.encoder = encoder
        self.candidate_pool = candidate_pool
        self.retention_ms = int(tombstone_retention_s * 1000)
        self._last_purge = 0.0

    def apply(self, events: Sequence[ProductEvent], records: Mapping[tuple[int, int], RawRecord]) -> IngestResult:
        result = IngestResult()
        latest, dupes_in_batch = coalesce(events)
        result.outcomes["duplicate"] += dupes_in_batch
        ids = [e.product_id for e in latest]
        t0 = time.perf_counter()
        stored = self.store.get_products(ids)
        tombs = self.store.get_tombstones(ids)
        metrics.MILVUS_SECONDS.labels("read_versions").observe(time.perf_counter() - t0)

        fresh: list[ProductEvent] = []
        # Same version as stored: a duplicate, or the replay of a batch whose writes landed but
        # whose refresh requests may not have (crash in between). Its affected set is computed
        # again from the stored state; refreshing is idempotent, so lists that did not change are
        # not republished.
        replays: list[Change] = []
        for e in latest:
            current = max(stored[e.product_id].version if e.product_id in stored else -1,
                          tombs.get(e.product_id, -1))
            if e.version < current:
                result.outcomes["stale"] += 1
            elif e.version == current:
                result.outcomes["duplicate"] += 1
                held = stored.get(e.product_id)
                replays.append(Change(e.product_id, held.vector if held is not None and not e.is_delete else None))
            elif e.is_delete and e.product_id not in stored:
                # Nothing to delete, but remember the version so an older upsert stays dead.
                self.store.upsert_tombstones({e.product_id: e.version}, now_ms())
                result.outcomes["applied"] += 1
                replays.append(Change(e.product_id, None))  # a list may have been published meanwhile
            else:
                fresh.append(e)

        upserts = [e for e in fresh if not e.is_delete]
        deletes = [e for e in fresh if e.is_delete]
        reusable = {pid: (s.vector, s.hashes) for pid, s in stored.items() if s.model == self.encoder.model}
        encoded = self.encoder.encode(upserts, reusable)
        for f, seconds in encoded.seconds.items():
            metrics.ENCODE_SECONDS.labels(f).observe(seconds)
        for event, exc in encoded.failures:
            result.rejects.append(Rejected(records[(event.partition, event.offset)], "EncodeError", str(exc), "encode"))

        written_at = now_ms()
        rows = [self._row(p, v, h, written_at) for p, v, h in zip(encoded.products, encoded.vectors, encoded.hashes)]
        t0 = time.perf_counter()
        self.store.upsert_products(rows)
        self.store.delete_tombstones([p.product_id for p in encoded.products if p.product_id in tombs])
        self.store.delete_products([e.product_id for e in deletes])
        self.store.upsert_tombstones({e.product_id: e.version for e in deletes}, written_at)
        metrics.MILVUS_SECONDS.labels("write").observe(time.perf_counter() - t0)
        result.outcomes["applied"] += len(encoded.products) + len(deletes)

        changes = [Change(p.product_id, v) for p, v in zip(encoded.products, encoded.vectors)]
        changes += [Change(e.product_id, None) for e in deletes]
        changes += replays
        if changes:
            t0 = time.perf_counter()
            result.affected = affected_by(self.store, changes, pool=self.candidate_pool)
            metrics.MILVUS_SECONDS.labels("affected").observe(time.perf_counter() - t0)
        cause = max((e.event_time or 0 for e in fresh), default=0)
        result.event_times = {pid: cause for pid in result.affected}
        for e in fresh:
            if e.event_time:
                result.event_times[e.product_id] = e.event_time
        self._maybe_purge()
        return result

    def _row(self, p: ProductEvent, vector: np.ndarray, hashes: dict[str, str], written_at: int) -> dict[str, object]:
        return {
            "product_id": p.product_id, "vector": vector.tolist(), "version": p.version,
            "brand": (p.brand or "")[:256], "category": (p.category or "")[:1000],
            "price": float(p.price) if p.price is not None else -1.0, "hashes": hashes,
            "model": self.encoder.model, "updated_at": written_at, "event_time": p.event_time or 0,
        }

    def _maybe_purge(self) -> None:
        if time.monotonic() - self._last_purge > 600:
            self._last_purge = time.monotonic()
            self.store.purge_tombstones(now_ms() - self.retention_ms)


@dataclass
class RefreshPlan:
    """Lists to publish (None = tombstone) and what to record once they are durable."""

    publish: dict[str, NeighbourList | None] = field(default_factory=dict)
    record: list[StoredList] = field(default_factory=list)
    unchanged: int = 0
    merged: int = 0  # lists updated from their recorded deep list, without a search
    searched: int = 0
    # For the re-check after recording: every list built, its owner's vector, when searching began.
    built: dict[str, NeighbourList] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    started: int = 0


class Refresher:
    """Step 6: recompute lists for affected ids, diff against what was last published."""

    def __init__(self, store: VectorStore, builder: ListBuilder, *, max_merge_changes: int = 20_000) -> None:
        self.store = store
        self.builder = builder
        self.max_merge_changes = max_merge_changes

    def plan(self, ids: Sequence[str], event_times: Mapping[str, int | None], *, search_all: bool = False) -> RefreshPlan:
        """``search_all``: never merge, search every list (``simstream reconcile``: from scratch)."""
        plan = RefreshPlan(started=now_ms())
        pending = set(ids)
        lists: dict[str, BuiltList] = {}
        heads: dict[str, ListHead] = {}
        for attempt in range(MAX_RECHECKS + 1):
            started = now_ms()
            products = self.store.get_products(sorted(pending))
            heads.update(self.store.list_heads(sorted(pending)))
            t0 = time.perf_counter()
            fresh = self._compute(products, {} if search_all else heads, event_times, started, plan)
            metrics.MILVUS_SECONDS.labels("refresh_search").observe(time.perf_counter() - t0)
            for pid in pending - products.keys():
                lists.pop(pid, None)
                plan.publish[pid] = None
                plan.built.pop(pid, None)
                plan.vectors.pop(pid, None)
            for pid, built in fresh.items():
                lists[pid] = built
                plan.publish[pid] = built.published
                plan.built[pid] = built.published
                plan.vectors[pid] = products[pid].vector
            # Writers elsewhere may have changed products while we searched: re-check those lists.
            pending = self._stale_since(started, {p: b.published for p, b in fresh.items()},
                                        {p: s.vector for p, s in products.items()})
            if not pending:
                break
            log.info("lists raced with concurrent writes; recomputing", count=len(pending), attempt=attempt + 1)
        previous = self.store.get_lists(list(plan.publish))
        for pid, maybe_list in list(plan.publish.items()):
            old = previous.get(pid)
            if maybe_list is None:
                if old is not None and not old.payload:
                    del plan.publish[pid]  # its tombstone is already published and recorded
                else:
                    # Tombstone even when nothing is recorded: a list may have been published by a
                    # refresh that crashed before recording it. Recorded as a marker (empty payload).
                    plan.record.append(StoredList(pid, [], float("inf"), b""))
                continue
            built = lists[pid]
            if old is not None and old.payload and maybe_list.same_content(NeighbourList.from_json(old.payload)):
                del plan.publish[pid]
                plan.unchanged += 1
                head = heads.get(pid)
                if head is not None and list(head.neighbour_ids) == built.deep and \
                        stored_boundary(built.boundary) == head.kth_score:
                    continue  # nothing new to record either
            # Recorded whenever the published or the deep list moved (the deep one keeps merges cheap).
            plan.record.append(self.builder.stored_form(built))
        return plan

    def _compute(self, products: Mapping[str, StoredProduct], heads: Mapping[str, ListHead],
                 event_times: Mapping[str, int | None], started: int, plan: RefreshPlan) -> dict[str, BuiltList]:
        """Merge where the recorded deep list allows it (owner unchanged since), search for the rest."""
        out: dict[str, BuiltList] = {}
        mergeable = {pid: h for pid, h in heads.items()
                     if pid in products and h.as_of and not h.is_tombstone
                     and products[pid].updated_at < h.as_of - RACE_LOOKBACK_MS} if self.store.side is not None else {}
        if mergeable:
            changed = self.store.changed_since(min(h.as_of for h in mergeable.values()) - RACE_LOOKBACK_MS)
            if len(changed) <= self.max_merge_changes:
                by_time = sorted(changed.values(), key=lambda p: p.updated_at)
                stamps = [p.updated_at for p in by_time]
                changed_ids = [p.product_id for p in by_time]
                changed_mat = np.stack([p.vector for p in by_time]) if by_time else np.zeros((0, 0), np.float32)
                members = self.store.snapshot_vectors({m for h in mergeable.values() for m in h.neighbour_ids})
                for pid, head in mergeable.items():
                    since = bisect.bisect_left(stamps, head.as_of - RACE_LOOKBACK_MS)
                    built = self.builder.merge(products[pid], head, changed_ids[since:], changed_mat[since:], members,
                                               event_times.get(pid), started)
                    if built is not None:
                        out[pid] = built
        plan.merged += len(out)
        rest = {pid: p for pid, p in products.items() if pid not in out}
        plan.searched += len(rest)
        out.update(self.builder.build(rest, event_times, as_of=started))
        return out

    def commit(self, plan: RefreshPlan) -> None:
        """Record the published lists (the reverse index); call only after they are durable."""
        self.store.upsert_lists(plan.record)

    def recheck(self, plan: RefreshPlan) -> set[str]:
        """After ``commit``: lists of this plan that a concurrent write may have made stale.

        An ingest that wrote a product after this plan's searches began and read the lists
        collection before ``commit`` saw the previous lists, so it may not have asked for these.
        Every such write is visible here (it happened before this query, or else its reads came
        after the commit and saw the new lists). The caller sends the returned ids back to the
        refresh topic, so they are recomputed by their owner."""
        if not plan.built:
            return set()
        return self._stale_since(plan.started, plan.built, plan.vectors)

    def _stale_since(self, started_ms: int, lists: Mapping[str, NeighbourList],
                     vectors: Mapping[str, np.ndarray]) -> set[str]:
        """Lists that products written or deleted since ``started_ms`` (less the skew allowance)
        may have made stale."""
        since = started_ms - RACE_LOOKBACK_MS
        return stale_lists(lists, vectors, self.store.changed_since(since), self.store.deleted_since(since),
                           k=self.builder.k)


def encode_refresh_request(ids: Sequence[str], event_times: Mapping[str, int | None]) -> bytes:
    return orjson.dumps({"ids": list(ids), "event_times": {i: event_times.get(i) for i in ids}})


def decode_refresh_request(raw: bytes) -> tuple[list[str], dict[str, int | None]]:
    doc = orjson.loads(raw)
    return doc["ids"], doc["event_times"]


__all__ = [
    "RawRecord", "Rejected", "validate", "coalesce", "Ingestor", "IngestResult", "Refresher", "RefreshPlan",
    "encode_refresh_request", "decode_refresh_request",
]
