"""Exact ranked pages: what every live query (filtered neighbours, search, by example, recommend)
comes down to once its query vector is known.

A page is defined on the exact ranking (the model's metric: float32 inner product, or -|q - r|^2 / 2
under ``l2``; ties by id: index/exact.py) of
the products its filters allow, so an oracle can reproduce it from the catalog alone:

- ``min_score``: the ranking cut where the score falls below it;
- ``per_brand``: at most n per brand key, taken greedily down the ranking (products without a
  brand are not capped);
- ``offset`` / ``k``: the page; a cursor carries the next offset, up to SIMSTREAM_SERVE_MAX_K.

The ranking comes from serve's in-memory copy (``serve/copy.py``) or, when the copy does not fit,
from Milvus search (``MilvusLive``): the same answers, slower. Query-time weights and negative
examples change only the query vector (``reweigh``, ``combine``), never the stored rows.
"""

from __future__ import annotations

import base64
import hashlib
import binascii
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, Sequence, TypeVar

import numpy as np
import orjson

from simstream.clock import now_ms
from simstream.index.exact import rank_key
from simstream.index.milvus import MilvusStore
from simstream.index.neighbours import TIE_MARGIN, FieldShares
from simstream.index.rows import ServedProduct, brand_key
from simstream.serve.copy import Hit, LiveQuery, ServedCopy
from simstream.serve.filters import FilterError, Filters

__all__ = ["Conflict", "MILVUS_MAX_LIMIT", "DIVERSITY_GROWTH", "LiveIndex", "MilvusLive", "CopyLive", "Page", "Ranked",
           "diverse", "rank", "reweigh", "combine", "encode_cursor", "decode_cursor"]

MILVUS_MAX_LIMIT = 16_384  # Milvus' largest topk: the deepest ranking a page reads, from either index
DIVERSITY_GROWTH = 4  # a per_brand page short of products reads a ranking this much deeper
T = TypeVar("T")


class Conflict(Exception):
    """A query this collection cannot answer (filters on a collection without display fields): 409."""


class LiveIndex(Protocol):
    """Where live rankings come from: serve's copy, or Milvus."""

    source: str

    def as_of(self) -> int: ...

    def top(self, queries: Sequence[LiveQuery]) -> list[list[Hit]]: ...

    def served(self, ids: Iterable[str], *, with_vectors: bool = False) -> dict[str, ServedProduct]: ...

    def held(self, ids: Iterable[str]) -> dict[str, ServedProduct] | None:
        """``served(ids)`` from memory without waiting on anything, or None when it would read Milvus."""


class CopyLive:
    """Rankings from serve's in-memory copy."""

    source = "copy"

    def __init__(self, copy: ServedCopy) -> None:
        self.copy = copy

    def as_of(self) -> int:
        return self.copy.synced_at

    def top(self, queries: Sequence[LiveQuery]) -> list[list[Hit]]:
        if not self.copy.display and any(q.filters.attributes for q in queries):
            raise Conflict("this products collection predates display fields: attr filters need it "
                           "(re-ingest into a new SIMSTREAM_COLLECTION)")
        if len(queries) == 1:
            return [self.copy.top_one(queries[0])]
        return self.copy.top(queries)

    def served(self, ids: Iterable[str], *, with_vectors: bool = False) -> dict[str, ServedProduct]:
        return self.copy.served(ids, with_vectors=with_vectors)

    def held(self, ids: Iterable[str]) -> dict[str, ServedProduct] | None:
        return self.copy.held(ids)


class MilvusLive:
    """Rankings from Milvus search (Strong consistency), rescored in float32 and ranked by id on ties."""

    source = "milvus"

    def __init__(self, milvus: MilvusStore) -> None:
        self.milvus = milvus

    def as_of(self) -> int:
        return now_ms()  # a Strong search sees every write acknowledged before it

    def top(self, queries: Sequence[LiveQuery]) -> list[list[Hit]]:
        out = []
        for q in queries:
            if q.filters.needs_display and not self.milvus.products_display:
                raise Conflict("this products collection predates display fields: brand, category and attr "
                                 "filters need it (re-ingest into a new SIMSTREAM_COLLECTION)")
            expr = q.filters.expression(q.exclude)
            hits = self.milvus.search_served(q.vector, min(q.limit + TIE_MARGIN, MILVUS_MAX_LIMIT), expr)
            scored = sorted(((self.milvus.metric.pair(h.vector, q.vector), h.product_id, h.vector) for h in hits),
                            key=lambda t: rank_key(t[0], t[1]))[: q.limit]
            count = 0 if q.shares is None else len(scored) if q.fields_for is None else min(len(scored), q.fields_for)
            fields = q.shares.of(q.vector, np.stack([v for _, _, v in scored[:count]])) if q.shares and count else []
            out.append([Hit(pid, s, fields[n] if n < count else None) for n, (s, pid, _) in enumerate(scored)])
        return out

    def served(self, ids: Iterable[str], *, with_vectors: bool = False) -> dict[str, ServedProduct]:
        return self.milvus.read_served(list(ids), with_vectors=with_vectors)

    def held(self, ids: Iterable[str]) -> dict[str, ServedProduct] | None:
        return None  # every read is a Milvus call


@dataclass(frozen=True)
class Page:
    """Which part of a ranking a client asked for."""

    k: int
    offset: int = 0
    min_score: float | None = None
    per_brand: int | None = None


@dataclass(frozen=True)
class Ranked:
    """A page of a ranking: (id, score) best first; ``more``: whether a next page has products."""

    hits: list[Hit]
    more: bool
    as_of: int
    source: str


def diverse(items: Sequence[T], brand_of: Callable[[T], str], cap: int) -> list[T]:
    """``items`` in order, at most ``cap`` per brand key (``brand_of``; an unknown brand, "", is not
    capped): the ``per_brand`` rule, for a live ranking and for a published list alike."""
    seen: dict[str, int] = {}
    out = []
    for item in items:
        if b := brand_of(item):
            if seen.get(b, 0) >= cap:
                continue
            seen[b] = seen.get(b, 0) + 1
        out.append(item)
    return out


def rank(index: LiveIndex, vector: np.ndarray, filters: Filters, page: Page, *, max_k: int,
         exclude: Iterable[str] = (), shares: FieldShares | None = None,
         decide: Callable[[Sequence[Mapping[str, float]]], list[float]] | None = None) -> Ranked:
    """The exact ``page`` of the ranking of ``vector`` over the products ``filters`` allow. With
    ``shares`` (the field layout), the ranking's first ``offset + k`` hits come with their
    per-field contributions (a page that ``per_brand`` reads deeper for may hold hits without),
    and with ``decide`` also their match probabilities, where the index computes them in its pass
    (serve's copy; Milvus: the caller does)."""
    want = page.offset + page.k + 1  # one more: whether there is a next page (want <= max_k + 1)
    limit = want
    as_of = index.as_of()
    vector, left_out = np.asarray(vector, np.float32), frozenset(exclude)
    while True:
        hits = index.top([LiveQuery(vector, filters, limit, left_out, shares, page.offset + page.k, decide)])[0]
        complete = len(hits) < limit  # the whole filtered catalog was ranked
        if page.min_score is not None:
            kept = [h for h in hits if h.score >= page.min_score]
            complete = complete or len(kept) < len(hits)
            hits = kept
        if page.per_brand is not None:
            brands = {pid: brand_key(p.brand) for pid, p in index.served(h.product_id for h in hits).items()}
            hits = diverse(hits, lambda h: brands.get(h.product_id, ""), page.per_brand)
        if len(hits) >= want or complete or limit >= MILVUS_MAX_LIMIT:
            break
        limit = min(limit * DIVERSITY_GROWTH, MILVUS_MAX_LIMIT)
    return Ranked(hits[page.offset: page.offset + page.k], len(hits) > page.offset + page.k
                  and page.offset + page.k < max_k, as_of, index.source)


def reweigh(vector: np.ndarray, layout: Mapping[str, slice], stored: Mapping[str, float],
            asked: Mapping[str, float]) -> np.ndarray:
    """``vector`` re-weighted for the field weights ``asked`` (the others keep their stored
    weights; all then scaled to sum to 1, as stored weights do). Each stored segment holds
    sqrt(w) x a unit field vector, so scaling the query's segment of field f by w'_f / w_f makes
    the inner product sum w'_f x cos_f: exact, no re-indexing. A field stored at weight 0 holds
    nothing and cannot be raised."""
    if not asked:
        return vector
    unknown = sorted(set(asked) - set(stored))
    if unknown:
        raise FilterError(f"weights: unknown field {unknown[0][:40]!r}; fields: {', '.join(sorted(stored))}")
    for f, w in asked.items():
        if not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise FilterError(f"weights: {f} must be a finite number >= 0")
        if w > 0 and stored[f] <= 0:
            raise FilterError(f"weights: {f} is stored at weight 0, so it cannot be raised at query time "
                              "(it would need re-indexing with a new fusion config: simstream migrate)")
    new = {f: float(asked.get(f, stored[f])) for f in stored}
    total = sum(new.values())
    if total <= 0:
        raise FilterError("weights: at least one field needs a weight above 0")
    out = np.array(vector, np.float32, copy=True)
    for f, s in layout.items():
        if stored.get(f, 0) > 0:
            out[s] *= np.float32(new[f] / total / stored[f])
    return out


def combine(positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray], negative_weight: float) -> np.ndarray:
    """The recommend query vector: mean(positives) - negative_weight x mean(negatives), so a
    product's score is its mean score with the positives less ``negative_weight`` times its mean
    score with the negatives (inner products are linear: one exact ranking, no second pass). Under
    the ``l2`` metric the products rank by their distance to this point (simstream.metric)."""
    if not positives:
        raise FilterError("recommend needs at least one positive example")
    q = np.mean(np.asarray(positives, np.float64), axis=0)
    if negatives:
        q = q - negative_weight * np.mean(np.asarray(negatives, np.float64), axis=0)
    return q.astype(np.float32)


def _digest(key: bytes) -> str:
    return hashlib.blake2b(key, digest_size=6).hexdigest()


def encode_cursor(offset: int, key: bytes) -> str:
    """An opaque cursor: the next offset, tied to the query it pages (``key``)."""
    return base64.urlsafe_b64encode(orjson.dumps({"o": offset, "q": _digest(key)})).decode().rstrip("=")


def decode_cursor(cursor: str, key: bytes) -> int:
    """The offset a cursor carries; FilterError when it is malformed or from another query."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset, digest = int(data["o"]), data["q"]
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError):
        raise FilterError("cursor is malformed: pass next_cursor from the previous page unchanged") from None
    if digest != _digest(key) or offset < 0:
        raise FilterError("cursor belongs to another query: page with the same query, filters and weights")
    return offset
