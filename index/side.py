"""An exact side index for the neighbour searches: the fused vectors in one in-memory matrix.

Milvus stays the system of record and what recommenders query; this matrix only answers the
searches of the ingest (affected set) and refresh steps, as exact inner-product top-``limit``
(the same answer Milvus FLAT gives, computed with one matrix product instead of a round trip
through milvus-lite, which is pure Python in-process and ~15x slower than numpy brute force;
see docs/benchmarks.md).

It also holds each product's metadata (version, hashes, model, event and write times), so the
ingest and refresh steps read products and "what changed since t" from memory instead of through
milvus-lite filter scans (which are Python loops over the whole collection).

A plain in-memory structure that knows nothing of Milvus: ``index.store.VectorStore`` fills it,
applies its own writes to it and keeps it in step with other writers (docs/exactness.md).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from simstream.index.exact import top_k_rows
from simstream.index.rows import StoredProduct


# Growth factor of the matrix when it is full. Growing copies into a new matrix, so for a moment
# both exist: 1 + GROWTH times the old one (2.25x; doubling would need 3x), and afterwards at most
# GROWTH times the live rows sit allocated. The builder pre-sizes the matrix from the product count,
# so a start-up build does not grow at all.
GROWTH = 1.25
MIN_CAPACITY = 1024


class SideIndex:
    """Exact inner-product top-k over the live products (rows of a growable float32 matrix)."""

    def __init__(self, dim: int, *, capacity: int = MIN_CAPACITY) -> None:
        """``capacity``: rows allocated up front (the expected product count)."""
        self.dim = dim
        capacity = max(int(capacity), 1)
        self._mat = np.zeros((capacity, dim), np.float32)
        self._live = np.zeros(capacity, bool)
        self._ids: list[str | None] = []
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        self._meta: dict[str, StoredProduct] = {}  # the version held, its updated_at included (vector unused)

    def __len__(self) -> int:
        return len(self._row)

    @property
    def capacity(self) -> int:
        """Rows allocated (live, free and not yet used)."""
        return len(self._mat)

    # --- writes -----------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self._mat)
        if need <= cap:
            return
        new = max(need, int(cap * GROWTH) + 1)
        mat = np.zeros((new, self.dim), np.float32)
        mat[: len(self._ids)] = self._mat[: len(self._ids)]
        live = np.zeros(new, bool)
        live[: len(self._ids)] = self._live[: len(self._ids)]
        self._mat, self._live = mat, live

    def put(self, products: Sequence[StoredProduct]) -> None:
        """Insert or replace products, vector and metadata."""
        if not products:
            return
        fresh = {p.product_id for p in products} - self._row.keys()
        self._grow(len(self._ids) + max(0, len(fresh) - len(self._free)))  # one copy per batch at most
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

    def not_held(self, stamps: Mapping[str, int]) -> list[str]:
        """Ids of ``stamps`` (product_id -> updated_at) whose version this index does not hold."""
        return sorted(pid for pid, t in stamps.items() if (held := self._meta.get(pid)) is None or held.updated_at != t)

    # --- reads --------------------------------------------------------------------------------
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

    def ids_written_since(self, since_ms: int) -> list[str]:
        """Ids whose held version was written at or after ``since_ms``."""
        return [pid for pid, meta in self._meta.items() if meta.updated_at >= since_ms]

    # --- search -----------------------------------------------------------------------------
    def _top(self, vectors: np.ndarray, limit: int, chunk: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per chunk of queries: (row indices best first, their scores), dead rows excluded."""
        n = len(self._ids)
        if len(vectors) == 0:
            return []
        dead = ~self._live[:n]
        k = min(limit, len(self._row))
        q = np.asarray(vectors, np.float32)
        rows = torch.from_numpy(np.ascontiguousarray(self._mat[:n]))  # no copy: the matrix is contiguous
        out = []
        for start in range(0, len(q), chunk):
            # torch, so the product uses SIMSTREAM_TORCH_THREADS (numpy's BLAS is single-threaded
            # in the worker, streams/runtime.py); same float32 arithmetic.
            sims = (torch.from_numpy(np.ascontiguousarray(q[start:start + chunk])) @ rows.T).numpy()
            if dead.any():
                sims[:, dead] = -np.inf
            out.append(top_k_rows(sims, k))
        return out

    def search(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, np.ndarray]]]:
        """Top-``limit`` live products per query by inner product, best first: (id, vector) pairs.
        The vectors are read-only views into the index, valid until the next write to it (callers
        score them at once, in the same thread)."""
        out: list[list[tuple[str, np.ndarray]]] = []
        view = self._rows_view()
        for rows, _ in self._top(vectors, limit):
            for row in rows:
                out.append([(self._ids[j], view[j]) for j in row])  # type: ignore[misc]
        return out

    def search_scores(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Top-``limit`` (id, inner product) per query, best first."""
        out: list[list[tuple[str, float]]] = []
        for rows, scores in self._top(vectors, limit):
            for row, sc in zip(rows, scores):
                out.append([(self._ids[j], float(x)) for j, x in zip(row, sc)])  # type: ignore[misc]
        return out
