"""Will the in-memory copies of the index fit? Estimated before they are built.

The side index holds every product's vector (products x dim x 4 bytes) plus its metadata, the list
mirror every recorded list's head. A worker whose pod limit is too small for them is OOM-killed
mid-build and restarts into the same kill, with nothing in its log. So ``VectorStore`` estimates
the footprint first and refuses to start with the numbers and the settings to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from simstream.errors import MemoryBudgetExceeded
from simstream.index.side import GROWTH, MIN_CAPACITY
from simstream.limits import MILVUS_PAGE_ROWS
from simstream.memory import MemoryLimit

__all__ = [
    "SAFETY_FRACTION", "VECTOR_PEAK", "PRODUCT_META_BYTES", "LIST_BASE_BYTES", "LIST_ENTRY_BYTES", "BUILD_PAGE_ROWS",
    "PAGE_VALUE_BYTES", "MIB", "side_capacity", "Footprint", "check_fits",
]

SAFETY_FRACTION = 0.85  # of the limit; the rest for the encoders' buffers, Kafka batches, allocator slack
# The matrix's first growth holds the old matrix and one GROWTH times larger at once (side.py).
VECTOR_PEAK = 1 + GROWTH
# Measured with tracemalloc (CPython 3.11, 20,000 products, ids "sku-00000001", 7 field hashes,
# bench/scale.py measures the whole worker): 216 bytes per product besides its packed vector (columnar
# metadata, the interned id, its dict slot); list heads in a ListMirror at depth 15: 493 bytes per
# list (interned ids, a tuple, the reverse map's lists). Rounded up for allocator overhead that
# tracemalloc does not see.
PRODUCT_META_BYTES = 300
LIST_BASE_BYTES = 250
LIST_ENTRY_BYTES = 24
# A page of rows in flight while building: Python lists of floats (a float object and a pointer,
# 32 bytes) plus the decoded protobuf (4), rounded up.
BUILD_PAGE_ROWS = MILVUS_PAGE_ROWS
PAGE_VALUE_BYTES = 40
MIB = 1 << 20


def side_capacity(products: int) -> int:
    """Rows to allocate for ``products``: a little room, so writes soon after start do not grow it."""
    return max(MIN_CAPACITY, products + products // 50 + 64)


@dataclass(frozen=True, slots=True)
class Footprint:
    """Estimated bytes of the in-memory copies; ``lists`` 0 when no list mirror is built."""

    products: int
    dim: int
    lists: int = 0
    list_depth: float = 0.0
    row_bytes: int = 0  # bytes of one stored vector (simstream.vector_codec); 0: float32, dim x 4
    cached: int = 0  # bytes caches may hold at their bound (serve's published lists)

    @property
    def vector_bytes(self) -> int:
        return self.row_bytes or self.dim * 4

    @property
    def vectors(self) -> int:
        return int(side_capacity(self.products) * self.vector_bytes * VECTOR_PEAK)

    @property
    def metadata(self) -> int:
        return self.products * PRODUCT_META_BYTES + BUILD_PAGE_ROWS * self.dim * PAGE_VALUE_BYTES

    @property
    def list_heads(self) -> int:
        return int(self.lists * (LIST_BASE_BYTES + LIST_ENTRY_BYTES * self.list_depth))

    @property
    def total(self) -> int:
        return self.vectors + self.metadata + self.list_heads + self.cached

    def describe(self) -> str:
        return (f"{self.products} products x {self.vector_bytes} B x {VECTOR_PEAK} while the matrix grows = "
                f"{self.vectors / MIB:.0f} MiB, their metadata {self.metadata / MIB:.0f} MiB, {self.lists} list "
                f"heads of ~{self.list_depth:.0f} ids {self.list_heads / MIB:.0f} MiB"
                + (f", caches {self.cached / MIB:.0f} MiB" if self.cached else ""))


def check_fits(footprint: Footprint, limit: MemoryLimit | None, rss: int) -> None:
    """Raise MemoryBudgetExceeded when ``footprint`` exceeds SAFETY_FRACTION of ``limit`` minus what
    the process already holds (``rss``). No known limit: nothing to check against."""
    if limit is None:
        return
    available = int(limit.bytes * SAFETY_FRACTION) - rss
    if footprint.total <= available:
        return
    raise MemoryBudgetExceeded(
        f"the in-memory copies of the index need ~{footprint.total / MIB:.0f} MiB ({footprint.describe()}), "
        f"but only {max(available, 0) / MIB:.0f} MiB is free: {SAFETY_FRACTION:.0%} of the memory limit "
        f"{limit.bytes / MIB:.0f} MiB ({limit.source}) minus {rss / MIB:.0f} MiB in use. Set SIMSTREAM_SIDE_INDEX=false "
        "to answer from Milvus instead (slower searches), or raise the pod's memory limit (resources.limits.memory; "
        "SIMSTREAM_MEMORY_LIMIT_BYTES overrides the detected limit)")
