"""Signed feature hashing of character n-grams and tokens, exactly as scikit-learn's
``HashingVectorizer`` computes it, without scikit-learn (and the scipy it loads) in the worker.

The hashed segments (title n-grams, model numbers, brand, category) are stored in Milvus and in
the side index, so they must stay bit-identical to what earlier versions wrote with
``HashingVectorizer``: the same n-gram tokenisers (``char`` and ``char_wb``, whitespace runs
folded to one space), the same hash (32-bit MurmurHash3 of the UTF-8 bytes, seed 0, signed: the
``mmh3`` package), the same slot (``|h| mod dim``, with scikit-learn's rule for ``h = -2**31``) and
sign (``alternate_sign``: negative hashes count -1). tests/encoders/test_hashing.py compares every
encoder with scikit-learn itself.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import mmh3
import numpy as np

__all__ = ["char_ngrams", "char_wb_ngrams", "token_keys", "slots_and_signs", "hashed_counts", "l2_rows"]

_WHITE_SPACES = re.compile(r"\s\s+")
_INT32_MIN = -(2**31)


def char_ngrams(text: str, low: int, high: int) -> list[str]:
    """Every character n-gram of ``text``, n from ``low`` to ``high`` (``analyzer="char"``)."""
    text = _WHITE_SPACES.sub(" ", text)
    grams = list(text) if low == 1 else []  # unigrams without slicing, as scikit-learn does
    for n in range(low + 1 if low == 1 else low, min(high + 1, len(text) + 1)):
        grams += [text[i:i + n] for i in range(len(text) - n + 1)]
    return grams


def char_wb_ngrams(text: str, low: int, high: int) -> list[str]:
    """Character n-grams inside word boundaries, each word padded with a space (``analyzer="char_wb"``);
    a word shorter than n counts once, as itself padded."""
    grams: list[str] = []
    for word in _WHITE_SPACES.sub(" ", text).split():
        w = f" {word} "
        for n in range(low, high + 1):
            grams += [w[i:i + n] for i in range(max(1, len(w) - n + 1))]
            if len(w) <= n:
                break
    return grams


def token_keys(tokens: Iterable[str]) -> np.ndarray:
    """Each token's signed 32-bit MurmurHash3 (seed 0, UTF-8), as int64."""
    return np.fromiter((mmh3.hash(t.encode("utf-8"), 0, signed=True) for t in tokens), np.int64)


def slots_and_signs(keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Each hash's slot (``|h| mod dim``, scikit-learn's rule for ``-2**31``) and sign (-1 for a
    negative hash)."""
    keys = np.asarray(keys, np.int64)
    index = np.where(keys == _INT32_MIN, (2**31 - 1 - (dim - 1)) % dim, np.abs(keys) % dim)
    return index, np.where(keys >= 0, 1.0, -1.0)


def hashed_counts(docs: Iterable[Sequence[str]], dim: int, *, alternate_sign: bool) -> np.ndarray:
    """Rows of summed feature counts (float64), one per document, ``dim`` hashed slots each."""
    rows = [list(features) for features in docs]
    out = np.zeros((len(rows), dim), dtype=np.float64)
    for r, features in enumerate(rows):
        slots, signs = slots_and_signs(token_keys(features), dim)
        np.add.at(out[r], slots, signs if alternate_sign else 1.0)  # sums of +-1: exact in any order
    return out


def l2_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), in the matrix's own dtype."""
    norms = np.sqrt((matrix * matrix).sum(axis=1, keepdims=True))
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
