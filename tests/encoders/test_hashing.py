"""The hashed segments are bit-identical to scikit-learn's HashingVectorizer, which wrote every
stored vector before simstream hashed without it: title n-grams, model numbers (given and from the
title), brand and category, on the sample catalog, random unicode and real benchmark titles."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from simstream.encoders import hashing
from simstream.encoders.lexical import MpnEncoder, TitleLexicalEncoder, _sublinear_l2
from simstream.encoders.structured import BrandEncoder, CategoryEncoder, category_prefixes, normalize_brand
from simstream.encoders.text import clean_text

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def _sklearn_sublinear_l2(matrix) -> np.ndarray:  # noqa: ANN001 - the former implementation, verbatim
    matrix = matrix.tocsr().astype(np.float32)
    matrix.eliminate_zeros()
    matrix.data = np.sign(matrix.data) * (1.0 + np.log(np.abs(matrix.data)))
    dense = matrix.toarray()
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return np.divide(dense, norms, out=np.zeros_like(dense), where=norms > 0)


def _texts() -> list[str]:
    rng = random.Random(7)
    alphabet = "abcXYZ0129 -_./\t\n  éüß漢字🙂"
    texts = ["", " ", "a", "ab", "abc", "  spaced   out\t\twords ", "x\ny", "KDL-40V3000", "Ü" * 3]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    for line in (REPO / "harness" / "sample" / "catalog.jsonl").read_bytes().splitlines():
        p = orjson.loads(line)
        texts += [p.get("title") or "", p.get("brand") or "", p.get("category") or "", p.get("mpn") or ""]
    for name in ("abt_buy/tableA.csv", "amazon_google/tableB.csv", "wdc_computers/tableA.csv"):
        path = SHARED / name
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))[:1500]
            texts += [v for row in rows for v in row.values() if isinstance(v, str)]
    return texts


TEXTS = _texts()


def test_the_corpus_is_big_enough() -> None:
    assert len(TEXTS) > 2000


def test_title_ngrams() -> None:
    old = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), n_features=1024, alternate_sign=True,
                            norm=None, lowercase=True)
    want = _sklearn_sublinear_l2(old.transform([clean_text(t) for t in TEXTS]))
    assert np.array_equal(TitleLexicalEncoder(1024).encode(TEXTS), want)


@pytest.mark.parametrize("from_title", [False, True])
def test_model_numbers(from_title: bool) -> None:
    enc = MpnEncoder(256, from_title=from_title)
    analyzer, ngrams = ("char_wb", (3, 5)) if from_title else ("char", (2, 4))
    old = HashingVectorizer(analyzer=analyzer, ngram_range=ngrams, n_features=256, alternate_sign=True, norm=None,
                            lowercase=False)
    mpns = TEXTS[::2]
    titles = TEXTS[1::2][:len(mpns)]
    mpns = mpns[:len(titles)]
    want = _sklearn_sublinear_l2(old.transform([enc.text_of(m, t) for m, t in zip(mpns, titles)]))
    assert np.array_equal(enc.encode(mpns, titles), want)
    # the raw n-gram tokenisers too, on text with whitespace runs (the encoders never pass those)
    for low, high in [(1, 3), (2, 4), (3, 5)]:
        for kind, ours in (("char", hashing.char_ngrams), ("char_wb", hashing.char_wb_ngrams)):
            ref = HashingVectorizer(analyzer=kind, ngram_range=(low, high), lowercase=False).build_analyzer()
            assert all(ours(t, low, high) == ref(t) for t in TEXTS[:3000]), (kind, low, high)


def test_brand_and_category() -> None:
    brand = HashingVectorizer(analyzer=lambda s: [s] if s else [], n_features=128, alternate_sign=False, norm="l2")
    want = brand.transform([normalize_brand(b) for b in TEXTS]).toarray().astype(np.float32)
    assert np.array_equal(BrandEncoder(128).encode(TEXTS), want)
    category = HashingVectorizer(analyzer=category_prefixes, n_features=128, alternate_sign=False, norm="l2")
    paths = [" > ".join(TEXTS[i:i + 3]) for i in range(0, len(TEXTS), 3)] + ["A > B > C", "a/b|c", "A > A > A"]
    want = category.transform([p or "" for p in paths]).toarray().astype(np.float32)
    assert np.array_equal(CategoryEncoder(128).encode(paths), want)


def test_the_int32_minimum_hash_takes_scikit_learns_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing.mmh3, "hash", lambda *a, **k: -(2**31))
    assert hashing.hashed_counts([["x"]], 100, alternate_sign=True)[0].nonzero()[0].tolist() == [(2**31 - 1 - 99) % 100]
    assert _sublinear_l2(np.zeros((1, 4))).tolist() == [[0.0] * 4]
