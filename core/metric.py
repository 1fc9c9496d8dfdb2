"""What "similar" means for two fused vectors: inner product, or Euclidean distance (issue 25).

Every list, search and check ranks by one score, computed one way (the oracle's arithmetic):

- ``ip``: ``x . y``, the float32 dot product numpy computes (the default);
- ``l2``: ``-|x - y|^2 / 2``, written as ``x . y + o(x) + o(y)`` with the *offset*
  ``o(v) = -|v|^2 / 2`` (summed in float64, rounded once to float32, kept with the row), the float32
  dot product and the two offsets added in float64. Higher is more similar in both, so every
  "best first", every list boundary and every tie rule stays as it is; the scan adds the two offsets
  to its dot products and widens its window by their rounding (index/packed_scan.py).

Under ``l2`` a field that neither product has counts as agreement (both segments are zero), one that
only one has counts against them by half its weight: products with missing fields rank differently
than under ``ip``, where a missing field simply adds nothing. The metric is part of the model (the
fusion config's option ``metric``, or ``SIMSTREAM_METRIC``; its tag ends ``-l2``); Milvus collections
are created and searched with the matching ``metric_type``, whose L2 distance is ``d = |x - y|^2``
(score ``-d / 2``). Measured under the leave-one-dataset-out protocol (docs/quality.md), ``ip`` is
the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["METRICS", "MetricName", "Metric", "IP"]

MetricName = Literal["ip", "l2"]
METRICS: tuple[MetricName, ...] = ("ip", "l2")


@dataclass(frozen=True, slots=True)
class Metric:
    """One similarity rule, as every component applies it."""

    name: MetricName = "ip"

    def __post_init__(self) -> None:
        if self.name not in METRICS:
            raise ValueError(f"unknown metric {self.name!r}: one of {', '.join(METRICS)}")

    @property
    def has_offsets(self) -> bool:
        """Whether a score adds a per-vector term to the dot product (``l2``)."""
        return self.name == "l2"

    @property
    def milvus_type(self) -> str:
        """Milvus' ``metric_type`` for this rule."""
        return "L2" if self.name == "l2" else "IP"

    @property
    def tag(self) -> str:
        """What this rule adds to a model tag ("" for the default, so existing tags stay)."""
        return "-l2" if self.name == "l2" else ""

    def offsets(self, vectors: np.ndarray) -> np.ndarray:
        """Each row's offset (float32): 0 for ``ip``; ``-|v|^2 / 2`` for ``l2``, the squares summed
        in float64 along the row (the same sum for a row alone or in a batch) and rounded once."""
        v = np.asarray(vectors, np.float32)
        if v.ndim == 1:
            return self.offsets(v[None, :])[0]  # type: ignore[no-any-return]
        if not self.has_offsets:
            return np.zeros(len(v), np.float32)
        wide = v.astype(np.float64)
        return np.asarray(-0.5 * np.add.reduce(wide * wide, axis=1), np.float32)

    def pair(self, a: np.ndarray, b: np.ndarray) -> float:
        """The score of two vectors, with the oracle's arithmetic."""
        dot = float(np.asarray(a, np.float32) @ np.asarray(b, np.float32))
        if not self.has_offsets:
            return dot
        return dot + float(self.offsets(a)) + float(self.offsets(b))

    def with_offsets(self, dots: np.ndarray, row_offsets: np.ndarray, query_offset: float) -> np.ndarray:
        """Float32 dot products of rows with one query (float64 out) turned into scores: ``pair``'s
        sum, term for term."""
        out = np.asarray(dots, np.float64)
        if not self.has_offsets:
            return out
        return out + np.asarray(row_offsets, np.float32).astype(np.float64) + float(np.float32(query_offset))

    def matrix(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores of every query with every row (float32 products, as a brute force ranks by)."""
        q, r = np.asarray(queries, np.float32), np.asarray(rows, np.float32)
        out = q @ r.T
        if self.has_offsets:
            out = out.astype(np.float64) + self.offsets(q)[:, None] + self.offsets(r)[None, :]
        return out

    def from_milvus(self, distance: float) -> float:
        """The score of a Milvus hit's ``distance`` under the matching ``metric_type`` (Milvus'
        own float32 arithmetic: callers keep their margin)."""
        return -0.5 * float(distance) if self.has_offsets else float(distance)


IP = Metric("ip")
