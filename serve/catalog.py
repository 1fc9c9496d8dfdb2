"""The read side of the index as the query API answers it: products, published lists, exact
(filtered) top-K around a vector. Plain dicts out, ready to be JSON; never writes.

Live results are ranked as the worker ranks its lists (``index.exact.rank_key`` over float32
inner products), and every neighbour carries its per-field contributions
(``index.neighbours.contributions``: the shares of the fused dot product, summing to the score).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence
from urllib.parse import quote as url_quote

import numpy as np
import orjson

from simstream.index.exact import SCORE_DECIMALS, rank_key
from simstream.index.milvus import MilvusStore
from simstream.index.neighbours import TIE_MARGIN, contributions
from simstream.limits import MAX_ID_BYTES
from simstream.serve.filters import Filters, quote


class NotFound(LookupError):
    """An unknown or deleted product (answered with 404)."""


def _display(row: Mapping[str, Any]) -> dict[str, Any]:
    return dict(row.get("display") or {})


def image_src(product_id: str, image_url: str | None) -> str | None:
    """What a browser loads: http(s) URLs as they are, ``file:`` images through the guarded route."""
    if not image_url:
        return None
    if image_url.startswith(("http://", "https://")):
        return image_url
    if image_url.startswith("file:"):
        return f"/v1/products/{url_quote(product_id, safe='')}/image"
    return None


def product_view(pid: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """What is stored about a product, as the API shows it (prices of -1 mean unknown)."""
    d = _display(row)
    price = float(row.get("price", -1.0))
    return {
        "product_id": pid, "version": int(row["version"]), "title": d.get("title"),
        "image_url": d.get("image_url"), "image_src": image_src(pid, d.get("image_url")),
        "brand": row.get("brand") or None, "category": row.get("category") or None,
        "price": price if price >= 0 else None, "currency": d.get("currency"),
        "attributes": d.get("attributes") or {}, "model": row.get("model"),
        "event_time": int(row.get("event_time") or 0) or None, "updated_at": int(row.get("updated_at") or 0) or None,
    }


def card(pid: str, row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The short form of a neighbour's product, for cards."""
    if row is None:
        return None
    v = product_view(pid, row)
    return {k: v[k] for k in ("title", "image_src", "brand", "category", "price", "currency", "version")}


class Catalog:
    """Reads through one ``MilvusStore``; ``layout`` splits scores into fields."""

    def __init__(self, milvus: MilvusStore, layout: Mapping[str, slice]) -> None:
        self.milvus = milvus
        self.layout = dict(layout)

    def _check_id(self, pid: str) -> None:
        try:
            quote(pid, "product id", MAX_ID_BYTES)
        except ValueError:
            raise NotFound(f"no product {pid[:80]!r}") from None

    def product(self, pid: str) -> dict[str, Any]:
        self._check_id(pid)
        rows = self.milvus.read_product_rows([pid])
        if pid not in rows:
            raise NotFound(f"no product {pid[:80]!r}")
        return product_view(pid, rows[pid])

    def published(self, pid: str, k: int) -> dict[str, Any]:
        """The list last published for ``pid`` (its first ``k`` entries), with freshness."""
        self._check_id(pid)
        payload = self.milvus.read_list_payload(pid)
        if not payload:
            if pid in self.milvus.read_product_rows([pid]):
                raise NotFound(f"product {pid[:80]!r} has no published list yet")
            raise NotFound(f"no product {pid[:80]!r}" + (" (deleted)" if payload == b"" else ""))
        doc = orjson.loads(payload)
        entries = doc["neighbors"][:k]
        rows = self.milvus.read_product_rows([n["product_id"] for n in entries])
        return {
            "product_id": pid, "version": doc["version"], "source": "published", "model": doc["model"],
            "computed_at": doc["computed_at"], "source_event_time": doc.get("source_event_time"),
            "neighbors": [{**n, "product": card(n["product_id"], rows.get(n["product_id"]))} for n in entries],
        }

    def vector_of(self, pid: str) -> tuple[np.ndarray, dict[str, Any]]:
        self._check_id(pid)
        rows = self.milvus.read_product_rows([pid], with_vectors=True)
        if pid not in rows:
            raise NotFound(f"no product {pid[:80]!r}")
        return np.asarray(rows[pid]["vector"], dtype=np.float32), rows[pid]

    def nearest(self, vector: np.ndarray, k: int, filters: Filters, exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Exact top-``k`` matching ``filters`` (``exclude`` left out), ranked as the worker ranks."""
        if filters.needs_display and not self.milvus.products_display:
            raise ValueError("this products collection predates display fields: brand, category and attr "
                             "filters need it (re-ingest into a new SIMSTREAM_COLLECTION)")
        hits = self.milvus.search_rows(vector, k + TIE_MARGIN, filters.expression(exclude))
        vecs = [np.asarray(h["vector"], dtype=np.float32) for h in hits]
        scored = sorted(((float(v @ vector), i) for i, v in enumerate(vecs)),
                        key=lambda t: rank_key(t[0], hits[t[1]]["product_id"]))[:k]
        fields = contributions(vector, [vecs[i] for _, i in scored], self.layout)
        return [{"product_id": hits[i]["product_id"], "score": round(s, SCORE_DECIMALS), "fields": f,
                 "product": card(hits[i]["product_id"], hits[i])} for (s, i), f in zip(scored, fields)]

    def filtered(self, pid: str, k: int, filters: Filters) -> dict[str, Any]:
        """An exact filtered top-``k`` around a stored product, the product itself excluded."""
        vector, row = self.vector_of(pid)
        return {"product_id": pid, "version": int(row["version"]), "source": "live", "model": row.get("model"),
                "filters": filters_view(filters), "neighbors": self.nearest(vector, k, filters, exclude=[pid])}


def filters_view(filters: Filters) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in (("brand", filters.brand), ("category", filters.category),
                                             ("price_min", filters.price_min), ("price_max", filters.price_max))
                           if v is not None}
    if filters.attributes:
        out["attributes"] = filters.attributes
    return out
