"""Structured fields: price on a log scale, brand, and the category path."""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from simstream.encoders.hashing import hashed_counts, l2_rows

__all__ = ["PriceEncoder", "normalize_brand", "BrandEncoder", "category_prefixes", "CategoryEncoder"]

_CORPORATE = re.compile(r"\b(inc|incorporated|ltd|llc|co|corp|corporation|gmbh|ag|sa|plc|company)\b")
_NOT_WORD = re.compile(r"[^0-9a-z]+")


class PriceEncoder:
    """Gaussian bumps over log10(price): cosine(a, b) falls smoothly with the price *ratio*.

    Two prices a factor r apart score about exp(-(log10 r)^2 / (4 sigma^2)); 10 % apart ~0.99,
    2x apart ~0.63, 10x apart ~0. Missing or non-positive price -> zero vector (contributes 0).
    A price so far outside the centres that every bump underflows to 0 (from ~1e12, or below
    ~1e-7) gets the limit of the normalised bumps: the unit vector of the nearest edge centre
    (it was 0/0 = NaN, which made every score with that product NaN).
    """

    name = "price_logrbf"

    def __init__(self, dim: int = 32, low: float = -1.0, high: float = 5.5, sigma: float = 0.2) -> None:
        self.dim = dim
        self.centers = np.linspace(low, high, dim, dtype=np.float64)
        self.sigma = sigma

    def encode(self, prices: Sequence[float | None]) -> np.ndarray:
        out = np.zeros((len(prices), self.dim), dtype=np.float32)
        for i, price in enumerate(prices):
            if price is None or not math.isfinite(price) or price <= 0:
                continue
            bumps = np.exp(-((math.log10(price) - self.centers) ** 2) / (2 * self.sigma**2))
            norm = np.linalg.norm(bumps)
            if norm > 0:
                out[i] = bumps / norm
            else:
                out[i, 0 if math.log10(price) < self.centers[0] else -1] = 1.0
        return out


def normalize_brand(brand: str | None) -> str:
    """'Sony Corp.' and 'SONY' are the same brand."""
    text = _CORPORATE.sub(" ", (brand or "").lower())
    return _NOT_WORD.sub("", text)


class BrandEncoder:
    """The normalised brand hashed to one slot: same brand -> 1, different -> 0 (rare collisions)."""

    name = "brand_hash"

    def __init__(self, dim: int = 128) -> None:
        self.dim = dim

    def encode(self, brands: Sequence[str | None]) -> np.ndarray:
        tokens = ([b] if b else [] for b in map(normalize_brand, brands))
        return l2_rows(hashed_counts(tokens, self.dim, alternate_sign=False)).astype(np.float32)


def category_prefixes(path: str | None) -> list[str]:
    """'A > B > C' -> ['a', 'a>b', 'a>b>c']: siblings share every token of their parent."""
    parts = [p.strip().lower() for p in re.split(r"[>/|]", path or "") if p.strip()]
    return [">".join(parts[: i + 1]) for i in range(len(parts))]


class CategoryEncoder:
    """Hierarchical category: one hashed token per path prefix, so siblings at depth 3 score 2/3,
    a parent and its child 2/sqrt(6), unrelated top-level categories 0."""

    name = "category_prefix_hash"

    def __init__(self, dim: int = 128) -> None:
        self.dim = dim

    def encode(self, categories: Sequence[str | None]) -> np.ndarray:
        prefixes = (category_prefixes(c or "") for c in categories)
        return l2_rows(hashed_counts(prefixes, self.dim, alternate_sign=False)).astype(np.float32)
