"""(e) refresh cost: the refresh step's batched neighbour searches through ``VectorStore.search``
(milvus-lite, FLAT = exact inner product) versus exact numpy brute force over the same vectors, in
the same process and run, at 10k and 100k products.

    python bench/refresh_bench.py [--sizes 10000,100000] [--queries 256] [--json OUT]

Each size: a milvus-lite file is pre-loaded (bench/common.py: real lexical/structured/image
segments, perturbed real text stems), flushed, then ``--queries`` product vectors are searched in
the refresh step's shape (limit = top_k + 1 + TIE_MARGIN, returning vectors) both ways; the
numpy side does ``Q @ M.T``, argpartition and gathers the neighbour vectors, like the store call
returns them. Also measured: the same search with ``--unflushed`` freshly upserted rows not yet
flushed (what SIMSTREAM_FLUSH_EVERY_ROWS bounds), and the exact side index (index/side.py) when
present.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import emit, encoder_settings, field_vectors, fuse, image_root, machine, make_doc, preload, release  # type: ignore


def _best(fn: Any, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_search(matrix: np.ndarray, queries: np.ndarray, limit: int, chunk: int = 256) -> list[list[tuple[int, np.ndarray]]]:
    out = []
    for s in range(0, len(queries), chunk):
        sims = queries[s:s + chunk] @ matrix.T
        part = np.argpartition(-sims, limit - 1, axis=1)[:, :limit]
        for r in range(len(part)):
            order = part[r][np.argsort(-sims[r, part[r]])]
            out.append([(int(j), matrix[j]) for j in order])
    return out


def refresh_cost(sizes: list[int], queries: int = 256, rounds: int = 3, seed: int = 5, unflushed: int = 2000,
                 encoder: Any = None) -> dict[str, Any]:
    from simstream.encoders.fusion import ProductEncoder
    from simstream.index.neighbours import TIE_MARGIN
    from simstream.index.milvus import MilvusStore
    from simstream.index.rows import product_row
    from simstream.index.store import VectorStore
    from simstream.records import ProductEvent

    root, names = image_root()
    settings = encoder_settings(True, image_root=root)
    enc = encoder or ProductEncoder(settings)
    limit = settings.top_k + 1 + TIE_MARGIN
    out: dict[str, Any] = {"queries_per_call": min(queries, 256), "limit": limit,
                           "flush_every_rows": settings.flush_every_rows}
    for n in sizes:
        rng = random.Random(seed + n)
        now = int(time.time() * 1000)
        docs = [make_doc(rng, f"r{i:07d}", 1, now, names) for i in range(n)]
        fv = field_vectors(enc, docs, root, seed)
        data = Path(tempfile.mkdtemp(prefix="simstream-bench-refresh-"))
        uri = str(data / "refresh.db")
        t0 = time.perf_counter()
        timings = preload(uri, "bench", enc, fv, k=settings.top_k, with_lists=False)
        load_s = time.perf_counter() - t0
        matrix = fuse(enc, fv)
        qidx = np.random.default_rng(seed).choice(n, size=queries, replace=False)
        q = matrix[qidx]
        store = MilvusStore.connect(uri, "bench", enc.dim, flush_every_rows=0)
        store.search(q[:8], limit)  # load / warm
        milvus_s = _best(lambda: store.search(q, limit), rounds)
        numpy_s = _best(lambda: numpy_search(matrix, q, limit), rounds)
        # Same answer? (ids of the top-k+1, ties aside)
        m_ids = [[pid for pid, _ in row] for row in store.search(q[:32], limit)]
        n_ids = [[fv.ids[j] for j, _ in row] for row in numpy_search(matrix, q[:32], limit)]
        agree = float(np.mean([len(set(a[:settings.top_k]) & set(b[:settings.top_k])) / settings.top_k
                               for a, b in zip(m_ids, n_ids)]))
        res: dict[str, Any] = {
            "products": n, "preload_s": round(load_s, 1), "preload_timings": {k: round(v, 2) for k, v in timings.items()},
            "milvus_ms_per_query": round(milvus_s / queries * 1000, 3),
            "numpy_ms_per_query": round(numpy_s / queries * 1000, 3),
            "milvus_over_bruteforce": round(milvus_s / numpy_s, 2),
            "top_k_agreement": round(agree, 4),
        }
        memory = VectorStore(store)
        memory.load_into_memory()
        side = memory.side
        assert side is not None
        side_s = _best(lambda: side.search(q, limit), rounds)
        res["side_index_ms_per_query"] = round(side_s / queries * 1000, 3)
        res["side_index_over_bruteforce"] = round(side_s / numpy_s, 2)
        if unflushed:
            store.upsert_products([product_row(ProductEvent(product_id=f"u{i:07d}", op="upsert", version=1),
                                               matrix[i % n], {}, enc.model, now) for i in range(unflushed)])
            un_s = _best(lambda: store.search(q, limit), rounds)
            res[f"milvus_ms_per_query_with_{unflushed}_unflushed"] = round(un_s / queries * 1000, 3)
            res["unflushed_over_flushed"] = round(un_s / milvus_s, 2)
        release(store, uri)
        shutil.rmtree(data, ignore_errors=True)
        out[str(n)] = res
        print(json.dumps({str(n): res}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    report = {"machine": machine(),
              "refresh": refresh_cost([int(x) for x in a.sizes.split(",")], queries=a.queries)}
    emit(report, a.json)


if __name__ == "__main__":
    main()
