"""A catalog's lexicon: in how many of its products each token occurs, frozen into the model.

The lexical segments (title trigrams, words of the text) weigh a token by its inverse document
frequency in the catalog being indexed: under the leave-one-dataset-out protocol only IDF counted
in the indexed catalog helps, IDF from other catalogs does nothing (docs/quality.md, issue 25).
For the lists to stay exact the table is part of the model: fitted once over the catalog (by
``simstream migrate``, or ``simstream lexicon fit``), frozen, named by its digest in the model tag,
and refitted only by a migration. A token the table lacks (df 0) weighs like the rarest possible
one, ``ln(1 + n) + 1``: a new part number counts as rare, as it is.

Tokens are keyed by their 32-bit MurmurHash3 (the hash that also picks their bucket,
``encoders/hashing.py``): an exact vocabulary up to 32-bit collisions, and one hash per token.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import orjson

from simstream.encoders.hashing import char_wb_ngrams, token_keys
from simstream.encoders.text import clean_text, text_of
from simstream.records import ProductEvent

__all__ = ["LEXICON_FORMAT", "WORD_PATTERN", "ANALYZERS", "title_trigrams", "text_words", "words_text", "catalog_idf",
           "Lexicon"]

LEXICON_FORMAT = "lexicon-v1"
WORD_PATTERN = r"(?u)\b\w+\b"  # single characters count: "i7", "4 gb" -> "4"
_WORD = re.compile(WORD_PATTERN)
_FIT_CHUNK = 4096  # products counted at a time while fitting (bounds the memory of the fit)


def title_trigrams(title: str | None) -> list[str]:
    """Character 3-grams within word boundaries of the cleaned, lower-cased title."""
    return char_wb_ngrams(clean_text(title).lower(), 3, 3)


def words_text(p: ProductEvent) -> str:
    """What the word segment reads: title, brand and the start of the description (as the text
    encoder reads them, brand included whatever the text model does)."""
    return text_of(p, with_brand=True)


def text_words(text: str | None) -> list[str]:
    """Words (unicode ``\\w`` runs) of the cleaned, lower-cased text."""
    return _WORD.findall(clean_text(text).lower())


#: analyzer name -> (what it reads of a product, its tokens)
ANALYZERS: dict[str, tuple[Callable[[ProductEvent], str | None], Callable[[str | None], list[str]]]] = {
    "title_char3": (lambda p: p.title, title_trigrams),
    "text_word": (words_text, text_words),
}


def catalog_idf(document_frequency: np.ndarray, catalog_size: int) -> np.ndarray:
    """Smooth IDF, ``ln((1 + n) / (1 + df)) + 1`` (df 0: the rarest possible token)."""
    return np.log((1.0 + catalog_size) / (1.0 + np.asarray(document_frequency, np.float64))) + 1.0


def _merge(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and their summed counts."""
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.uint32)
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts]).astype(np.int64)
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique.astype(np.int32), np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.uint32)


@dataclass(frozen=True)
class Lexicon:
    """Document frequencies per analyzer over a catalog of ``catalog_size`` products.

    ``tables[analyzer] = (keys, df)``: sorted token keys (int32) and how many products hold each.

    Example:
        >>> lex = Lexicon.fit(catalog_events)
        >>> lex.idf("text_word", token_keys(["sony", "kdl40v3000"]))   # common word low, part number high
    """

    catalog_size: int
    tables: Mapping[str, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def fit(cls, events: Iterable[ProductEvent]) -> "Lexicon":
        """Count every analyzer's tokens over ``events`` (one per product; deletes skipped)."""
        parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {a: [] for a in ANALYZERS}
        chunk: dict[str, list[np.ndarray]] = {a: [] for a in ANALYZERS}
        n = 0

        def flush() -> None:
            for a, docs in chunk.items():
                if docs:
                    keys, counts = np.unique(np.concatenate(docs), return_counts=True)
                    parts[a].append((keys, counts))
                    docs.clear()

        for event in events:
            if event.is_delete:
                continue
            n += 1
            for a, (read, tokenize) in ANALYZERS.items():
                chunk[a].append(np.unique(token_keys(tokenize(read(event)))))
            if n % _FIT_CHUNK == 0:
                flush()
                parts = {a: [_merge(p)] for a, p in parts.items()}
        flush()
        return cls(n, {a: _merge(p) for a, p in parts.items()})

    def document_frequency(self, analyzer: str, keys: np.ndarray) -> np.ndarray:
        """How many catalog products hold each token (0 for tokens the catalog lacks)."""
        table, df = self.tables[analyzer]
        at = np.searchsorted(table, keys)
        found = at < len(table)
        found[found] = table[at[found]] == keys[found]
        out = np.zeros(len(keys), np.float64)
        out[found] = df[at[found]]
        return out

    def idf(self, analyzer: str, keys: np.ndarray) -> np.ndarray:
        return catalog_idf(self.document_frequency(analyzer, keys), self.catalog_size)

    # --- a frozen file, named by its content --------------------------------------------------------
    @property
    def digest(self) -> str:
        """16 hex digits of the content (not of the file's bytes): what the model tag names."""
        h = hashlib.blake2b(digest_size=8)
        h.update(orjson.dumps({"format": LEXICON_FORMAT, "catalog_size": self.catalog_size,
                               "analyzers": sorted(self.tables)}))
        for a in sorted(self.tables):
            keys, df = self.tables[a]
            h.update(np.ascontiguousarray(keys, "<i4").tobytes())
            h.update(np.ascontiguousarray(df, "<u4").tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(orjson.dumps(
            {"format": LEXICON_FORMAT, "catalog_size": self.catalog_size, "digest": self.digest}), np.uint8)}
        for a, (keys, df) in self.tables.items():
            arrays[f"{a}.keys"] = np.asarray(keys, "<i4")
            arrays[f"{a}.df"] = np.asarray(df, "<u4")
        out = io.BytesIO()
        np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Lexicon":
        """Raises ValueError when the content does not match the digest it was saved with."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = orjson.loads(z["meta"].tobytes())
            if meta.get("format") != LEXICON_FORMAT:
                raise ValueError(f"not a {LEXICON_FORMAT} file (format {meta.get('format')!r})")
            tables = {a: (z[f"{a}.keys"].astype(np.int32), z[f"{a}.df"].astype(np.uint32)) for a in ANALYZERS
                      if f"{a}.keys" in z.files}
        lexicon = cls(int(meta["catalog_size"]), tables)
        if lexicon.digest != meta.get("digest"):
            raise ValueError(f"lexicon content {lexicon.digest} does not match its recorded digest {meta.get('digest')}")
        return lexicon

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "Lexicon":
        return cls.from_bytes(Path(path).read_bytes())
