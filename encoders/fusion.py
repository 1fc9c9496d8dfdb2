"""Fusion: per-field vectors -> one vector whose inner product is the weighted sum of cosines.

Each field vector is L2-normalised, scaled by sqrt(weight) and concatenated, so for two products
``fused(a) . fused(b) = sum_f w_f * cos_f(a, b)`` exactly, and every neighbour's score splits into
per-field contributions. Weights are normalised to sum to 1, so scores lie in [-1, 1].

Missing fields (no image, no price, no brand, ...) encode as a zero segment: that field then
contributes 0 to every score of that product, never a made-up similarity. Scores therefore stay
comparable across products; a product with fewer fields simply has a lower ceiling.

Change-aware: a field whose content hash is unchanged since the stored version is not re-encoded;
its segment is copied out of the stored fused vector (segment / sqrt(w) recovers the field vector).

The lexical segments read the catalog's lexicon (``Settings.lexicon``, encoders/lexicon.py) when
the generation has one: its digest is part of the model tag, so vectors of two lexicons never mix.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import orjson
import torch

from simstream.encoders.device import configure_threads
from simstream.encoders.image import ImageEncoder
from simstream.encoders.image_source import ImageSource
from simstream.encoders.lexical import MpnEncoder, TextWordsEncoder, TitleLexicalEncoder
from simstream.encoders.lexicon import Lexicon, words_text
from simstream.encoders.structured import BrandEncoder, CategoryEncoder, PriceEncoder
from simstream.encoders.multilingual import make_text_encoder
from simstream.encoders.text import text_of
from simstream.records import FUSED_FIELDS, ProductEvent
from simstream.errors import EncodeError
from simstream.match import MatchModel
from simstream.metric import Metric
from simstream.settings import Settings
from simstream.vector_codec import Codec, Segment, canonical

__all__ = [
    "FUSION_VERSION", "FIELDS", "OPTIONAL_FIELDS", "COMPACT_CODECS", "TEXT_WORDS_DIM", "text_of", "field_contents",
    "content_hash", "load_weights", "load_fusion_options", "load_lexicon", "load_metric", "load_match_model", "wants_catalog_lexicon", "EncodedBatch", "ProductEncoder", "layout_of",
]

FUSION_VERSION = "fusion-v1"
FIELDS = FUSED_FIELDS
#: Fields added after the first layout: no room in the vector, no hash, no say in the model tag
#: unless weighted, so every index built before them keeps its layout and its model tag.
OPTIONAL_FIELDS = ("text_words",)
TEXT_WORDS_DIM = 1024  # signed buckets of the words segment (as many as the title trigrams')
# How each field's segment is stored (simstream.vector_codec): learned embeddings and price bumps
# on float16, hashed counts, one-hot slots and image features on int8 with a power-of-two scale.
COMPACT_CODECS: dict[str, Codec] = {"text": "f16", "price": "f16", "title_lexical": "i8", "mpn": "i8",
                                    "brand": "i8", "category": "i8", "image": "i8", "text_words": "i8"}


def field_contents(p: ProductEvent, brand_in_text: bool = True) -> dict[str, object]:
    """The raw content of every field, for hashing (change detection)."""
    return {
        "text": text_of(p, brand_in_text), "title_lexical": p.title, "mpn": p.mpn or ["title", p.title], "brand": p.brand,
        "category": p.category, "price": p.price, "image": p.image_b64 or p.image_url, "text_words": words_text(p),
    }


def content_hash(value: object) -> str:
    return hashlib.blake2b(orjson.dumps(value), digest_size=8).hexdigest()


def load_weights(settings: Settings) -> dict[str, float]:
    """Weights from the fusion config in force (default: the shipped v3; ``encoders/fusion_config.py``),
    else, with ``SIMSTREAM_FUSION_CONFIG=none``, from settings; sum to 1."""
    from simstream.encoders.fusion_config import read_fusion_config

    weights = dict(settings.weights)
    weights.update(read_fusion_config(settings).get("weights") or {})
    if not settings.image_enabled:
        weights["image"] = 0.0
    total = sum(weights.get(f, 0.0) for f in FIELDS)
    return {f: weights.get(f, 0.0) / total for f in FIELDS}


def load_fusion_options(settings: Settings) -> dict[str, object]:
    """Method switches saved beside learned weights: ``{"options": {"mpn_from_title": true,
    "text_model": "minilm-products-v2"}}`` (the text model is used unless SIMSTREAM_TEXT_MODEL is set)."""
    from simstream.encoders.fusion_config import read_fusion_config

    return dict(read_fusion_config(settings).get("options") or {})


def load_lexicon(settings: Settings) -> Lexicon | None:
    """The lexicon ``Settings.lexicon`` names (None: uniform IDF, for "" and "none").

    Raises:
        ValueError: for ``catalog`` (only ``simstream migrate`` fits one, and passes it in) or a
            path that holds no lexicon.
    """
    value = settings.lexicon.strip()
    if value in ("", "none"):
        return None
    if value == "catalog":
        raise ValueError("SIMSTREAM_LEXICON=catalog: a lexicon is fitted over the catalog by `simstream migrate` into the "
                         "new generation (or by `simstream lexicon fit`, then SIMSTREAM_LEXICON=<its file>)")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"SIMSTREAM_LEXICON={value!r}: no such file")
    return _load_lexicon(path, path.stat().st_mtime_ns)


def load_metric(settings: Settings) -> Metric:
    """The similarity rule in force: ``SIMSTREAM_METRIC``, else the fusion config's option
    ``metric``, else inner product.

    Raises:
        ValueError: a config option naming no metric.
    """
    return Metric(settings.metric or str(load_fusion_options(settings).get("metric") or "ip"))  # type: ignore[arg-type]


def load_match_model(settings: Settings) -> MatchModel | None:
    """The match decision of the fusion config in force (its ``"match"`` block), None without one,
    and None when ``SIMSTREAM_TEXT_MODEL`` overrides the text model the config was fitted with: the
    coefficients read that model's cosines, another model's mean something else; None under the
    ``l2`` metric too: an entry's contributions are then its fields' share of a distance, from which
    the cosines it was fitted on cannot be read back (a field one side lacks looks like a cosine of
    one half).

    Raises:
        ValueError: a block that is not a valid match model, or one over a field the vectors lack.
    """
    from simstream.encoders.fusion_config import read_fusion_config

    config = read_fusion_config(settings)
    block = config.get("match")
    if not block:
        return None
    if settings.text_model and settings.text_model != (config.get("options") or {}).get("text_model"):
        return None
    if load_metric(settings).has_offsets:
        return None
    model = MatchModel.from_config(block)
    unknown = set(model.fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"the fusion config's match decision reads unknown fields {sorted(unknown)}")
    return model


def wants_catalog_lexicon(settings: Settings) -> bool:
    """Whether a new generation of ``settings`` gets a lexicon fitted over its catalog:
    ``SIMSTREAM_LEXICON=catalog``, or none named and a fusion config fitted for one (the option
    ``"lexicon": "catalog"``, as v4); ``none`` never."""
    named = settings.lexicon.strip()
    return named == "catalog" or (not named and load_fusion_options(settings).get("lexicon") == "catalog")


@lru_cache(maxsize=4)
def _load_lexicon(path: Path, mtime_ns: int) -> Lexicon:
    return Lexicon.load(path)


def layout_of(specs: Mapping[str, Mapping[str, object]]) -> dict[str, slice]:
    """Each field's slice of the fused vector, from ``ProductEncoder.field_specs`` (fields in
    order; a field the specs lack takes no room)."""
    layout, start = {}, 0
    for name in FIELDS:
        dim = int(specs[name]["dim"]) if name in specs else 0  # type: ignore[call-overload]
        layout[name] = slice(start, start + dim)
        start += dim
    return layout


@dataclass
class EncodedBatch:
    """Result of encoding a batch: rows for the successes, errors for the rest."""

    products: list[ProductEvent] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    hashes: list[dict[str, str]] = field(default_factory=list)
    failures: list[tuple[ProductEvent, EncodeError]] = field(default_factory=list)
    encoded_fields: dict[str, int] = field(default_factory=dict)  # field -> items actually encoded
    seconds: dict[str, float] = field(default_factory=dict)


class ProductEncoder:
    """All field encoders plus fusion behind one ``encode(products)`` call.

    Example:
        >>> enc = ProductEncoder(Settings())
        >>> enc.encode([event]).vectors.shape
        (1, enc.dim)
    """

    def __init__(self, settings: Settings, *, lexicon: Lexicon | None = None) -> None:
        """``lexicon``: the catalog's (fitted by the caller), else the one ``settings.lexicon`` names."""
        configure_threads(settings.torch_threads)
        self.settings = settings
        self.lexicon = lexicon if lexicon is not None else load_lexicon(settings)
        self.weights = load_weights(settings)
        self.options = load_fusion_options(settings)
        # what a score is (simstream.metric): part of the model, in its tag
        self.metric = load_metric(settings)
        # each list entry's match probability (simstream.match): part of the model, in its tag
        self.match = load_match_model(settings)
        # SIMSTREAM_TEXT_MODEL wins; else the text model the fusion config's weights were fitted with.
        text_model = settings.text_model or (str(self.options["text_model"]) if self.options.get("text_model") else None)
        self.text = make_text_encoder(text_model, device=settings.device,
                                      max_tokens=settings.text_max_tokens, threads=settings.torch_threads,
                                      backend=settings.encoder_backend, cache_dir=settings.encoder_cache_dir)
        self.brand_in_text = bool(self.text.reads_brand)
        self.image = (ImageEncoder(device=settings.device, max_pixels=settings.image_max_pixels,
                                   backend=settings.encoder_backend, cache_dir=settings.encoder_cache_dir,
                                   threads=settings.torch_threads)
                      if self.weights["image"] > 0 else None)
        self.images = ImageSource(settings.image_root, timeout_s=settings.image_fetch_timeout_s,
                                  max_bytes=settings.image_max_bytes,
                                  allow_private_networks=settings.image_allow_private_networks)
        self.title_lexical = TitleLexicalEncoder(lexicon=self.lexicon)
        self.text_words = TextWordsEncoder(TEXT_WORDS_DIM, lexicon=self.lexicon)
        # the fields this encoder's vectors hold: an optional field only when weighted
        self.fields = tuple(f for f in FIELDS if f not in OPTIONAL_FIELDS or self.weights[f] > 0)
        self.mpn = MpnEncoder(from_title=bool(self.options.get("mpn_from_title", False)))
        self.brand = BrandEncoder()
        self.category = CategoryEncoder()
        self.price = PriceEncoder()
        dims = {
            "text": self.text.dim, "title_lexical": self.title_lexical.dim, "mpn": self.mpn.dim,
            "image": self.image.dim if self.image else 1280, "brand": self.brand.dim,
            "category": self.category.dim, "price": self.price.dim,
            "text_words": self.text_words.dim if "text_words" in self.fields else 0,
        }
        self.layout: dict[str, slice] = {}
        start = 0
        for name in FIELDS:
            self.layout[name] = slice(start, start + dims[name])
            start += dims[name]
        self.dim = start
        self.scale = {f: math.sqrt(w) for f, w in self.weights.items()}
        # Only fields with weight are stored: the others are zero in every vector.
        self.codecs: dict[str, Codec] = {f: COMPACT_CODECS[f] if settings.vector_codec == "compact" else "f32"
                                         for f in FIELDS}
        self.segments = [Segment(f, self.layout[f].start, self.layout[f].stop, self.codecs[f])
                         for f in FIELDS if self.weights[f] > 0]
        weights_tag = content_hash([round(self.weights[f], 6) for f in self.fields])[:8]
        method = (FUSION_VERSION + ("-mpnt" if self.mpn.from_title else "")
                  + ("-q" if settings.vector_codec == "compact" else "")
                  + (f"-idf{self.lexicon.digest}" if self.lexicon is not None else "")
                  + (f"-m{self.match.digest}" if self.match is not None else "")
                  + self.metric.tag)
        self.model = f"{self.text.name}+{ImageEncoder.name}+{method}:{weights_tag}"
        self._fetch_pool = ThreadPoolExecutor(settings.image_fetch_threads, thread_name_prefix="image-fetch")

    def field_specs(self) -> dict[str, dict[str, object]]:
        """What decides each field's segment: the encoder that makes it (with the options it reads),
        its storage grid, dimension and weight. Two generations whose specs agree on a field but
        its weight store the same segment up to the scale sqrt(weight) (``carried``)."""
        s = self.settings
        idf = f"|idf={self.lexicon.digest}" if self.lexicon is not None else ""
        encoders = {
            "text": f"{self.text.name}|tokens={s.text_max_tokens}|brand={self.brand_in_text}",
            "title_lexical": f"{type(self.title_lexical).__name__}:{self.title_lexical.dim}{idf}",
            "text_words": f"{type(self.text_words).__name__}:{self.text_words.dim}{idf}",
            "mpn": f"{type(self.mpn).__name__}:{self.mpn.dim}|from_title={self.mpn.from_title}",
            "image": f"{ImageEncoder.name}:{self.layout['image'].stop - self.layout['image'].start}",
            "brand": f"{type(self.brand).__name__}:{self.brand.dim}",
            "category": f"{type(self.category).__name__}:{self.category.dim}",
            "price": f"{type(self.price).__name__}:{self.price.dim}",
        }
        return {f: {"encoder": encoders[f], "codec": self.codecs[f], "dim": self.layout[f].stop - self.layout[f].start,
                    "weight": self.weights[f]} for f in self.fields}

    def carried(self, source: Mapping[str, Mapping[str, object]], vectors: np.ndarray,
                hashes: Sequence[Mapping[str, str]]) -> tuple[np.ndarray, list[dict[str, str]]]:
        """Stored vectors of another generation (``source``: its ``field_specs``) in this encoder's
        layout, for ``encode``'s ``stored``: the segment of every field made by the same encoder on
        the same grid, rescaled by sqrt(w_new / w_old) and rounded onto the grid again (copied as it
        is when the weight is the same); other fields are left out (zero, no hash), so ``encode``
        encodes them. A field stored at weight 0 holds nothing to carry."""
        mine, theirs = self.field_specs(), layout_of(source)
        out = np.zeros((len(vectors), self.dim), np.float32)
        kept: list[str] = []
        for f in self.fields:
            if f not in source:  # a field the other generation did not have
                continue
            old, new = source[f], mine[f]
            w_old, w_new = float(old["weight"]), float(new["weight"])  # type: ignore[arg-type]
            if old["encoder"] != new["encoder"] or old["codec"] != new["codec"] or old["dim"] != new["dim"] \
                    or w_old <= 0 or w_new <= 0:
                continue
            segment = np.asarray(vectors, np.float32)[:, theirs[f]]
            out[:, self.layout[f]] = segment if w_old == w_new else canonical(
                segment * np.float32(math.sqrt(w_new / w_old)), self.codecs[f])
            kept.append(f)
        return out, [{f: h[f] for f in kept if f in h} for h in hashes]

    def field_hashes(self, p: ProductEvent) -> dict[str, str]:
        """Content hash per field, as this encoder reads the fields (change detection)."""
        contents = field_contents(p, self.brand_in_text)  # once: text_of cleans the description
        return {f: content_hash(contents[f]) for f in self.fields}

    @property
    def on_accelerator(self) -> bool:
        """Whether the text model runs off the CPU (then encoding can overlap index work)."""
        return self.text.device.type != "cpu"

    def warm_up(self) -> None:
        """Run one tiny batch so the first real batch does not pay for lazy initialisation."""
        self.text.encode(["warm up"])
        if self.image is not None:
            self.image.warm_up()

    def encode(self, products: Sequence[ProductEvent],
               stored: Mapping[str, tuple[np.ndarray, Mapping[str, str]]] | None = None) -> EncodedBatch:
        """Encode upserts. ``stored`` maps product_id -> (fused vector, field hashes) of the
        indexed version, so unchanged fields are reused instead of re-encoded."""
        import time

        stored = stored or {}
        n = len(products)
        hashes = [self.field_hashes(p) for p in products]
        fused = np.zeros((n, self.dim), dtype=np.float32)
        reuse = np.zeros((n, len(self.fields)), dtype=bool)
        for i, p in enumerate(products):
            old = stored.get(p.product_id)
            if old is None:
                continue
            for j, f in enumerate(self.fields):
                if old[1].get(f) == hashes[i][f] and self.weights[f] > 0:
                    fused[i, self.layout[f]] = old[0][self.layout[f]]
                    reuse[i, j] = True
        failed: dict[int, EncodeError] = {}
        batch = EncodedBatch()
        encoders: dict[str, Callable[[list[ProductEvent]], np.ndarray]] = {
            "text": lambda ps: self.text.encode([text_of(p, self.brand_in_text) for p in ps],
                                                batch_size=self.settings.encode_batch_size),
            "title_lexical": lambda ps: self.title_lexical.encode([p.title for p in ps]),
            "mpn": lambda ps: self.mpn.encode([p.mpn for p in ps], [p.title for p in ps]),
            "brand": lambda ps: self.brand.encode([p.brand for p in ps]),
            "category": lambda ps: self.category.encode([p.category for p in ps]),
            "price": lambda ps: self.price.encode([p.price for p in ps]),
            "text_words": lambda ps: self.text_words.encode([words_text(p) for p in ps]),
        }
        for j, f in enumerate(self.fields):
            if self.weights[f] <= 0:
                continue
            todo = [i for i in range(n) if not reuse[i, j]]
            if not todo:
                continue
            t0 = time.perf_counter()
            if f == "image":
                vecs = self._encode_images([products[i] for i in todo], todo, failed)
            else:
                vecs = encoders[f]([products[i] for i in todo])
            # Rounded onto the field's storage grid once, here: every copy then holds these values.
            fused[todo, self.layout[f]] = canonical(vecs * self.scale[f], self.codecs[f])
            batch.seconds[f] = time.perf_counter() - t0
            batch.encoded_fields[f] = len(todo)
        keep = [i for i in range(n) if i not in failed]
        batch.products = [products[i] for i in keep]
        batch.vectors = fused[keep]
        batch.hashes = [hashes[i] for i in keep]
        batch.failures = [(products[i], exc) for i, exc in failed.items()]
        return batch

    def _encode_images(self, products: list[ProductEvent], positions: list[int],
                       failed: dict[int, EncodeError]) -> np.ndarray:
        """Fetch, check, decode and preprocess each image on a fetch thread (the only image pool:
        fetching is I/O bound, decoding follows on the same thread, with Pillow and numpy only, so
        no torch intra-op pool runs on those threads), and encode the good ones a model batch at a
        time as they arrive, so inference overlaps the fetches still running.
        Whatever goes wrong with one image fails only its product, never the batch."""
        assert self.image is not None
        image = self.image
        out = np.zeros((len(products), image.dim), dtype=np.float32)

        def load(p: ProductEvent) -> torch.Tensor | None | EncodeError:
            try:
                data = self.images.fetch(p.image_url, p.image_b64)
                return None if data is None else image.preprocess(data)  # header check, decode, shape check
            except EncodeError as exc:
                return exc
            except Exception as exc:  # the type only: the message may quote the URL's secrets
                return EncodeError("image", f"cannot load image ({type(exc).__name__})")

        step = image.step(self.settings.encode_batch_size)
        ready: list[tuple[int, torch.Tensor]] = []
        for k, loaded in enumerate(self._fetch_pool.map(load, products)):  # in order, fetched ahead
            if isinstance(loaded, EncodeError):
                failed[positions[k]] = loaded
            elif loaded is not None:
                ready.append((k, loaded))
            if ready and (len(ready) >= step or k == len(products) - 1):
                rows = [r for r, _ in ready]
                out[rows] = image.encode_tensors([t for _, t in ready], batch_size=step)
                ready.clear()
        return out
