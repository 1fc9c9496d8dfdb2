"""Serve's exact in-memory copy of the catalog: the worker's packed rows and scan, plus the columns
the filters compare, kept current by polling Milvus.

Live queries (filtered, text, by example, recommend) were milvus-lite filtered FLAT scans in
Python over 3,232-d rows; here they are the side index's exact scan (``index.side.SideIndex``,
the same packed rows and kernels as the worker's refresh) with each query's filters compiled to a
row mask over the columns below. Answers are the same ids, order and float32 scores as a brute
force over the filtered catalog (docs/serving.md).

Kept current the way a worker's copy is (index/store.py): every ``SIMSTREAM_SERVE_SYNC_S`` (or
longer: a sync may take ``SYNC_BUSY_SHARE`` of the time at most) it reads
the products written at or after its last sync (less ``RACE_LOOKBACK_MS``) and the delete markers
written since, and applies them; ``as_of`` is when that sync began: every write Milvus showed then
is in the copy. Every ``RECONCILE_EVERY`` syncs the counts are compared, and on a difference (a
row deleted without a marker) the copy is checked against Milvus' write stamps.

A reader-writer lock: searches and reads share it, a sync's writes take it alone (between
searches, never during one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import fasteners
import numpy as np

from simstream import compute
from simstream.clock import RACE_LOOKBACK_MS, now_ms
from simstream.index.budget import BUILD_PAGE_ROWS, Footprint, check_fits, side_capacity
from simstream.index.milvus import MilvusStore
from simstream.index.packed_rows import memory_per_row
from simstream.index.neighbours import FieldShares
from simstream.index.rows import ServedProduct, StoredProduct, brand_key, category_key
from simstream.index.side import SideIndex
from simstream.logs import get_logger
from simstream.metric import IP, Metric
from simstream.memory import current_rss, memory_limit
from simstream.serve.batcher import MicroBatcher
from simstream.serve.filters import Filters
from simstream.vector_codec import Segment

__all__ = ["RECONCILE_EVERY", "SYNC_BUSY_SHARE", "BATCH_QUERIES", "PASSING_KEPT", "FEW_CODES", "FIELDS_PAIRS", "NO_VECTOR", "Hit", "LiveQuery",
           "FilterColumns", "ServedCopy"]

log = get_logger(__name__)
RECONCILE_EVERY = 60  # syncs between two count checks against Milvus
SYNC_BUSY_SHARE = 0.2  # the share of the time syncing may take: a slower sync waits longer for the next
BATCH_QUERIES = 64  # queries of concurrent requests ranked in one pass at most
PASSING_KEPT = 1_024  # category filters whose passing codes are remembered (FilterColumns)
FEW_CODES = 8  # a filter on at most this many brand or category codes compares each (``_one_of``)
FIELDS_PAIRS = 1_024  # (query, hit) pairs whose contributions are computed at once: ~25 MiB of float64
NO_VECTOR = np.zeros(0, np.float32)  # a held product's vector: its row in the side index


@dataclass(frozen=True, slots=True)
class _Masked:
    """A query's row mask (None: all rows) as computed after ``writes`` writes to the copy."""

    writes: int
    mask: np.ndarray | None


class Hit(NamedTuple):
    """A ranked product: its id, its float32 score, its per-field contributions when the query
    asked for them (``LiveQuery.shares``), else None, and its match probability when the query
    asked for it too (``LiveQuery.decide``)."""

    product_id: str
    score: float
    fields: dict[str, float] | None = None
    match_probability: float | None = None


@dataclass(frozen=True)
class LiveQuery:
    """One exact top-``limit`` question: a query vector, absolute filters (exclusions included),
    and ``shares``: the field layout the contributions of its first ``fields_for`` hits (None:
    every hit) are computed over (None: no contributions); ``decide``: the match decision those
    hits' contributions get (``MatchModel.of_entries`` at the stored weights; None: none), one
    call for every query of a pass that names the same one."""

    vector: np.ndarray
    filters: Filters
    limit: int
    exclude: frozenset[str] = field(default_factory=frozenset)  # besides ``filters.exclude``
    shares: FieldShares | None = None
    fields_for: int | None = None
    decide: Callable[[Sequence[Mapping[str, float]]], list[float]] | None = None


def _one_of(column: np.ndarray, codes: list[int], known: int) -> np.ndarray:
    """Which entries of ``column`` (codes below ``known``) are among ``codes``: a comparison per
    code for a few (at 100k rows ~5 us each), else a table lookup (~60 us; fancy indexing ~180 us,
    np.isin's sort 0.7 ms), in the request's thread before it joins a pass."""
    if len(codes) <= FEW_CODES:
        out = np.zeros(len(column), bool)
        for code in codes:
            out |= column == code
        return out
    table = np.zeros(known, bool)
    table[codes] = True
    return table.take(column)


def _by_decision(queries: Sequence[LiveQuery], fields: Mapping[tuple[int, int], object]
                 ) -> dict[Callable[[Sequence[Mapping[str, float]]], list[float]], list[tuple[int, int]]]:
    """The (query, hit number) pairs with contributions whose query asks for a match decision,
    by decision."""
    out: dict[Callable[[Sequence[Mapping[str, float]]], list[float]], list[tuple[int, int]]] = {}
    for pair in fields:
        if (decide := queries[pair[0]].decide) is not None:
            out.setdefault(decide, []).append(pair)
    return out


class FilterColumns:
    """Per side-index row: brand key and category key (as codes), price (-1 unknown), and an
    inverted index of attribute (name, value) pairs."""

    def __init__(self, capacity: int) -> None:
        self.brand = np.zeros(capacity, np.int32)
        self.category = np.zeros(capacity, np.int32)
        self.price = np.full(capacity, -1.0, np.float64)
        self._brand_codes: dict[str, int] = {"": 0}
        self._category_codes: dict[str, int] = {"": 0}
        self._category_keys: list[str] = [""]
        self._attrs: dict[tuple[str, str], set[int]] = {}
        self._row_attrs: dict[int, list[tuple[str, str]]] = {}
        self._passing: dict[tuple[object, ...], list[int]] = {}  # ``_category_codes_passing``'s answers

    def grow(self, capacity: int) -> None:
        for name, fill in (("brand", 0), ("category", 0), ("price", -1.0)):
            old = getattr(self, name)
            if len(old) < capacity:
                new = np.full(capacity, fill, old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)

    def write(self, row: int, p: ServedProduct) -> None:
        self.clear(row)
        self.brand[row] = self._brand_codes.setdefault(brand_key(p.brand), len(self._brand_codes))
        key = category_key(p.category)
        if key not in self._category_codes:
            self._category_codes[key] = len(self._category_keys)
            self._category_keys.append(key)
        self.category[row] = self._category_codes[key]
        self.price[row] = p.price if p.price is not None else -1.0
        pairs = [(k, v) for k, v in p.display.attributes.items() if v is not None]
        for pair in pairs:
            self._attrs.setdefault(pair, set()).add(row)
        if pairs:
            self._row_attrs[row] = pairs

    def _category_codes_passing(self, f: Filters) -> list[int]:
        """The category codes ``f``'s category filters pass, remembered per filter until a new
        category key appears (a filter tests every key: concurrent queries often share one)."""
        key = (f.category, f.category_not, f.category_exact, len(self._category_keys))
        if (codes := self._passing.get(key)) is None:
            if len(self._passing) >= PASSING_KEPT:
                self._passing.clear()
            codes = self._passing[key] = [c for c, k in enumerate(self._category_keys) if f.matches_category(k)]
        return codes

    def clear(self, row: int) -> None:
        for pair in self._row_attrs.pop(row, ()):
            rows = self._attrs[pair]
            rows.discard(row)
            if not rows:
                del self._attrs[pair]

    def mask(self, f: Filters, used: int) -> np.ndarray | None:
        """Rows [0, ``used``) that pass ``f`` (absolute filters; exclusions aside); None: all."""
        if f.nothing:
            return np.zeros(used, bool)
        if f.empty:
            return None
        m = np.ones(used, bool)
        if f.brand:
            m &= _one_of(self.brand[:used], [self._brand_codes[k] for k in f.brand if k in self._brand_codes],
                         len(self._brand_codes))
        if f.brand_not:
            m &= ~_one_of(self.brand[:used], [self._brand_codes[k] for k in f.brand_not if k in self._brand_codes],
                          len(self._brand_codes))
        if f.category or f.category_not:
            m &= _one_of(self.category[:used], self._category_codes_passing(f), len(self._category_keys))
        price = self.price[:used]
        if f.price_min is not None:
            m &= price >= f.price_min
        if f.price_max is not None:
            m &= (price >= 0) & (price <= f.price_max)
        for pair in sorted(f.attributes.items()):
            has = np.zeros(used, bool)
            rows = [r for r in self._attrs.get(pair, ()) if r < used]
            has[rows] = True
            m &= has
        return m


class ServedCopy:
    """The catalog as serve answers live queries from it; build with ``build``, keep with ``sync``."""

    def __init__(self, dim: int, segments: Sequence[Segment] | None, capacity: int, passes: int = 1,
                 metric: Metric = IP) -> None:
        """``passes``: live-query passes that may run at once (SIMSTREAM_SERVE_PASSES); ``metric``:
        the model's (simstream.metric)."""
        self.side = SideIndex(dim, capacity=capacity, segments=segments, metric=metric)
        self.columns = FilterColumns(self.side.capacity)
        self.products: dict[str, ServedProduct] = {}  # without vectors: cards, attributes, seeds
        self.lock = fasteners.ReaderWriterLock()
        self.display = True  # whether the collection has display fields (attributes; rows.SERVING_FIELDS)
        self.synced_at = 0  # ``as_of``: every write Milvus showed at this time (ms) is applied
        self._syncs = 0
        self._writes = 0  # ``apply`` calls that changed something: a row mask computed before one is stale
        # concurrent live queries ranked in one pass (``top_one``); ``passes`` of them at once
        self.batcher: MicroBatcher[tuple[LiveQuery, _Masked], list[Hit]] = MicroBatcher(
            self._top, BATCH_QUERIES, passes, on=compute.run)

    @classmethod
    def fits(cls, milvus: MilvusStore, segments: Sequence[Segment] | None,
             memory_limit_bytes: int | None = None, cached_bytes: int = 0) -> Footprint:
        """The copy's estimated footprint, with ``cached_bytes`` beside it (the published lists
        held at their bound); MemoryBudgetExceeded when it does not fit (index/budget.py)."""
        need = Footprint(milvus.count_products(), milvus.dim,
                         row_bytes=memory_per_row(list(segments)) if segments else 0, cached=cached_bytes)
        check_fits(need, memory_limit(memory_limit_bytes), current_rss())
        return need

    @classmethod
    def build(cls, milvus: MilvusStore, segments: Sequence[Segment] | None, products: int = 0,
              passes: int = 1, metric: Metric = IP) -> "ServedCopy":
        """Every product Milvus holds, read page by page; ``as_of`` is when the reading began."""
        t0 = time.perf_counter()
        started = now_ms()
        copy = cls(milvus.dim, segments, side_capacity(products), passes, metric)
        copy.display = milvus.products_display
        for page in milvus.iter_served(BUILD_PAGE_ROWS, with_vectors=True):
            copy.apply(page, ())
        copy.synced_at = started
        log.info("serve copy built", products=len(copy), seconds=round(time.perf_counter() - t0, 2),
                 bytes_per_vector=copy.side.row_bytes)
        return copy

    def __len__(self) -> int:
        return len(self.side)

    def apply(self, products: Sequence[ServedProduct], deleted: Iterable[str]) -> None:
        """Hold ``products`` (read with their vectors) and drop ``deleted``."""
        with self.lock.write_lock():
            if products:
                self.side.put([StoredProduct(p.product_id, p.vector, p.version, {}, p.model, p.event_time or 0,
                                             p.updated_at or 0) for p in products])
                self.columns.grow(self.side.capacity)
                rows = self.side.rows_of(p.product_id for p in products)
                for p in products:
                    self.columns.write(rows[p.product_id], p)
                    self.products[p.product_id] = replace(p, vector=NO_VECTOR)  # the rows hold it
            gone = [pid for pid in deleted if pid in self.products]
            if gone:
                rows = self.side.rows_of(gone)
                for pid in gone:
                    self.columns.clear(rows[pid])
                    del self.products[pid]
                self.side.delete(gone)
            if products or gone:
                self._writes += 1

    def sync(self, milvus: MilvusStore) -> int:
        """Apply what was written to Milvus since the last sync; returns how many products changed."""
        started = now_ms()
        since = self.synced_at - RACE_LOOKBACK_MS
        stamps = milvus.write_stamps_since(since)
        markers = milvus.tombstones_since(since)
        with self.lock.read_lock():
            fetch = self.side.not_held(stamps)
        fresh = milvus.read_served(fetch, with_vectors=True) if fetch else {}
        deleted = {pid for pid, _, _ in markers} - stamps.keys()
        self.apply([fresh[pid] for pid in fetch if pid in fresh], deleted)
        self._syncs += 1
        if self._syncs % RECONCILE_EVERY == 0 and len(self) != milvus.count_products():
            self._reconcile(milvus)
        self.synced_at = started
        return len(fresh) + len(deleted)

    def _reconcile(self, milvus: MilvusStore) -> None:
        """Hold exactly Milvus' products: a row deleted without a marker the sync could read."""
        stamps = milvus.all_write_stamps()
        with self.lock.read_lock():
            fetch = self.side.not_held(stamps)
            extra = [pid for pid in self.products if pid not in stamps]
        for start in range(0, len(fetch), BUILD_PAGE_ROWS):
            got = milvus.read_served(fetch[start:start + BUILD_PAGE_ROWS], with_vectors=True)
            self.apply(list(got.values()), ())
        self.apply((), extra)
        log.info("serve copy reconciled with Milvus", fetched=len(fetch), dropped=len(extra))

    def _mask(self, q: LiveQuery, used: int) -> np.ndarray | None:
        """The rows [0, ``used``) ``q`` may return (its filters and exclusions); None: all. Under
        the read lock."""
        mask = self.columns.mask(q.filters, used)
        if left_out := q.exclude | q.filters.exclude:
            mask = np.ones(used, bool) if mask is None else mask
            mask[list(self.side.rows_of(left_out).values())] = False
        return mask

    def top(self, queries: Sequence[LiveQuery]) -> list[list[Hit]]:
        """Each query's exact top-``limit`` (id, float32 score, contributions) among the products
        its filters allow, best first (index/exact.py's ranking), in one pass for all of them."""
        return self._top([(q, None) for q in queries])

    def _top(self, items: Sequence[tuple[LiveQuery, _Masked | None]]) -> list[list[Hit]]:
        """``top``, each query with the mask its caller computed, where no write came since."""
        if not items:
            return []
        with self.lock.read_lock():
            used = self.side.used
            masks = [ready.mask if ready is not None and ready.writes == self._writes else self._mask(q, used)
                     for q, ready in items]
            queries = [q for q, _ in items]
            out: list[list[tuple[str, float]]] = [[] for _ in queries]
            by_limit: dict[int, list[int]] = {}
            for i, q in enumerate(queries):  # a wide query (per_brand reading deeper) widens no other
                by_limit.setdefault(q.limit, []).append(i)
            for limit, members in by_limit.items():
                hits = self.side.search_filtered(np.stack([queries[i].vector for i in members]), limit,
                                                 [masks[i] for i in members])
                for i, h in zip(members, hits):
                    out[i] = h
            return self._with_fields(queries, out)

    def _with_fields(self, queries: Sequence[LiveQuery], hits: list[list[tuple[str, float]]]) -> list[list[Hit]]:
        """``hits`` with each one's contributions where its query asked (``LiveQuery.shares``),
        for the whole pass at once: the hits' rows decoded in one read, the shares in a few array
        operations (per request, the decode and the shares were dozens of small numpy calls, each
        letting go of the GIL and waiting to take it back). Under the read lock."""
        pairs: dict[FieldShares, list[tuple[int, int]]] = {}  # by layout: (query, hit number)
        for i, q in enumerate(queries):
            if q.shares is not None:
                count = len(hits[i]) if q.fields_for is None else min(len(hits[i]), q.fields_for)
                pairs.setdefault(q.shares, []).extend((i, n) for n in range(count))
        fields: dict[tuple[int, int], dict[str, float]] = {}
        for shares, todo in pairs.items():
            for start in range(0, len(todo), FIELDS_PAIRS):  # bounded memory: deep pages, per_brand's widening
                part = todo[start:start + FIELDS_PAIRS]
                rows = self.side.decoded([hits[i][n][0] for i, n in part])
                vectors = np.stack([queries[i].vector for i, _ in part])
                fields.update(zip(part, shares.pairs(vectors, rows)))
        decided: dict[tuple[int, int], float] = {}
        for decide, todo in _by_decision(queries, fields).items():  # each row's alone: one call for all
            decided.update(zip(todo, decide([fields[pair] for pair in todo])))
        return [[Hit(pid, score, fields.get((i, n)), decided.get((i, n))) for n, (pid, score) in enumerate(h)]
                for i, h in enumerate(hits)]

    def top_one(self, query: LiveQuery) -> list[Hit]:
        """``top`` for one query, in one pass with the queries other threads ask meanwhile
        (serve/batcher.py). The caller computes its own row mask first: the pass's thread would
        otherwise compute every caller's, and each of those numpy steps lets go of the GIL and
        waits to take it back from the request threads (at 10k, 18 masks: 8.7 ms of wall time
        for 1.2 ms of CPU in a 29 ms pass)."""
        with self.lock.read_lock():
            ready = _Masked(self._writes, self._mask(query, self.side.used))
        return self.batcher((query, ready))

    def held(self, ids: Iterable[str]) -> dict[str, ServedProduct]:
        """``served(ids)`` without the lock, for the event loop, which must never wait on a sync's
        write (a pending writer makes readers wait behind a whole pass). Safe: one dict read per
        id, atomic under the GIL, and a held product is never changed, only replaced."""
        products = self.products
        return {pid: p for pid in ids if (p := products.get(pid)) is not None}

    def served(self, ids: Iterable[str], *, with_vectors: bool = False) -> dict[str, ServedProduct]:
        """What is held of each product among ``ids`` (with its stored vector on request: read
        under the lock, a sync may be moving rows; without, as ``held``)."""
        if not with_vectors:
            return self.held(ids)
        with self.lock.read_lock():
            found = {pid: p for pid in ids if (p := self.products.get(pid)) is not None}
            vectors = self.side.vectors(found)
        return {pid: replace(p, vector=vectors[pid]) for pid, p in found.items()}
