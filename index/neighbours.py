"""Neighbour lists: who is affected by a change, exact top-K per product, and stale-list checks.

Plain functions over a VectorStore and numpy arrays; the stream calls them, and so does
``simstream reconcile``, so both share one code path. docs/exactness.md argues why nothing is
missed; in short:

- X's own list is recomputed whenever X changes.
- X *leaves* (or changes its score in) Y's list only if Y lists X now: the lists collection is a
  reverse index (``listers_of``), so that set is exact.
- X *enters* Y's list only if score(X, Y) >= Y's current k-th score. Candidates come from a search
  around X's new vector; while the weakest candidate still qualifies, the search widens (x4, up to
  ``max_pool``), so only a product beyond ``max_pool`` candidates can be missed.
- Races with concurrent writers are closed afterwards by ``stale_lists``: every product written
  since a refresh started its search is re-checked against the lists that refresh produced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from index.store import StoredList, StoredProduct, VectorStore
from streams.contracts import Neighbor, NeighborList

TIE_MARGIN = 5  # extra hits fetched so ties at the k-th place are broken by product_id, not chance
SCORE_DECIMALS = 6


def now_ms() -> int:
    return int(time.time() * 1000)


def rank_key(score: float, product_id: str) -> tuple[float, str]:
    """Higher score first; equal scores (to 1e-6) ordered by product_id, everywhere."""
    return (-round(score, SCORE_DECIMALS), product_id)


@dataclass(frozen=True, slots=True)
class Change:
    product_id: str
    vector: np.ndarray | None  # None: the product was deleted


def affected_by(store: VectorStore, changes: Sequence[Change], *, pool: int, max_pool: int = 1024) -> set[str]:
    """Ids whose neighbour list may differ after ``changes`` were written to the store."""
    ids = [c.product_id for c in changes]
    affected = set(ids) | store.listers_of(ids)
    todo = [c for c in changes if c.vector is not None]
    limit = pool
    while todo:
        hits = store.search(np.stack([c.vector for c in todo]), limit=limit)  # type: ignore[misc]
        best: dict[str, float] = {}
        weakest: list[tuple[str, float]] = []
        for change, row in zip(todo, hits):
            scored = [(pid, float(vec @ change.vector)) for pid, vec in row if pid != change.product_id]
            for pid, score in scored:
                best[pid] = max(score, best.get(pid, -np.inf))
            weakest.append(scored[-1] if len(row) >= limit and scored else ("", np.inf))
        lists = store.get_lists(list(best))
        for pid, score in best.items():
            held = lists.get(pid)
            if held is None or score >= held.kth_score - 10**-SCORE_DECIMALS:
                affected.add(pid)
        # Widen the search for vectors whose weakest candidate still entered its list.
        widen = [c for c, (pid, _) in zip(todo, weakest) if pid and pid in affected and pid not in ids]
        if not widen or limit >= max_pool:
            break
        todo, limit = widen, min(max_pool, limit * 4)
    return affected


class ListBuilder:
    """Builds NeighborList values from stored vectors; ``layout`` splits a score into fields."""

    def __init__(self, store: VectorStore, *, k: int, layout: Mapping[str, slice], model: str) -> None:
        self.store = store
        self.k = k
        self.layout = {f: s for f, s in layout.items()}
        self.model = model

    def contributions(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        return {f: round(float(a[s] @ b[s]), SCORE_DECIMALS) for f, s in self.layout.items()
                if np.any(a[s]) and np.any(b[s])}

    def build(self, products: Mapping[str, StoredProduct], event_times: Mapping[str, int | None]) -> dict[str, NeighborList]:
        """Exact top-k for every product in ``products`` (one batched search)."""
        ids = list(products)
        if not ids:
            return {}
        hits = self.store.search(np.stack([products[i].vector for i in ids]), limit=self.k + 1 + TIE_MARGIN)
        computed_at = now_ms()
        out: dict[str, NeighborList] = {}
        for pid, row in zip(ids, hits):
            me = products[pid].vector
            scored = sorted(((float(vec @ me), nid, vec) for nid, vec in row if nid != pid),
                            key=lambda t: rank_key(t[0], t[1]))[: self.k]
            out[pid] = NeighborList(
                product_id=pid,
                version=products[pid].version,
                neighbors=[Neighbor(nid, round(s, SCORE_DECIMALS), self.contributions(me, vec)) for s, nid, vec in scored],
                model=self.model,
                computed_at=computed_at,
                source_event_time=event_times.get(pid) or products[pid].event_time,
            )
        return out

    def stored_form(self, nl: NeighborList) -> StoredList:
        kth = nl.neighbors[-1].score if len(nl.neighbors) >= self.k else -np.inf
        return StoredList(nl.product_id, [n.product_id for n in nl.neighbors], kth, nl.to_json())


def stale_lists(lists: Mapping[str, NeighborList], vectors: Mapping[str, np.ndarray],
                changed: Mapping[str, StoredProduct], deleted: set[str], *, k: int) -> set[str]:
    """Lists computed from a search that may have missed products written meanwhile.

    ``changed``/``deleted``: products written since the search began. A list is stale when it
    holds a deleted product, holds a changed product at another score, misses a changed product
    that now beats its k-th score, or belongs to a product whose own vector changed.
    """
    stale: set[str] = set()
    if not lists or (not changed and not deleted):
        return stale
    cids = list(changed)
    cmat = np.stack([changed[c].vector for c in cids]) if cids else np.zeros((0, 0), np.float32)
    for pid, nl in lists.items():
        me = vectors[pid]
        if pid in changed and not np.allclose(changed[pid].vector, me, atol=1e-6):
            stale.add(pid)
            continue
        held = {n.product_id: n.score for n in nl.neighbors}
        if deleted & held.keys():
            stale.add(pid)
            continue
        if not cids:
            continue
        kth = nl.neighbors[-1].score if len(nl.neighbors) >= k else -np.inf
        scores = cmat @ me
        for cid, score in zip(cids, scores):
            if cid == pid:
                continue
            if cid in held:
                if abs(held[cid] - score) > 1e-5:
                    stale.add(pid)
                    break
            elif rank_key(float(score), cid) < rank_key(kth, nl.neighbors[-1].product_id if nl.neighbors else ""):
                stale.add(pid)
                break
    return stale
