"""The query API's request bodies (pydantic): what ``POST /v1/similar``, ``/v1/recommend`` and
``/v1/batch`` accept, and what the GET routes' parameters are parsed into. One spelling of every
query option (filters, weights, paging), shared by every route and by a batch's items."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from simstream.limits import MAX_BATCH_QUERIES, MAX_EXCLUDE_IDS, MAX_FILTER_VALUES, MAX_ID_BYTES, MAX_QUERY_CHARS, MAX_SEEDS
from simstream.serve.filters import FilterError, Filters
from simstream.serve.queries import ProductDocument

__all__ = ["FilterBody", "QueryOptions", "NeighborsQuery", "SearchQuery", "SimilarRequest", "RecommendRequest",
           "BatchQuery", "BatchRequest", "parse_weights"]

Values = Union[str, list[str], None]


class FilterBody(BaseModel):
    """Filters as a JSON body gives them (docs/serving.md): brand / category take one value or a
    list (any of them); ``*_not`` none of them; relative filters compare with the seed product."""

    model_config = ConfigDict(extra="forbid")
    brand: Values = None
    brand_not: Values = None
    category: Values = Field(None, description="path prefixes: the path or below it")
    category_not: Values = None
    price_min: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_max: float | None = Field(None, ge=0, allow_inf_nan=False)
    attributes: dict[str, str] = Field(default_factory=dict)
    exclude: list[Annotated[str, Field(max_length=MAX_ID_BYTES)]] = Field(default_factory=list,
                                                                          max_length=MAX_EXCLUDE_IDS)
    same_brand: bool = False
    same_category: bool = False
    price_within_pct: float | None = Field(None, gt=0, lt=100, allow_inf_nan=False)

    def build(self) -> Filters:
        for name in ("brand", "brand_not", "category", "category_not"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) > MAX_FILTER_VALUES:
                raise FilterError(f"{name}: at most {MAX_FILTER_VALUES} values")
        return Filters.build(self.brand, self.category, self.price_min, self.price_max, self.attributes,
                             brand_not=self.brand_not, category_not=self.category_not, exclude=self.exclude,
                             same_brand=self.same_brand, same_category=self.same_category,
                             price_within_pct=self.price_within_pct)


class QueryOptions(BaseModel):
    """What every query takes besides its seed: filters, query-time field weights and the page."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, description="1..SIMSTREAM_SERVE_MAX_K results per page; default: "
                                            "SIMSTREAM_TOP_K for neighbours (the published list), else 10")
    cursor: str | None = Field(None, max_length=200, description="next_cursor of the previous page")
    min_score: float | None = Field(None, allow_inf_nan=False, description="leave out results scoring below")
    per_brand: int | None = Field(None, ge=1, description="at most this many results per brand")
    weights: dict[str, float] = Field(default_factory=dict,
                                      description="query-time field weights, e.g. {\"image\": 0, \"text\": 2}")
    filters: FilterBody = Field(default_factory=FilterBody)


class NeighborsQuery(QueryOptions):
    op: Literal["neighbors"] = "neighbors"
    product_id: str = Field(min_length=1, max_length=MAX_ID_BYTES)


class SearchQuery(QueryOptions):
    op: Literal["search"] = "search"
    q: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)


class SimilarRequest(QueryOptions):
    """Query by example: ``product`` in the event format (docs/events.md); a title, an image
    (``image_b64`` or ``image_url``), or both."""

    op: Literal["similar"] = "similar"
    product: ProductDocument


class RecommendRequest(QueryOptions):
    """Several examples at once (a cart, a session): stored product ids and/or product documents.
    Score = mean score with the positives - ``negative_weight`` x mean score with the negatives."""

    op: Literal["recommend"] = "recommend"
    positive: list[Union[Annotated[str, Field(min_length=1, max_length=MAX_ID_BYTES)], ProductDocument]] = Field(
        min_length=1, max_length=MAX_SEEDS)
    negative: list[Union[Annotated[str, Field(min_length=1, max_length=MAX_ID_BYTES)], ProductDocument]] = Field(
        default_factory=list, max_length=MAX_SEEDS)
    negative_weight: float = Field(0.5, ge=0, le=10, allow_inf_nan=False)


BatchQuery = Annotated[Union[NeighborsQuery, SearchQuery, SimilarRequest, RecommendRequest], Field(discriminator="op")]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[BatchQuery] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


def parse_weights(raw: str | None) -> dict[str, float]:
    """``text:2,image:0`` (a GET parameter) as a dict; FilterError when malformed."""
    if not raw:
        return {}
    out: dict[str, Any] = {}
    for part in raw.split(","):
        name, sep, value = part.partition(":")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise FilterError(f"weights must look like text:2,image:0, got {raw[:60]!r}") from None
    return out
