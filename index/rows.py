"""What the index stores, as plain records: a product row, a recorded list, a list's head.

One place builds the Milvus product row (``product_row``): the worker, ``eval`` and the benchmarks
all write through it, so the schema has one spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simstream.records import ProductEvent

MAX_ID_BYTES = 256
MAX_BRAND_BYTES = 256
MAX_CATEGORY_BYTES = 1000
MAX_MODEL_BYTES = 256
MAX_PAYLOAD_BYTES = 65_535
MAX_LIST_DEPTH = 1000  # the lists collection's ARRAY max_capacity
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

    @property
    def is_tombstone(self) -> bool:
        return self.boundary >= TOMBSTONE_BOUNDARY

    @property
    def holds_everyone(self) -> bool:
        """Recorded when the catalog was no bigger than the list: no outsiders then."""
        return self.boundary <= -TOMBSTONE_BOUNDARY


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
    }
