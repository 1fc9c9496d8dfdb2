"""An in-memory mirror of the lists collection's heads: who each list holds, and its k-th score.

The ingest step asks three questions of the recorded lists for every batch: whose list holds any
of these products (the reverse index), what are these lists' k-th scores, and which lists have a
k-th score at most x. On milvus-lite each is a filter scan in Python over the whole collection
(``array_contains_any`` alone took ~460 ms per batch at 20,000 lists, docs/benchmarks.md). This
mirror answers them from dicts; the payloads stay in Milvus.

Kept in step with Milvus exactly like the side index (index/side.py): built at start, this
worker's own writes applied as they are recorded, and before every use ``sync`` reads the lists
recorded at or after (last sync - ``lookback_ms``) by *any* worker, by their ``updated_at``. After a
sync the mirror answers as a Strong-consistency query issued at that moment would, which is what
``affected_by`` relies on (docs/exactness.md). Needs the lists collection's ``updated_at`` field;
``VectorStore`` falls back to querying Milvus for collections created before it existed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from simstream.logs import get_logger

log = get_logger(__name__)

TOMBSTONE_KTH = 3.0e38  # the k-th score a tombstone marker is recorded with (no payload, no neighbours)


def stored_boundary(kth: float, *, tombstone: bool = False) -> float:
    """A list's k-th score as the lists collection holds it: clamped to what its FLOAT field takes
    (-inf, "holds everyone", becomes -TOMBSTONE_KTH) and rounded to float32; TOMBSTONE_KTH for a
    tombstone marker. Compare recorded heads only with values passed through this."""
    return float(np.float32(TOMBSTONE_KTH if tombstone else min(max(kth, -TOMBSTONE_KTH), TOMBSTONE_KTH)))


@dataclass(frozen=True, slots=True)
class ListHead:
    """A recorded list without its payload."""

    product_id: str
    neighbour_ids: tuple[str, ...]
    kth_score: float  # the boundary (index.store.StoredList.kth_score)
    updated_at: int
    as_of: int = 0

    @property
    def is_tombstone(self) -> bool:
        return self.kth_score >= TOMBSTONE_KTH

    @property
    def holds_everyone(self) -> bool:
        """Recorded when the catalog was no bigger than the list: no outsiders then."""
        return self.kth_score <= -TOMBSTONE_KTH


def _now_ms() -> int:
    return int(time.time() * 1000)


class ListMirror:
    """Forward (owner -> head) and reverse (neighbour -> owners) maps of the recorded lists."""

    def __init__(self, *, lookback_ms: int = 5_000) -> None:
        self.lookback_ms = lookback_ms
        self._heads: dict[str, ListHead] = {}
        self._listers: dict[str, set[str]] = {}
        self.synced_at: int | None = None

    def __len__(self) -> int:
        return len(self._heads)

    @classmethod
    def from_store(cls, store: Any, *, lookback_ms: int = 5_000) -> "ListMirror":
        t0 = time.perf_counter()
        started = _now_ms()
        mirror = cls(lookback_ms=lookback_ms)
        for page in store.iter_list_heads():
            mirror.put(page)
        mirror.synced_at = started
        log.info("list mirror built", lists=len(mirror), seconds=round(time.perf_counter() - t0, 2))
        return mirror

    def put(self, heads: Iterable[ListHead]) -> None:
        for head in heads:
            old = self._heads.get(head.product_id)
            if old is not None:
                for nid in old.neighbour_ids:
                    owners = self._listers.get(nid)
                    if owners is not None:
                        owners.discard(head.product_id)
                        if not owners:
                            del self._listers[nid]
            self._heads[head.product_id] = head
            for nid in head.neighbour_ids:
                self._listers.setdefault(nid, set()).add(head.product_id)

    def sync(self, store: Any) -> None:
        """Apply every list recorded in Milvus since the last sync (any worker)."""
        started = _now_ms()
        since = (self.synced_at if self.synced_at is not None else 0) - self.lookback_ms
        fresh = [h for h in store.list_heads_since(since)
                 if (old := self._heads.get(h.product_id)) is None or old.updated_at != h.updated_at
                 or old.neighbour_ids != h.neighbour_ids]
        self.put(fresh)
        self.synced_at = started

    # --- reads (call after sync) --------------------------------------------------------------
    def listers_of(self, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for pid in ids:
            out |= self._listers.get(pid, set())
        return out

    def heads(self, ids: Iterable[str]) -> dict[str, ListHead]:
        return {pid: h for pid in ids if (h := self._heads.get(pid)) is not None}

    def kth_scores(self, ids: Iterable[str]) -> dict[str, float]:
        """k-th score of each recorded list (tombstone markers and unrecorded ids left out)."""
        return {pid: h.kth_score for pid in ids if (h := self._heads.get(pid)) is not None and not h.is_tombstone}

    def with_kth_at_most(self, score: float) -> dict[str, float]:
        return {pid: h.kth_score for pid, h in self._heads.items()
                if not h.is_tombstone and h.kth_score <= score}
