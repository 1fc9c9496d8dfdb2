"""Neighbour lists: who is affected by a change, exact top-K per product, and stale-list checks.

Plain functions over a VectorStore and numpy arrays; the stream calls them, and so does
``simstream reconcile``, so both share one code path. docs/exactness.md argues why nothing is
missed; in short:

- X's own list is recomputed whenever X changes.
- X *leaves* (or changes its score in) Y's list only if Y lists X now: the lists collection is a
  reverse index (``listers_of``), so that set is exact.
- X *enters* Y's list only if score(X, Y) >= the boundary of Y's recorded list. With the side
  index, the scan around X compares every row with its own list's boundary in the same pass
  (``VectorStore.search_reaching``). Without it, candidates come from a search around X's new
  vector; while the weakest candidate still qualifies, the search widens (x4, up to
  ``max_pool``); a product beyond the searched pool scores at most the pool's weakest score, so
  only lists whose boundary is that low can still qualify, and those are checked exactly.
- Races with concurrent writers are closed afterwards by ``stale_lists``: every product written
  since a refresh started its search is re-checked against the lists that refresh produced, once
  before publishing (``Refresher.plan``) and once more after recording (``Refresher.recheck``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Container, Mapping, Sequence

import numpy as np

from simstream.clock import now_ms
from simstream.index.all_pairs import AllPairs
from simstream.index.exact import SCORE_DECIMALS, rank_key
from simstream.index.rows import ListHead, StoredList, StoredProduct, stored_boundary
from simstream.index.store import VectorStore
from simstream.match import MatchModel
from simstream.metric import IP, Metric
from simstream.records import Neighbour, NeighbourList

__all__ = [
    "TIE_MARGIN", "MARGIN", "RECENT_SEARCHES_MIN", "contributions", "FieldShares", "match_probabilities", "Change", "RecentSearches", "affected_by", "BuiltList", "ListBuilder",
    "stale_lists", "in_rank_order",
]

TIE_MARGIN = 5  # extra hits fetched so ties at the k-th place are broken by product_id, not chance
MARGIN = 1e-5  # affected-set comparisons use Milvus' float32 scores: err towards recomputing
RECENT_SEARCHES_MIN = 1024  # searches kept for their product's own list at least (RecentSearches)


def contributions(a: np.ndarray, bs: Sequence[np.ndarray] | np.ndarray, layout: Mapping[str, slice],
                  metric: Metric = IP) -> list[dict[str, float]]:
    """Per-field "why similar" of ``a`` with each of ``bs``: the field's share of the score, which
    the shares sum to. Inner product: the field's dot product, for every field present (non-zero)
    in both. ``l2``: minus half the field's squared distance, for every field present in either (a
    field only one side holds counts against the pair)."""
    if not len(bs):
        return []
    return FieldShares(layout, metric).of(np.asarray(a), np.asarray(bs) if isinstance(bs, np.ndarray) else np.stack(bs))


class FieldShares:
    """Per-field dot products of one vector with many: one product per field the first vector
    holds (a field it lacks has no share, so an unused field, e.g. images off, costs nothing), and
    which fields each of the others holds from one segmented ``np.logical_or.reduceat`` over the
    field boundaries instead of one pass per field. Under ``l2``, each field's share of the distance
    (``_distance_shares``)."""

    def __init__(self, layout: Mapping[str, slice], metric: Metric = IP) -> None:
        self.metric = metric
        fields = sorted(((f, s) for f, s in layout.items() if s.stop > s.start), key=lambda t: t[1].start)
        for (_, s), (_, t) in zip(fields, fields[1:]):
            if s.stop > t.start:
                raise ValueError(f"fields overlap: {s} and {t}")
        edges = sorted({e for _, s in fields for e in (s.start, s.stop)})
        self.fields = fields
        self.starts = np.asarray(edges[:-1], np.intp)  # every field starts at one of these
        self.pick = np.asarray([edges.index(s.start) for _, s in fields], np.intp)
        self.stop = edges[-1] if edges else 0

    def of(self, a: np.ndarray, bs: np.ndarray) -> list[dict[str, float]]:
        """``contributions`` of ``a`` with each row of ``bs``."""
        if not self.fields:
            return [{} for _ in range(len(bs))]
        if self.metric.has_offsets:
            return self._distance_shares(np.broadcast_to(a, bs.shape), bs)
        mine = np.logical_or.reduceat(a[: self.stop] != 0, self.starts)[self.pick]
        used = [fs for fs, has in zip(self.fields, mine.tolist()) if has]
        if not used:
            return [{} for _ in range(len(bs))]
        present = np.logical_or.reduceat(bs[:, : self.stop] != 0, self.starts, axis=1)[:, self.pick[mine]]
        shares = np.round(np.stack([bs[:, s] @ a[s] for _, s in used], axis=1).astype(np.float64), SCORE_DECIMALS)
        names = [f for f, _ in used]
        return [{f: v for f, v, has in zip(names, row, held) if has}
                for row, held in zip(shares.tolist(), present.tolist())]

    def pairs(self, queries: np.ndarray, rows: np.ndarray) -> list[dict[str, float]]:
        """``contributions`` of each ``queries[i]`` with ``rows[i]`` (both float32, n x dim), in a
        few array operations for all pairs (serve's pass: every query's hits at once, instead of
        a dozen small numpy calls per request). Sums in float64 (``of`` sums in float32: the two
        may differ in the last decimal)."""
        if not self.fields or not len(rows):
            return [{} for _ in range(len(rows))]
        if self.metric.has_offsets:
            return self._distance_shares(queries, rows)
        products = np.multiply(queries[:, : self.stop], rows[:, : self.stop], dtype=np.float64)
        shares = np.round(np.add.reduceat(products, self.starts, axis=1)[:, self.pick], SCORE_DECIMALS)
        both = (np.logical_or.reduceat(queries[:, : self.stop] != 0, self.starts, axis=1)
                & np.logical_or.reduceat(rows[:, : self.stop] != 0, self.starts, axis=1))[:, self.pick]
        names = [f for f, _ in self.fields]
        return [{f: v for f, v, has in zip(names, row, held) if has}
                for row, held in zip(shares.tolist(), both.tolist())]


    def _distance_shares(self, queries: np.ndarray, rows: np.ndarray) -> list[dict[str, float]]:
        """``l2``: each field's -|q_f - r_f|^2 / 2 (as a . b - (|a|^2 + |b|^2) / 2, in float64) for
        every field either side holds."""
        q = np.asarray(queries[:, : self.stop], np.float64)
        r = np.asarray(rows[:, : self.stop], np.float64)
        dots = np.add.reduceat(q * r, self.starts, axis=1)[:, self.pick]
        squares = np.add.reduceat(q * q + r * r, self.starts, axis=1)[:, self.pick]
        shares = np.round(dots - squares / 2, SCORE_DECIMALS)
        either = (np.logical_or.reduceat(q != 0, self.starts, axis=1)
                  | np.logical_or.reduceat(r != 0, self.starts, axis=1))[:, self.pick]
        names = [f for f, _ in self.fields]
        return [{f: v for f, v, has in zip(names, row, held) if has}
                for row, held in zip(shares.tolist(), either.tolist())]


def match_probabilities(match: MatchModel, weights: Mapping[str, float], layout: Mapping[str, slice],
                        owner: np.ndarray, rows: np.ndarray) -> list[float]:
    """The match probability of ``owner`` with each of ``rows`` (stored vectors) as a published
    entry carries it (``MatchModel.of_entries`` over the contributions): the exactness oracle's."""
    if not len(rows):
        return []
    return match.of_entries(contributions(np.asarray(owner), np.asarray(rows), layout), weights)


@dataclass(frozen=True, slots=True)
class Change:
    product_id: str
    vector: np.ndarray | None  # None: the product was deleted


class RecentSearches:
    """The exact top lists the affected-set search just computed around each changed product,
    kept so that the product's own refresh merges from them instead of searching again (one pass
    over the catalog per event instead of two). Bounded: the oldest entries go first.

    An entry is used only while the product's stored vector is the one that was searched, and as a
    head recorded at the search's start: ``ListBuilder.merge`` then scores every product written
    since (less the race lookback), exactly as it does for a recorded list."""

    def __init__(self, capacity: int = RECENT_SEARCHES_MIN, depth: int | None = None) -> None:
        """``depth``: the recorded lists' depth; the search then asks for just enough rows to make
        one (``depth`` + 2: the product itself, and one more to bound the rest)."""
        self.capacity = capacity
        self.limit = depth + 2 if depth else None
        self._held: OrderedDict[str, tuple[np.ndarray, int, list[tuple[str, float]], bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def put(self, product_id: str, vector: np.ndarray, as_of: int, hits: list[tuple[str, float]],
            holds_everyone: bool) -> None:
        """``hits``: the exact top-``limit`` (id, score) around ``vector``, best first, scored as
        the lists are (``float(row @ vector)``), from a search that read the catalog at ``as_of``;
        ``holds_everyone``: that row held every product."""
        self._held.pop(product_id, None)
        self._held[product_id] = (vector, as_of, hits, holds_everyone)
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)

    def take(self, product_id: str, vector: np.ndarray, depth: int) -> ListHead | None:
        """The search around ``product_id`` as a list head of ``depth`` entries, if it was made with
        this very ``vector`` and holds enough entries to bound the rest; forgotten either way."""
        held = self._held.pop(product_id, None)
        if held is None or not np.array_equal(held[0], vector):
            return None
        _, as_of, hits, everyone = held
        others = [(pid, sc) for pid, sc in hits if pid != product_id]
        if len(others) > depth:
            boundary = others[depth - 1][1]  # everyone outside the deep list ranks below it
        elif everyone:
            boundary = -np.inf
        else:
            return None
        deep = others[:depth]
        return ListHead(product_id, tuple(pid for pid, _ in deep), stored_boundary(boundary), 0, as_of,
                        scores=np.asarray([sc for _, sc in deep], np.float32).tobytes())


def affected_by(store: VectorStore, changes: Sequence[Change], *, pool: int, max_pool: int = 256,
                recent: RecentSearches | None = None) -> set[str]:
    """Ids whose neighbour list may differ after ``changes`` were written to the store.

    Call only *after* the changes are written: a list recorded later than that write was computed
    by a refresh that either saw the write or re-checks it (``Refresher.recheck``), so only lists
    recorded before it can miss it, and those are the ones read here. ``recent``: where the first
    search around each changed product is kept for its own refresh.
    """
    # Before the first read: the searches below may answer from a sync made at that read
    # (``VectorStore.one_sync``), and what they read must be at least this new.
    searched_at = now_ms()
    ids = [c.product_id for c in changes]
    affected = set(ids) | store.listers_of(ids)
    todo = [c for c in changes if c.vector is not None]
    if not todo:
        return affected
    # With the side index and the list mirror, one pass finds every list each changed vector may
    # enter, exactly (each row compared with its own list's boundary), and its own top ``pool``.
    own = recent.limit if recent is not None and recent.limit else pool
    reached = store.search_reaching(np.stack([c.vector for c in todo]), limit=own, margin=MARGIN)  # type: ignore[misc]
    if reached is not None:
        rows, reaching = reached
        for change, row, lists in zip(todo, rows, reaching):
            if recent is not None:
                recent.put(change.product_id, change.vector, searched_at, row, len(row) < own)  # type: ignore[arg-type]
            affected |= lists
        return affected
    # Else: candidate searches, widened while their weakest candidate still enters a list, and an
    # exact check of the lists whose boundary is below every searched row.
    # Per changed vector: the lowest score of its last search row (-inf when that row held the
    # whole catalog). A product outside the row scores at most this with the changed vector.
    floor: dict[str, float] = {}
    limit = pool
    first = True
    while todo:
        hits = store.search_scores(np.stack([c.vector for c in todo]), limit=limit)  # type: ignore[misc]
        if first and recent is not None:
            for change, row in zip(todo, hits):
                recent.put(change.product_id, change.vector, searched_at, row, len(row) < limit)  # type: ignore[arg-type]
        first = False
        best: dict[str, float] = {}
        weakest: list[tuple[str, float]] = []
        for change, row in zip(todo, hits):
            scored = [(pid, score) for pid, score in row if pid != change.product_id]
            for pid, score in scored:
                best[pid] = max(score, best.get(pid, -np.inf))
            full = len(row) >= limit  # else the row held the whole catalog
            weakest.append(min(scored, key=lambda t: t[1]) if full and scored else ("", np.inf))
            floor[change.product_id] = min(s for _, s in row) if full else -np.inf
        bars = store.list_boundaries(list(best))
        for pid, score in best.items():
            # No recorded list (or a tombstone marker): the product's own refresh is still pending
            # and will see this write, or re-check it after recording (Refresher.recheck).
            if pid in bars and score >= bars[pid] - MARGIN:
                affected.add(pid)
        # Widen the search for vectors whose weakest candidate still entered its list.
        widen = [c for c, (pid, _) in zip(todo, weakest) if pid and pid in affected and pid not in ids]
        if not widen or limit >= max_pool:
            break
        todo, limit = widen, min(max_pool, limit * 4)
    # Exact tail: a product Y outside every search row has score(X, Y) <= floor, so X can enter Y's
    # list only if Y's boundary is that low. Such "loose" lists (outliers, short lists) are few;
    # check each of them exactly instead of trusting the pool.
    top = max(floor.values(), default=-np.inf)
    if top > -np.inf:
        loose = {pid: bar for pid, bar in store.lists_with_boundary_at_most(top + MARGIN).items()
                 if pid not in affected}
        # A loose list whose owner is gone (deleted, its tombstone refresh still pending) needs nothing.
        vectors = {pid: p.vector for pid, p in store.get_products(sorted(loose)).items()} if loose else {}
        if vectors:
            changed = [c for c in changes if c.vector is not None]
            cmat = np.stack([c.vector for c in changed])  # type: ignore[misc]
            owners = list(vectors)
            scores = store.metric.matrix(np.stack([vectors[o] for o in owners]), cmat)  # one row per loose list
            # A product never enters its own list.
            scores[np.array(owners)[:, None] == np.array([c.product_id for c in changed])[None, :]] = -np.inf
            loose_bars = np.array([loose[o] for o in owners], np.float64)
            for i in np.flatnonzero((scores >= (loose_bars - MARGIN)[:, None]).any(axis=1)):
                affected.add(owners[int(i)])
    return affected


def in_rank_order(scored: list[tuple[float, str]]) -> list[tuple[float, str, float]]:
    """(exact score, id) pairs in ``rank_key`` order, as (-rounded score, id, exact score): each
    score is rounded once, for the order and for the published list, and the sort compares plain
    tuples (no key function: a list merge sorts ~15 entries, ~10 of them published)."""
    ranked = [(-round(sc, SCORE_DECIMALS), nid, sc) for sc, nid in scored]
    ranked.sort()
    return ranked


@dataclass(frozen=True, slots=True)
class BuiltList:
    """A refreshed list: the top-k to publish, and the deeper list recorded beside it.

    ``deep`` holds the exact top-``depth`` ids (best first) and ``scores`` their exact scores;
    every product outside it scores at most ``boundary`` + MARGIN with the owner (``boundary`` =
    -inf when it holds every product). ``as_of`` is when the state it was computed from was read:
    together with the products written since then it lets the next refresh merge instead of
    searching (``ListBuilder.merge``).

    ``published`` holds the final ids and scores from the start, but its "why similar" fields
    only once ``explained`` (``ListBuilder.explain``): a refresh diffs lists by ids and scores and
    explains just the ones it publishes or records."""

    published: NeighbourList
    deep: list[str]
    boundary: float
    as_of: int
    scores: tuple[float, ...] = ()
    explained: bool = True
    owner: tuple[int, int] | None = None  # (version, updated_at) of the owner's row it was computed from

    @property
    def packed_scores(self) -> bytes:
        """``scores`` as the mirror holds them beside the recorded head (``ListHead.scores``)."""
        return np.asarray(self.scores, np.float32).tobytes()


class ListBuilder:
    """Builds neighbour lists from stored vectors; ``layout`` splits a score into fields.

    ``build`` searches (exact top-``depth``); ``merge`` updates a recorded deep list with the
    products written since it was computed, without a search, when that provably gives the same
    top-k (docs/exactness.md); ``explain`` adds the per-field contributions to the lists that go
    out, in one batch."""

    def __init__(self, store: VectorStore, *, k: int, layout: Mapping[str, slice], model: str,
                 depth: int | None = None, match: MatchModel | None = None,
                 weights: Mapping[str, float] | None = None) -> None:
        """``match`` and the fusion ``weights`` (a share is ``w * cos``): every published entry gets
        its match probability (``simstream.match``)."""
        self.store = store
        self.k = k
        self.depth = max(k, depth or k)
        self.layout = {f: s for f, s in layout.items()}
        self.model = model
        if match is not None and weights is None:
            raise ValueError("a match decision reads cosines from shares: it needs the fusion weights")
        self.match = match
        self.weights = dict(weights or {})
        # every score as the store's searches compute it (simstream.metric); a builder with no store
        # (unit tests of the merge) ranks by inner product
        self.metric: Metric = getattr(store, "metric", IP)

    def _finish(self, product: StoredProduct, ranked: list[tuple[float, str, float]], boundary: float,
                as_of: int, computed_at: int, event_time: int | None) -> BuiltList:
        """``ranked``: ``in_rank_order``'s entries, at least the deep list. The published entries'
        fields stay empty until ``explain`` fills them."""
        published = NeighbourList(
            product_id=product.product_id,
            version=product.version,
            neighbours=[Neighbour(nid, -negated, {}) for negated, nid, _ in ranked[: self.k]],
            model=self.model,
            computed_at=computed_at,
            source_event_time=event_time or product.event_time,
        )
        deep = ranked[: self.depth]
        return BuiltList(published, [nid for _, nid, _ in deep], boundary, as_of, tuple(sc for _, _, sc in deep), False,
                         (product.version, product.updated_at))

    def explain(self, lists: Mapping[str, BuiltList], owners: Mapping[str, np.ndarray],
                known: Mapping[str, np.ndarray] | None = None) -> dict[str, BuiltList]:
        """``lists`` with each entry's per-field contributions (``contributions``), computed from
        the owners' vectors and the entries' stored ones (``known``: vectors the caller already
        decoded; the rest decoded once for all lists). An entry whose product is gone by now keeps
        empty fields (its list is re-checked and recomputed: ``Refresher.recheck``)."""
        todo = {pid: b for pid, b in lists.items() if not b.explained}
        out = {pid: b for pid, b in lists.items() if b.explained}
        if not todo:
            return out
        known = known or {}
        wanted = {n.product_id for b in todo.values() for n in b.published.neighbours}
        vectors = {m: v for m in wanted if (v := known.get(m)) is not None}
        vectors.update(self.store.snapshot_vectors(wanted - vectors.keys()))
        shares = FieldShares(self.layout, self.metric)
        for pid, b in todo.items():
            entries = [n for n in b.published.neighbours if n.product_id in vectors]
            if entries:  # the entries' fields were left empty for this (``_finish``): filled in place
                for n, fields in zip(entries, shares.of(owners[pid], np.stack([vectors[n.product_id] for n in entries]))):
                    n.fields.update(fields)
            out[pid] = dataclasses.replace(b, explained=True)
        if self.match is not None:
            self._decide([b.published.neighbours for b in todo.values()], vectors.keys())
        return out

    def _decide(self, lists: Sequence[list[Neighbour]], explained: Container[str]) -> None:
        """The ``explained`` entries of ``lists`` with their match probability, in place, in one
        call for all of them (an entry whose product is gone has no contributions and gets none:
        its list is recomputed)."""
        assert self.match is not None
        at = [(neighbours, k) for neighbours in lists for k, n in enumerate(neighbours) if n.product_id in explained]
        probabilities = self.match.of_entries([neighbours[k].fields for neighbours, k in at], self.weights)
        for (neighbours, k), p in zip(at, probabilities):
            neighbours[k] = dataclasses.replace(neighbours[k], match_probability=p)

    @property
    def search_limit(self) -> int:
        """Hits a list's search asks for: the deep list, the owner itself, and ties at the end."""
        return self.depth + 1 + TIE_MARGIN

    def build(self, products: Mapping[str, StoredProduct], event_times: Mapping[str, int | None],
              as_of: int = 0, scan: AllPairs | None = None) -> dict[str, BuiltList]:
        """Exact lists for every product in ``products`` (one batched search; ``scan``: an
        every-list pass's candidates where they hold), not yet explained."""
        ids = list(products)
        if not ids:
            return {}
        hits = self.store.search(np.stack([products[i].vector for i in ids]), limit=self.search_limit, ids=ids,
                                 scan=scan)
        computed_at = now_ms()
        out: dict[str, BuiltList] = {}
        score = self.metric.pair
        for pid, row in zip(ids, hits):
            me = products[pid].vector
            scored = in_rank_order([(score(vec, me), nid) for nid, vec in row if nid != pid])
            # Beyond the deep list everyone scores at most its last score; -inf: it holds everyone.
            boundary = scored[self.depth - 1][2] if len(scored) > self.depth else -np.inf
            out[pid] = self._finish(products[pid], scored, boundary, as_of, computed_at, event_times.get(pid))
        return out

    def build_explained(self, products: Mapping[str, StoredProduct], event_times: Mapping[str, int | None],
                        as_of: int = 0) -> dict[str, BuiltList]:
        """``build``, then ``explain``: lists ready to publish."""
        return self.explain(self.build(products, event_times, as_of), {p: s.vector for p, s in products.items()})

    def merge(self, product: StoredProduct, head: ListHead, reach: Sequence[tuple[str, np.ndarray]],
              changed: Container[str], members: Mapping[str, np.ndarray], event_time: int | None,
              as_of: int) -> BuiltList | None:
        """The list of an *unchanged* ``product`` from its recorded ``head`` and the products changed
        since ``head.as_of`` (less the lookback), not yet explained. ``reach``: (id, vector) of every
        live changed product whose score may exceed ``head.boundary`` + MARGIN (a superset is fine;
        all of them when the head holds everyone); ``changed``: which of the head's members changed
        (or went) since; ``members``: vectors of the head's live ids, needed only when the head
        does not carry its members' scores (``ListHead.scores``). None when only a search can tell
        (too few certain entries).

        Why it is exact: a recorded member that did not change keeps its score (the very number
        computed when the head was, from the same two vectors), and outranks every outsider that
        did not change either (both as when the head was computed); a changed product is scored
        now. So the top entries are certain as long as they beat ``boundary`` + margins. Every
        score is computed as build() computes it, so both paths rank identically."""
        pid, me = product.product_id, product.vector
        complete = head.holds_everyone
        entries: list[tuple[float, str]] = []
        pair = self.metric.pair
        for c, vec in reach:
            score = pair(vec, me)
            if c != pid and (complete or score > head.boundary + MARGIN):
                entries.append((score, c))
        known = head.member_scores()
        if known is not None:
            entries += [(sc, m) for m, sc in zip(head.neighbour_ids, known) if m != pid and m not in changed]
        else:
            entries += [(pair(members[m], me), m) for m in head.neighbour_ids
                        if m != pid and m not in changed and m in members]
        ranked = in_rank_order(entries)
        boundary = -np.inf if complete else head.boundary
        if len(ranked) > self.depth:
            boundary = max(boundary, ranked[self.depth - 1][2])
        # Outsiders score at most boundary + MARGIN: the k-th must clear that, ties included.
        if not complete or len(ranked) > self.depth:
            if len(ranked) < self.k or ranked[self.k - 1][2] <= boundary + 2 * MARGIN:
                return None
        return self._finish(product, ranked, boundary, as_of, now_ms(), event_time)

    def stored_form(self, built: BuiltList) -> StoredList:
        """What the lists collection records for ``built`` (explained: the payload is its list)."""
        if not built.explained:
            raise ValueError(f"list of {built.published.product_id!r} recorded before it was explained")
        return StoredList(built.published.product_id, built.deep, built.boundary, built.published.to_json(),
                          built.as_of)


def stale_lists(lists: Mapping[str, NeighbourList], vectors: Mapping[str, np.ndarray],
                changed: Mapping[str, StoredProduct], deleted: set[str], *, k: int, metric: Metric = IP) -> set[str]:
    """Lists computed from a search that may have missed products written meanwhile.

    ``changed``/``deleted``: products written since the search began. A list is stale when it
    holds a deleted product, holds a changed product at another score, misses a changed product
    that now beats its k-th score, or belongs to a product whose own vector changed.
    """
    stale: set[str] = set()
    if not lists or (not changed and not deleted):
        return stale
    cids = list(changed)
    where = {c: i for i, c in enumerate(cids)}
    owners = list(lists)
    cmat = np.stack([changed[c].vector for c in cids]) if cids else None
    # One matrix product scores every changed product against every list's owner (a pre-filter
    # with a 1e-5 tolerance; the rank comparisons below use each pair's own dot product).
    all_scores = metric.matrix(cmat, np.stack([vectors[pid] for pid in owners])) if cmat is not None else None
    for j, pid in enumerate(owners):
        nl, me = lists[pid], vectors[pid]
        if pid in changed and not np.allclose(changed[pid].vector, me, atol=1e-6):
            stale.add(pid)
            continue
        held = {n.product_id: n.score for n in nl.neighbours}
        if deleted & held.keys():
            stale.add(pid)
            continue
        if all_scores is None or cmat is None:
            continue
        kth = nl.neighbours[-1].score if len(nl.neighbours) >= k else -np.inf
        scores = all_scores[:, j]
        # Only changed products the list holds, or that score within reach of its k-th, can make it
        # stale; test just those (the same tests as a loop over every changed product).
        if any(cid != pid and (i := where.get(cid)) is not None and abs(held[cid] - metric.pair(cmat[i], me)) > 1e-5
               for cid in held):
            stale.add(pid)
            continue
        last = rank_key(kth, nl.neighbours[-1].product_id if nl.neighbours else "")
        for hit in np.flatnonzero(scores >= kth - 2e-5):
            cid = cids[int(hit)]
            if cid != pid and cid not in held and rank_key(metric.pair(cmat[hit], me), cid) < last:
                stale.add(pid)
                break
    return stale

