"""Offline retrieval quality on product-matching benchmarks (``simstream eval``).

Protocol (the one of ../shared/data/README.md): encode LEFT and RIGHT through exactly the
``ProductEncoder`` the stream uses, index RIGHT in a Milvus collection (a milvus-lite file in a
temporary directory) through ``VectorStore``, query with every LEFT row that has a gold match and
report, for every K asked:

- ``recall@K``: share of gold pairs whose right item is in the left item's top-K;
- ``hit@K``: share of queries with at least one gold match in the top-K;
- ``mrr``: mean reciprocal rank of the first gold match (0 when beyond the largest K).

The same figures are computed in the same run for a character-trigram TF-IDF baseline
(``analyzer="char_wb"``, ``ngram_range=(3, 3)``, ``sublinear_tf=True``) over the same fields.
"""

from __future__ import annotations

import csv
import hashlib
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import orjson

from simstream.records import ProductEvent

#: ProductEvent fields a CSV column may be mapped to (``--field NAME=COLUMN``).
MAPPABLE = ("title", "description", "brand", "category", "price", "mpn", "image")
DEFAULT_KS = (1, 5, 10, 20, 50)


# --- reading ---------------------------------------------------------------------------------
def parse_field_map(specs: Iterable[str]) -> dict[str, str]:
    """['title=name', 'price=price'] -> {'title': 'name', 'price': 'price'}; title is required."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, column = spec.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column:
            raise ValueError(f"--field expects NAME=COLUMN, got {spec!r}")
        if name not in MAPPABLE:
            raise ValueError(f"--field {name!r} is not one of {', '.join(MAPPABLE)}")
        out[name] = column
    if "title" not in out:
        raise ValueError("--field title=COLUMN is required")
    return out


def _price(raw: str | None) -> float | None:
    if raw is None:
        return None
    text = raw.strip().lower().replace(",", "").replace("$", "")
    for token in text.split():
        try:
            value = float(token)
        except ValueError:
            continue
        return value if math.isfinite(value) and value > 0 else None
    return None


def _text(raw: str | None) -> str | None:
    text = (raw or "").strip()
    return text or None


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in reader]


def row_to_event(row: Mapping[str, str], fields: Mapping[str, str], product_id: str) -> ProductEvent:
    """One CSV row as an upsert event, mapped column by column."""
    def col(name: str) -> str | None:
        column = fields.get(name)
        if column is None:
            return None
        if column not in row:
            raise KeyError(f"column {column!r} (for --field {name}) not in the CSV; has {sorted(row)}")
        return row[column]

    image = _text(col("image"))
    if image and "://" not in image and not image.startswith("file:"):
        image = f"file:{image}"  # relative to the CSV's folder (the image root)
    return ProductEvent(
        product_id=product_id, op="upsert", version=1, title=_text(col("title")) or "",
        description=_text(col("description")), brand=_text(col("brand")), category=_text(col("category")),
        price=_price(col("price")), mpn=_text(col("mpn")), image_url=image,
    )


@dataclass
class Table:
    ids: list[str]
    events: list[ProductEvent]
    texts: list[str]  # what the TF-IDF baseline reads: the mapped columns, concatenated


def read_table(path: Path, fields: Mapping[str, str], id_column: str = "id", prefix: str = "") -> Table:
    rows = read_rows(path)
    if rows and id_column not in rows[0]:
        raise KeyError(f"{path}: no id column {id_column!r}; has {sorted(rows[0])}")
    # Each distinct column once (``--field mpn=name`` must not count the title twice); no images.
    columns = list(dict.fromkeys(c for f, c in fields.items() if f != "image"))
    ids, events, texts = [], [], []
    for row in rows:
        rid = row[id_column].strip()
        ids.append(rid)
        events.append(row_to_event(row, fields, f"{prefix}{rid}"))
        texts.append(" ".join(row.get(c, "").strip() for c in columns if row.get(c, "").strip()))
    return Table(ids, events, texts)


def read_gold(path: Path) -> dict[str, set[str]]:
    """ltable_id -> {rtable_id}; when there is a ``label`` column only label 1 rows count."""
    gold: dict[str, set[str]] = {}
    for row in read_rows(path):
        if "label" in row and row["label"].strip() not in ("1", "1.0", "true", "True"):
            continue
        gold.setdefault(row["ltable_id"].strip(), set()).add(row["rtable_id"].strip())
    return gold


# --- metrics ---------------------------------------------------------------------------------
def retrieval_metrics(ranked: Mapping[str, Sequence[str]], gold: Mapping[str, set[str]],
                      ks: Sequence[int]) -> dict[str, float]:
    """recall@K (over gold pairs), hit@K (over queries) and MRR for ranked right ids per query."""
    queries = [q for q in gold if q in ranked]
    pairs = sum(len(gold[q]) for q in queries)
    out: dict[str, float] = {}
    for k in ks:
        found = sum(len(gold[q] & set(ranked[q][:k])) for q in queries)
        hits = sum(1 for q in queries if gold[q] & set(ranked[q][:k]))
        out[f"recall@{k}"] = round(found / max(pairs, 1), 4)
        out[f"hit@{k}"] = round(hits / max(len(queries), 1), 4)
    rr = []
    for q in queries:
        rank = next((i for i, r in enumerate(ranked[q]) if r in gold[q]), None)
        rr.append(0.0 if rank is None else 1.0 / (rank + 1))
    out["mrr"] = round(float(np.mean(rr)) if rr else 0.0, 4)
    out["queries"] = len(queries)
    out["pairs"] = pairs
    return out


# --- baselines and retrieval -----------------------------------------------------------------
def tfidf_rankings(left: Table, right: Table, queries: Sequence[int], limit: int) -> dict[str, list[str]]:
    """Character-trigram TF-IDF (fit on both tables' texts), cosine, top-``limit`` right ids."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True)
    vec.fit(left.texts + right.texts)
    a = vec.transform([left.texts[i] for i in queries])
    b = vec.transform(right.texts)
    scores = (a @ b.T).toarray()
    return {left.ids[i]: [right.ids[j] for j in top_k(scores[n], limit)] for n, i in enumerate(queries)}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; ties broken by index (stable)."""
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def encode_events(encoder: Any, events: Sequence[ProductEvent], cache_dir: Path | None = None) -> np.ndarray:
    """Fused vectors for ``events`` through ``ProductEncoder.encode``; optionally cached on disk
    (keyed by the encoder's model tag and every event's field hashes), for development loops."""
    key = None
    if cache_dir is not None:
        h = hashlib.blake2b(encoder.model.encode(), digest_size=16)
        for p in events:
            h.update("|".join(encoder.field_hashes(p).values()).encode())
        key = Path(cache_dir) / f"enc-{h.hexdigest()}.npy"
        if key.exists():
            return np.load(key)
    batch = encoder.encode(list(events))
    if batch.failures:
        failed = ", ".join(f"{p.product_id}: {e}" for p, e in batch.failures[:5])
        raise RuntimeError(f"{len(batch.failures)} products failed to encode ({failed})")
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        np.save(key, batch.vectors)
    return batch.vectors


def milvus_rankings(vectors_left: np.ndarray, right: Table, vectors_right: np.ndarray, left: Table,
                    queries: Sequence[int], limit: int, encoder: Any, workdir: Path) -> dict[str, list[str]]:
    """Index RIGHT in a fresh milvus-lite collection via VectorStore and search with the queries."""
    from simstream.index.store import VectorStore

    store = VectorStore.connect(str(workdir / "eval.db"), "eval", int(vectors_right.shape[1]),
                                flush_every_rows=0)
    try:
        now = int(time.time() * 1000)
        rows = [{
            "product_id": p.product_id, "vector": v.tolist(), "version": 1, "brand": (p.brand or "")[:256],
            "category": (p.category or "")[:1000], "price": float(p.price) if p.price is not None else -1.0,
            "hashes": encoder.field_hashes(p), "model": encoder.model,
            "updated_at": now, "event_time": 0,
        } for p, v in zip(right.events, vectors_right)]
        store.upsert_products(rows)
        store.flush()
        hits = store.search(vectors_left[list(queries)], limit)
    finally:
        store.close()
    by_pid = {p.product_id: rid for p, rid in zip(right.events, right.ids)}
    return {left.ids[i]: [by_pid[pid] for pid, _ in row] for i, row in zip(queries, hits)}


# --- the command -----------------------------------------------------------------------------
def build_settings(fields: Mapping[str, str], *, weights_file: Path | None = None,
                   image_root: Path | None = None, **overrides: Any) -> Any:
    """Settings for an evaluation: the environment's, plus the learned weights file when given,
    and the image encoder only when an image column is mapped."""
    from simstream.settings import load_settings

    extra: dict[str, Any] = dict(overrides)
    if weights_file is not None:
        extra["fusion_config"] = Path(weights_file)
    if "image" not in fields:
        extra["image_enabled"] = False
    elif image_root is not None:
        extra.setdefault("image_root", image_root)
    return load_settings(**extra)


def evaluate(left_csv: Path, right_csv: Path, gold_csv: Path, fields: Mapping[str, str], *,
             id_column: str = "id", ks: Sequence[int] = DEFAULT_KS, weights_file: Path | None = None,
             settings: Any = None, encoder: Any = None, cache_dir: Path | None = None,
             with_tfidf: bool = True, query_limit: int | None = None) -> dict[str, Any]:
    """Run the whole protocol; returns the report (what ``--json`` writes, plus timings)."""
    from simstream.encoders.fusion import ProductEncoder

    ks = sorted(set(int(k) for k in ks))
    if settings is None:
        settings = build_settings(fields, weights_file=weights_file, image_root=Path(right_csv).parent)
    left = read_table(Path(left_csv), fields, id_column, prefix="l:")
    right = read_table(Path(right_csv), fields, id_column, prefix="r:")
    gold = read_gold(Path(gold_csv))
    left_pos = {rid: i for i, rid in enumerate(left.ids)}
    queries = [left_pos[q] for q in gold if q in left_pos]
    if query_limit is not None:
        queries = queries[:query_limit]
    gold = {left.ids[i]: gold[left.ids[i]] for i in queries}
    limit = max(ks)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    encoder = encoder or ProductEncoder(settings)
    timings["load_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    vectors_right = encode_events(encoder, right.events, cache_dir)
    vectors_left = np.zeros((len(left.events), encoder.dim), np.float32)
    vectors_left[queries] = encode_events(encoder, [left.events[i] for i in queries], cache_dir)
    timings["encode_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="simstream-eval-") as tmp:
        ranked = milvus_rankings(vectors_left, right, vectors_right, left, queries, limit, encoder, Path(tmp))
    timings["index_search_s"] = round(time.perf_counter() - t0, 2)
    report: dict[str, Any] = {"simstream": retrieval_metrics(ranked, gold, ks)}
    if with_tfidf:
        t0 = time.perf_counter()
        report["tfidf"] = retrieval_metrics(tfidf_rankings(left, right, queries, limit), gold, ks)
        timings["tfidf_s"] = round(time.perf_counter() - t0, 2)
    report["fields"] = sorted(fields, key=MAPPABLE.index)
    report["columns"] = dict(fields)
    report["weights"] = {f: round(w, 6) for f, w in encoder.weights.items()}
    report["model"] = encoder.model
    report["left"], report["right"], report["gold"] = str(left_csv), str(right_csv), str(gold_csv)
    report["timings"] = timings
    return report


def format_report(report: Mapping[str, Any], ks: Sequence[int]) -> str:
    """A plain-text table: one row per method, one column per metric."""
    ks = sorted(set(int(k) for k in ks))
    keys = [f"recall@{k}" for k in ks] + [f"hit@{k}" for k in ks] + ["mrr"]
    methods = [m for m in ("simstream", "tfidf") if m in report]
    width = max(len(k) for k in keys) + 1
    lines = [f"{'metric':<{width}}" + "".join(f"{m:>11}" for m in methods)]
    for key in keys:
        lines.append(f"{key:<{width}}" + "".join(f"{report[m][key]:>11.4f}" for m in methods))
    first = report[methods[0]]
    lines.append(f"queries {first['queries']}, gold pairs {first['pairs']}, fields {', '.join(report['fields'])}")
    nonzero = {f: w for f, w in report["weights"].items() if w > 0}
    lines.append("weights " + ", ".join(f"{f}={w:.3f}" for f, w in nonzero.items()))
    return "\n".join(lines)


def json_report(report: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(report), option=orjson.OPT_INDENT_2)
