"""A growable matrix of fused vectors stored on their compact grids (simstream.vector_codec).

Rows are packed per segment (float16 or int8 with a power-of-two exponent); columns outside every
segment hold zeros (fields whose weight is 0, such as the image when images are off). Reading
gives float32 rows bit-identical to what was written, so scores computed from them equal the ones
Milvus and the exactness oracle compute. A row that is not canonical (written by an older
simstream, or non-zero outside the segments) is kept as float32 beside the grid ("loose") and
patched into every read: never rounded, never lost.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from simstream.vector_codec import Segment, bytes_per_row, pack

__all__ = ["DTYPES", "PackedRows", "memory_per_row"]

DTYPES = {"f16": np.float16, "i8": np.int8, "f32": np.float32}


class PackedRows:
    """Rows of ``dim`` float32 values, stored compactly by ``segments``."""

    def __init__(self, dim: int, segments: Sequence[Segment] | None, capacity: int) -> None:
        self.dim = dim
        self.segments = list(segments) if segments else [Segment("all", 0, dim, "f32")]
        covered = np.zeros(dim, bool)
        for s in self.segments:
            covered[s.start:s.stop] = True
        self._outside = np.flatnonzero(~covered)  # columns that must be zero on the grid
        self._values = [np.zeros((capacity, s.width), DTYPES[s.codec]) for s in self.segments]
        self._exponents = [np.zeros(capacity, np.int8) if s.codec == "i8" else None for s in self.segments]
        # 2**exponent as float32, kept with the rows: the scan multiplies each block's int8 products
        # by it (computing it per block and pass was ~5 % of a pass)
        self._scales = [np.zeros(capacity, np.float32) if s.codec == "i8" else None for s in self.segments]
        self._loose: dict[int, np.ndarray] = {}
        self.max_norm = 0.0  # the largest norm of any row written: bounds the scan's error (index/packed_scan.py)

    @property
    def capacity(self) -> int:
        return len(self._values[0]) if self._values else 0

    @property
    def row_bytes(self) -> int:
        return memory_per_row(self.segments)

    @property
    def loose_rows(self) -> int:
        return len(self._loose)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the packed values and exponents (loose rows included)."""
        held = sum(a.nbytes for a in self._values) + sum(e.nbytes for e in self._exponents if e is not None) \
            + sum(c.nbytes for c in self._scales if c is not None)
        return held + sum(v.nbytes for v in self._loose.values())

    def segment(self, i: int) -> tuple[Segment, np.ndarray, np.ndarray | None]:
        """Segment ``i`` with its packed values (rows x width) and, for i8, per-row exponents."""
        return self.segments[i], self._values[i], self._exponents[i]

    def scales(self, i: int) -> np.ndarray | None:
        """For an i8 segment ``i``, each row's 2**exponent as float32 (None for the others)."""
        return self._scales[i]

    def export(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``rows``' packed values, exponents and loose vectors as plain arrays, renumbered 0..n-1
        in the given order (a snapshot, index/snapshot.py); ``load`` puts them back unchanged."""
        out: dict[str, np.ndarray] = {}
        for i, (values, exps) in enumerate(zip(self._values, self._exponents)):
            out[f"values{i}"] = values[rows]
            if exps is not None:
                out[f"exponents{i}"] = exps[rows]
        at = {int(r): i for i, r in enumerate(rows.tolist())}
        loose = [(at[r], vec) for r, vec in self._loose.items() if r in at]
        out["loose_rows"] = np.array([i for i, _ in loose], np.int64)
        out["loose"] = np.stack([v for _, v in loose]) if loose else np.zeros((0, self.dim), np.float32)
        out["max_norm"] = np.array([self.max_norm], np.float64)
        return out

    def load(self, arrays: dict[str, np.ndarray], n: int) -> None:
        """Put ``export``'s arrays back as rows 0..n-1 (the capacity must hold them). Raises
        ValueError when their shapes do not fit these segments."""
        for i, (s, values, exps) in enumerate(zip(self.segments, self._values, self._exponents)):
            got = arrays[f"values{i}"]
            if got.shape != (n, s.width) or got.dtype != values.dtype:
                raise ValueError(f"segment {s.name}: {got.dtype}{got.shape}, expected {values.dtype}{(n, s.width)}")
            values[:n] = got
            if exps is not None:
                e = arrays[f"exponents{i}"]
                if e.shape != (n,) or e.dtype != np.int8:
                    raise ValueError(f"segment {s.name}: exponents {e.dtype}{e.shape}")
                exps[:n] = e
                scales = self._scales[i]
                assert scales is not None
                scales[:n] = _powers_of_two(e)
        rows, loose = arrays["loose_rows"], arrays["loose"]
        if loose.shape != (len(rows), self.dim) or loose.dtype != np.float32 or (len(rows) and not 0 <= rows.min() <= rows.max() < n):
            raise ValueError("loose rows do not fit")
        self._loose = {int(r): np.array(v) for r, v in zip(rows.tolist(), loose)}
        self.max_norm = max(self.max_norm, float(arrays["max_norm"][0]))

    def loose_items(self) -> list[tuple[int, np.ndarray]]:
        """(row, float32 vector) of the rows kept off the grid."""
        return list(self._loose.items())

    def grow(self, capacity: int) -> None:
        """Reallocate to ``capacity`` rows, keeping the contents."""
        old = self.capacity
        for i, arr in enumerate(self._values):
            new = np.zeros((capacity,) + arr.shape[1:], arr.dtype)
            new[:old] = arr
            self._values[i] = new
        for i, exps in enumerate(self._exponents):
            if exps is not None:
                new_e = np.zeros(capacity, np.int8)
                new_e[:old] = exps
                self._exponents[i] = new_e
        for i, scales in enumerate(self._scales):
            if scales is not None:
                new_s = np.zeros(capacity, np.float32)
                new_s[:old] = scales
                self._scales[i] = new_s

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` (float32, n x dim) at ``rows``."""
        vectors = np.asarray(vectors, np.float32)
        if len(vectors):
            self.max_norm = max(self.max_norm, float(np.linalg.norm(vectors.astype(np.float64), axis=1).max()))
        inexact = np.zeros(len(rows), bool)
        if len(self._outside):
            inexact |= (vectors[:, self._outside] != 0).any(axis=1)
        for s, values, exps, scales in zip(self.segments, self._values, self._exponents, self._scales):
            packed, bad = pack(vectors[:, s.start:s.stop], s.codec)
            values[rows] = packed.values
            if exps is not None and scales is not None:
                assert packed.exponents is not None
                exps[rows] = packed.exponents
                scales[rows] = _powers_of_two(packed.exponents)
            inexact |= bad
        for r, vec, loose in zip(rows.tolist(), vectors, inexact.tolist()):
            if loose:
                self._loose[r] = vec.copy()
            else:
                self._loose.pop(r, None)

    def clear(self, row: int) -> None:
        for values, exps, scales in zip(self._values, self._exponents, self._scales):
            values[row] = 0
            if exps is not None and scales is not None:
                exps[row] = 0
                scales[row] = 1.0
        self._loose.pop(row, None)

    def read(self, rows: np.ndarray | slice) -> np.ndarray:
        """Float32 rows (a new array), bit-identical to what was written. ``rows``: row numbers,
        or a slice with explicit start and stop (a scan block)."""
        sel: np.ndarray | slice = rows if isinstance(rows, slice) else np.asarray(rows, np.int64)
        n = (rows.stop - rows.start) if isinstance(rows, slice) else len(sel)  # type: ignore[arg-type]
        out = np.zeros((n, self.dim), np.float32)
        for s, values, scales in zip(self.segments, self._values, self._scales):
            if scales is None:
                out[:, s.start:s.stop] = values[sel]
            else:  # q * 2**e with the powers held (``unpack``'s numbers, without recomputing them)
                np.multiply(values[sel], scales[sel][:, None], out=out[:, s.start:s.stop])
        if self._loose:
            if isinstance(rows, slice):  # a scan block: visit the few loose rows, not every row
                for r, vec in self._loose.items():
                    if rows.start <= r < rows.stop:
                        out[r - rows.start] = vec
            else:
                for i, r in enumerate(sel.tolist()):  # type: ignore[union-attr]
                    if (held := self._loose.get(r)) is not None:
                        out[i] = held
        return out

    def blocks(self, used: int, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 block) over rows [0, used): the decoding scan before
        index/packed_scan.py, kept as bench/scan_bench.py's same-run baseline."""
        for start in range(0, used, block_rows):
            yield start, self.read(slice(start, min(used, start + block_rows)))


def memory_per_row(segments: Sequence[Segment]) -> int:
    """Bytes one row takes in memory: its stored bytes (simstream.vector_codec) and, per i8
    segment, its scale (a float32)."""
    return bytes_per_row(segments) + 4 * sum(s.codec == "i8" for s in segments)


def _powers_of_two(exponents: np.ndarray) -> np.ndarray:
    """2**e as float32, exactly (every int8 exponent's power is a float32, subnormal below 2**-126)."""
    return np.ldexp(np.float32(1.0), exponents.astype(np.int32)).astype(np.float32)
