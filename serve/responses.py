"""What each query route answers, as typed models: the success half of the OpenAPI document
(``/docs``; the errors are ``guard.ProblemBody``).

The routes build their bodies as plain dicts (``serve/catalog.py``) and write them with orjson:
validating every response through these models would cost more than the lookup it describes.
They are held to them instead by the tests: every 200 answered to a test is validated against its
route's model, unknown fields refused (tests/serve/conftest.py), so the document cannot drift.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from simstream.serve.guard import ProblemBody

__all__ = ["ResponseBody", "ProductBody", "CardBody", "NeighbourBody", "RankingBody", "SearchBody", "ExampleBody",
           "InfoBody", "BatchItemBody", "BatchBody"]


class ResponseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProductBody(ResponseBody):
    """What is stored about a product (unknowns as null)."""

    product_id: str
    version: int
    title: str | None
    image_url: str | None
    image_src: str | None = Field(description="what a browser loads: the URL, or the guarded image route")
    brand: str | None
    category: str | None
    price: float | None
    currency: str | None
    attributes: dict[str, Any]
    model: str | None
    event_time: int | None
    updated_at: int | None


class CardBody(ResponseBody):
    """A neighbour's product, short."""

    title: str | None
    image_src: str | None
    brand: str | None
    category: str | None
    price: float | None
    currency: str | None
    version: int


class NeighbourBody(ResponseBody):
    product_id: str
    score: float = Field(description="inner product of the fused vectors (with query-time weights if asked); "
                                     "under an l2 model, minus half their squared Euclidean distance")
    fields: dict[str, float] = Field(description="per-field contributions; they sum to the score")
    match_probability: float | None = Field(
        None, ge=0, le=1, description="how likely it is the same product (the model's match decision, docs/events.md): "
        "published lists and live neighbours of a product or document at the stored weights; absent otherwise")
    product: CardBody | None = Field(description="null: the product is gone since the list was published")


class RankingBody(ResponseBody):
    """A page of neighbours: the list as published (``source``: published) or an exact live top-K."""

    source: Literal["published", "live"]
    model: str
    neighbors: list[NeighbourBody]
    next_cursor: str | None = Field(description="the next page's cursor; null on the last page")
    product_id: str | None = Field(None, description="the seed (neighbours of a stored product)")
    version: int | None = Field(None, description="the seed's version (published: the list's)")
    computed_at: int | None = Field(None, description="published: when the list was computed (ms)")
    source_event_time: int | None = Field(None, description="published: event time of the change behind it")
    cut_at_top_k: bool | None = Field(None, description="published: the list stops at TOP_K (more exist below)")
    index: Literal["copy", "milvus"] | None = Field(None, description="live: what ranked it")
    as_of: int | None = Field(None, description="live: every write Milvus showed at this time (ms) is in it")
    filters: dict[str, Any] | None = Field(None, description="the filters applied, relative ones resolved")
    weights: dict[str, float] | None = Field(None, description="live: the query-time field weights")
    fallback: str | None = Field(None, description="why a neighbours query was answered live")


class ExampleBody(RankingBody):
    """By example or recommend: which fields the query vector holds."""

    query_fields: list[str]


class SearchBody(ExampleBody):
    query: str


class InfoBody(ResponseBody):
    model: str
    generation: str | None
    fields: dict[str, float] = Field(description="stored field weights: query-time weights start from these")
    top_k: int
    max_k: int
    index: Literal["copy", "milvus"]
    products: int | None
    as_of: int | None
    published_lists: dict[str, int | bool] | None = Field(
        description="published lists held in memory, and whether reading them all at start has ended")


class BatchItemBody(ResponseBody):
    status: int
    body: SearchBody | ExampleBody | RankingBody | None = None
    problem: ProblemBody | None = None


class BatchBody(ResponseBody):
    results: list[BatchItemBody] = Field(description="in the order of the queries")
