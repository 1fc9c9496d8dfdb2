"""An exact side index for the neighbour searches: the fused vectors in one in-memory matrix.

Milvus stays the system of record and what recommenders query; this matrix only answers the
searches of the ingest (affected set) and refresh steps, as exact inner-product top-``limit``
(the same answer Milvus FLAT gives, computed with one matrix product instead of a round trip
through milvus-lite, which is pure Python in-process and ~15x slower than numpy brute force;
see docs/benchmarks.md).

It also holds each product's metadata (version, hashes, model, event and write times), so after a
sync the ingest and refresh steps read products and "what changed since t" from memory instead of
through milvus-lite filter scans (which are Python loops over the whole collection).

Kept in step with Milvus:
- built from Milvus at start (``from_store``: every product with its vector);
- this worker's own writes are applied as they are made (``VectorStore`` calls ``put``/``delete``);
- before every search, ``sync`` applies what *any* writer did since the last sync: products
  written at or after (last sync - ``lookback_ms``) and products deleted in that window (their
  tombstones). So with several workers sharing a Milvus server, a search sees every write that
  was visible in Milvus when the sync ran, as a Strong-consistency Milvus search would; writes
  landing during the search are caught by the refresh step's race re-check (``stale_lists``),
  exactly as before. The lookback is the same clock-skew/visibility allowance the re-check uses.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from simstream.index.store import StoredProduct
from simstream.logs import get_logger

log = get_logger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SideIndex:
    """Exact inner-product top-k over the live products (rows of a growable float32 matrix)."""

    def __init__(self, dim: int, *, lookback_ms: int = 5_000, capacity: int = 1024) -> None:
        self.dim = dim
        self.lookback_ms = lookback_ms
        self._mat = np.zeros((capacity, dim), np.float32)
        self._live = np.zeros(capacity, bool)
        self._ids: list[str | None] = []
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        self._meta: dict[str, StoredProduct] = {}  # the version held, its updated_at included (vector unused)
        self.synced_at: int | None = None

    def __len__(self) -> int:
        return len(self._row)

    @classmethod
    def from_store(cls, store: Any, *, page: int = 2_000, lookback_ms: int = 5_000) -> "SideIndex":
        """Every product of the store, read page by page; sync() later covers writes made meanwhile."""
        t0 = time.perf_counter()
        started = _now_ms()
        idx = cls(store.dim, lookback_ms=lookback_ms)
        for rows in store.iter_products(page, with_vectors=True):
            idx.put(rows)
        idx.synced_at = started
        log.info("side index built", products=len(idx), seconds=round(time.perf_counter() - t0, 2))
        return idx

    # --- writes -----------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self._mat)
        if need <= cap:
            return
        new = max(need, cap * 2)
        mat = np.zeros((new, self.dim), np.float32)
        mat[: len(self._ids)] = self._mat[: len(self._ids)]
        live = np.zeros(new, bool)
        live[: len(self._ids)] = self._live[: len(self._ids)]
        self._mat, self._live = mat, live

    def put(self, products: Sequence[StoredProduct]) -> None:
        """Insert or replace products, vector and metadata (their ``updated_at`` lets sync skip
        re-reading them)."""
        if not products:
            return
        empty = np.zeros(0, np.float32)
        rows = np.empty(len(products), np.int64)
        for i, p in enumerate(products):
            pid = p.product_id
            self._meta[pid] = dataclasses.replace(p, vector=empty)
            r = self._row.get(pid)
            if r is None:
                if self._free:
                    r = self._free.pop()
                    self._ids[r] = pid
                else:
                    r = len(self._ids)
                    self._grow(r + 1)
                    self._ids.append(pid)
                self._row[pid] = r
            rows[i] = r
        self._mat[rows] = np.stack([p.vector for p in products])
        self._live[rows] = True

    def delete(self, ids: Iterable[str]) -> None:
        for pid in ids:
            r = self._row.pop(pid, None)
            self._meta.pop(pid, None)
            if r is not None:
                self._live[r] = False
                self._mat[r] = 0.0
                self._ids[r] = None
                self._free.append(r)

    def sync(self, store: Any) -> None:
        """Apply every write visible in Milvus since the last sync (any writer)."""
        started = _now_ms()
        since = (self.synced_at if self.synced_at is not None else 0) - self.lookback_ms
        deleted = store.deleted_since(since)
        stamps = store.written_since(since)
        # Vectors are read only for rows this index does not hold at that updated_at already
        # (its own writes carry their stamp), so a single worker's sync is one light query.
        fetch = sorted(pid for pid, t in stamps.items()
                       if (held := self._meta.get(pid)) is None or held.updated_at != t)
        if fetch:
            got = store.read_products(fetch)
            self.put([got[pid] for pid in fetch if pid in got])
        self.delete(deleted - stamps.keys())
        self.synced_at = started

    # --- reads (call after sync) --------------------------------------------------------------
    def get(self, ids: Iterable[str]) -> dict[str, StoredProduct]:
        """Stored products with a *copy* of their vector (safe to keep across later writes)."""
        return {pid: dataclasses.replace(meta, vector=self._mat[self._row[pid]].copy())
                for pid in ids if (meta := self._meta.get(pid)) is not None}

    def _rows_view(self) -> np.ndarray:
        """The rows in use, read-only, without copying (valid until the next write)."""
        view = self._mat[: len(self._ids)].view()
        view.flags.writeable = False
        return view

    def vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Read-only views of the rows of the live products among ``ids`` (valid until the next write)."""
        view = self._rows_view()
        return {pid: view[r] for pid in ids if (r := self._row.get(pid)) is not None}

    def written_since(self, since_ms: int) -> list[str]:
        """Ids whose held version was written at or after ``since_ms``."""
        return [pid for pid, meta in self._meta.items() if meta.updated_at >= since_ms]

    # --- search -----------------------------------------------------------------------------
    def _top(self, vectors: np.ndarray, limit: int, chunk: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per chunk of queries: (row indices best first, their scores), dead rows excluded."""
        n = len(self._ids)
        live_count = len(self._row)
        if len(vectors) == 0:
            return []
        mat = self._mat[:n]
        dead = ~self._live[:n]
        k = min(limit, live_count)
        q = np.asarray(vectors, np.float32)
        rows = torch.from_numpy(np.ascontiguousarray(mat))  # no copy: the matrix is contiguous
        out = []
        for start in range(0, len(q), chunk):
            # torch, so the product uses SIMSTREAM_TORCH_THREADS (numpy's BLAS is single-threaded
            # in the worker, streams/runtime.py); same float32 arithmetic.
            sims = (torch.from_numpy(np.ascontiguousarray(q[start:start + chunk])) @ rows.T).numpy()
            if k == 0:
                out.append((np.zeros((len(sims), 0), np.int64), np.zeros((len(sims), 0), np.float32)))
                continue
            if dead.any():
                sims[:, dead] = -np.inf
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(sims), 1))
            top = np.take_along_axis(sims, part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")[:, :k]
            out.append((np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)))
        return out

    def search(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, np.ndarray]]]:
        """Top-``limit`` live products per query by inner product, best first: (id, vector) pairs,
        the shape ``VectorStore.search`` returns. The vectors are read-only views into the index:
        valid until the next write to it (callers score them at once, in the same thread)."""
        out: list[list[tuple[str, np.ndarray]]] = []
        view = self._rows_view()
        for rows, _ in self._top(vectors, limit):
            for row in rows:
                out.append([(self._ids[j], view[j]) for j in row])  # type: ignore[misc]
        return out

    def search_scores(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Top-``limit`` (id, inner product) per query, best first, like ``VectorStore.search_scores``."""
        out: list[list[tuple[str, float]]] = []
        for rows, scores in self._top(vectors, limit):
            for row, sc in zip(rows, scores):
                out.append([(self._ids[j], float(x)) for j, x in zip(row, sc)])  # type: ignore[misc]
        return out
