"""The read side of the index as the query API answers it: products, published lists, and every
live query (neighbours with filters, search, by example, recommend) as exact ranked pages
(``serve/ranking.py``); plain dicts out, ready to be JSON; never writes.

Every neighbour carries its per-field contributions (``index.neighbours.FieldShares``: the
shares of the fused dot product with the query vector actually ranked, re-weighted or combined,
summing to the score); a live ranking's are computed in its pass, for every query in it at once.

``GET /v1/products/{id}/neighbors`` answers from the list as last published whenever that is exact:
with filters, the published entries that pass them are the exact filtered top-k as of
``computed_at`` when at least k pass (everything outside the list scored below its last entry);
with fewer, or with weights or a cursor, it answers live and says why (``fallback``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Sequence
from urllib.parse import quote as url_quote

import numpy as np
import orjson

from simstream.index.milvus import MilvusStore
from simstream.index.neighbours import FieldShares
from simstream.index.rows import ServedProduct, brand_key
from simstream.index.exact import SCORE_DECIMALS
from simstream.limits import MAX_ID_BYTES
from simstream.match import MatchModel
from simstream.metric import IP, Metric
from simstream.records import Neighbour, NeighbourList
from simstream.serve.filters import FilterError, Filters, quote
from simstream.serve.published import PublishedLists
from simstream.serve.queries import ProductDocument, QueryEncoder, field_names
from simstream.serve.ranking import (
    LiveIndex, Page, Ranked, combine, decode_cursor, diverse, encode_cursor, rank, reweigh,
)
from simstream.serve.requests import NeighborsQuery, QueryOptions, RecommendRequest, SearchQuery, SimilarRequest

__all__ = ["DEFAULT_K", "NotFound", "image_src", "product_view", "card", "neighbour_view", "Catalog"]


DEFAULT_K = 10  # results per page when a live query names no k


class NotFound(LookupError):
    """An unknown or deleted product (answered with 404)."""


def image_src(product_id: str, image_url: str | None) -> str | None:
    """What a browser loads: http(s) URLs as they are, ``file:`` images through the guarded route."""
    if not image_url:
        return None
    if image_url.startswith(("http://", "https://")):
        return image_url
    if image_url.startswith("file:"):
        return f"/v1/products/{url_quote(product_id, safe='')}/image"
    return None


def product_view(p: ServedProduct) -> dict[str, Any]:
    """What is stored about a product, as the API shows it (unknowns as null)."""
    d = p.display
    return {
        "product_id": p.product_id, "version": p.version, "title": d.title,
        "image_url": d.image_url, "image_src": image_src(p.product_id, d.image_url),
        "brand": p.brand, "category": p.category, "price": p.price, "currency": d.currency,
        "attributes": dict(d.attributes), "model": p.model, "event_time": p.event_time, "updated_at": p.updated_at,
    }


def card(p: ServedProduct | None) -> dict[str, Any] | None:
    """The short form of a neighbour's product, for cards (None: it is gone since the list was
    published): ``product_view``'s fields a card shows, without the rest of it (attributes copied)."""
    if p is None:
        return None
    d = p.display
    return {"title": d.title, "image_src": image_src(p.product_id, d.image_url), "brand": p.brand,
            "category": p.category, "price": p.price, "currency": d.currency, "version": p.version}


def neighbour_view(n: Neighbour, product: ServedProduct | None) -> dict[str, Any]:
    """One published entry as the API shows it: the wire fields (docs/events.md) and its card."""
    return {**n.to_wire(), "product": card(product)}


class Catalog:
    """Reads through one generation: ``lists`` for published lists, ``live`` for products and rankings."""

    def __init__(self, milvus: MilvusStore, live: LiveIndex, encoder: QueryEncoder, *, max_k: int,
                 top_k: int, lists: PublishedLists | None = None) -> None:
        self.milvus = milvus
        self.lists = lists if lists is not None else PublishedLists(milvus, 0)  # 0: read every time
        self.live = live
        self.encoder = encoder
        self.layout = dict(encoder.layout)
        self.metric: Metric = getattr(encoder, "metric", IP)
        self.shares = FieldShares(self.layout, self.metric)  # each live hit's per-field contributions, computed in its pass
        self.stored_weights: Mapping[str, float] = getattr(encoder, "weights", {})
        # each product-to-product hit's match decision, at the stored weights (the decision was fitted
        # on them): one object, so that a pass decides for every query naming it in one call (serve/copy.py)
        match: MatchModel | None = getattr(encoder, "match", None)
        self.decide = None if match is None else partial(match.of_entries, weights=self.stored_weights)
        self.max_k = max_k
        self.top_k = top_k

    # --- products ---------------------------------------------------------------------------
    def _check_id(self, pid: str) -> None:
        try:
            quote(pid, "product id", MAX_ID_BYTES)
        except ValueError:
            raise self._not_found(pid) from None

    @staticmethod
    def _not_found(pid: str, detail: str = "") -> NotFound:
        """A malformed id reads as an unknown one: the client learns nothing more from either."""
        return NotFound(f"no product {pid[:80]!r}{detail}")

    def served(self, pid: str, *, with_vector: bool = False) -> ServedProduct:
        """The stored product ``pid``; NotFound for an unknown, deleted or malformed id."""
        self._check_id(pid)
        found = self.live.served([pid], with_vectors=with_vector)
        if pid not in found:
            raise self._not_found(pid)
        return found[pid]

    def product(self, pid: str) -> dict[str, Any]:
        return product_view(self.served(pid))

    # --- published lists --------------------------------------------------------------------
    def _published_list(self, pid: str) -> NeighbourList:
        """The recorded payload, parsed; NotFound says why there is none (no list yet, deleted, unknown)."""
        self._check_id(pid)
        payload = self.lists.payload(pid)
        if payload:
            return NeighbourList.from_json(payload)
        if self.live.served([pid]):
            raise NotFound(f"product {pid[:80]!r} has no published list yet")
        raise self._not_found(pid, " (deleted)" if payload == b"" else "")

    def published(self, doc: NeighbourList, k: int,
                  products: Mapping[str, ServedProduct] | None = None) -> dict[str, Any]:
        """A list as last published (its first ``k`` entries), with freshness; ``products``: its
        entries' stored products when already read."""
        entries = doc.neighbours[:k]
        if products is None:
            products = self.live.served(n.product_id for n in entries)
        return self._published_view(doc, [neighbour_view(n, products.get(n.product_id)) for n in entries], k)

    @staticmethod
    def _plain(q: NeighborsQuery, filters: Filters) -> bool:
        """No option that the published list cannot answer as it stands (filters, a score floor, diversity)."""
        return filters.empty and not filters.exclude and q.min_score is None and q.per_brand is None

    def _answers(self, doc: NeighbourList, k: int) -> bool:
        """Whether ``doc``'s first ``k`` entries are the exact top ``k``: k within it, or a list that holds everyone."""
        return k <= len(doc.neighbours) or len(doc.neighbours) < self.top_k

    # --- answers memory holds: the event loop's own, without a hop to a request thread ---------
    def held_product(self, pid: str) -> dict[str, Any] | None:
        """``product(pid)`` when memory holds it, else None: ask ``product`` off the event loop (it
        reads Milvus, or says why there is none)."""
        held = self.live.held([pid])
        found = held.get(pid) if held is not None else None
        return product_view(found) if found is not None else None

    def held_neighbors(self, q: NeighborsQuery, filters: Filters) -> dict[str, Any] | None:
        """``neighbors(q, filters)`` when it is a published list that memory holds whole (no
        options that need the seed or a ranking), else None: ask ``neighbors`` off the event loop."""
        if q.weights or q.cursor or not self._plain(q, filters):
            return None
        payload = self.lists.held(q.product_id)
        if not payload:
            return None
        doc, k = NeighbourList.from_json(payload), self._k(q)
        if not self._answers(doc, k):
            return None  # deeper than the list: live
        products = self.live.held(n.product_id for n in doc.neighbours[:k])
        return None if products is None else self.published(doc, k, products)

    def _published_view(self, doc: NeighbourList, neighbours: list[dict[str, Any]], k: int) -> dict[str, Any]:
        return {"product_id": doc.product_id, "version": doc.version, "source": "published", "model": doc.model,
                "computed_at": doc.computed_at, "source_event_time": doc.source_event_time,
                # the list stops at TOP_K (more products exist below it): a deeper k, a cursor, or
                # filters that leave too few of it are answered live
                "cut_at_top_k": len(doc.neighbours) >= self.top_k,
                "neighbors": neighbours, "next_cursor": None}

    def _published_filtered(self, doc: NeighbourList, filters: Filters, page: Page) -> dict[str, Any] | None:
        """The published entries passing ``filters`` (and the page's min_score / per_brand) when
        they make the exact answer: at least a full page, or a list that holds everyone."""
        products = self.live.served(n.product_id for n in doc.neighbours)
        # an entry gone since cannot be checked against the filters: left out
        kept = [n for n in doc.neighbours if (p := products.get(n.product_id)) is not None and filters.matches(p)
                and (page.min_score is None or n.score >= page.min_score)]
        if page.per_brand is not None:
            kept = diverse(kept, lambda n: brand_key(products[n.product_id].brand), page.per_brand)
        holds_everyone = len(doc.neighbours) < self.top_k
        if len(kept) < page.k and not holds_everyone:
            return None
        view = self._published_view(doc, [neighbour_view(n, products.get(n.product_id)) for n in kept[: page.k]],
                                    page.k)
        view["filters"] = filters.view()
        return view

    # --- live queries -----------------------------------------------------------------------
    def _k(self, o: QueryOptions) -> int:
        """The page size asked (default: the published list's TOP_K for neighbours, else 10)."""
        k = o.k if o.k is not None else min(self.top_k if isinstance(o, NeighborsQuery) else DEFAULT_K, self.max_k)
        if not 1 <= k <= self.max_k:
            raise FilterError(f"k must be between 1 and {self.max_k}")
        return k

    def _page(self, o: QueryOptions, key: bytes) -> Page:
        k = self._k(o)
        offset = decode_cursor(o.cursor, key) if o.cursor else 0
        if offset + k > self.max_k:
            raise FilterError(f"a page may reach at most result {self.max_k} (SIMSTREAM_SERVE_MAX_K)")
        return Page(k, offset, o.min_score, o.per_brand)

    def _ranked(self, vector: np.ndarray, filters: Filters, o: QueryOptions, key: Any,
                exclude: Sequence[str] = (), decide: bool = False) -> dict[str, Any]:
        """The exact page for ``vector`` (re-weighted), with contributions and cards; ``decide``:
        the query is a product, so each hit gets its match probability (at the stored weights only:
        the decision was fitted on them)."""
        cursor_key = orjson.dumps([key, filters.view(), sorted(o.weights.items()), o.min_score, o.per_brand],
                                  option=orjson.OPT_SERIALIZE_NUMPY)
        page = self._page(o, cursor_key)
        if o.weights and not self.stored_weights:
            raise FilterError("weights: this encoder does not say how its fields are weighted")
        if o.weights and self.metric.has_offsets:
            raise FilterError("weights: query-time weights re-weight an inner product; this model ranks by l2 "
                              "distance, whose stored rows cannot be re-weighted from the query")
        vector = reweigh(vector, self.layout, self.stored_weights, o.weights)
        decide = decide and not o.weights
        ranked = rank(self.live, vector, filters, page, max_k=self.max_k, exclude=exclude, shares=self.shares,
                      decide=self.decide if decide else None)
        return self._view(vector, ranked, page, cursor_key, filters, o, decide)

    def _view(self, vector: np.ndarray, ranked: Ranked, page: Page, key: bytes, filters: Filters,
              o: QueryOptions, decide: bool = False) -> dict[str, Any]:
        """The page as the API shows it. Contributions come with the hits from their pass; a hit
        without (``per_brand`` read deeper than the page) gets them here, from its stored vector."""
        products = self.live.served(h.product_id for h in ranked.hits if h.fields is not None)
        missing = [h.product_id for h in ranked.hits if h.fields is None]
        deeper = self.live.served(missing, with_vectors=True) if missing else {}
        fields = dict(zip(deeper, self.shares.of(vector, np.stack([p.vector for p in deeper.values()])))) if deeper else {}
        products |= deeper
        hits = [h for h in ranked.hits if h.product_id in products]  # deleted between ranking and reading
        shares = [fields[h.product_id] if h.fields is None else h.fields for h in hits]
        scores = [round(h.score, SCORE_DECIMALS) for h in hits]
        neighbours: list[dict[str, Any]] = [
            {"product_id": h.product_id, "score": sc, "fields": f, "product": card(products[h.product_id])}
            for h, sc, f in zip(hits, scores, shares)]
        if decide and self.decide is not None:
            # decided in the pass, with the contributions; hits without (Milvus, per_brand's deeper) here
            todo = [j for j, h in enumerate(hits) if h.match_probability is None]
            late = dict(zip(todo, self.decide([shares[j] for j in todo]))) if todo else {}
            for j, (n, h) in enumerate(zip(neighbours, hits)):
                n["match_probability"] = late[j] if h.match_probability is None else h.match_probability
        out: dict[str, Any] = {
            "source": "live", "index": ranked.source, "as_of": ranked.as_of, "model": self.encoder.model,
            "filters": filters.view(),
            "neighbors": neighbours,
            "next_cursor": encode_cursor(page.offset + page.k, key) if ranked.more else None,
        }
        if o.weights:
            out["weights"] = o.weights
        return out

    def neighbors(self, q: NeighborsQuery, filters: Filters | None = None) -> dict[str, Any]:
        """Neighbours of a stored product: the published list when it is the exact answer, else live."""
        filters = q.filters.build() if filters is None else filters
        plain = self._plain(q, filters)
        k = self._k(q)
        doc = None
        if not q.weights and not q.cursor:
            try:
                doc = self._published_list(q.product_id)
            except NotFound:
                if plain:
                    raise
        seed = None  # read once, with its vector, when filters or a live ranking need it
        if doc is None:
            reason = ("query-time weights" if q.weights else "a cursor" if q.cursor
                      else "no published list yet")
        elif plain:
            if self._answers(doc, k):
                return self.published(doc, k)
            reason = f"k={k} is deeper than the published list (TOP_K={self.top_k})"
        else:
            seed = self.served(q.product_id, with_vector=True)
            page = Page(k, 0, q.min_score, q.per_brand)
            if (got := self._published_filtered(doc, filters.resolved(seed), page)) is not None:
                return got
            reason = f"the filters leave fewer than k={k} of the published list's {len(doc.neighbours)}"
        if seed is None:
            seed = self.served(q.product_id, with_vector=True)
        out = self._ranked(seed.vector, filters.resolved(seed), q, ["neighbors", q.product_id],
                           exclude=[q.product_id], decide=True)
        return {"product_id": q.product_id, "version": seed.version, **out, "fallback": reason}

    def search(self, q: SearchQuery, filters: Filters | None = None) -> dict[str, Any]:
        """Search ranking: the query text in the fused space (fields other than the title's are zero)."""
        filters = q.filters.build() if filters is None else filters
        text = q.q.strip()
        if not text:
            raise FilterError("q must not be blank")
        if filters.relative:
            raise FilterError("same_brand, same_category and price_within_pct need a seed product")
        vector = self.encoder.text(text)
        out = self._ranked(vector, filters, q, ["search", text])
        return {"query": text, "query_fields": field_names(vector, self.layout), **out}

    def similar(self, q: SimilarRequest) -> dict[str, Any]:
        """Query by example: a product document (a title, an image, or both) not in the catalog."""
        filters = q.filters.build()
        if filters.relative:
            raise FilterError("same_brand, same_category and price_within_pct need a stored seed product")
        vector = self.encoder.document(q.product)
        exclude = [q.product.product_id] if q.product.product_id else []
        out = self._ranked(vector, filters, q, ["similar", vector.tobytes().hex()], exclude=exclude, decide=True)
        return {"query_fields": field_names(vector, self.layout), **out}

    def recommend(self, q: RecommendRequest) -> dict[str, Any]:
        """Several positive (and negative) examples: stored ids and/or documents (``ranking.combine``)."""
        filters = q.filters.build()
        ids = [x for x in (*q.positive, *q.negative) if isinstance(x, str)]
        stored = self.live.served(ids, with_vectors=True) if ids else {}
        missing = [x for x in ids if x not in stored]
        if missing:
            raise self._not_found(missing[0])

        def vectors(items: Sequence[str | ProductDocument]) -> list[np.ndarray]:
            return [stored[x].vector if isinstance(x, str) else self.encoder.document(x) for x in items]

        vector = combine(vectors(q.positive), vectors(q.negative), q.negative_weight)
        if filters.relative:
            seed = next((stored[x] for x in q.positive if isinstance(x, str)), None)
            if seed is None:
                raise FilterError("same_brand, same_category and price_within_pct compare with the first "
                                  "positive product id: give one")
            filters = filters.resolved(seed)
        key = ["recommend", vector.tobytes().hex(), q.negative_weight]
        out = self._ranked(vector, filters, q, key, exclude=ids)
        return {"query_fields": field_names(vector, self.layout), **out}
