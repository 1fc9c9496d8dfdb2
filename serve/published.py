"""The published lists serve answers from: read from Milvus once, then kept in memory until the
list is written again.

A published neighbours request read the list's payload from Milvus every time: ~2 ms of CPU in a
milvus-lite file's in-process server (most of the request), and on a Milvus server a Strong read
that waits for the time tick (~200 ms on 2.3). Here the payloads read are kept, in a least-recently
used cache bounded in bytes (``SIMSTREAM_SERVE_LIST_CACHE_BYTES``; 0 turns it off), and the same
sync that keeps the copy current (``serve/copy.py``) drops the lists written since it last ran:
the lists collection's ``updated_at`` stamps. So a list served is at most one sync older than
Milvus', as the copy's rows are (``as_of``).

Collections made before lists were stamped cannot be followed: their lists are read every time.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import closing

from cachetools import LRUCache

from simstream.clock import RACE_LOOKBACK_MS, now_ms
from simstream.index.milvus import MilvusStore

__all__ = ["DROPS_KEPT", "PublishedLists"]

DROPS_KEPT = 64  # syncs whose dropped lists are remembered (a read spanning more keeps nothing)


class PublishedLists:
    """``payload(pid)``: the list last published for ``pid`` (b"" a tombstone marker, None none)."""

    def __init__(self, milvus: MilvusStore, max_bytes: int) -> None:
        self.milvus = milvus
        self.enabled = max_bytes > 0 and milvus.lists_stamped
        # the empty payload (a tombstone marker) still takes an entry: count it as one byte
        self._cache: LRUCache[str, bytes] = LRUCache(maxsize=max(1, max_bytes), getsizeof=lambda b: max(1, len(b)))
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by every sync
        # the lists each recent sync dropped: a read begun before a sync keeps none of them (it may
        # hold the write the sync dropped for); the others it read are as new as the cache's
        self._drops: deque[tuple[int, frozenset[str]]] = deque(maxlen=DROPS_KEPT)
        self.synced_at = now_ms()
        self.preloaded = False  # ``preload`` has run to its end

    def __len__(self) -> int:
        return len(self._cache)

    def held(self, product_id: str) -> bytes | None:
        """The payload when the cache holds it and its lock is free at once, else None (then
        ``payload`` answers, off the event loop)."""
        if not self.enabled or not self._lock.acquire(blocking=False):
            return None
        try:
            return self._cache.get(product_id)
        finally:
            self._lock.release()

    def payload(self, product_id: str) -> bytes | None:
        if not self.enabled:
            return self.milvus.read_list_payload(product_id)
        with self._lock:
            got = self._cache.get(product_id)
            epoch = self._epoch
        if got is not None:
            return got
        read = self.milvus.read_list_payload(product_id)
        if read is not None:
            with self._lock:
                stale = self._dropped_since(epoch)
                if stale is not None and product_id not in stale and self._cache.getsizeof(read) <= self._cache.maxsize:
                    self._cache[product_id] = read
        return read

    def _dropped_since(self, epoch: int) -> frozenset[str] | None:
        """The lists the syncs after ``epoch`` dropped (call holding the lock); None: more syncs
        ran than are remembered, so any of them may have been."""
        if epoch == self._epoch:
            return frozenset()
        if not self._drops or self._drops[0][0] > epoch + 1:
            return None
        return frozenset().union(*(ids for e, ids in self._drops if e > epoch))

    def preload(self) -> int:
        """Read every recorded list into the cache, until it is full (at start, in the background:
        a cold cache is a Milvus read per first request of each product); returns how many."""
        try:
            return self._preload() if self.enabled else 0
        finally:
            self.preloaded = True

    def _preload(self) -> int:
        held = 0
        with closing(self.milvus.iter_list_payloads()) as pages:
            while True:
                with self._lock:
                    epoch = self._epoch  # before the page is read
                page = next(pages, None)
                if page is None:
                    return held
                with self._lock:
                    stale = self._dropped_since(epoch)  # read across a sync: not what it dropped
                    if stale is None:
                        continue
                    for pid, payload in page.items():
                        if pid in stale:
                            continue
                        if self._cache.currsize + self._cache.getsizeof(payload) > self._cache.maxsize:
                            return held
                        if pid not in self._cache:
                            self._cache[pid] = payload
                            held += 1

    def sync(self) -> int:
        """Forget the lists written since the last sync (less the skew allowance); returns how many."""
        if not self.enabled:
            return 0
        started = now_ms()
        heads = self.milvus.list_heads_since(self.synced_at - RACE_LOOKBACK_MS)
        dropped = frozenset(head.product_id for head in heads)
        with self._lock:
            self._epoch += 1
            self._drops.append((self._epoch, dropped))
            for pid in dropped:
                self._cache.pop(pid, None)
        self.synced_at = started
        return len(heads)
