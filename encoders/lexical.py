"""Lexical encoders: hashed character n-grams of titles, words of the text, model numbers (mpn).

Model numbers such as "elplp12" decide many product matches, and character-trigram TF-IDF beats
many neural encoders on product titles; hashing keeps the vectors fixed-size, so streaming needs no
vocabulary. Signed hashing (``alternate_sign``) keeps inner products unbiased under collisions.

With a catalog's ``Lexicon`` (encoders/lexicon.py) the title trigrams and the words of the text
are weighed TF-IDF-like: each distinct token's ``(1 + ln tf) * idf`` goes into its signed bucket,
then the row is L2-normalised. Without one, the title segment is what it always was (bucket counts,
then sublinear tf), so indexes built before the lexicon keep their vectors bit for bit.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from simstream.encoders.hashing import char_ngrams, char_wb_ngrams, hashed_counts, slots_and_signs, token_keys
from simstream.encoders.lexicon import Lexicon, text_words, title_trigrams
from simstream.encoders.text import clean_text

__all__ = ["TitleLexicalEncoder", "TextWordsEncoder", "idf_hashed", "normalize_mpn", "model_numbers", "MpnEncoder"]

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def _sublinear_l2(counts: np.ndarray) -> np.ndarray:
    """1 + log(tf) like TfidfVectorizer(sublinear_tf=True), then L2 rows; empty rows stay zero.
    In float32, as the stored vectors have always been computed."""
    dense = counts.astype(np.float32)
    nonzero = dense != 0  # signed hashing can cancel a count to exactly 0
    dense[nonzero] = np.sign(dense[nonzero]) * (1.0 + np.log(np.abs(dense[nonzero])))
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return np.divide(dense, norms, out=np.zeros_like(dense), where=norms > 0)


def idf_hashed(docs: Iterable[Sequence[str]], dim: int, lexicon: Lexicon | None, analyzer: str) -> np.ndarray:
    """Rows of ``(1 + ln tf) * idf`` per distinct token (idf 1 without a lexicon), summed into signed
    buckets in a fixed order (float64), L2-normalised, float32."""
    rows = [Counter(tokens) for tokens in docs]
    out = np.zeros((len(rows), dim), np.float64)
    for r, counts in enumerate(rows):
        if not counts:
            continue
        keys = token_keys(counts)
        weights = 1.0 + np.log(np.fromiter(counts.values(), np.float64, len(counts)))
        if lexicon is not None:
            weights *= lexicon.idf(analyzer, keys)
        slots, signs = slots_and_signs(keys, dim)
        np.add.at(out[r], slots, signs * weights)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0).astype(np.float32)


class TitleLexicalEncoder:
    """Character 3-grams within word boundaries (``char_wb``) of the cleaned, lower-cased title,
    IDF-weighted by the catalog's lexicon when there is one."""

    name = "title_char3"
    analyzer = "title_char3"

    def __init__(self, dim: int = 1024, lexicon: Lexicon | None = None) -> None:
        self.dim = dim
        self.lexicon = lexicon

    def encode(self, titles: Sequence[str | None]) -> np.ndarray:
        grams = (title_trigrams(t) for t in titles)
        if self.lexicon is None:
            return _sublinear_l2(hashed_counts(grams, self.dim, alternate_sign=True))
        return idf_hashed(grams, self.dim, self.lexicon, self.analyzer)


class TextWordsEncoder:
    """Words of the text (title, brand, start of the description: ``lexicon.words_text``),
    IDF-weighted by the catalog's lexicon when there is one (else each word weighs 1 + ln tf)."""

    name = "text_word"
    analyzer = "text_word"

    def __init__(self, dim: int = 1024, lexicon: Lexicon | None = None) -> None:
        self.dim = dim
        self.lexicon = lexicon

    def encode(self, texts: Sequence[str | None]) -> np.ndarray:
        return idf_hashed((text_words(t) for t in texts), self.dim, self.lexicon, self.analyzer)


def normalize_mpn(mpn: str | None) -> str:
    """'ELP-LP12' and 'elplp12' are the same part: lower case, alphanumerics only."""
    return _NOT_ALNUM.sub("", (mpn or "").lower())


_MODEL_TOKEN_DIGIT = re.compile(r"[0-9]")
_MODEL_TOKEN_ALPHA = re.compile(r"[a-z]")


def model_numbers(text: str | None, *, min_len: int = 4, min_digits_only: int = 5) -> list[str]:
    """Model-number-like tokens of a title: 'Sony Bravia KDL-40V3000 40" LCD' -> ['kdl40v3000'].

    A whitespace token, normalised like an mpn, counts when it has at least ``min_len`` characters
    mixing letters and digits, or is all digits and at least ``min_digits_only`` long. Order kept,
    duplicates dropped. Product titles carry their part numbers this way far more often than
    catalogs fill an mpn field.
    """
    out: list[str] = []
    for token in clean_text(text).lower().split():
        norm = _NOT_ALNUM.sub("", token)
        if not _MODEL_TOKEN_DIGIT.search(norm):
            continue
        if (len(norm) >= min_len and _MODEL_TOKEN_ALPHA.search(norm)) or len(norm) >= min_digits_only:
            out.append(norm)
    return list(dict.fromkeys(out))


class MpnEncoder:
    """Character n-grams of the normalised part number, so near-identical numbers score high.

    ``from_title=False`` (fusion-v1): the ``mpn`` field alone, one token, character 2-4-grams.
    ``from_title=True``: the ``mpn`` field when present, else the model-number-like tokens of the
    title (:func:`model_numbers`), each token's character 3-5-grams within its boundaries
    (``char_wb``), so several part numbers in one title each match on their own.
    """

    def __init__(self, dim: int = 256, *, from_title: bool = False) -> None:
        self.dim = dim
        self.from_title = from_title
        self.name = "mpn_title_char3_5" if from_title else "mpn_char2_4"

    def text_of(self, mpn: str | None, title: str | None = None) -> str:
        """What is hashed for one product ('' when it has no part number)."""
        if m := normalize_mpn(mpn):
            return f" {m} "
        if self.from_title and (tokens := model_numbers(title)):
            return " ".join(tokens)
        return ""

    def encode(self, mpns: Sequence[str | None], titles: Sequence[str | None] | None = None) -> np.ndarray:
        titles = titles if titles is not None else [None] * len(mpns)
        texts = [self.text_of(m, t) for m, t in zip(mpns, titles)]
        grams = (char_wb_ngrams(x, 3, 5) if self.from_title else char_ngrams(x, 2, 4) for x in texts)
        return _sublinear_l2(hashed_counts(grams, self.dim, alternate_sign=True))
