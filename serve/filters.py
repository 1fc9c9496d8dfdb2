"""What a query's results must match: structured filters, checked once, answered two ways.

A client never sends an expression: it sends ``brand`` / ``category`` (each any of several values;
a category is a path prefix), ``brand_not`` / ``category_not``, ``price_min`` / ``price_max``,
``attr.<name>`` values, ids to ``exclude``, and filters relative to the seed product
(``same_brand``, ``same_category``, ``price_within_pct``), which ``resolved`` turns into absolute
ones once the seed is read. The same ``Filters`` is then answered by serve's in-memory copy
(``serve/copy.py`` compiles it to a row mask) or by Milvus (``expression``).

Every string goes into an expression as one JSON string literal (``quote``), which the Milvus
expression parser reads back as the same string; control characters, which it cannot read back,
are refused. Brand and category compare the normalised keys stored in scalar columns
(``simstream.index.rows.brand_key`` / ``category_key``): equality, and a string range for a path
prefix, so no LIKE pattern needs escaping. Attributes are compared in the ``display`` JSON field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import orjson

from simstream.index.rows import ServedProduct, brand_key, category_key
from simstream.limits import (
    MAX_ATTRIBUTE_FILTERS, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_BRAND_BYTES, MAX_CATEGORY_BYTES,
    MAX_EXCLUDE_IDS, MAX_FILTER_VALUES, MAX_ID_BYTES,
)

__all__ = ["FILTER_PARAMS", "LIST_PARAMS", "ATTR_PREFIX", "FilterError", "quote", "category_prefix_match", "Filters"]

# Milvus reads back the short escapes \t \n \r but no \uXXXX escape: other control characters are refused
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# parameters that may be given several times (any of / none of / left out)
LIST_PARAMS = frozenset({"brand", "brand_not", "category", "category_not", "exclude"})
FILTER_PARAMS = LIST_PARAMS | {"price_min", "price_max", "same_brand", "same_category", "price_within_pct"}
ATTR_PREFIX = "attr."
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no", ""})


class FilterError(ValueError):
    """A filter the client got wrong: the message says which and why (answered with a 4xx)."""


def quote(text: str, what: str = "value", max_bytes: int = 4096) -> str:
    """``text`` as a Milvus string literal (JSON quoting: ``"`` and ``\\`` escaped)."""
    if _CONTROL.search(text):
        raise FilterError(f"{what} must not contain control characters")
    if len(text.encode()) > max_bytes:
        raise FilterError(f"{what} is longer than {max_bytes} bytes")
    return orjson.dumps(text).decode()


def category_prefix_match(key: str, prefix_key: str) -> bool:
    """Whether the category key ``key`` is the path ``prefix_key`` or below it."""
    return key == prefix_key or key.startswith(prefix_key + ">")


def _number(name: str, raw: Any, *, positive: bool = False) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise FilterError(f"{name} must be a number, got {str(raw)[:40]!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise FilterError(f"{name} must be a finite number {'>' if positive else '>='} 0")
    return value


def _flag(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise FilterError(f"{name} must be true or false, got {str(raw)[:40]!r}")


def _values(name: str, raw: str | Sequence[str] | None, limit: int = MAX_FILTER_VALUES) -> tuple[str, ...]:
    if raw is None:
        return ()
    values = (raw,) if isinstance(raw, str) else tuple(raw)
    if len(values) > limit:
        raise FilterError(f"{name}: at most {limit} values")
    if not all(isinstance(v, str) for v in values):
        raise FilterError(f"{name}: values must be strings")
    return tuple(dict.fromkeys(values))  # repeated values once, in the order given


def _key(value: str, name: str, normalise: Callable[[str], str], max_bytes: int, empty: str) -> str:
    """The normalised key a brand or category filter compares (index.rows), checked."""
    quote(value, name, max_bytes)
    key = normalise(value)
    if not key:
        raise FilterError(f"{name} {empty}")
    return key


def _category_expr(key: str, exact: bool) -> str:
    """The path ``key`` (``exact``), or it and every path below it: keys in [key + ">", key + "?")."""
    if exact:
        return f"category_key == {quote(key)}"
    return (f"(category_key == {quote(key)} or (category_key >= {quote(key + '>')} and "
            f"category_key < {quote(key + '?')}))")


@dataclass(frozen=True)
class Filters:
    """What the results must match; empty means the whole catalog. Brands and categories are kept
    as their normalised keys (what the index compares)."""

    brand: tuple[str, ...] = ()  # brand keys: any of them
    brand_not: tuple[str, ...] = ()  # brand keys: none of them (an unknown brand matches)
    category: tuple[str, ...] = ()  # category keys: at or below any of them
    category_not: tuple[str, ...] = ()  # category keys: at or below none of them
    price_min: float | None = None
    price_max: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()  # product ids left out
    same_brand: bool = False  # relative to the seed product (``resolved``)
    same_category: bool = False
    price_within_pct: float | None = None
    # set by ``resolved`` only: ``category`` compared exactly (same_category), or nothing matches
    category_exact: bool = False
    nothing: bool = False

    @property
    def needs_display(self) -> bool:
        """Brand, category and attributes are compared on the serving fields (rows.SERVING_FIELDS)."""
        return bool(self.brand or self.brand_not or self.category or self.category_not or self.attributes
                    or self.same_brand or self.same_category)

    @property
    def relative(self) -> bool:
        """Whether it needs a seed product (``resolved``)."""
        return self.same_brand or self.same_category or self.price_within_pct is not None

    @property
    def empty(self) -> bool:
        """Matches every product (exclusions aside)."""
        return not self.needs_display and self.price_min is None and self.price_max is None and not self.relative

    @classmethod
    def build(cls, brand: str | Sequence[str] | None = None, category: str | Sequence[str] | None = None,
              price_min: str | float | None = None, price_max: str | float | None = None,
              attributes: dict[str, str] | None = None, *, brand_not: str | Sequence[str] | None = None,
              category_not: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None,
              same_brand: Any = False, same_category: Any = False,
              price_within_pct: str | float | None = None) -> "Filters":
        """Checked filters; FilterError names the first bad one."""
        lo = _number("price_min", price_min) if price_min is not None else None
        hi = _number("price_max", price_max) if price_max is not None else None
        if lo is not None and hi is not None and lo > hi:
            raise FilterError("price_min is greater than price_max")
        brands_in = tuple(dict.fromkeys(cls._brand(b, "brand") for b in _values("brand", brand)))
        brands_out = tuple(dict.fromkeys(cls._brand(b, "brand_not") for b in _values("brand_not", brand_not)))
        categories_in = tuple(dict.fromkeys(cls._category(c, "category") for c in _values("category", category)))
        categories_out = tuple(dict.fromkeys(cls._category(c, "category_not") for c in _values("category_not", category_not)))
        attrs = dict(attributes or {})
        if len(attrs) > MAX_ATTRIBUTE_FILTERS:
            raise FilterError(f"at most {MAX_ATTRIBUTE_FILTERS} attribute filters")
        for k, v in attrs.items():
            if not k:
                raise FilterError("attribute filter without a name (use attr.NAME=VALUE)")
            if not isinstance(v, str):
                raise FilterError(f"attribute {k[:40]!r}: the value must be a string")
            quote(k, "attribute name", MAX_ATTRIBUTE_KEY_BYTES)
            quote(v, f"attribute {k[:40]!r}", MAX_ATTRIBUTE_VALUE_BYTES)
        ids = _values("exclude", exclude, MAX_EXCLUDE_IDS)
        for pid in ids:
            quote(pid, "an excluded id", MAX_ID_BYTES)
        pct = _number("price_within_pct", price_within_pct, positive=True) if price_within_pct is not None else None
        if pct is not None and pct >= 100:
            raise FilterError("price_within_pct must be below 100")
        return cls(brands_in, brands_out, categories_in, categories_out, lo, hi, attrs,
                   frozenset(ids), _flag("same_brand", same_brand), _flag("same_category", same_category), pct)

    @staticmethod
    def _brand(value: str, name: str) -> str:
        return _key(value, name, brand_key, MAX_BRAND_BYTES, "has no letters or digits")

    @staticmethod
    def _category(value: str, name: str) -> str:
        return _key(value, name, category_key, MAX_CATEGORY_BYTES, "is empty")

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]], allowed: set[str]) -> tuple["Filters", dict[str, str]]:
        """Filters from query parameters, plus the other ``allowed`` parameters by name. Unknown
        parameters are refused, and so are repeats except of ``LIST_PARAMS`` (a typo must not
        silently widen the results)."""
        seen: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        for name, value in items:
            if name not in allowed and name not in FILTER_PARAMS and not name.startswith(ATTR_PREFIX):
                known = sorted(allowed | FILTER_PARAMS) + [ATTR_PREFIX + "NAME"]
                raise FilterError(f"unknown query parameter {name[:60]!r}; known: {', '.join(known)}")
            if name in LIST_PARAMS:
                lists.setdefault(name, []).append(value)
                continue
            if name in seen:
                raise FilterError(f"query parameter {name[:60]!r} is given more than once")
            seen[name] = value
        attrs = {n[len(ATTR_PREFIX):]: v for n, v in seen.items() if n.startswith(ATTR_PREFIX)}
        filters = cls.build(lists.get("brand"), lists.get("category"), seen.get("price_min"), seen.get("price_max"),
                            attrs, brand_not=lists.get("brand_not"), category_not=lists.get("category_not"),
                            exclude=lists.get("exclude"), same_brand=seen.get("same_brand", False),
                            same_category=seen.get("same_category", False),
                            price_within_pct=seen.get("price_within_pct"))
        return filters, {n: v for n, v in seen.items() if n in allowed}

    def resolved(self, seed: ServedProduct) -> "Filters":
        """Absolute filters, the relative ones read off ``seed``: ``same_brand`` its brand,
        ``same_category`` its category (exactly, not below it), ``price_within_pct`` its price
        +- that share. FilterError when the seed lacks what a relative filter needs."""
        if not self.relative:
            return self
        out = replace(self, same_brand=False, same_category=False, price_within_pct=None)
        if self.same_brand:
            key = brand_key(seed.brand)
            if not key:
                raise FilterError("same_brand: the seed product has no brand")
            out = replace(out, brand=(key,), nothing=out.nothing or bool(self.brand) and key not in self.brand)
        if self.same_category:
            key = category_key(seed.category)
            if not key:
                raise FilterError("same_category: the seed product has no category")
            outside = bool(self.category) and not any(category_prefix_match(key, c) for c in self.category)
            out = replace(out, category=(key,), category_exact=True, nothing=out.nothing or outside)
        if self.price_within_pct is not None:
            if seed.price is None:
                raise FilterError("price_within_pct: the seed product has no price")
            share = self.price_within_pct / 100.0
            lo, hi = seed.price * (1 - share), seed.price * (1 + share)
            out = replace(out, price_min=max(lo, self.price_min or 0.0),
                          price_max=min(hi, self.price_max) if self.price_max is not None else hi)
        return out

    def expression(self, exclude: Iterable[str] = ()) -> str:
        """The Milvus filter expression (absolute filters only); ``exclude``: more ids left out."""
        assert not self.relative, "resolve relative filters against the seed first"
        if self.nothing:
            return 'product_id == ""'  # no product has an empty id
        ids = sorted(self.exclude | set(exclude))
        parts = [f"product_id != {quote(pid, 'product id', MAX_ID_BYTES)}" for pid in ids]
        if self.brand:
            parts.append(f"brand_key in [{', '.join(quote(k) for k in self.brand)}]")
        if self.brand_not:
            parts.append(f"not (brand_key in [{', '.join(quote(k) for k in self.brand_not)}])")
        if self.category:
            parts.append("(" + " or ".join(_category_expr(k, self.category_exact) for k in self.category) + ")")
        if self.category_not:  # a subtree left out, whatever same_category made of ``category``
            parts.append("not (" + " or ".join(_category_expr(k, False) for k in self.category_not) + ")")
        if self.price_min is not None:
            parts.append(f"price >= {self.price_min!r}")
        if self.price_max is not None:
            # an unknown price is stored as -1: it matches no price range
            parts.append(f"price >= 0.0 and price <= {self.price_max!r}")
        for k, v in sorted(self.attributes.items()):
            parts.append(f'display["attributes"][{quote(k)}] == {quote(v)}')
        return " and ".join(parts)

    def matches_category(self, key: str) -> bool:
        """Whether a product with category key ``key`` passes the category filters."""
        exact = self.category_exact
        if self.category and not any(key == c if exact else category_prefix_match(key, c) for c in self.category):
            return False
        return not any(category_prefix_match(key, c) for c in self.category_not)

    def matches(self, p: ServedProduct) -> bool:
        """Whether ``p`` passes (absolute filters): what the copy's mask and Milvus' expression
        select, for a product already at hand (a published list's entries)."""
        assert not self.relative, "resolve relative filters against the seed first"
        if self.nothing or p.product_id in self.exclude:
            return False
        brand = brand_key(p.brand)
        if (self.brand and brand not in self.brand) or (self.brand_not and brand in self.brand_not):
            return False
        if (self.category or self.category_not) and not self.matches_category(category_key(p.category)):
            return False
        price = p.price if p.price is not None else -1.0
        if (self.price_min is not None and price < self.price_min) or \
                (self.price_max is not None and not 0 <= price <= self.price_max):
            return False
        return all(p.display.attributes.get(k) == v for k, v in self.attributes.items())

    def view(self) -> dict[str, Any]:
        """The filters as a response shows them."""
        out: dict[str, Any] = {}
        for name in ("brand", "brand_not", "category", "category_not"):
            if values := getattr(self, name):
                out[name] = list(values)
        for name in ("price_min", "price_max", "price_within_pct"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        for name in ("same_brand", "same_category"):
            if getattr(self, name):
                out[name] = True
        if self.attributes:
            out["attributes"] = self.attributes
        if self.exclude:
            out["exclude"] = sorted(self.exclude)
        return out
