"""Queries into the fused space: a shopper's text, or a product document not in the catalog.

Both go through the worker's own ``ProductEncoder`` (same fusion config, same weights), so a
query vector is comparable with the stored ones. A text query is a product with only a title:
its text, title-lexical and (from the title) part-number fields are encoded, every other field is
a zero segment and contributes nothing, which the per-field contributions show.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simstream import compute
from simstream.encoders.fusion import ProductEncoder, text_of
from simstream.limits import (
    MAX_BRAND_BYTES, MAX_CATEGORY_BYTES, MAX_CURRENCY_CHARS, MAX_DESCRIPTION_CHARS, MAX_ID_BYTES, MAX_IMAGE_URL_CHARS,
    MAX_MPN_CHARS, MAX_QUERY_ATTRIBUTES, MAX_TITLE_CHARS,
)
from simstream.records import ProductEvent
from simstream.serve.batcher import MicroBatcher
from simstream.settings import Settings

__all__ = ["BATCH_QUERIES", "ProductDocument", "QueryEncoder", "field_names"]


BATCH_QUERIES = 32  # queries of concurrent requests encoded in one call at most


class ProductDocument(BaseModel):
    """A product in the event format (docs/events.md) for query by example: a title, an image
    (``image_b64`` or ``image_url``), or both; ``product_id`` / ``op`` / ``version`` / ``event_time``
    are accepted and ignored (a ``product_id`` is left out of the results)."""

    model_config = ConfigDict(extra="forbid")

    product_id: str | None = Field(None, max_length=MAX_ID_BYTES)
    op: str | None = None
    version: int | None = None
    event_time: int | None = None
    title: str | None = Field(None, min_length=1, max_length=MAX_TITLE_CHARS)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    brand: str | None = Field(None, max_length=MAX_BRAND_BYTES)
    category: str | None = Field(None, max_length=MAX_CATEGORY_BYTES)
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    currency: str | None = Field(None, max_length=MAX_CURRENCY_CHARS)
    mpn: str | None = Field(None, max_length=MAX_MPN_CHARS)
    image_url: str | None = Field(None, max_length=MAX_IMAGE_URL_CHARS)
    image_b64: str | None = None
    attributes: dict[str, str | None] = Field(default_factory=dict, max_length=MAX_QUERY_ATTRIBUTES)

    @field_validator("op")
    @classmethod
    def _upsert_only(cls, value: str | None) -> str | None:
        if value not in (None, "upsert"):
            raise ValueError("a query document describes a product: op must be 'upsert' or absent")
        return value

    @model_validator(mode="after")
    def _something_to_encode(self) -> "ProductDocument":
        if not (self.title or self.image_b64 or self.image_url):
            raise ValueError("a query document needs a title, an image (image_b64 or image_url), or both")
        return self

    def event(self) -> ProductEvent:
        data = self.model_dump(exclude={"product_id", "op", "version", "event_time"})
        data["title"] = data["title"] or ""
        return ProductEvent(product_id=self.product_id or "query", op="upsert", version=0, **data)


class QueryEncoder:
    """The fused vector of a query; one encode at a time (the models are not re-entrant-safe),
    batched across concurrent requests."""

    def __init__(self, settings: Settings) -> None:
        self.encoder = compute.run(ProductEncoder, settings)  # torch's thread from the start (simstream.compute)
        # the fields the vectors hold (an optional field the model does not weight takes no room)
        self.layout: Mapping[str, slice] = {f: self.encoder.layout[f] for f in self.encoder.fields}
        self.model = self.encoder.model
        self.dim = self.encoder.dim
        # as stored, for the fields the vectors hold: query-time weights rescale these
        self.weights: Mapping[str, float] = {f: self.encoder.weights[f] for f in self.encoder.fields}
        self.match = self.encoder.match  # the model's match decision on a product-to-product hit
        self.metric = self.encoder.metric  # what a score is (simstream.metric)
        # one encode at a time, each for every query asked meanwhile (serve/batcher.py)
        # concurrent queries' documents encoded in one call
        self.batcher: MicroBatcher[ProductEvent, np.ndarray] = MicroBatcher(self._encode_many, BATCH_QUERIES,
                                                                            on=compute.run)

    def warm_up(self) -> None:
        """One encode of each kind, so the first query does not pay for lazy set-up."""
        compute.run(self.encoder.warm_up)

    def text(self, query: str) -> np.ndarray:
        """The fused vector of a search text (fields other than the title's are zero)."""
        return self._encode(ProductEvent(product_id="query", op="upsert", version=0, title=query))

    def document(self, doc: ProductDocument) -> np.ndarray:
        """The fused vector of a product document; EncodeError when a field cannot be encoded. A
        document without text (an image alone) has a zero text segment: an empty string's
        embedding is not "no text" and would rank products by it."""
        event = doc.event()
        vector = self._encode(event)
        if not text_of(event) and "text" in self.layout:
            vector[self.layout["text"]] = 0
        return vector

    def _encode(self, product: ProductEvent) -> np.ndarray:
        return self.batcher(product)

    def _encode_many(self, products: Sequence[ProductEvent]) -> list[np.ndarray | BaseException]:
        """One encoder call for the queries of concurrent requests; a query that cannot be
        encoded fails alone (its EncodeError)."""
        batch = self.encoder.encode(list(products))
        failed = {id(p): exc for p, exc in batch.failures}
        vectors = iter(batch.vectors)
        return [failed[id(p)] if id(p) in failed else np.array(next(vectors), dtype=np.float32) for p in products]


def field_names(vector: np.ndarray, layout: Mapping[str, slice]) -> list[str]:
    """The fields a query vector has (non-zero segments): what its scores can come from."""
    return [f for f, s in layout.items() if np.any(vector[s])]

