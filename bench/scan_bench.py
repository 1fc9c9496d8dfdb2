"""The side index's exact scan against its floors, same run (issue 21, items 3 and 4).

    python bench/scan_bench.py [--sizes 100000] [--queries 1,16,64,256] [--json OUT]
    python bench/scan_bench.py --every-list [--sizes 20000,100000] [--json OUT]

Per catalog size N (synthetic vectors on the storage grid, shaped like the text-only fusion:
f16 text and price, int8 hashed n-grams, model number, brand and category; image zero), and per
number of queries Q in one pass, milliseconds per pass of:

- ``packed``: ``SideIndex.search_scores`` (index/packed_scan.py: int8 segments as exact integer
  products, f16 widened per block, the error window, exact rescoring): what the worker runs;
- ``decode``: the scan before issue 21: every row decoded to float32 (``PackedRows.blocks``) and
  multiplied with torch, top-``limit`` per block (candidates only, no rescoring);
- floors of the same shape: ``gemm_f32`` (a float32 matrix product with the catalog already
  resident as float32 over the stored columns: the arithmetic a decode-free float scan needs) and
  ``int8`` (``torch._int_mm`` over the int8 columns plus a float32 product over the f16 columns:
  the arithmetic the packed scan does, without selection and rescoring).

Ratios are printed against both floors; results agree (the packed scan's ids equal a float32 brute
force ranked by index/exact.py's rule on a sample of queries, checked here too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, machine  # noqa: E402

from simstream.index.exact import rank_key, top_k_rows  # noqa: E402
from simstream.index.rows import StoredProduct  # noqa: E402
from simstream.index.side import SideIndex  # noqa: E402
from simstream.vector_codec import Segment, canonical_rows  # noqa: E402

SEGMENTS = [Segment("text", 0, 384, "f16"), Segment("title_lexical", 384, 1408, "i8"),
            Segment("mpn", 1408, 1664, "i8"), Segment("image", 1664, 2944, "i8"),
            Segment("brand", 2944, 3072, "i8"), Segment("category", 3072, 3200, "i8"),
            Segment("price", 3200, 3232, "f16")]
WEIGHTS = {"text": 0.4, "title_lexical": 0.16, "mpn": 0.14, "image": 0.0, "brand": 0.05, "category": 0.08,
           "price": 0.07}
DIM = 3232
LIMIT = 64  # the affected-set search's width (SIMSTREAM_CANDIDATE_POOL)


def vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit segments scaled by sqrt(weight): sparse small counts for the hashed int8 fields (as
    n-gram counts are), Gaussian for the f16 ones; on the grid."""
    out = np.zeros((n, DIM), np.float32)
    for s in SEGMENTS:
        if WEIGHTS[s.name] == 0:
            continue
        if s.codec == "i8":
            seg = (rng.random((n, s.width)) < 0.02).astype(np.float32) * rng.integers(1, 4, (n, s.width))
            seg[:, 0] += 1
        else:
            seg = rng.standard_normal((n, s.width)).astype(np.float32)
        seg /= np.linalg.norm(seg, axis=1, keepdims=True)
        out[:, s.start:s.stop] = seg * np.sqrt(WEIGHTS[s.name])
    canonical_rows(out, SEGMENTS)
    return out


def best_ms(fn: Callable[[], Any], repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def filled(rng: np.random.Generator, n: int) -> tuple[SideIndex, list[str], float]:
    """A side index of ``n`` synthetic products, their ids and the seconds it took."""
    side = SideIndex(DIM, capacity=n, segments=SEGMENTS)
    ids: list[str] = []
    t0 = time.perf_counter()
    for start in range(0, n, 5_000):
        v = vectors(rng, min(5_000, n - start))
        batch = [f"s{start + i:08d}" for i in range(len(v))]
        ids += batch
        side.put([StoredProduct(pid, v[i], 1, {}, "m", 1, 2) for i, pid in enumerate(batch)])
    return side, ids, time.perf_counter() - t0


def measure(n: int, queries: list[int], seed: int = 5) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    side, ids, fill_s = filled(rng, n)
    rows = side._rows  # the packed matrix itself, for the baseline and the floors
    stored = [s for s in SEGMENTS if WEIGHTS[s.name] > 0]
    i8 = [torch.from_numpy(rows.segment(SEGMENTS.index(s))[1]) for s in stored if s.codec == "i8"]
    f16 = torch.cat([torch.from_numpy(rows.segment(SEGMENTS.index(s))[1]).float() for s in stored
                     if s.codec == "f16"], dim=1)
    resident = torch.cat([f16] + [x.float() for x in i8], dim=1)  # float32, stored columns only
    out: dict[str, Any] = {"products": n, "fill_s": round(fill_s, 1), "limit": LIMIT,
                           "stored_columns": int(resident.shape[1]), "packed_bytes_per_row": side.row_bytes}
    for q in queries:
        qv = vectors(rng, q)
        qt = torch.from_numpy(qv)

        def decode() -> None:
            for first, block in rows.blocks(n, 2_048):
                top_k_rows((qt @ torch.from_numpy(block).T).numpy(), LIMIT)

        q_float = torch.from_numpy(np.ascontiguousarray(qv[:, [c for s in stored for c in range(s.start, s.stop)]]))
        q_i8 = [torch.randint(-127, 128, (x.shape[1], q), dtype=torch.int8) for x in i8]
        q_f16 = q_float[:, : f16.shape[1]].T.contiguous()
        res = {"packed": best_ms(lambda: side.search_scores(qv, LIMIT)),
               "decode": best_ms(decode, repeats=1),
               "gemm_f32": best_ms(lambda: resident @ q_float.T),
               "int8": best_ms(lambda: ([torch._int_mm(x, y) for x, y in zip(i8, q_i8)], f16 @ q_f16))}
        res = {k: round(v, 3) for k, v in res.items()}
        res["packed_over_gemm_f32"] = round(res["packed"] / res["gemm_f32"], 2)
        res["packed_over_int8"] = round(res["packed"] / res["int8"], 2)
        res["decode_over_packed"] = round(res["decode"] / res["packed"], 2)
        out[f"q{q}"] = res
        print(f"N={n} Q={q}: " + ", ".join(f"{k} {v}" for k, v in res.items()), flush=True)
    del resident, f16, i8  # the floors' copies: at 1M they and a brute force do not fit together
    # the answers are exact: a sample of queries against a float32 brute force ranked by rank_key,
    # the rows decoded a block at a time (a float32 copy of 1M rows alone is 12.9 GB)
    sample = vectors(rng, 4)
    got = side.search_scores(sample, 10)
    best: list[list[tuple[float, int]]] = [[] for _ in sample]
    for s in range(0, n, 20_000):
        block = rows.read(slice(s, min(n, s + 20_000)))
        sims = block @ sample.T
        for i in range(len(sample)):
            top = np.argsort(-sims[:, i])[:200]
            best[i] = sorted(best[i] + [(float(sims[j, i]), s + int(j)) for j in top], reverse=True)[:200]
    for i, (qv_one, row) in enumerate(zip(sample, got)):
        cand = [j for _, j in best[i]]
        scored = [(float(rows.read(slice(j, j + 1))[0] @ qv_one), ids[j]) for j in cand]
        want = sorted(rank_key(sc, pid) for sc, pid in scored)[:10]
        assert [pid for pid, _ in row] == [pid for _, pid in want], "packed scan differs from brute force"
    out["exact_sample"] = "4 queries: equal to a float32 brute force"
    return out


LIST_LIMIT = 21  # a list's search: the deep list (15), the owner, 5 for ties (ListBuilder.search_limit)
PAGE = 512  # lists per page (streams/pipeline.py EVERY_LIST_PAGE)


def every_list(n: int, seed: int = 5) -> dict[str, Any]:
    """Every product's list at once, as a backfill's or a bulk round's every-list pass computes
    them: page by page (a pass over the catalog per 512 lists: N^2 products) against the all-pairs
    pass (index/all_pairs.py: each pair once, N^2 / 2, then each page rescored from its candidates),
    with the int8 floor of each (the arithmetic alone); the two answers compared list by list."""
    rng = np.random.default_rng(seed)
    side, ids, fill_s = filled(rng, n)
    rows = side._rows
    everyone = rows.read(slice(0, n))

    def pages(scan: Any = None) -> list[list[str]]:
        out: list[list[str]] = []
        for start in range(0, n, PAGE):
            hits = side.search(everyone[start:start + PAGE], LIST_LIMIT, ids=ids[start:start + PAGE], scan=scan)
            out += [[pid for pid, _ in h] for h in hits]
        return out

    t0 = time.perf_counter()
    searched = pages()
    t1 = time.perf_counter()
    scan = side.all_pairs(LIST_LIMIT)
    while not scan.done:
        scan.advance()
    t2 = time.perf_counter()
    paired = pages(scan)
    t3 = time.perf_counter()
    held = sum(scan.candidates(r) is not None for r in range(n))
    # the arithmetic alone: the int8 and f16 products of one page, N / PAGE times (halved for pairs)
    i8 = [torch.from_numpy(rows.segment(i)[1]) for i, s in enumerate(SEGMENTS) if s.codec == "i8" and WEIGHTS[s.name]]
    f16 = torch.cat([torch.from_numpy(rows.segment(i)[1]).float() for i, s in enumerate(SEGMENTS)
                     if s.codec == "f16"], dim=1)
    q_i8 = [torch.randint(-127, 128, (x.shape[1], PAGE), dtype=torch.int8) for x in i8]
    q_f16 = torch.randn(f16.shape[1], PAGE)
    page_floor = best_ms(lambda: ([torch._int_mm(x, y) for x, y in zip(i8, q_i8)], f16 @ q_f16)) / 1000
    floor_pages = page_floor * n / PAGE
    res = {"products": n, "fill_s": round(fill_s, 1), "limit": LIST_LIMIT, "keep": scan.keep,
           "pages_s": round(t1 - t0, 1), "all_pairs_s": round(t2 - t1, 1), "rescore_s": round(t3 - t2, 1),
           "all_pairs_total_s": round(t3 - t1, 1), "pages_over_all_pairs": round((t1 - t0) / (t3 - t1), 2),
           "int8_floor_pages_s": round(floor_pages, 1), "int8_floor_pairs_s": round(floor_pages / 2, 1),
           "all_pairs_over_floor": round((t2 - t1) / (floor_pages / 2), 2),
           "lists_from_candidates": held, "lists_searched": n - held,
           "equal_lists": sum(a == b for a, b in zip(searched, paired))}
    print(f"every list, N={n}: " + ", ".join(f"{k} {v}" for k, v in res.items()), flush=True)
    assert res["equal_lists"] == n, "the all-pairs pass differs from the page search"
    return res


EVENT_BATCH = 64  # queries per scan pass the floor assumes: a backlog's ingest batch


def floors(n: int, non_encoder_ms_per_event: float | None) -> dict[str, Any]:
    """The arithmetic floor of one event at catalog size n, measured now: its scan (one query of the
    affected-set pass) as a share of a batched int8 product (``EVENT_BATCH`` queries), and the
    worker's non-encoder milliseconds per event over it (``bench/run_all.py`` keys)."""
    res = measure(n, [EVENT_BATCH])
    floor = round(res[f"q{EVENT_BATCH}"]["int8"] / EVENT_BATCH, 5)
    return {"scan": res, "floor_ms_per_event": floor,
            "non_encoder_over_floor": round(non_encoder_ms_per_event / floor, 1)
            if non_encoder_ms_per_event and floor > 0 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--queries", default="1,16,64,256")
    ap.add_argument("--every-list", action="store_true",
                    help="measure every product's list at once: page search against the all-pairs pass")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("SIMSTREAM_TORCH_THREADS", "2")))
    sizes = list(map(int, a.sizes.split(",")))
    if a.every_list:
        report = {"machine": machine(), "every_list": {str(n): every_list(n) for n in sizes}}
    else:
        report = {"machine": machine(),
                  "scan": {str(n): measure(n, [int(q) for q in a.queries.split(",")]) for n in sizes}}
    emit(report, a.json)


if __name__ == "__main__":
    main()
