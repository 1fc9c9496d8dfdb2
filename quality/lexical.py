"""Catalog-fitted lexical channels for the quality protocol (issue 25, item 1).

The stream's ``title_lexical`` segment hashes title trigrams into 1,024 signed buckets with no IDF:
every trigram weighs the same, however common it is in the catalog. A channel here is TF-IDF with
sublinear term frequency whose IDF is fitted on the catalog being indexed (the right table of a
benchmark: what a user's worker would hold), over exact n-grams, compared by cosine. Tokens the
catalog never had get the largest IDF a catalog token can have (smooth IDF with document frequency
0), so a rare new part number counts as rare. No labels are read: fitting one is legitimate on
every left-out set.

A spec names the text and the analyzer: ``title:char3`` (character 3-grams within word
boundaries, like the TF-IDF baseline), ``text:word`` (words) or ``title:num`` (only the words that
hold a digit: sizes, capacities, model numbers, the facts the WDC sets' offers differ by), where
``title`` is the product title and ``text`` what the text encoder reads (title, brand, start of the
description).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from simstream.encoders.fusion import text_of
from simstream.encoders.lexicon import WORD_PATTERN, catalog_idf  # the stream's: IDF counted in the catalog only
from simstream.quality.datasets import Table

__all__ = ["SOURCES", "ANALYZERS", "NUMBER_PATTERN", "LexicalSpec", "parse_specs", "channel_cosines", "channels_of",
           "STREAM_LEXICAL_FIELDS", "with_catalog_lexicon"]

SOURCES = ("title", "text")
ANALYZERS = ("char3", "word", "num")
NUMBER_PATTERN = r"(?u)\b\w*\d[\w.]*\b"  # a word holding a digit ("500gb", "i7-8550u" gives "i7", "8550u")


@dataclass(frozen=True)
class LexicalSpec:
    """Which text of a product and which tokens a channel reads; ``name`` is its field name."""

    source: str
    analyzer: str

    @property
    def name(self) -> str:
        return f"lex_{self.source}_{self.analyzer}"

    def texts(self, table: Table) -> list[str]:
        if self.source == "title":
            return [e.title or "" for e in table.events]
        return [text_of(e) for e in table.events]


def parse_specs(text: str) -> list[LexicalSpec]:
    """``"title:char3,text:word"`` -> specs; ValueError naming what is allowed."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        source, _, analyzer = part.partition(":")
        if source not in SOURCES or analyzer not in ANALYZERS:
            raise ValueError(f"lexical channel {part!r}: expected SOURCE:ANALYZER with SOURCE in {SOURCES} "
                             f"and ANALYZER in {ANALYZERS}")
        out.append(LexicalSpec(source, analyzer))
    return out


def _counter(analyzer: str):  # type: ignore[no-untyped-def]
    from sklearn.feature_extraction.text import CountVectorizer

    if analyzer == "char3":
        return CountVectorizer(analyzer="char_wb", ngram_range=(3, 3), lowercase=True)
    if analyzer == "num":
        return CountVectorizer(analyzer="word", token_pattern=NUMBER_PATTERN, lowercase=True)
    return CountVectorizer(analyzer="word", token_pattern=WORD_PATTERN, lowercase=True)


def _weighted(counts, idf: np.ndarray):  # type: ignore[no-untyped-def]
    """Sublinear tf (1 + ln tf) times IDF, rows L2-normalised (empty rows stay zero)."""
    import scipy.sparse as sp

    x = counts.astype(np.float64).tocsr()
    x.data = 1.0 + np.log(x.data)
    x = x @ sp.diags(idf)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x


def channel_cosines(spec: LexicalSpec, queries: Table, catalog: Table) -> np.ndarray:
    """Cosines [len(queries), len(catalog)] of the channel whose IDF is fitted on ``catalog``."""
    q_texts, c_texts = spec.texts(queries), spec.texts(catalog)
    counter = _counter(spec.analyzer)
    try:
        counter.fit(q_texts + c_texts)  # the vocabulary: every token either side has
    except ValueError:  # no token anywhere (empty titles)
        return np.zeros((len(q_texts), len(c_texts)), np.float32)
    q_counts, c_counts = counter.transform(q_texts), counter.transform(c_texts)
    idf = catalog_idf(np.asarray((c_counts > 0).sum(axis=0)).ravel(), len(c_texts))
    a, b = _weighted(q_counts, idf), _weighted(c_counts, idf)
    return np.asarray((a @ b.T).toarray(), np.float32)


def channels_of(specs: Sequence[LexicalSpec], queries: Table, catalog: Table) -> dict[str, np.ndarray]:
    """Every spec's cosine matrix, by channel name."""
    return {s.name: channel_cosines(s, queries, catalog) for s in specs}


#: The stream's lexical segments that a catalog's lexicon weighs (encoders/lexical.py).
STREAM_LEXICAL_FIELDS = ("title_lexical", "text_words")


def with_catalog_lexicon(left_fv: dict[str, np.ndarray], right_fv: dict[str, np.ndarray], queries: Table,
                         catalog: Table) -> str:
    """Replace the stream's lexical segments by what a worker indexing ``catalog`` stores once a
    migration fitted its lexicon: the same encoders (hashed, 1,024 buckets), with document
    frequencies counted over ``catalog`` only. Returns the lexicon's digest."""
    from simstream.encoders.fusion import TEXT_WORDS_DIM
    from simstream.encoders.lexical import TextWordsEncoder, TitleLexicalEncoder
    from simstream.encoders.lexicon import Lexicon, words_text

    lexicon = Lexicon.fit(catalog.events)
    title, words = TitleLexicalEncoder(lexicon=lexicon), TextWordsEncoder(TEXT_WORDS_DIM, lexicon=lexicon)
    for fv, table in ((left_fv, queries), (right_fv, catalog)):
        fv["title_lexical"] = title.encode([e.title for e in table.events])
        fv["text_words"] = words.encode([words_text(e) for e in table.events])
    return lexicon.digest
