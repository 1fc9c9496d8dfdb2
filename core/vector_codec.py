"""Compact, *lossless* storage of fused vectors: a vector is canonical before it is stored.

The worker keeps every product's fused vector in memory for exact search (index/side.py). At
3,232 float32 dimensions that is 12.9 KB per product, and a 1M-product catalog does not fit a pod.
So the encoder rounds each freshly encoded segment onto a coarse grid once, *before* the vector
is written anywhere (``canonical``), and the side index stores it on that grid (``pack``) and gets
back bit-identical float32 values (``unpack``). Milvus, the side index and the exactness oracle
therefore all score the very same numbers: compact storage changes no exact top-K.

Grids, per segment of the fused vector (``Segment``):

- ``f16``: float32 values that are exactly float16 numbers (2 bytes each), for learned embeddings
  (the text model, price bumps);
- ``i8``: int8 times a power of two per row (1 byte each plus a shared int8 exponent), for hashed
  n-gram counts, one-hot brand and category slots and image features, whose values sit in a small
  range per row. A power-of-two scale makes ``q * 2**e`` exact in float32 and the exponent
  recoverable from the values themselves, so packing any canonical vector is exact and idempotent;
- ``f32``: unchanged (what a vector written before compact storage existed may need).

``pack`` checks the round trip; a row that is not canonical (written by an older simstream or by
hand) is reported, so the caller keeps its exact float32 values instead of silently rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

__all__ = [
    "BYTES_PER_VALUE", "I8_MAX", "Segment", "canonical", "canonical_rows", "Packed", "pack", "unpack",
    "bytes_per_row",
]

Codec = Literal["f16", "i8", "f32"]
BYTES_PER_VALUE: dict[str, int] = {"f16": 2, "i8": 1, "f32": 4}
I8_MAX = 127


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of columns of the fused vector stored with one codec; ``name`` for messages."""

    name: str
    start: int
    stop: int
    codec: Codec

    @property
    def width(self) -> int:
        return self.stop - self.start


def _i8_exponent(rows: np.ndarray) -> np.ndarray:
    """Per row, the power of two e with max|x| / 2**e in (63.5, 127]: the int8 grid's step."""
    peak = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(len(rows), np.float32)
    safe = np.where(peak > 0, peak, 1.0).astype(np.float64)
    e = np.ceil(np.log2(safe / I8_MAX)).astype(np.int32)
    return np.where(peak > 0, e, 0)


def _i8_steps(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row the exponent e of the int8 grid, and x in steps of 2**e rounded (not yet clipped)."""
    e = _i8_exponent(x)
    return np.rint(np.ldexp(x, -e[:, None])), e


def canonical(vectors: np.ndarray, codec: Codec) -> np.ndarray:
    """``vectors`` (rows of one segment) rounded onto ``codec``'s grid, as float32."""
    x = np.asarray(vectors, np.float32)
    if codec == "f32":
        return x.copy()
    if codec == "f16":
        return x.astype(np.float16).astype(np.float32)
    q, e = _i8_steps(x)
    return np.ldexp(np.clip(q, -I8_MAX, I8_MAX), e[:, None]).astype(np.float32)


def canonical_rows(vectors: np.ndarray, segments: Sequence[Segment], rows: Sequence[int] | None = None) -> None:
    """Round ``vectors[rows]`` (all rows when None) in place, segment by segment."""
    idx = np.arange(len(vectors)) if rows is None else np.asarray(rows, np.int64)
    if len(idx) == 0:
        return
    for s in segments:
        vectors[idx, s.start:s.stop] = canonical(vectors[idx, s.start:s.stop], s.codec)


@dataclass(slots=True)
class Packed:
    """One segment of many rows on its grid: ``values`` (f16/i8/f32) and, for i8, ``exponents``."""

    values: np.ndarray
    exponents: np.ndarray | None


def pack(rows: np.ndarray, codec: Codec) -> tuple[Packed, np.ndarray]:
    """Rows of one segment on ``codec``'s grid, and a mask of the rows that did not round-trip
    exactly (not canonical: keep their float32 values elsewhere)."""
    x = np.asarray(rows, np.float32)
    if codec == "f32":
        return Packed(x.copy(), None), np.zeros(len(x), bool)
    if codec == "f16":
        values = x.astype(np.float16)
        exact = (values.astype(np.float32) == x).all(axis=1)
        return Packed(values, None), ~exact
    q, e = _i8_steps(x)
    exact = (np.ldexp(q, e[:, None]).astype(np.float32) == x).all(axis=1) & (np.abs(q) <= I8_MAX).all(axis=1)
    return Packed(np.clip(q, -I8_MAX, I8_MAX).astype(np.int8), e.astype(np.int8)), ~exact


def unpack(packed: Packed, codec: Codec, out: np.ndarray) -> None:
    """Write the float32 values of ``packed`` into ``out`` (rows x width), bit-identical to what
    was packed when it round-tripped."""
    if codec == "i8":
        assert packed.exponents is not None
        # q * 2**e: a multiplication by a power of two is exact, and faster than ldexp.
        scale = np.ldexp(np.float32(1.0), packed.exponents.astype(np.int32)).astype(np.float32)
        np.multiply(packed.values, scale[:, None], out=out)
    else:
        out[...] = packed.values


def bytes_per_row(segments: Sequence[Segment]) -> int:
    """Stored bytes of one row: values plus one exponent byte per i8 segment."""
    return sum(s.width * BYTES_PER_VALUE[s.codec] + (1 if s.codec == "i8" else 0) for s in segments)
