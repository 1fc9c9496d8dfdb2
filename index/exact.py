"""Exact top-K by the model's metric (simstream.metric), and the one ranking rule every list uses.

The side index, the exactness oracle, the benchmarks' preloads and ``eval`` all rank through here,
so "exact top-K" has one definition: higher score first, equal scores (to ``SCORE_DECIMALS``)
ordered by product id.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from simstream.metric import IP, Metric

__all__ = ["SCORE_DECIMALS", "rank_key", "top_k_rows", "exact_top_k"]

SCORE_DECIMALS = 6


def rank_key(score: float, product_id: str) -> tuple[float, str]:
    """Higher score first; equal scores (to 1e-6) ordered by product_id, everywhere."""
    return (-round(score, SCORE_DECIMALS), product_id)


def top_k_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a score matrix: the ``k`` best column indices, best first (ties by column), and
    their scores. Columns scored -inf (excluded) sort last."""
    n = sims.shape[1]
    k = min(k, n)
    if k == 0:
        return np.zeros((len(sims), 0), np.int64), np.zeros((len(sims), 0), sims.dtype)
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(sims), 1))
    top = np.take_along_axis(sims, part, axis=1)
    order = _order(part, top)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


def _order(part: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Row-wise order of (score desc, column asc)."""
    by_column = np.argsort(part, axis=1, kind="stable")
    scores = np.take_along_axis(top, by_column, axis=1)
    return np.take_along_axis(by_column, np.argsort(-scores, axis=1, kind="stable"), axis=1)


def exact_top_k(vectors: np.ndarray, ids: Sequence[str], k: int, *, block: int = 1024,
                margin: int = 64, metric: Metric = IP) -> list[list[tuple[str, float]]]:
    """Every row's exact top-``k`` among the others (self excluded), ranked by ``rank_key`` on
    the metric's scores computed the way the worker computes them (``Metric.pair``)."""
    mat = np.asarray(vectors, np.float32)
    n = len(ids)
    out: list[list[tuple[str, float]]] = []
    pre = min(n, k + margin)
    for start in range(0, n, block):
        sims = metric.matrix(mat[start:start + block], mat)
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        cand, _ = top_k_rows(sims, pre)
        for r in range(len(sims)):
            # Widen with everyone tied (to 1e-5) with the k-th pre-selected score, then rank exactly.
            kth = sims[r, cand[r][min(k, len(cand[r])) - 1]] if len(cand[r]) and k else -np.inf
            pool = set(cand[r].tolist()) | set(np.flatnonzero(sims[r] >= kth - 1e-5).tolist())
            pool.discard(start + r)
            me = mat[start + r]
            scored = sorted(((metric.pair(mat[j], me), ids[j]) for j in pool), key=lambda t: rank_key(t[0], t[1]))[:k]
            out.append([(pid, score) for score, pid in scored])
    return out
