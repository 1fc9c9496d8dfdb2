"""What the index stores, as plain records: a product row, a recorded list, a list's head, a
product as a reader shows it.

One place builds the Milvus product row (``product_row``): the worker, ``eval`` and the benchmarks
all write through it, so the schema has one spelling; ``served_product`` reads it back for serve.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import orjson

from simstream.limits import (
    MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES, MAX_BRAND_BYTES, MAX_CATEGORY_BYTES,
    MAX_CATEGORY_KEY_BYTES, MAX_DISPLAY_BYTES, MAX_DISPLAY_CURRENCY_BYTES, MAX_DISPLAY_IMAGE_URL_BYTES,
    MAX_DISPLAY_TITLE_BYTES,
)
from simstream.records import ProductEvent

__all__ = [
    "TOMBSTONE_BOUNDARY", "StoredProduct", "StoredList", "ListHead", "HeadFacts", "stored_boundary", "clip_utf8", "product_row",
    "SERVING_FIELDS", "brand_key", "category_key", "display_of", "Display", "ServedProduct", "served_product",
]

TOMBSTONE_BOUNDARY = 3.0e38  # the boundary a tombstone marker is recorded with (no payload, no neighbours)


@dataclass(frozen=True, slots=True)
class StoredProduct:
    product_id: str
    vector: np.ndarray
    version: int
    hashes: dict[str, str]
    model: str
    event_time: int
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class StoredList:
    """A recorded list: the deep ids, the boundary below which every outsider scores, the payload."""

    product_id: str
    neighbour_ids: list[str]
    boundary: float  # everyone outside ``neighbour_ids`` scores at most this; -inf: it holds everyone
    payload: bytes  # the published top-k; empty for a tombstone marker
    as_of: int = 0  # when the state it was computed from was read (index.neighbours.BuiltList)


@dataclass(frozen=True, slots=True)
class ListHead:
    """A recorded list without its payload."""

    product_id: str
    neighbour_ids: tuple[str, ...]
    boundary: float  # as ``StoredList.boundary``, passed through ``stored_boundary``
    updated_at: int
    as_of: int = 0
    # The exact scores of ``neighbour_ids`` with the owner (float32, in order), as this worker
    # computed them; held in memory only, beside a head this worker recorded. Empty: not known.
    scores: bytes = b""
    # (version, updated_at) of the owner's row the list was computed from, when this worker knows
    # it: while the owner's row is still that one, its vector is the one the list was made for.
    owner: tuple[int, int] | None = None

    def member_scores(self) -> list[float] | None:
        """The exact scores of ``neighbour_ids`` when this worker computed them, else None."""
        if not self.scores:
            return None
        return np.frombuffer(self.scores, np.float32).tolist()  # type: ignore[no-any-return]

    @property
    def is_tombstone(self) -> bool:
        return self.boundary >= TOMBSTONE_BOUNDARY

    @property
    def holds_everyone(self) -> bool:
        """Recorded when the catalog was no bigger than the list: no outsiders then."""
        return self.boundary <= -TOMBSTONE_BOUNDARY


_FACTS_HEADER = struct.Struct("<16sqq")  # digest, owner's version, owner's updated_at


@dataclass(frozen=True, slots=True)
class HeadFacts:
    """What the worker that computed a list knows beside its head: the published list's content
    digest (``NeighbourList.content_digest``), the owner's row the list was computed from
    (version, updated_at), and the deep members' exact scores (float32, in order).

    Recorded with the list (the lists collection's ``facts`` field), so whichever worker holds the
    head later (after a restart, or a partition that moved) diffs without reading the payload back
    and merges without decoding the members (docs/exactness.md §2a): the scores are the very
    float32 numbers the writer computed, kept bit for bit."""

    digest: bytes
    owner: tuple[int, int]
    scores: bytes

    def to_field(self) -> str:
        """The ``facts`` VARCHAR: base64 of the header (``_FACTS_HEADER``) and the scores."""
        return base64.b64encode(_FACTS_HEADER.pack(self.digest, *self.owner) + self.scores).decode("ascii")

    @classmethod
    def from_field(cls, text: str | None) -> "HeadFacts | None":
        """The facts back; None for an empty or malformed field (a list recorded without them)."""
        if not text:
            return None
        try:
            raw = base64.b64decode(text, validate=True)
            digest, version, updated_at = _FACTS_HEADER.unpack_from(raw)
        except (ValueError, struct.error):
            return None
        scores = raw[_FACTS_HEADER.size:]
        if len(scores) % 4:
            return None
        return cls(digest, (version, updated_at), scores)


def stored_boundary(boundary: float, *, tombstone: bool = False) -> float:
    """A list's boundary as the lists collection holds it: clamped to what its FLOAT field takes
    (-inf, "holds everyone", becomes -TOMBSTONE_BOUNDARY) and rounded to float32; TOMBSTONE_BOUNDARY
    for a tombstone marker. Compare recorded heads only with values passed through this."""
    clamped = TOMBSTONE_BOUNDARY if tombstone else min(max(boundary, -TOMBSTONE_BOUNDARY), TOMBSTONE_BOUNDARY)
    return float(np.float32(clamped))


def clip_utf8(text: str | None, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes (Milvus VARCHAR limits count bytes)."""
    raw = (text or "").encode()
    return raw[:max_bytes].decode("utf-8", "ignore") if len(raw) > max_bytes else (text or "")


def product_row(product: ProductEvent, vector: np.ndarray | list[float], hashes: dict[str, str], model: str,
                written_at: int) -> dict[str, Any]:
    """The Milvus row of one product (the products collection's schema, index/milvus.py)."""
    return {
        "product_id": product.product_id, "vector": vector.tolist() if isinstance(vector, np.ndarray) else vector,
        "version": product.version, "brand": clip_utf8(product.brand, MAX_BRAND_BYTES),
        "category": clip_utf8(product.category, MAX_CATEGORY_BYTES),
        "price": float(product.price) if product.price is not None else -1.0, "hashes": hashes,
        "model": model, "updated_at": written_at, "event_time": product.event_time or 0,
        "display": display_of(product), "brand_key": brand_key(product.brand),
        "category_key": category_key(product.category),
    }


# --- serving fields (simstream serve) ---------------------------------------------------------
# What the query API shows, in one bounded JSON field of the products collection (``display``:
# title, image URL, currency, attributes), and what its filters compare, in two scalar columns
# (``brand_key``, ``category_key``: the normalised brand and category path; scalar because Milvus
# filters JSON and ARRAY fields ~100x slower). Collections made before these fields existed do not
# get them (MilvusStore strips them from their rows).
SERVING_FIELDS = ("display", "brand_key", "category_key")  # their caps: simstream.limits
_CORPORATE = re.compile(r"\b(inc|incorporated|ltd|llc|co|corp|corporation|gmbh|ag|sa|plc|company)\b")
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def brand_key(brand: str | None) -> str:
    """'Sony Corp.' and 'SONY' -> 'sony': the brand encoder's normalisation
    (encoders/structured.py ``normalize_brand``; a test keeps the two equal)."""
    return clip_utf8(_NOT_WORD.sub("", _CORPORATE.sub(" ", (brand or "").lower())), MAX_BRAND_BYTES)


def category_key(path: str | None) -> str:
    """'A > B / C' -> 'a>b>c', the deepest of encoders/structured.py ``category_prefixes``: the
    paths under a prefix P are P itself and the keys in ["P>", "P?") ('?' follows '>' in ASCII),
    so a prefix filter is two string comparisons, no LIKE pattern to escape."""
    parts = [p.strip().lower() for p in re.split(r"[>/|]", path or "") if p.strip()]
    return clip_utf8(">".join(parts), MAX_CATEGORY_KEY_BYTES)


def display_of(product: ProductEvent) -> dict[str, Any]:
    """The ``display`` JSON of one product, at most ``MAX_DISPLAY_BYTES`` serialised: the
    attributes go first, then the image URL, then the title is cut further (control characters
    escape to 6 bytes each, so byte caps alone do not bound the JSON)."""
    url = product.image_url if product.image_url and len(product.image_url.encode()) <= MAX_DISPLAY_IMAGE_URL_BYTES else None
    attrs = {clip_utf8(k, MAX_ATTRIBUTE_KEY_BYTES): (clip_utf8(v, MAX_ATTRIBUTE_VALUE_BYTES) if v is not None else None)
             for k, v in list((product.attributes or {}).items())[:MAX_ATTRIBUTES]}
    out: dict[str, Any] = {
        "title": clip_utf8(product.title, MAX_DISPLAY_TITLE_BYTES), "image_url": url,
        "currency": clip_utf8(product.currency, MAX_DISPLAY_CURRENCY_BYTES) or None, "attributes": attrs,
    }
    for trim in ("attributes", "image_url", "title"):
        if len(orjson.dumps(out)) <= MAX_DISPLAY_BYTES:
            break
        out[trim] = {"attributes": {}, "image_url": None, "title": clip_utf8(product.title, 200)}[trim]
    return out


# --- served products (simstream serve reads these, never a Milvus row) ---------------------------
@dataclass(frozen=True, slots=True)
class Display:
    """The ``display`` JSON of a product (``display_of``); all empty in a collection made before
    the field existed, so a reader needs no second code path."""

    title: str | None = None
    image_url: str | None = None
    currency: str | None = None
    attributes: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServedProduct:
    """A stored product as a reader shows it. Unknowns are None here (the row stores price -1,
    brand "", event_time 0), so the reading side does not need to know the row's sentinels."""

    product_id: str
    version: int
    brand: str | None
    category: str | None
    price: float | None
    model: str
    event_time: int | None
    updated_at: int | None
    display: Display
    # empty unless read with vectors; left out of ==, which compares what is shown (an array has no truth value)
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), compare=False)


def served_product(product_id: str, row: Mapping[str, Any]) -> ServedProduct:
    """A products-collection row (the display fields, ``display`` and ``vector`` when read) as a
    ``ServedProduct``; the inverse of ``product_row`` for what serve shows."""
    price = float(row.get("price", -1.0))
    return ServedProduct(
        product_id=product_id, version=int(row["version"]), brand=row.get("brand") or None,
        category=row.get("category") or None, price=price if price >= 0 else None, model=row["model"],
        event_time=int(row.get("event_time") or 0) or None, updated_at=int(row.get("updated_at") or 0) or None,
        display=_display(row.get("display")),
        vector=np.asarray(row.get("vector", ()), dtype=np.float32),
    )


def _display(raw: Mapping[str, Any] | None) -> Display:
    """``None`` or ``{}`` (a row written without display fields) reads as an empty ``Display``."""
    d = raw or {}
    return Display(title=d.get("title"), image_url=d.get("image_url"), currency=d.get("currency"),
                   attributes=dict(d.get("attributes") or {}))
