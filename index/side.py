"""An exact side index for the neighbour searches: the fused vectors in one in-memory matrix.

Milvus stays the system of record and what recommenders query; this matrix only answers the
searches of the ingest (affected set) and refresh steps, as exact top-``limit`` by the model's metric
(the same answer Milvus FLAT gives, computed on the packed rows, index/packed_scan.py, instead of a round trip
through milvus-lite, which is pure Python in-process: ~13x slower than numpy brute force at
10,000 products, ~2.4x at 100,000; see docs/benchmarks.md, row e).

It also holds each product's metadata (version, hashes, model, event and write times), so the
ingest and refresh steps read products and "what changed since t" from memory instead of through
milvus-lite filter scans (which are Python loops over the whole collection).

A plain in-memory structure that knows nothing of Milvus: ``index.store.VectorStore`` fills it,
applies its own writes to it and keeps it in step with other writers (docs/exactness.md).
"""

from __future__ import annotations

import sys
import weakref
from collections import deque
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from simstream.index.all_pairs import AllPairs
from simstream.index.device_rows import DeviceRows
from simstream.index.exact import rank_key
from simstream.index.packed_rows import PackedRows
from simstream.index.packed_scan import Offsets, scan_candidates, subset_reaching
from simstream.index.rows import StoredProduct
from simstream.logs import get_logger
from simstream.metric import IP, Metric
from simstream.vector_codec import Segment

__all__ = ["GROWTH", "MIN_CAPACITY", "HASH_SLOTS", "DELETE_LOG", "SUBSET_ROWS", "SUBSET_SHARE", "SUBSET_COST", "ProductMeta", "SideIndex"]

log = get_logger(__name__)


# Growth factor of the matrix when it is full. Growing copies into a new matrix, so for a moment
# both exist: 1 + GROWTH times the old one (2.25x; doubling would need 3x), and afterwards at most
# GROWTH times the live rows sit allocated. The builder pre-sizes the matrix from the product count,
# so a start-up build does not grow at all.
GROWTH = 1.25
MIN_CAPACITY = 1024
HASH_SLOTS = 8  # field hashes held per product as 64-bit numbers (simstream has 7 fields)
# Deletes remembered with their write sequence number (``SideIndex.changes_after``): a step that
# asks about more deletes than this since it read gets None, and its caller asks Milvus instead.
DELETE_LOG = 65_536
# A filtered search whose filter leaves at most this many rows, and at most 1/SUBSET_SHARE of
# them, scans only those rows (gathered, still packed); wider ones share one pass over every row
# with the other queries (gathering most of the rows per query costs more than that shared pass).
SUBSET_ROWS = 16_384
SUBSET_SHARE = 16
# ... unless the pass over every row runs anyway, or the subsets' rows together cost more than it: a
# gathered row costs about this many rows of that pass (100k rows, 32 queries: 2,000-row subsets
# 3.3 ms each, the whole pass 50-54 ms for 4 to 32 queries, each query more in it ~0.3 ms)
SUBSET_COST = 3


class ProductMeta:
    """Per-product metadata as columns (version, times, model, field hashes), ~100 bytes a row
    instead of ~1.1 KB of Python objects. Field hashes are 16 hex digits (``content_hash``); any
    other shape is kept as given in a side dict."""

    def __init__(self, capacity: int) -> None:
        self.version = np.zeros(capacity, np.int64)
        self.updated_at = np.zeros(capacity, np.int64)
        self.event_time = np.zeros(capacity, np.int64)
        self.model = np.zeros(capacity, np.int32)
        self.hash_keys = np.zeros(capacity, np.int32)
        self.hashes = np.zeros((capacity, HASH_SLOTS), np.uint64)
        self._models: dict[str, int] = {}
        self._model_names: list[str] = []
        self._key_sets: dict[tuple[str, ...], int] = {}
        self._key_set_names: list[tuple[str, ...]] = []
        self._odd_hashes: dict[int, dict[str, str]] = {}

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the columns (the side dicts of odd hashes not counted)."""
        return sum(getattr(self, n).nbytes for n in ("version", "updated_at", "event_time", "model", "hash_keys",
                                                     "hashes"))

    def grow(self, capacity: int) -> None:
        for name in ("version", "updated_at", "event_time", "model", "hash_keys", "hashes"):
            old = getattr(self, name)
            new = np.zeros((capacity,) + old.shape[1:], old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    @staticmethod
    def _code(table: dict, names: list, value: object) -> int:  # type: ignore[type-arg]
        code = table.get(value)
        if code is None:
            code = table[value] = len(names)
            names.append(value)
        return int(code)

    def write(self, row: int, p: StoredProduct) -> None:
        self.version[row], self.updated_at[row], self.event_time[row] = p.version, p.updated_at, p.event_time
        self.model[row] = self._code(self._models, self._model_names, p.model)
        keys = tuple(p.hashes)
        self._odd_hashes.pop(row, None)
        try:
            values = [int(v, 16) for v in p.hashes.values()]
            if len(keys) > HASH_SLOTS or any(len(v) != 16 for v in p.hashes.values()):
                raise ValueError
        except (ValueError, TypeError):
            self._odd_hashes[row] = dict(p.hashes)
            return
        self.hash_keys[row] = self._code(self._key_sets, self._key_set_names, keys)
        self.hashes[row, : len(values)] = values

    COLUMNS = ("version", "updated_at", "event_time", "model", "hash_keys", "hashes")

    def export(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """``rows``' columns renumbered 0..n-1, and the code tables (JSON-able) beside them."""
        arrays = {f"meta_{name}": getattr(self, name)[rows] for name in self.COLUMNS}
        at = {int(r): i for i, r in enumerate(rows.tolist())}
        tables: dict[str, object] = {
            "models": self._model_names, "key_sets": [list(k) for k in self._key_set_names],
            "odd_hashes": [[at[r], h] for r, h in self._odd_hashes.items() if r in at]}
        return arrays, tables

    def load(self, arrays: dict[str, np.ndarray], tables: dict[str, object], n: int) -> None:
        """Put ``export``'s columns back as rows 0..n-1; ValueError when they do not fit."""
        for name in self.COLUMNS:
            got, col = arrays[f"meta_{name}"], getattr(self, name)
            if got.shape != (n,) + col.shape[1:] or got.dtype != col.dtype:
                raise ValueError(f"column {name}: {got.dtype}{got.shape}")
            col[:n] = got
        models, key_sets = tables["models"], tables["key_sets"]
        if not isinstance(models, list) or not isinstance(key_sets, list) or not isinstance(tables["odd_hashes"], list):
            raise ValueError("code tables are not lists")
        if n and (self.model[:n].max() >= max(len(models), 1) or self.hash_keys[:n].max() >= max(len(key_sets), 1)
                  or min(self.model[:n].min(), self.hash_keys[:n].min()) < 0):
            raise ValueError("a code outside its table")
        self._model_names = [str(m) for m in models]
        self._models = {m: i for i, m in enumerate(self._model_names)}
        self._key_set_names = [tuple(str(k) for k in keys) for keys in key_sets]
        self._key_sets = {k: i for i, k in enumerate(self._key_set_names)}
        self._odd_hashes = {int(r): {str(k): str(v) for k, v in h.items()}
                            for r, h in tables["odd_hashes"] if 0 <= int(r) < n}  # type: ignore[attr-defined]

    def read(self, row: int, product_id: str, vector: np.ndarray) -> StoredProduct:
        hashes = self._odd_hashes.get(row)
        if hashes is None:
            keys = self._key_set_names[int(self.hash_keys[row])] if self._key_set_names else ()
            hashes = {k: format(int(v), "016x") for k, v in zip(keys, self.hashes[row])}
        return StoredProduct(product_id, vector, int(self.version[row]), hashes,
                             self._model_names[int(self.model[row])], int(self.event_time[row]),
                             int(self.updated_at[row]))


class SideIndex:
    """Exact top-k by the model's metric (simstream.metric) over the live products (rows of a
    growable, compact matrix).

    ``segments`` say how each run of columns is stored (simstream.vector_codec); vectors come back
    bit-identical, so searches score exactly what Milvus holds. None: plain float32.
    """

    def __init__(self, dim: int, *, capacity: int = MIN_CAPACITY, segments: Sequence[Segment] | None = None,
                 device: torch.device | None = None, resident: bool | None = None, metric: Metric = IP) -> None:
        """``capacity``: rows allocated up front (the expected product count). ``device``: where
        the scans multiply (default: the GPU when there is one). ``resident``: keep the rows
        decoded on that device, in step with writes (index/device_rows.py; default: on a GPU),
        so a scan copies nothing; off the GPU only tests ask for it. ``metric``: what a score is
        (``l2`` keeps each row's offset beside it)."""
        self.dim = dim
        self.metric = metric
        capacity = max(int(capacity), 1)
        self._rows = PackedRows(dim, segments, capacity)
        self._meta = ProductMeta(capacity)
        self._live = np.zeros(capacity, bool)
        # Per row, the boundary of its product's recorded list (+inf: none): a changed product
        # enters that list only if it scores at least this (``search_reaching``).
        self._bars = np.full(capacity, np.inf, np.float32)
        # Per row, the metric's offset (``l2``: -|v|^2 / 2), added to every score of the row.
        self._offsets = np.zeros(capacity if metric.has_offsets else 0, np.float32)
        # Every write (a put of a row, a delete) gets the next sequence number, ``applied``: a step
        # that read the index when it stood at s saw exactly the rows put at or before s, so only
        # the writes after s can have changed what it computed (``changes_after``).
        self._seq = 0
        self._put_seq = np.zeros(capacity, np.int64)
        self._deletes: deque[tuple[int, str]] = deque()
        self._deletes_forgotten = 0  # the newest sequence number dropped from ``_deletes``
        self._ids: list[str | None] = []
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        # The scan's matrix products run on the GPU when there is one, on rows resident there.
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._resident: DeviceRows | None = None
        if self.device.type != "cpu" if resident is None else resident:
            self._resident = self._on_device(lambda: DeviceRows(dim, capacity, self.device))
        self._passes: weakref.WeakSet[AllPairs] = weakref.WeakSet()  # all-pairs passes told of writes

    def __len__(self) -> int:
        return len(self._row)

    def _on_device(self, make: Callable[[], DeviceRows]) -> DeviceRows | None:
        """The resident rows ``make`` gives, or None when the device has no room for them: the
        scans then run on the packed rows in host memory, exact all the same, only slower."""
        try:
            return make()
        except torch.cuda.OutOfMemoryError as exc:
            log.warning("the catalog does not fit the GPU's memory; scanning the packed rows on the CPU",
                        rows=len(self._live), error=str(exc)[:200])
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    @property
    def capacity(self) -> int:
        """Rows allocated (live, free and not yet used)."""
        return len(self._live)

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored vector."""
        return self._rows.row_bytes

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the arrays (rows, metadata, live flags): the deterministic part of
        the index's memory; ids and the id->row dict come on top (measured as RSS)."""
        return (self._rows.nbytes + self._meta.nbytes + self._live.nbytes + self._bars.nbytes + self._put_seq.nbytes
                + self._offsets.nbytes)

    @property
    def loose_rows(self) -> int:
        """Rows kept as float32 because they were not on the grid (docs/scaling.md)."""
        return self._rows.loose_rows

    # --- snapshots (index/snapshot.py) ----------------------------------------------------------
    def export(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The live rows, compacted in row order, as plain arrays (packed values, metadata columns)
        and JSON-able tables (ids, code tables): what ``restored`` rebuilds the index from without
        decoding or re-packing a vector. List boundaries are not kept: they come from the mirror."""
        rows = np.flatnonzero(self._live[: len(self._ids)])
        arrays = self._rows.export(rows)
        meta, tables = self._meta.export(rows)
        arrays.update(meta)
        tables["ids"] = [self._ids[r] for r in rows.tolist()]
        return arrays, tables

    @classmethod
    def restored(cls, dim: int, arrays: dict[str, np.ndarray], tables: dict[str, object], *, capacity: int,
                 segments: Sequence[Segment] | None = None, device: torch.device | None = None,
                 resident: bool | None = None, metric: Metric = IP) -> "SideIndex":
        """The index ``export`` described, with room for ``capacity`` rows. Raises ValueError (or
        KeyError) when the arrays do not fit ``dim`` and ``segments``."""
        ids = tables["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("ids are not a list of strings")
        n = len(ids)
        side = cls(dim, capacity=max(capacity, n), segments=segments, device=device, resident=resident, metric=metric)
        side._rows.load(arrays, n)
        side._meta.load(arrays, tables, n)
        interned = [sys.intern(pid) for pid in ids]
        side._ids = list(interned)
        side._row = {pid: r for r, pid in enumerate(interned)}
        if len(side._row) != n:
            raise ValueError("an id appears twice")
        side._live[:n] = True
        if side._resident is not None or metric.has_offsets:
            for start in range(0, n, 65_536):
                block = np.arange(start, min(n, start + 65_536))
                decoded = side._rows.read(block)
                if side._resident is not None:
                    side._resident.write(block, decoded)
                if metric.has_offsets:
                    side._offsets[block] = metric.offsets(decoded)
        return side

    # --- writes -----------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self._live)
        if need <= cap:
            return
        new = max(need, int(cap * GROWTH) + 1)
        self._rows.grow(new)
        if (resident := self._resident) is not None:
            def grown() -> DeviceRows:
                resident.grow(new)
                return resident
            self._resident = self._on_device(grown)
        self._meta.grow(new)
        live = np.zeros(new, bool)
        live[:cap] = self._live
        self._live = live
        bars = np.full(new, np.inf, np.float32)
        bars[:cap] = self._bars
        self._bars = bars
        put_seq = np.zeros(new, np.int64)
        put_seq[:cap] = self._put_seq
        self._put_seq = put_seq
        if self.metric.has_offsets:
            offsets = np.zeros(new, np.float32)
            offsets[:cap] = self._offsets
            self._offsets = offsets

    def put(self, products: Sequence[StoredProduct]) -> None:
        """Insert or replace products, vector and metadata."""
        if not products:
            return
        fresh = {p.product_id for p in products} - self._row.keys()
        self._grow(len(self._ids) + max(0, len(fresh) - len(self._free)))  # one copy per batch at most
        rows = np.empty(len(products), np.int64)
        for i, p in enumerate(products):
            pid = sys.intern(str(p.product_id))  # shared with the list mirror's copies of the id
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
            self._meta.write(r, p)
        self._rows.write(rows, np.stack([p.vector for p in products]))
        if self._resident is not None or self.metric.has_offsets:
            decoded = self._rows.read(rows)  # the grid's values, as every scan reads them
            if self._resident is not None:
                self._resident.write(rows, decoded)
            if self.metric.has_offsets:
                self._offsets[rows] = self.metric.offsets(decoded)
        self._live[rows] = True
        self._put_seq[rows] = np.arange(self._seq + 1, self._seq + 1 + len(rows))
        self._seq += len(rows)
        for scan in self._passes:
            scan.touch(rows)

    def delete(self, ids: Iterable[str]) -> None:
        for pid in ids:
            r = self._row.pop(pid, None)
            if r is not None:
                self._live[r] = False
                self._bars[r] = np.inf
                self._rows.clear(r)
                if self._resident is not None:
                    self._resident.clear(r)
                self._ids[r] = None
                self._free.append(r)
                self._seq += 1
                self._deletes.append((self._seq, pid))
                if len(self._deletes) > DELETE_LOG:
                    self._deletes_forgotten = self._deletes.popleft()[0]
                for scan in self._passes:
                    scan.touch(r)

    def set_bars(self, bars: Mapping[str, float]) -> None:
        """Set the list boundary of the held products among ``bars`` (+inf: no recorded list)."""
        for pid, bar in bars.items():
            if (r := self._row.get(pid)) is not None:
                self._bars[r] = bar

    def not_held(self, stamps: Mapping[str, int]) -> list[str]:
        """Ids of ``stamps`` (product_id -> updated_at) whose version this index does not hold."""
        updated = self._meta.updated_at
        return sorted(pid for pid, t in stamps.items() if (r := self._row.get(pid)) is None or int(updated[r]) != t)

    # --- reads --------------------------------------------------------------------------------
    @property
    def applied(self) -> int:
        """The sequence number of the last write applied: where a read made now stands."""
        return self._seq

    def changes_after(self, seq: int) -> tuple[list[str], set[str]] | None:
        """The live ids put after ``seq`` (``applied`` when a step read), and the ids deleted
        after it (some may be live again); None when the delete log no longer reaches back."""
        if seq < self._deletes_forgotten:
            return None
        n = len(self._ids)
        rows = np.flatnonzero(self._live[:n] & (self._put_seq[:n] > seq))
        deleted: set[str] = set()
        for at, pid in reversed(self._deletes):
            if at <= seq:
                break
            deleted.add(pid)
        return [self._ids[r] for r in rows.tolist()], deleted  # type: ignore[misc]

    def _read(self, ids: Iterable[str]) -> tuple[list[tuple[str, int]], np.ndarray]:
        """The live products among ``ids`` with their rows, and their decoded vectors in that order."""
        found = [(pid, r) for pid in ids if (r := self._row.get(pid)) is not None]
        return found, self._rows.read(np.array([r for _, r in found], np.int64))

    def get(self, ids: Iterable[str]) -> dict[str, StoredProduct]:
        """Stored products with their own copy of the vector."""
        found, vectors = self._read(ids)
        return {pid: self._meta.read(r, pid, vectors[i]) for i, (pid, r) in enumerate(found)}

    def decoded(self, ids: Sequence[str]) -> np.ndarray:
        """The float32 vectors of ``ids`` (every one live; repeats allowed), one row each, in
        that order: one decode for many (serve's per-field contributions of a whole pass)."""
        return self._rows.read(np.array([self._row[pid] for pid in ids], np.int64))

    def vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors of the live products among ``ids``."""
        found, vectors = self._read(ids)
        return {pid: vectors[i] for i, (pid, _) in enumerate(found)}

    def ids(self) -> list[str]:
        """Ids of the live products."""
        return list(self._row)

    def ids_written_since(self, since_ms: int) -> list[str]:
        """Ids whose held version was written at or after ``since_ms``."""
        n = len(self._ids)
        rows = np.flatnonzero(self._live[:n] & (self._meta.updated_at[:n] >= since_ms))
        return [self._ids[r] for r in rows.tolist()]  # type: ignore[misc]

    def newest(self, count: int) -> dict[str, int]:
        """The ``count`` live products written last, with their write times."""
        n = len(self._ids)
        rows = np.flatnonzero(self._live[:n])
        stamps = self._meta.updated_at[rows]
        top = rows[np.argsort(-stamps, kind="stable")[:count]]
        return {self._ids[r]: int(self._meta.updated_at[r]) for r in top.tolist()}  # type: ignore[misc]

    def written_at(self, ids: Iterable[str]) -> dict[str, int]:
        """When the held version of each live product among ``ids`` was written."""
        updated = self._meta.updated_at
        return {pid: int(updated[r]) for pid in ids if (r := self._row.get(pid)) is not None}

    def reaching_written_since(self, vectors: np.ndarray, cuts: Sequence[int], bars: Sequence[float],
                               ) -> list[list[tuple[str, np.ndarray]]]:
        """Per query j: the live products written at or after ``cuts[j]`` whose score with
        ``vectors[j]``, as the oracle computes it, may reach ``bars[j]`` (a superset, within the
        scan's error bound; -inf: all of them), with their vectors. Rows are multiplied on their
        packed values, and only the rows returned are decoded.

        Work follows each query's own share: with the rows ordered newest first, query j needs the
        first L_j of them; queries are grouped by L_j within a factor of two, and each group
        multiplies only its longest prefix (at most twice the sum of the L_j, not every query
        times the rows written since the oldest cut)."""
        n = len(self._ids)
        count = len(cuts)
        if not count:
            return []
        cut = np.asarray(cuts, np.int64)
        rows = np.flatnonzero(self._live[:n] & (self._meta.updated_at[:n] >= cut.min()))
        if not len(rows):
            return [[] for _ in cuts]
        newest_first = np.argsort(-self._meta.updated_at[rows], kind="stable")
        rows = rows[newest_first]
        stamps = self._meta.updated_at[rows]
        prefix = np.searchsorted(-stamps, -cut, side="right")  # rows written at or after each cut
        group = np.ceil(np.log2(np.maximum(prefix, 1))).astype(np.int64)
        q = np.asarray(vectors, np.float32)
        bar = np.asarray(bars, np.float64)
        hits: list[np.ndarray] = [np.zeros(0, np.int64)] * count
        for g in np.unique(group[prefix > 0]).tolist():
            members = np.flatnonzero((group == g) & (prefix > 0))
            longest = int(prefix[members].max())
            found = subset_reaching(self._rows, rows[:longest], q[members], bar[members],
                                    self._offsets_for(q[members]))
            for j, at in zip(members.tolist(), found):
                hits[j] = at[at < prefix[j]]  # positions in the newest-first order
        wanted = np.unique(np.concatenate(hits))
        decoded = self._rows.read(rows[wanted])
        where = {int(i): k for k, i in enumerate(wanted.tolist())}
        ids = self._ids
        return [[(ids[int(rows[i])], decoded[where[i]]) for i in h.tolist()] for h in hits]  # type: ignore[misc]

    def count_written_since(self, times_ms: Sequence[int]) -> list[int]:
        """Per time, the live rows whose held version was written at or after it: one pass over the
        write times, whatever the number of times asked."""
        if not len(times_ms):
            return []
        n = len(self._ids)
        stamps = self._meta.updated_at[:n][self._live[:n]]
        cuts = np.asarray(times_ms, np.int64)
        order = np.argsort(cuts, kind="stable")
        # rows per interval between consecutive sorted cut-offs, then suffix sums
        per = np.bincount(np.searchsorted(cuts[order], stamps, side="right"), minlength=len(cuts) + 1)
        after = np.cumsum(per[::-1])[::-1]  # after[i]: rows at or after the i-th smallest cut
        out = np.empty(len(cuts), np.int64)
        out[order] = after[1:]
        return out.tolist()

    # --- search -----------------------------------------------------------------------------
    def _offsets_for(self, queries: np.ndarray) -> Offsets | None:
        """The metric's offsets of the rows and of ``queries`` for a scan (None under ``ip``)."""
        if not self.metric.has_offsets:
            return None
        return Offsets(self._offsets, self.metric.offsets(queries))

    def _top(self, vectors: np.ndarray, limit: int, chunk: int = 256, reach_margin: float | None = None,
             ) -> Iterator[tuple[list[tuple[list[int], list[float]]], np.ndarray, dict[int, int], list[np.ndarray] | None]]:
        """Per chunk of queries: each query's exact top-``limit`` live rows by the ranking rule
        (index/exact.py), best first, with their float32 scores computed as the oracle computes
        them; the decoded candidate rows (``decoded[at[row]]``); and with ``reach_margin``, per
        query the rows whose bar it may reach (``search_reaching``).

        One pass over the packed matrix per chunk yields a provable superset of each top-``limit``
        (index/packed_scan.py); only those rows are decoded and rescored."""
        q = np.asarray(vectors, np.float32)
        bars = None if reach_margin is None else self._bars
        for start in range(0, len(q), chunk):
            queries = np.ascontiguousarray(q[start:start + chunk])
            cand = scan_candidates(self._rows, self._live, len(self._ids), queries, limit, resident=self._resident,
                                   bars=bars, margin=reach_margin or 0.0, offsets=self._offsets_for(queries))
            tops, decoded, at = self._rescored(queries, cand.rows, limit)
            yield tops, decoded, at, cand.reaching

    def _rescored(self, queries: np.ndarray, candidates: Sequence[np.ndarray], limit: int,
                  ) -> tuple[list[tuple[list[int], list[float]]], np.ndarray, dict[int, int]]:
        """Each query's candidate rows decoded, scored with the oracle's arithmetic, ranked and
        cut to ``limit``: (rows, scores) per query, the decoded rows and where each row is in them."""
        ids = self._ids
        unique = np.unique(np.concatenate(candidates)) if len(candidates) else np.zeros(0, np.int64)
        decoded = self._rows.read(unique)
        at = {int(r): i for i, r in enumerate(unique.tolist())}
        tops = []
        query_offsets = self.metric.offsets(queries)
        for query, q_offset, rows in zip(queries, query_offsets, candidates):
            # vecdot runs numpy's float32 dot (BLAS sdot) once per row: bit for bit the oracle's
            # ``float(row @ query)`` (a matrix-vector product would sum in another order); with the
            # metric's offsets added as ``Metric.pair`` adds them
            mine = decoded[np.searchsorted(unique, rows)]
            dots = np.vecdot(mine, query)
            scores = (self.metric.with_offsets(dots, self._offsets[rows], q_offset) if self.metric.has_offsets
                      else dots).tolist()
            scored = sorted(zip(scores, (ids[r] for r in rows.tolist()), rows.tolist()),
                            key=lambda t: rank_key(t[0], t[1]))[:limit]  # type: ignore[arg-type]
            tops.append(([r for _, _, r in scored], [sc for sc, _, _ in scored]))
        return tops, decoded, at

    def all_pairs(self, limit: int, started_ms: int | None = None) -> AllPairs:
        """A pass giving every live product's candidates for its top-``limit`` at once (each pair
        multiplied once: index/all_pairs.py); ``advance`` it to ``done``, then hand it to
        ``search``. Writes from now on are told to it."""
        scan = AllPairs(self._rows, self._live, len(self._ids), limit, resident=self._resident, started_ms=started_ms,
                        offsets=self._offsets[: len(self._ids)].copy() if self.metric.has_offsets else None)
        self._passes.add(scan)
        return scan

    def search(self, vectors: np.ndarray, limit: int, *, ids: Sequence[str] | None = None,
               scan: AllPairs | None = None) -> list[list[tuple[str, np.ndarray]]]:
        """Top-``limit`` live products per query by the metric's score, best first: (id, vector) pairs.
        With ``scan`` (a finished ``all_pairs`` of this index, at least as wide) and ``ids`` (each
        query's own product): queries the scan holds candidates for are rescored from them, the
        others searched."""
        if scan is None or ids is None or scan.limit < limit or scan not in self._passes:
            return [[(self._ids[r], decoded[at[r]]) for r in rows]  # type: ignore[misc]
                    for tops, decoded, at, _ in self._top(vectors, limit) for rows, _ in tops]
        q = np.asarray(vectors, np.float32)
        own = [self._row.get(pid) for pid in ids]
        found = [None if r is None else scan.candidates(r) for r in own]
        held = [i for i, c in enumerate(found) if c is not None]
        if held:  # the scan ranked the row's own vector: a query given another one is searched
            same = (self._rows.read(np.array([own[i] for i in held], np.int64)) == q[held]).all(axis=1)
            held = [i for i, ok in zip(held, same.tolist()) if ok]
        rest = sorted(set(range(len(found))) - set(held))
        out: list[list[tuple[str, np.ndarray]]] = [[] for _ in found]
        if held:
            tops, decoded, at = self._rescored(q[held], [found[i] for i in held], limit)  # type: ignore[misc]
            for i, (rows, _) in zip(held, tops):
                out[i] = [(self._ids[r], decoded[at[r]]) for r in rows]  # type: ignore[misc]
        if rest:
            for i, hits in zip(rest, self.search(q[rest], limit)):
                out[i] = hits
        return out

    @property
    def used(self) -> int:
        """Rows ever used: masks over the rows (``search_filtered``) cover [0, used)."""
        return len(self._ids)

    def rows_of(self, ids: Iterable[str]) -> dict[str, int]:
        """The row of each live product among ``ids``."""
        return {pid: r for pid in ids if (r := self._row.get(pid)) is not None}

    def search_filtered(self, vectors: np.ndarray, limit: int, allowed: Sequence[np.ndarray | None],
                        ) -> list[list[tuple[str, float]]]:
        """Top-``limit`` (id, score) per query, best first, among the live rows its mask allows
        (bool over [0, ``used``); None: every row): the exact answer a float32 brute force over
        those rows ranks (index/exact.py). A query whose mask leaves few rows (``SUBSET_ROWS``,
        ``SUBSET_SHARE``) scans just those, together with the queries that leave the same rows (a
        product over the rows costs about the same for one query as for 32: most of it is packing
        the rows); the others share one pass, which the selective ones join when it runs anyway or
        when their own scans would cost more (``SUBSET_COST``)."""
        q = np.asarray(vectors, np.float32)
        n = len(self._ids)
        out: list[list[tuple[str, float]] | None] = [None] * len(q)
        wide: list[int] = []
        subsets: dict[bytes, tuple[np.ndarray, list[int]]] = {}  # by the rows' bytes: the same rows scan once
        few = min(SUBSET_ROWS, n // SUBSET_SHARE)
        small: list[tuple[int, np.ndarray]] = []
        for j, mask in enumerate(allowed):
            # a mask passing more rows than a subset holds is a wide query, whatever rows are dead:
            # counting them first spares listing them (~0.1 ms a query at 100k, in the pass)
            if mask is not None and np.count_nonzero(mask[:n]) <= few:
                small.append((j, mask))
            else:
                wide.append(j)
        if wide and SUBSET_COST:
            wide += [j for j, _ in small]  # the pass runs anyway: they join it, their rows not even listed
        else:
            for j, mask in small:
                rows = np.flatnonzero(mask[:n] & self._live[:n])
                if len(rows):
                    subsets.setdefault(rows.tobytes(), (rows, []))[1].append(j)
                else:
                    out[j] = []
            if SUBSET_COST * sum(len(rows) for rows, _ in subsets.values()) > n:
                wide += [j for _, members in subsets.values() for j in members]  # cheaper in one pass
                subsets = {}
        for rows, members in subsets.values():
            for j, hits in zip(members, self._ranked(q[members], limit, sel=rows)):
                out[j] = hits
        for start in range(0, len(wide), 256):
            chunk = wide[start:start + 256]
            masks = [allowed[j] for j in chunk]
            both = None if all(m is None for m in masks) else np.stack(
                [m[:n] if m is not None else np.ones(n, bool) for m in masks])  # queries x rows
            for j, hits in zip(chunk, self._ranked(q[chunk], limit, allowed=both)):
                out[j] = hits
        return [hits or [] for hits in out]

    def _ranked(self, queries: np.ndarray, limit: int, *, allowed: np.ndarray | None = None,
                sel: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
        queries = np.ascontiguousarray(queries, np.float32)
        cand = scan_candidates(self._rows, self._live, len(self._ids), queries, limit,
                               resident=self._resident, allowed=allowed, sel=sel, offsets=self._offsets_for(queries))
        tops, _, _ = self._rescored(queries, cand.rows, limit)
        ids = self._ids
        return [[(ids[r], sc) for r, sc in zip(rows, scores)] for rows, scores in tops]  # type: ignore[misc]

    def search_scores(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Top-``limit`` (id, score) per query, best first."""
        return [[(self._ids[r], sc) for r, sc in zip(rows, scores)]  # type: ignore[misc]
                for tops, _, _, _ in self._top(vectors, limit) for rows, scores in tops]

    def search_reaching(self, vectors: np.ndarray, limit: int, margin: float,
                        ) -> tuple[list[list[tuple[str, float]]], list[set[str]]]:
        """``search_scores``, and in the same pass per query the products whose bar (``set_bars``)
        it may reach: a superset of those whose score with the query, as the oracle computes it,
        is at least their bar - ``margin``."""
        rows_out: list[list[tuple[str, float]]] = []
        reach_out: list[set[str]] = []
        ids = self._ids
        for tops, _, _, reaching in self._top(vectors, limit, reach_margin=margin):
            assert reaching is not None
            rows_out += [[(ids[r], sc) for r, sc in zip(rows, scores)] for rows, scores in tops]  # type: ignore[misc]
            reach_out += [{ids[r] for r in rr.tolist()} for rr in reaching]  # type: ignore[misc]
        return rows_out, reach_out
