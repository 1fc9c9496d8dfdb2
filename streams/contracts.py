"""Wire formats: raw product-event bytes to a validated ``ProductEvent``, and the schema validators.

The JSON Schemas in ``streams/schemas/`` are the source of truth (docs/events.md); the records
themselves live in ``simstream.records``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jsonschema
import orjson

from simstream.errors import BadEvent
from simstream.records import CONTRACT_FIELDS, ProductEvent

@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("simstream.streams.schemas").joinpath(name).read_text()
    return jsonschema.Draft202012Validator(json.loads(text))

def product_event_validator() -> jsonschema.Draft202012Validator:
    return _validator("product_event.schema.json")

def neighbour_list_validator() -> jsonschema.Draft202012Validator:
    return _validator("neighbor_list.schema.json")

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
    known = {k: v for k, v in doc.items() if k in CONTRACT_FIELDS}
    if known.get("attributes") is None:
        known["attributes"] = {}
    return ProductEvent(**known, partition=partition, offset=offset)
