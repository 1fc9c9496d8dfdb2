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

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from simstream.clock import now_ms
from simstream.index.exact import top_k_rows
from simstream.metric import IP
from simstream.quality.datasets import MAPPABLE, Table, read_gold, read_table
from simstream.records import ProductEvent
from simstream.settings import Settings

__all__ = [
    "DEFAULT_KS", "retrieval_metrics", "tfidf_scores", "bm25_scores", "tfidf_rankings", "top_k", "encode_events",
    "milvus_rankings", "milvus_scored", "scored_top", "euclidean_scores", "threshold_gold", "catalog_lexicon", "build_settings", "match_rows",
    "evaluate", "format_report", "json_report"
]

DEFAULT_KS = (1, 5, 10, 20, 50)


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
def tfidf_scores(left: Table, right: Table, queries: Sequence[int]) -> np.ndarray:
    """Character-trigram TF-IDF (fit on both tables' texts) cosines [len(queries), len(right)]."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True)
    vec.fit(left.texts + right.texts)
    a = vec.transform([left.texts[i] for i in queries])
    b = vec.transform(right.texts)
    return np.asarray((a @ b.T).toarray())


def bm25_scores(left: Table, right: Table, queries: Sequence[int]) -> np.ndarray:
    """Okapi BM25 (``bm25s``: Lucene's variant, k1 1.5, b 0.75, English stop words) over words (2+ characters) of the
    same columns, IDF from the catalog (``right``) only: scores [len(queries), len(right)]."""
    import bm25s

    def tokens(texts: Sequence[str]) -> list[list[str]]:
        return bm25s.tokenize(list(texts), stopwords="english", return_ids=False, show_progress=False)  # type: ignore[no-any-return]

    retriever = bm25s.BM25()
    retriever.index(tokens(right.texts), show_progress=False)
    out = np.zeros((len(queries), len(right.texts)), np.float64)
    for n, q in enumerate(tokens([left.texts[i] for i in queries])):
        if q:  # a query with no word left (empty, or stop words only) scores 0 everywhere
            out[n] = retriever.get_scores(q)
    return out


def tfidf_rankings(left: Table, right: Table, queries: Sequence[int], limit: int) -> dict[str, list[str]]:
    """Character-trigram TF-IDF (fit on both tables' texts), cosine, top-``limit`` right ids."""
    scores = tfidf_scores(left, right, queries)
    return {left.ids[i]: [right.ids[j] for j in top_k(scores[n], limit)] for n, i in enumerate(queries)}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; ties broken by index (``index.exact``)."""
    return top_k_rows(scores[None, :], k)[0][0]


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
    scored = milvus_scored(vectors_left, right, vectors_right, left, queries, limit, encoder, workdir)
    return {q: [rid for rid, _ in row] for q, row in scored.items()}


def milvus_scored(vectors_left: np.ndarray, right: Table, vectors_right: np.ndarray, left: Table,
                  queries: Sequence[int], limit: int, encoder: Any, workdir: Path) -> dict[str, list[tuple[str, float]]]:
    """``milvus_rankings`` with each neighbour's exact score under the model's metric (the score the
    stream publishes)."""
    from simstream.index.rows import product_row
    from simstream.index.store import VectorStore

    # An offline run on a shared machine: a generous deadline (the stream's default is 10 s per call).
    metric = getattr(encoder, "metric", IP)
    store = VectorStore.connect(str(workdir / "eval.db"), "eval", int(vectors_right.shape[1]),
                                flush_every_rows=0, timeout_s=300, metric=metric)
    try:
        now = now_ms()
        rows = [product_row(p, v, encoder.field_hashes(p), encoder.model, now)
                for p, v in zip(right.events, vectors_right)]
        store.upsert_products(rows)
        store.flush()
        hits = store.search(vectors_left[list(queries)], limit)
    finally:
        store.close()
    by_pid = {p.product_id: rid for p, rid in zip(right.events, right.ids)}
    return {left.ids[i]: [(by_pid[pid], metric.pair(vec, vectors_left[i])) for pid, vec in row]
            for i, row in zip(queries, hits)}


def scored_top(scores: np.ndarray, left: Table, right: Table, queries: Sequence[int],
               limit: int) -> dict[str, list[tuple[str, float]]]:
    """Top-``limit`` (right id, score) per query row of ``scores`` [len(queries), len(right)]."""
    idx, vals = top_k_rows(scores, limit)
    return {left.ids[i]: [(right.ids[int(j)], float(v)) for j, v in zip(idx[n], vals[n])]
            for n, i in enumerate(queries)}


def euclidean_scores(vectors_left: np.ndarray, vectors_right: np.ndarray, queries: Sequence[int]) -> np.ndarray:
    """Minus the squared Euclidean distance between the fused vectors (higher = closer)."""
    a = vectors_left[list(queries)].astype(np.float64)
    b = vectors_right.astype(np.float64)
    return -((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T)


def threshold_gold(gold_csv: Path, files: Sequence[Path] | None) -> tuple[dict[str, set[str]], list[str]]:
    """Labelled pairs to choose the match threshold on: ``files``, else train.csv and valid.csv beside
    GOLD when present (label-1 rows are the matches; every other top-K neighbour counts as not one)."""
    if files is None:
        files = [p for p in (Path(gold_csv).parent / "train.csv", Path(gold_csv).parent / "valid.csv") if p.exists()]
    out: dict[str, set[str]] = {}
    for f in files:
        for q, rs in read_gold(Path(f)).items():
            out.setdefault(q, set()).update(rs)
    return out, [str(f) for f in files]


# --- the command -----------------------------------------------------------------------------
def catalog_lexicon(settings: Settings, catalog: Sequence[ProductEvent]) -> Any:
    """The lexicon a migration would fit for this catalog, when SIMSTREAM_LEXICON says ``catalog``,
    or says nothing and the fusion config was fitted for one (option ``lexicon: catalog``); else
    None (the encoder then reads SIMSTREAM_LEXICON itself: ``none``, or a file)."""
    from simstream.encoders.fusion import wants_catalog_lexicon
    from simstream.encoders.lexicon import Lexicon

    return Lexicon.fit(catalog) if wants_catalog_lexicon(settings) else None


def build_settings(fields: Mapping[str, str], *, weights_file: str | Path | None = None,
                   image_root: Path | None = None, **overrides: Any) -> Any:
    """Settings for an evaluation: the environment's (default fusion config: the shipped v3), plus the
    fusion config when given (shipped name, path or "none"),
    and the image encoder only when an image column is mapped."""
    from simstream.settings import load_settings

    extra: dict[str, Any] = dict(overrides)
    if weights_file is not None:
        extra["fusion_config"] = str(weights_file)  # a shipped name, a path or "none"
    if "image" not in fields:
        extra["image_enabled"] = False
    elif image_root is not None:
        extra.setdefault("image_root", image_root)
    return load_settings(**extra)


def evaluate(left_csv: Path, right_csv: Path, gold_csv: Path, fields: Mapping[str, str], *,
             id_column: str = "id", ks: Sequence[int] = DEFAULT_KS, weights_file: str | Path | None = None,
             settings: Any = None, encoder: Any = None, cache_dir: Path | None = None,
             with_tfidf: bool = True, query_limit: int | None = None, metrics: Sequence[str] = ("cosine",),
             match_k: int = 10, threshold_files: Sequence[Path] | None = None,
             threshold: float | None = None) -> dict[str, Any]:
    """Run the whole protocol; returns the report (what ``--json`` writes, plus timings).

    Besides retrieval: the match decision (``quality/match.py``) on every query's top-``match_k``,
    its threshold chosen on ``threshold_files`` (default train/valid beside GOLD) unless given, and
    the recall@K and precision-recall curves (``curves``, drawn by ``quality/plots.py``).
    ``metrics``: "cosine" (the fused vectors ranked as the stream ranks them, via Milvus: inner
    product, or Euclidean under a model whose metric is ``l2``, simstream.metric) and/or "euclidean"
    (the same vectors by Euclidean distance, exact, numpy).
    """
    from simstream.quality import match
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
    fit_gold, fit_files = threshold_gold(Path(gold_csv), threshold_files) if threshold is None else ({}, [])
    fit_gold = {q: rs for q, rs in fit_gold.items() if q in left_pos}
    measured = list(queries)
    queries = list(dict.fromkeys(measured + [left_pos[q] for q in fit_gold]))
    limit = max(max(ks), match_k)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    encoder = encoder or ProductEncoder(settings, lexicon=catalog_lexicon(settings, right.events))
    timings["load_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    vectors_right = encode_events(encoder, right.events, cache_dir)
    vectors_left = np.zeros((len(left.events), encoder.dim), np.float32)
    vectors_left[queries] = encode_events(encoder, [left.events[i] for i in queries], cache_dir)
    timings["encode_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    scored: dict[str, dict[str, list[tuple[str, float]]]] = {}
    if "cosine" in metrics:
        with tempfile.TemporaryDirectory(prefix="simstream-eval-") as tmp:
            scored["simstream"] = milvus_scored(vectors_left, right, vectors_right, left, queries, limit, encoder,
                                                Path(tmp))
    if "euclidean" in metrics:
        scored["simstream_euclidean"] = scored_top(euclidean_scores(vectors_left, vectors_right, queries),
                                                   left, right, queries, limit)
    timings["index_search_s"] = round(time.perf_counter() - t0, 2)
    if with_tfidf:
        t0 = time.perf_counter()
        scored["tfidf"] = scored_top(tfidf_scores(left, right, queries), left, right, queries, limit)
        timings["tfidf_s"] = round(time.perf_counter() - t0, 2)
    report: dict[str, Any] = {}
    for method, rows in scored.items():
        report[method] = retrieval_metrics({q: [r for r, _ in row] for q, row in rows.items()}, gold, ks)
    report["match_k"] = match_k
    report["threshold_from"] = (f"given ({threshold})" if threshold is not None else
                                ", ".join(fit_files) if fit_gold else "the measured gold itself (no train/valid "
                                "labels found): optimistic")
    report["match"], report["match_heldout"], report["curves"] = {}, {}, {}
    heldout = {q: rs for q, rs in gold.items() if q not in fit_gold}
    for method, rows in scored.items():
        chosen = threshold if threshold is not None else match.best_threshold(
            match.candidates(rows, fit_gold or gold, match_k))
        measured_c = match.candidates(rows, gold, match_k)
        report["match"][method] = match.decision(measured_c, chosen)
        if fit_gold and heldout:
            report["match_heldout"][method] = match.decision(match.candidates(rows, heldout, match_k), chosen)
        report["curves"][method] = {"recall_at_k": match.recall_curve(rows, gold, limit),
                                    "pr": match.sampled_curve(measured_c)}
    if encoder.match is not None and "simstream" in scored:
        # the model's own match decision (simstream.match): each top-match_k pair's probability,
        # as a published entry carries it, called a match at the model's threshold (chosen on other catalogs)
        rows = match_rows(encoder, scored["simstream"], vectors_left, vectors_right, left, right, match_k)
        measured_c = match.candidates(rows, gold, match_k)
        report["match"]["simstream_match"] = match.decision(measured_c, encoder.match.threshold)
        if fit_gold and heldout:
            report["match_heldout"]["simstream_match"] = match.decision(match.candidates(rows, heldout, match_k),
                                                                        encoder.match.threshold)
        report["curves"]["simstream_match"] = {"pr": match.sampled_curve(measured_c)}
    report["fields"] = sorted(fields, key=MAPPABLE.index)
    report["columns"] = dict(fields)
    report["weights"] = {f: round(w, 6) for f, w in encoder.weights.items()}
    report["model"] = encoder.model
    report["left"], report["right"], report["gold"] = str(left_csv), str(right_csv), str(gold_csv)
    report["timings"] = timings
    return report


def match_rows(encoder: Any, rows: Mapping[str, Sequence[tuple[str, float]]], vectors_left: np.ndarray,
               vectors_right: np.ndarray, left: Table, right: Table, k: int) -> dict[str, list[tuple[str, float]]]:
    """Each query's top-``k`` (in the fused order) with the pair's match probability in place of its score."""
    from simstream.index.neighbours import match_probabilities

    lpos = {rid: i for i, rid in enumerate(left.ids)}
    rpos = {rid: j for j, rid in enumerate(right.ids)}
    out: dict[str, list[tuple[str, float]]] = {}
    for q, row in rows.items():
        top = list(row)[:k]
        probs = match_probabilities(encoder.match, encoder.weights, encoder.layout, vectors_left[lpos[q]],
                                    vectors_right[[rpos[r] for r, _ in top]]) if top else []
        out[q] = [(r, p) for (r, _), p in zip(top, probs)]
    return out


def format_report(report: Mapping[str, Any], ks: Sequence[int]) -> str:
    """A plain-text table: one row per method, one column per metric."""
    ks = sorted(set(int(k) for k in ks))
    keys = [f"recall@{k}" for k in ks] + [f"hit@{k}" for k in ks] + ["mrr"]
    methods = [m for m in ("simstream", "simstream_euclidean", "tfidf") if m in report]
    heads = {"simstream": "simstream", "simstream_euclidean": "euclidean", "tfidf": "tfidf"}
    width = max(len(k) for k in keys) + 1
    lines = [f"{'metric':<{width}}" + "".join(f"{heads[m]:>11}" for m in methods)]
    for key in keys:
        lines.append(f"{key:<{width}}" + "".join(f"{report[m][key]:>11.4f}" for m in methods))
    heads["simstream_match"] = "match probability"
    for label, section in (("match", "match"), ("match, held-out queries", "match_heldout")):
        for m in [m for m in [*methods, "simstream_match"] if m in report.get(section, {})]:
            d = report[section][m]
            what = "probability" if m == "simstream_match" else "score"
            lines.append(f"{label} ({heads[m]}, top-{report['match_k']}): P {d['precision']:.4f} R {d['recall']:.4f} "
                         f"F1 {d['f1']:.4f} at {what} >= {d['threshold']:.4f} ({d['gold_pairs']} gold pairs)")
    if "threshold_from" in report:
        lines.append(f"match threshold chosen on: {report['threshold_from']}")
    first = report[methods[0]]
    lines.append(f"queries {first['queries']}, gold pairs {first['pairs']}, fields {', '.join(report['fields'])}")
    nonzero = {f: w for f, w in report["weights"].items() if w > 0}
    lines.append("weights " + ", ".join(f"{f}={w:.3f}" for f, w in nonzero.items()))
    return "\n".join(lines)


def json_report(report: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(report), option=orjson.OPT_INDENT_2)
