"""Structured filters compiled to Milvus boolean expressions.

A client never sends an expression: it sends ``brand``, ``category`` (a path prefix),
``price_min`` / ``price_max`` and ``attr.<name>`` values, and this module writes the expression.
Every string goes in as one JSON string literal (``quote``), which the Milvus expression parser
reads back as the same string; control characters, which it cannot read back, are refused.
Brand and category compare the normalised keys stored in scalar columns
(``simstream.index.rows.brand_key`` / ``category_key``): equality, and a string range for a path
prefix, so no LIKE pattern needs escaping. Attributes are compared in the ``display`` JSON field
(slower: Milvus scans JSON).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

import orjson

from simstream.index.rows import brand_key, category_key
from simstream.limits import (
    MAX_ATTRIBUTE_FILTERS, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_BRAND_BYTES, MAX_CATEGORY_BYTES,
    MAX_ID_BYTES,
)

__all__ = ["FILTER_PARAMS", "ATTR_PREFIX", "FilterError", "quote", "Filters"]

# Milvus reads back the short escapes \t \n \r but no \uXXXX escape: other control characters are refused
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
FILTER_PARAMS = frozenset({"brand", "category", "price_min", "price_max"})
ATTR_PREFIX = "attr."


class FilterError(ValueError):
    """A filter the client got wrong: the message says which and why (answered with a 4xx)."""


def quote(text: str, what: str = "value", max_bytes: int = 4096) -> str:
    """``text`` as a Milvus string literal (JSON quoting: ``"`` and ``\\`` escaped)."""
    if _CONTROL.search(text):
        raise FilterError(f"{what} must not contain control characters")
    if len(text.encode()) > max_bytes:
        raise FilterError(f"{what} is longer than {max_bytes} bytes")
    return orjson.dumps(text).decode()


def _number(name: str, raw: str | float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise FilterError(f"{name} must be a number, got {str(raw)[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise FilterError(f"{name} must be a finite number >= 0")
    return value


@dataclass(frozen=True)
class Filters:
    """What the results must match; empty means the whole catalog."""

    brand: str | None = None
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def needs_display(self) -> bool:
        """Brand, category and attributes are compared on the serving fields (rows.SERVING_FIELDS)."""
        return bool(self.brand is not None or self.category is not None or self.attributes)

    @property
    def empty(self) -> bool:
        return not self.needs_display and self.price_min is None and self.price_max is None

    @classmethod
    def build(cls, brand: str | None = None, category: str | None = None, price_min: str | float | None = None,
              price_max: str | float | None = None, attributes: dict[str, str] | None = None) -> "Filters":
        """Checked filters; FilterError names the first bad one."""
        lo = _number("price_min", price_min) if price_min is not None else None
        hi = _number("price_max", price_max) if price_max is not None else None
        if lo is not None and hi is not None and lo > hi:
            raise FilterError("price_min is greater than price_max")
        if brand is not None:
            quote(brand, "brand", MAX_BRAND_BYTES)
            if not brand_key(brand):
                raise FilterError("brand has no letters or digits")
        if category is not None:
            quote(category, "category", MAX_CATEGORY_BYTES)
            if not category_key(category):
                raise FilterError("category is empty")
        attrs = dict(attributes or {})
        if len(attrs) > MAX_ATTRIBUTE_FILTERS:
            raise FilterError(f"at most {MAX_ATTRIBUTE_FILTERS} attribute filters")
        for k, v in attrs.items():
            if not k:
                raise FilterError("attribute filter without a name (use attr.NAME=VALUE)")
            quote(k, "attribute name", MAX_ATTRIBUTE_KEY_BYTES)
            quote(v, f"attribute {k[:40]!r}", MAX_ATTRIBUTE_VALUE_BYTES)
        return cls(brand, category, lo, hi, attrs)

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]], allowed: set[str]) -> tuple["Filters", dict[str, str]]:
        """Filters from query parameters, plus the other ``allowed`` parameters by name. Unknown
        and repeated parameters are refused (a typo must not silently widen the results)."""
        seen: dict[str, str] = {}
        for name, value in items:
            if name in seen:
                raise FilterError(f"query parameter {name[:60]!r} is given more than once")
            if name not in allowed and name not in FILTER_PARAMS and not name.startswith(ATTR_PREFIX):
                known = sorted(allowed | FILTER_PARAMS) + [ATTR_PREFIX + "NAME"]
                raise FilterError(f"unknown query parameter {name[:60]!r}; known: {', '.join(known)}")
            seen[name] = value
        attrs = {n[len(ATTR_PREFIX):]: v for n, v in seen.items() if n.startswith(ATTR_PREFIX)}
        filters = cls.build(seen.get("brand"), seen.get("category"), seen.get("price_min"), seen.get("price_max"), attrs)
        return filters, {n: v for n, v in seen.items() if n in allowed}

    def expression(self, exclude: Iterable[str] = ()) -> str:
        """The Milvus filter expression; ``exclude``: product ids left out (the query product)."""
        parts = [f"product_id != {quote(pid, 'product id', MAX_ID_BYTES)}" for pid in exclude]
        if self.brand is not None:
            parts.append(f"brand_key == {quote(brand_key(self.brand))}")
        if self.category is not None:
            key = category_key(self.category)  # the path itself, or below it: keys in [key + ">", key + "?")
            parts.append(f"(category_key == {quote(key)} or (category_key >= {quote(key + '>')} and "
                         f"category_key < {quote(key + '?')}))")
        if self.price_min is not None:
            parts.append(f"price >= {self.price_min!r}")
        if self.price_max is not None:
            # an unknown price is stored as -1: it matches no price range
            parts.append(f"price >= 0.0 and price <= {self.price_max!r}")
        for k, v in sorted(self.attributes.items()):
            parts.append(f'display["attributes"][{quote(k)}] == {quote(v)}')
        return " and ".join(parts)
