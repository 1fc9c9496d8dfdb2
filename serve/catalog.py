"""The read side of the index as the query API answers it: products, published lists, exact
(filtered) top-K around a vector. Reads typed records (``index.rows.ServedProduct``, the published
``NeighbourList``) and turns them into plain dicts, ready to be JSON; never writes.

Live results are ranked as the worker ranks its lists (``index.exact.rank_key`` over float32
inner products), and every neighbour carries its per-field contributions
(``index.neighbours.contributions``: the shares of the fused dot product, summing to the score).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence
from urllib.parse import quote as url_quote

import numpy as np

from simstream.index.exact import SCORE_DECIMALS, rank_key
from simstream.index.milvus import MilvusStore
from simstream.index.neighbours import TIE_MARGIN, contributions
from simstream.index.rows import ServedProduct
from simstream.limits import MAX_ID_BYTES
from simstream.records import Neighbour, NeighbourList
from simstream.serve.filters import Filters, quote

__all__ = ["NotFound", "image_src", "product_view", "card", "neighbour_view", "Catalog", "filters_view"]


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
    """The short form of a neighbour's product, for cards (None: it is gone since the list was published)."""
    if p is None:
        return None
    v = product_view(p)
    return {k: v[k] for k in ("title", "image_src", "brand", "category", "price", "currency", "version")}


def neighbour_view(n: Neighbour, product: ServedProduct | None) -> dict[str, Any]:
    """One published entry as the API shows it: the wire fields (docs/events.md) and its card."""
    return {"product_id": n.product_id, "score": n.score, "fields": n.fields, "product": card(product)}


class Catalog:
    """Reads through one ``MilvusStore``; ``layout`` splits scores into fields."""

    def __init__(self, milvus: MilvusStore, layout: Mapping[str, slice]) -> None:
        self.milvus = milvus
        self.layout = dict(layout)

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
        found = self.milvus.read_served([pid], with_vectors=with_vector)
        if pid not in found:
            raise self._not_found(pid)
        return found[pid]

    def product(self, pid: str) -> dict[str, Any]:
        return product_view(self.served(pid))

    def published(self, pid: str, k: int) -> dict[str, Any]:
        """The list last published for ``pid`` (its first ``k`` entries), with freshness."""
        doc = self._published_list(pid)
        entries = doc.neighbours[:k]
        products = self.milvus.read_served([n.product_id for n in entries])
        return {
            "product_id": pid, "version": doc.version, "source": "published", "model": doc.model,
            "computed_at": doc.computed_at, "source_event_time": doc.source_event_time,
            "neighbors": [neighbour_view(n, products.get(n.product_id)) for n in entries],
        }

    def _published_list(self, pid: str) -> NeighbourList:
        """The recorded payload, parsed; NotFound says why there is none (no list yet, deleted, unknown)."""
        self._check_id(pid)
        payload = self.milvus.read_list_payload(pid)
        if payload:
            return NeighbourList.from_json(payload)
        if pid in self.milvus.read_served([pid]):
            raise NotFound(f"product {pid[:80]!r} has no published list yet")
        raise self._not_found(pid, " (deleted)" if payload == b"" else "")

    def nearest(self, vector: np.ndarray, k: int, filters: Filters, exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Exact top-``k`` matching ``filters`` (``exclude`` left out), ranked as the worker ranks."""
        if filters.needs_display and not self.milvus.products_display:
            raise ValueError("this products collection predates display fields: brand, category and attr "
                             "filters need it (re-ingest into a new SIMSTREAM_COLLECTION)")
        hits = self.milvus.search_served(vector, k + TIE_MARGIN, filters.expression(exclude))
        scored = sorted(((float(h.vector @ vector), h) for h in hits), key=lambda t: rank_key(t[0], t[1].product_id))[:k]
        fields = contributions(vector, [h.vector for _, h in scored], self.layout)
        return [{"product_id": h.product_id, "score": round(s, SCORE_DECIMALS), "fields": f, "product": card(h)}
                for (s, h), f in zip(scored, fields)]

    def filtered(self, pid: str, k: int, filters: Filters) -> dict[str, Any]:
        """An exact filtered top-``k`` around a stored product, the product itself excluded."""
        p = self.served(pid, with_vector=True)
        return {"product_id": pid, "version": p.version, "source": "live", "model": p.model,
                "filters": filters_view(filters), "neighbors": self.nearest(p.vector, k, filters, exclude=[pid])}


def filters_view(filters: Filters) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in (("brand", filters.brand), ("category", filters.category),
                                             ("price_min", filters.price_min), ("price_max", filters.price_max))
                           if v is not None}
    if filters.attributes:
        out["attributes"] = filters.attributes
    return out
