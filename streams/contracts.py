"""Event contracts: the input product event and the output neighbour list.

The JSON Schemas in ``streams/schemas/`` are the source of truth (docs/events.md); this module
validates raw bytes against them and turns them into plain frozen dataclasses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import jsonschema
import orjson

from streams.errors import BadEvent


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("streams.schemas").joinpath(name).read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def product_event_validator() -> jsonschema.Draft202012Validator:
    return _validator("product_event.schema.json")


def neighbor_list_validator() -> jsonschema.Draft202012Validator:
    return _validator("neighbor_list.schema.json")


@dataclass(frozen=True, slots=True)
class ProductEvent:
    """One validated product change, as consumed from the events topic."""

    product_id: str
    op: Literal["upsert", "delete"]
    version: int
    title: str = ""
    description: str | None = None
    brand: str | None = None
    category: str | None = None
    price: float | None = None
    currency: str | None = None
    mpn: str | None = None
    image_url: str | None = None
    image_b64: str | None = None
    attributes: dict[str, str | None] = field(default_factory=dict)
    event_time: int | None = None
    # Where it came from: for dead letters and logs, not part of the contract.
    partition: int = -1
    offset: int = -1

    @property
    def is_delete(self) -> bool:
        return self.op == "delete"


_FIELDS = set(ProductEvent.__dataclass_fields__) - {"partition", "offset"}


def parse_event(key: bytes | None, value: bytes | None, *, partition: int = -1, offset: int = -1) -> ProductEvent:
    """Decode and validate one raw record; raise BadEvent with a readable reason."""
    if value is None:
        raise BadEvent("null value: send op=delete instead of a tombstone")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadEvent(f"expected a JSON object, got {type(doc).__name__}")
    error = jsonschema.exceptions.best_match(product_event_validator().iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise BadEvent(f"schema: {where}: {error.message}")
    if key is not None and key.decode("utf-8", "replace") != doc["product_id"]:
        raise BadEvent(f"key {key!r} does not match product_id {doc['product_id']!r}")
    known = {k: v for k, v in doc.items() if k in _FIELDS}
    if known.get("attributes") is None:
        known["attributes"] = {}
    return ProductEvent(**known, partition=partition, offset=offset)


def event_to_json(event: ProductEvent) -> bytes:
    """Serialise back to the contract (used by the producer CLI and tests)."""
    doc = {k: getattr(event, k) for k in _FIELDS}
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


@dataclass(frozen=True, slots=True)
class Neighbor:
    product_id: str
    score: float
    fields: dict[str, float]


@dataclass(frozen=True, slots=True)
class NeighborList:
    """The value published on the neighbour topic for one product."""

    product_id: str
    version: int
    neighbors: list[Neighbor]
    model: str
    computed_at: int
    source_event_time: int | None

    def to_json(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_DATACLASS)

    def same_content(self, other: "NeighborList | None") -> bool:
        """Equal ids, order and scores (to 1e-6): a list that did not change is not republished."""
        if other is None or other.version != self.version or other.model != self.model:
            return False
        if [n.product_id for n in other.neighbors] != [n.product_id for n in self.neighbors]:
            return False
        return all(abs(a.score - b.score) <= 1e-6 for a, b in zip(self.neighbors, other.neighbors))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "NeighborList":
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            product_id=doc["product_id"],
            version=doc["version"],
            neighbors=[Neighbor(**n) for n in doc["neighbors"]],
            model=doc["model"],
            computed_at=doc["computed_at"],
            source_event_time=doc.get("source_event_time"),
        )
