"""Chinese + English in one catalog, through the real worker (issue 25, item 3).

    SIMSTREAM_TEXT_MODEL=use:multilingual-v3 python bench/mixed_catalog.py [--data ../shared/data] [--json OUT]

Both tables of ember_ali (Alibaba, Chinese titles and category paths) and of an English benchmark
(Abt-Buy by default) become one catalog of upserts, ids prefixed by set and side
(``ember_ali:l:123``). The exactness proof's harness (``simstream.harness.exactness``) runs it: the
first half is loaded with ``simstream backfill``, the rest streams through a real ``simstream
worker`` on the Tansu broker and milvus-lite, one SIGKILL on the way; once quiet, every list on the
neighbour topic is compared with an exact top-K over the stored vectors (and each entry's match
probability when the model has a decision), and every stored vector with a fresh encoding.

Quality is then read off the published lists themselves: for each gold query (a left-table product)
its list, keeping only the same set's right-table products and dropping exact twins, gives a ranking
scored as the protocol scores one (``quality.evaluate.retrieval_metrics``). A character-trigram
TF-IDF over the same mixed catalog, top-``TOP_K`` per product filtered the same way, is the baseline
in the same run. Lists hold ``TOP_K`` (32 here, the most a list may) products of the whole catalog,
the other set's and the query's own side's included, so recall is cut where the filtered list ends:
compare the two rows, not these figures with docs/quality.md's full-table ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from common import ROOT, machine  # type: ignore  # noqa: E402

from simstream.harness.exactness import Options, run_exactness, summary_line  # noqa: E402
from simstream.harness.synthetic import Stream  # noqa: E402
from simstream.limits import MAX_TOP_K  # noqa: E402
from simstream.quality.datasets import parse_field_map, read_gold, read_table  # noqa: E402
from simstream.quality.evaluate import retrieval_metrics  # noqa: E402
from simstream.quality.generalise import BENCHMARKS, EMBER_ALI, Benchmark  # noqa: E402

KS = (1, 5, 10)
EVENT_KEYS = ("title", "description", "brand", "category", "price", "mpn")


def load(root: Path, bench: Benchmark) -> dict[str, Any]:
    """One benchmark's two tables as upsert documents, its gold and twins (raw table ids)."""
    fields = parse_field_map(bench.fields.split(","))
    docs, texts = [], {}
    for side, table in (("l", "tableA.csv"), ("r", "tableB.csv")):
        t = read_table(root / bench.name / table, fields, prefix=f"{bench.name}:{side}:")
        for e, text in zip(t.events, t.texts):
            if not e.title.strip():
                continue  # the contract needs a title
            doc = {"product_id": e.product_id, "op": "upsert", "version": 1, "event_time": 1}
            doc.update({k: getattr(e, k) for k in EVENT_KEYS if getattr(e, k) is not None})
            docs.append(doc)
            texts[e.product_id] = text
    twins = read_gold(root / bench.name / bench.twins) if bench.twins else {}
    gold = {q: rs - twins.get(q, set()) for q, rs in read_gold(root / bench.name / bench.gold).items()}
    return {"docs": docs, "texts": texts, "twins": twins, "gold": {q: rs for q, rs in gold.items() if rs}}


def ranked_from(lists: dict[str, list[str]], name: str, data: dict[str, Any]) -> dict[str, list[str]]:
    """Each gold query's list kept to the set's right table, twins dropped, as raw right ids."""
    out: dict[str, list[str]] = {}
    prefix = f"{name}:r:"
    for q in data["gold"]:
        ids = lists.get(f"{name}:l:{q}")
        if ids is None:
            continue
        twins = data["twins"].get(q, set())
        out[q] = [r for r in (i.removeprefix(prefix) for i in ids if i.startswith(prefix)) if r not in twins]
    return out


def tfidf_lists(texts: dict[str, str], k: int) -> dict[str, list[str]]:
    """Char-trigram TF-IDF top-``k`` of every product over the whole mixed catalog (itself left out)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids = list(texts)
    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True).fit_transform(
        [texts[i] for i in ids])
    out: dict[str, list[str]] = {}
    for start in range(0, len(ids), 1024):
        sims = (x[start:start + 1024] @ x.T).toarray()
        for row, i in enumerate(range(start, min(start + 1024, len(ids)))):
            sims[row, i] = -np.inf
            top = np.argsort(-sims[row], kind="stable")[:k]
            out[ids[i]] = [ids[j] for j in top]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--english", default="abt_buy", choices=[b.name for b in BENCHMARKS])
    parser.add_argument("--top-k", type=int, default=MAX_TOP_K)
    parser.add_argument("--kills", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=3000.0)
    parser.add_argument("--lexicon", action="store_true",
                        help="fit the catalog's lexicon first (as `simstream lexicon fit` does for a first generation) "
                             "and run every process with SIMSTREAM_LEXICON pointing at it")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    benches = [EMBER_ALI, next(b for b in BENCHMARKS if b.name == args.english)]
    missing = [b.name for b in benches if not (args.data / b.name / "tableA.csv").exists()]
    if missing:
        raise SystemExit(f"skipped: {', '.join(missing)} not in {args.data} (the shared benchmarks)")
    sets = {b.name: load(args.data, b) for b in benches}
    docs = [d for s in sets.values() for d in s["docs"]]
    order = np.random.default_rng(5).permutation(len(docs))  # the two languages interleaved
    docs = [docs[i] for i in order]
    stream = Stream(docs, {d["product_id"]: d for d in docs}, {"create": len(docs)})
    lexicon = None
    if args.lexicon:  # the workers, the backfill and the oracle's encoder all read it from the environment
        from simstream.encoders.lexicon import Lexicon
        from simstream.streams.contracts import parse_event

        lexicon = Lexicon.fit(parse_event(d["product_id"].encode(), orjson.dumps(d)) for d in docs)
        path = lexicon.save(Path(tempfile.mkdtemp(prefix="simstream-mixed-")) / f"lexicon-{lexicon.digest}.npz")
        os.environ["SIMSTREAM_LEXICON"] = str(path)
        print(f"lexicon {lexicon.digest}: fitted over {len(docs)} products")
    collected: dict[str, Any] = {}
    t0 = time.monotonic()
    report = run_exactness(Options(products=len(docs), events=len(docs), workers=1, kills=args.kills,
                                   top_k=args.top_k, backfill=len(docs) // 2, quiet_s=15.0,
                                   timeout_s=args.timeout_s, stream=stream, collect=collected))
    print(summary_line(report))
    lists = {pid: [n.product_id for n in nl.neighbours] for pid, nl in collected["topic"].items() if nl is not None}
    models = {nl.model for nl in collected["topic"].values() if nl is not None}
    tfidf = tfidf_lists({pid: t for s in sets.values() for pid, t in s["texts"].items()}, args.top_k)
    quality: dict[str, Any] = {}
    for name, data in sets.items():
        row = {}
        for method, source in (("simstream", lists), ("tfidf", tfidf)):
            ranked = ranked_from(source, name, data)
            row[method] = retrieval_metrics(ranked, {q: data["gold"][q] for q in ranked}, KS)
            row[method]["right_in_list"] = round(float(np.mean([len(r) for r in ranked.values()])), 2) if ranked else 0
        quality[name] = row
        for method, m in row.items():
            print(f"{name:<14} {method:<10} " + " ".join(f"{k} {m[k]:.4f}" for k in ("hit@1", "hit@10", "recall@10", "mrr"))
                  + f"  ({m['queries']} queries, {m['right_in_list']} right-table products per list)")
    out = {"products": len(docs), "sets": {n: len(s["docs"]) for n, s in sets.items()}, "top_k": args.top_k,
           "lexicon": lexicon.digest if lexicon is not None else None,
           "models": sorted(models), "exactness": {k: v for k, v in report.items() if k != "details"},
           "details": {k: v for k, v in report["details"].items() if k not in ("data_dir",)}, "quality": quality,
           "wall_s": round(time.monotonic() - t0, 1), "machine": machine()}
    if args.json:
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    if lexicon is not None:
        shutil.rmtree(Path(os.environ["SIMSTREAM_LEXICON"]).parent, ignore_errors=True)


if __name__ == "__main__":
    main()
