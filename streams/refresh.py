"""The refresh steps as plain sync functions: plan (merge or search), record, recheck.

The refresh path (streams/pipeline.py ``DataPath.refresh``) runs them on the worker thread and
publishes in between: plan -> publish -> record -> recheck. ``simstream reconcile`` runs the same plan with
every list searched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from simstream.clock import RACE_LOOKBACK_MS, now_ms
from simstream.index.all_pairs import AllPairs
from simstream.index.neighbours import MARGIN, BuiltList, ListBuilder, RecentSearches, stale_lists
from simstream.index.rows import HeadFacts, ListHead, StoredList, StoredProduct, stored_boundary
from simstream.index.store import VectorStore
from simstream.logs import get_logger
from simstream.records import NeighbourList

__all__ = ["MAX_RECHECKS", "RefreshPlan", "Refresher"]

log = get_logger(__name__)

MAX_RECHECKS = 3


@dataclass
class RefreshPlan:
    """Lists to publish (None = tombstone) and what to record once they are durable."""

    publish: dict[str, NeighbourList | None] = field(default_factory=dict)
    record: list[StoredList] = field(default_factory=list)
    # Recorded beside the lists (in Milvus and in memory): digest, owner's row, members' scores.
    facts: dict[str, HeadFacts] = field(default_factory=dict)
    unchanged: int = 0
    merged: int = 0  # lists updated from their recorded deep list, without a search
    searched: int = 0
    # For the re-check after recording: every list built, its owner's vector, when searching began.
    built: dict[str, NeighbourList] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    started: int = 0
    # Where the side index stood when the first computation read it (``VectorStore.view``): the
    # re-check looks at the writes applied after it. None: by time, from ``started``.
    view: int | None = None
    # Vectors this plan already decoded (merged heads' members, changed products in reach): the
    # "why similar" step reuses them instead of decoding again.
    decoded: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def payloads(self) -> dict[str, bytes]:
        """The wire form of each list to publish, as recorded (encoded once, for both)."""
        return {s.product_id: s.payload for s in self.record if s.payload and self.publish.get(s.product_id)}


class Refresher:
    """Recompute the lists of affected ids and diff them against what was last published."""

    def __init__(self, store: VectorStore, builder: ListBuilder, *, max_merge_changes: int = 20_000,
                 recent: RecentSearches | None = None) -> None:
        """``max_merge_changes``: a head with more products written since it was computed is searched
        instead of merged. ``recent``: the ingest's searches around changed products (their own
        lists merge from those)."""
        self.store = store
        self.builder = builder
        self.max_merge_changes = max_merge_changes
        self.recent = recent

    def plan(self, ids: Sequence[str], event_times: Mapping[str, int | None], *, search_all: bool = False,
             scan: AllPairs | None = None) -> RefreshPlan:
        """``search_all``: never merge, search every list (``simstream reconcile``: from scratch).
        ``scan``: a finished every-list pass (``every_list_pass``) whose candidates the searches use;
        the plan then counts as begun when the pass did (what it read is that old)."""
        plan = RefreshPlan(started=now_ms() if scan is None else min(now_ms(), scan.started_ms))
        with self.store.one_sync():  # one read of what other workers wrote, at the first question
            return self._plan(plan, set(ids), event_times, search_all=search_all, scan=scan)

    def _plan(self, plan: RefreshPlan, pending: set[str], event_times: Mapping[str, int | None], *,
              search_all: bool, scan: AllPairs | None) -> RefreshPlan:
        """``plan`` inside one sync: compute (again, while writes race), then diff."""
        lists: dict[str, BuiltList] = {}
        heads: dict[str, ListHead] = {}
        for attempt in range(MAX_RECHECKS + 1):
            if attempt == 0:
                pending = self._attempt(plan.started, pending, plan, lists, heads, event_times, search_all, scan,
                                        first=True)
            else:  # read again: the searches must see every write made before ``started``
                with self.store.one_sync():
                    pending = self._attempt(now_ms(), pending, plan, lists, heads, event_times, search_all, None)
            if not pending:
                break
            log.info("lists raced with concurrent writes; recomputing", count=len(pending), attempt=attempt + 1)
        # Diff against what was published: from the digests this worker keeps beside the lists it
        # recorded, else by reading the recorded payload back.
        digests = self.store.list_digests([pid for pid, nl in plan.publish.items() if nl is not None])
        previous = self.store.get_lists([pid for pid in plan.publish if pid not in digests])
        recorded: list[str] = []
        keep: dict[str, tuple[ListHead, HeadFacts]] = {}
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
            # the recorded payload's digest: held, or from the payload read back (parsed once)
            digest = digests.get(pid)
            if digest is not None:
                same = digest == maybe_list.content_digest()
            else:
                was = NeighbourList.from_json(old.payload) if old is not None and old.payload else None
                same = maybe_list.same_content(was)
                digest = was.content_digest() if same and was is not None else None
            if same:
                del plan.publish[pid]
                plan.unchanged += 1
                head = heads.get(pid)
                if head is not None and list(head.neighbour_ids) == built.deep and \
                        stored_boundary(built.boundary) == head.boundary:
                    if (not head.scores or head.owner is None) and built.owner is not None and digest is not None:
                        # held beside the head from now on: its next merge decodes nothing, and
                        # may merge while the owner's row is this one
                        keep[pid] = (head, HeadFacts(digest, built.owner, built.packed_scores))
                    continue  # nothing new to record either
            # Recorded whenever the published or the deep list moved (the deep one keeps merges cheap).
            recorded.append(pid)
        self.store.keep_known(keep)
        # Only the lists that go out (published or recorded) get their "why similar" fields.
        explained = self.builder.explain({pid: lists[pid] for pid in recorded}, plan.vectors, plan.decoded)
        for pid in recorded:
            built = explained[pid]
            if pid in plan.publish:
                plan.publish[pid] = built.published
            plan.built[pid] = built.published
            plan.record.append(self.builder.stored_form(built))
            if built.owner is not None:
                plan.facts[pid] = HeadFacts(built.published.content_digest(), built.owner, built.packed_scores)
        return plan

    def _attempt(self, started: int, pending: set[str], plan: RefreshPlan, lists: dict[str, BuiltList],
                 heads: dict[str, ListHead], event_times: Mapping[str, int | None], search_all: bool,
                 scan: AllPairs | None, *, first: bool = False) -> set[str]:
        """Compute the lists of ``pending`` from the store as read after ``started``; returns the
        ones that writes elsewhere may have made stale meanwhile (``first``: the plan's first try)."""
        products = self.store.get_products(sorted(pending))  # the first read: synced here
        # A pass made earlier (``scan``) read older states: its writes since are judged by time.
        view = self.store.view() if scan is None else None
        if first:  # the re-check after recording starts from the earliest state read
            plan.view = view
        heads.update(self.store.list_heads(sorted(pending)))
        fresh = self._compute(products, heads, event_times, started, plan, search_all=search_all, scan=scan)
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
        return self._stale_since(started, view, {p: b.published for p, b in fresh.items()},
                                 {p: s.vector for p, s in products.items()})

    def _compute(self, products: Mapping[str, StoredProduct], heads: Mapping[str, ListHead],
                 event_times: Mapping[str, int | None], started: int, plan: RefreshPlan, *,
                 search_all: bool = False, scan: AllPairs | None = None) -> dict[str, BuiltList]:
        """Merge where a head allows it (the recorded deep list, owner unchanged since; or the
        ingest's own search around a changed owner), search for the rest, in one batched pass."""
        out: dict[str, BuiltList] = {}
        mergeable: dict[str, ListHead] = {}
        if self.store.side is not None and not search_all:
            # The owner's vector is the one the head was made for: its row is the very one (known
            # to the worker that made the head), or it was written before the head's state was read.
            mergeable = {pid: h for pid, h in heads.items()
                         if pid in products and h.as_of and not h.is_tombstone
                         and (h.owner == (products[pid].version, products[pid].updated_at)
                              or products[pid].updated_at < h.as_of - RACE_LOOKBACK_MS)}
            if self.recent is not None:
                for pid, p in products.items():
                    if pid not in mergeable and (h := self.recent.take(pid, p.vector, self.builder.depth)) is not None:
                        mergeable[pid] = h
            mergeable = self._young(mergeable)
        if mergeable:
            out = self._merge(products, mergeable, event_times, started, plan.decoded)
        plan.merged += len(out)
        rest = {pid: p for pid, p in products.items() if pid not in out}
        plan.searched += len(rest)
        out.update(self.builder.build(rest, event_times, as_of=started, scan=scan))
        return out

    def every_list_pass(self) -> AllPairs | None:
        """An all-pairs pass wide enough for every list's search (index/all_pairs.py), to
        ``advance`` until done and then give to ``plan``; None without the side index."""
        return self.store.all_pairs(self.builder.search_limit)

    def _young(self, heads: dict[str, ListHead]) -> dict[str, ListHead]:
        """The heads with at most ``max_merge_changes`` products written since they were computed:
        an old head is searched (and recorded anew), without stopping the young ones from merging."""
        since = {pid: h.as_of - RACE_LOOKBACK_MS for pid, h in heads.items()}
        counts = self.store.count_written_since(list(since.values()))
        return {pid: heads[pid] for pid, n in zip(since, counts) if n <= self.max_merge_changes}

    def _merge(self, products: Mapping[str, StoredProduct], heads: Mapping[str, ListHead],
               event_times: Mapping[str, int | None], started: int, decoded: dict[str, np.ndarray]) -> dict[str, BuiltList]:
        """Merge every head in one go: one product of the owners with the rows written since their
        heads (on the packed values) picks, per owner, the changed products within reach of its
        boundary; only those are decoded and scored exactly, and the unchanged members keep the
        scores held beside their head (decoded and scored only where it holds none)."""
        out: dict[str, BuiltList] = {}
        owners = list(heads)
        cuts = [heads[pid].as_of - RACE_LOOKBACK_MS for pid in owners]
        bars = [-np.inf if heads[pid].holds_everyone else heads[pid].boundary + MARGIN for pid in owners]
        reach = self.store.reaching_written_since(np.stack([products[pid].vector for pid in owners]), cuts, bars)
        # Members are decoded only for heads that do not carry their scores (recorded elsewhere).
        members = self.store.snapshot_vectors({m for h in heads.values() if not h.scores for m in h.neighbour_ids})
        decoded.update(members)
        written = self.store.written_at({m for h in heads.values() for m in h.neighbour_ids})
        for near in reach:
            decoded.update(near)
        for pid, cut, near in zip(owners, cuts, reach):
            head = heads[pid]
            # members written since the head (or gone: not in ``members``) are not taken as recorded
            changed = {m for m in head.neighbour_ids if written.get(m, cut) >= cut}
            built = self.builder.merge(products[pid], head, near, changed, members, event_times.get(pid), started)
            if built is not None:
                out[pid] = built
        return out

    def record(self, plan: RefreshPlan) -> None:
        """Record the published lists (the reverse index); call only after they are durable."""
        self.store.upsert_lists(plan.record, plan.facts)

    def recheck(self, plan: RefreshPlan) -> set[str]:
        """After ``record``: lists of this plan that a concurrent write may have made stale.

        An ingest that wrote a product after this plan's searches began and read the lists
        collection before ``record`` saw the previous lists, so it may not have asked for these.
        Every such write is visible here (it happened before this query, or else its reads came
        after the record and saw the new lists). The caller sends the returned ids back to the
        refresh topic, so they are recomputed by their owner."""
        if not plan.built:
            return set()
        return self._stale_since(plan.started, plan.view, plan.built, plan.vectors)

    def _stale_since(self, started_ms: int, view: int | None, lists: Mapping[str, NeighbourList],
                     vectors: Mapping[str, np.ndarray]) -> set[str]:
        """Lists that products written or deleted since they were computed may have made stale:
        the writes applied to the side index after ``view``; without one, every write since
        ``started_ms`` less the skew allowance (docs/exactness.md §2a)."""
        changed, deleted = self.store.changes_after(view, started_ms - RACE_LOOKBACK_MS)
        return stale_lists(lists, vectors, changed, deleted, k=self.builder.k, metric=self.builder.metric)
