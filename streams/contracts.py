"""Wire formats: raw product-event bytes to a validated ``ProductEvent``, and the schema validators.

The JSON Schemas in ``streams/schemas/`` are the source of truth (docs/events.md); the records
themselves live in ``simstream.records``. ``parse_event`` adds what JSON Schema cannot say but
Milvus enforces (integers that fit INT64, VARCHAR limits in UTF-8 bytes), so an event that passes
never fails the upsert later and crash-loops the worker.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema
import orjson
from jsonschema.protocols import Validator

from simstream.errors import BadEvent
from simstream.limits import EVENT_FIELD_BYTES, MAX_EVENT_DEPTH, MAX_REASON_CHARS
from simstream.records import CONTRACT_FIELDS, ProductEvent

__all__ = ["product_event_validator", "neighbour_list_validator", "parse_event", "event_document"]


def _is_integer(_checker: Any, instance: object) -> bool:
    """A real JSON integer: draft 2020-12 also counts 3.0 and 1e19, which Milvus INT64 rejects."""
    return type(instance) is int


_STRICT = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@lru_cache(maxsize=None)
def _validator(name: str) -> Validator:
    text = resources.files("simstream.streams.schemas").joinpath(name).read_text()
    validator: Validator = _STRICT(json.loads(text))
    return validator


def product_event_validator() -> Validator:
    return _validator("product_event.schema.json")


def neighbour_list_validator() -> Validator:
    return _validator("neighbor_list.schema.json")


def _too_deep(doc: object, limit: int) -> bool:
    """Whether ``doc`` nests deeper than ``limit`` containers; iterative, so any depth is safe."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _schema_error(doc: dict[str, Any]) -> str | None:
    """The best schema violation as text; anything jsonschema raises is a bad event, never a crash."""
    try:
        error = jsonschema.exceptions.best_match(product_event_validator().iter_errors(doc))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"{where}: {error.message}"
    except (RecursionError, MemoryError):
        return "too deeply nested"
    except Exception as exc:  # noqa: BLE001 - a validator bug must dead-letter the record, not loop
        return f"validation failed: {type(exc).__name__}"


def parse_event(key: bytes | None, value: bytes | None, *, partition: int = -1, offset: int = -1) -> ProductEvent:
    """Decode and validate one raw record; raise BadEvent with a readable reason, and nothing else."""
    if value is None:
        raise BadEvent("null value: send op=delete instead of a tombstone")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadEvent(f"expected a JSON object, got {type(doc).__name__}")
    if _too_deep(doc, MAX_EVENT_DEPTH):
        raise BadEvent(f"schema: nested deeper than {MAX_EVENT_DEPTH} levels")
    reason = _schema_error(doc)
    if reason is not None:
        raise BadEvent(f"schema: {reason[:MAX_REASON_CHARS]}")
    for name, limit in EVENT_FIELD_BYTES.items():
        text = doc.get(name)
        size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0
        if size > limit:
            raise BadEvent(f"{name}: {size} bytes in UTF-8, over the {limit}-byte limit of its Milvus field")
    if key is not None and key.decode("utf-8", "replace") != doc["product_id"]:
        raise BadEvent(f"key {key[:MAX_REASON_CHARS]!r} does not match product_id {doc['product_id']!r}")
    known = {k: v for k, v in doc.items() if k in CONTRACT_FIELDS}
    if known.get("attributes") is None:
        known["attributes"] = {}
    return ProductEvent(**known, partition=partition, offset=offset)


_DELETE_FIELDS = ("product_id", "op", "version", "event_time")


def event_document(event: ProductEvent, *, without: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A validated event back in the contract's wire form (``parse_event`` reads it back equal):
    the fields it holds, none of the ``None`` ones; a delete only its id, version and time.
    ``without``: fields left out (the catalog changelog drops an inline image that would not fit
    a message). The catalog changelog's value (docs/events.md)."""
    names = _DELETE_FIELDS if event.is_delete else sorted(CONTRACT_FIELDS)
    doc = {name: value for name in names if name not in without and (value := getattr(event, name)) is not None}
    if not doc.get("attributes"):
        doc.pop("attributes", None)
    return doc
