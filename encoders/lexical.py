"""Lexical encoders: hashed character n-grams for titles and model numbers (mpn).

Model numbers such as "elplp12" decide many product matches, and character-trigram TF-IDF beats
many neural encoders on product titles; hashing keeps it stateless, so streaming needs no vocabulary.
Signed hashing (``alternate_sign``) keeps inner products unbiased under collisions.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from encoders.text import clean_text

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def _sublinear_l2(matrix) -> np.ndarray:  # type: ignore[no-untyped-def]
    """1 + log(tf) like TfidfVectorizer(sublinear_tf=True), then L2 rows; empty rows stay zero."""
    matrix = matrix.tocsr().astype(np.float32)
    matrix.eliminate_zeros()  # signed hashing can cancel a count to exactly 0
    matrix.data = np.sign(matrix.data) * (1.0 + np.log(np.abs(matrix.data)))
    dense = matrix.toarray()
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return np.divide(dense, norms, out=np.zeros_like(dense), where=norms > 0)


class TitleLexicalEncoder:
    """Character 3-grams within word boundaries (``char_wb``) of the cleaned, lower-cased title."""

    name = "title_char3"

    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim
        self._vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), n_features=dim,
                                             alternate_sign=True, norm=None, lowercase=True)

    def encode(self, titles: Sequence[str | None]) -> np.ndarray:
        return _sublinear_l2(self._vectorizer.transform([clean_text(t) for t in titles]))


def normalize_mpn(mpn: str | None) -> str:
    """'ELP-LP12' and 'elplp12' are the same part: lower case, alphanumerics only."""
    return _NOT_ALNUM.sub("", (mpn or "").lower())


class MpnEncoder:
    """Character 2-4-grams of the normalised part number, so near-identical numbers score high."""

    name = "mpn_char2_4"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self._vectorizer = HashingVectorizer(analyzer="char", ngram_range=(2, 4), n_features=dim,
                                             alternate_sign=True, norm=None, lowercase=False)

    def encode(self, mpns: Sequence[str | None]) -> np.ndarray:
        texts = [f" {m} " if (m := normalize_mpn(x)) else "" for x in mpns]
        return _sublinear_l2(self._vectorizer.transform(texts))
