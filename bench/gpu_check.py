"""GPU check (issue 21, item 8): the encoders, the exact scan and the all-pairs pass on one GPU.

    python bench/gpu_check.py [--catalog 1000000] [--big 10000000] [--json OUT]
    python bench/gpu_check.py --device cpu --catalog 20000 --big 40000 --no-encoders   # smoke run

One prepared script for a session that is lent a GPU (about 15 minutes, all tries together): it
finishes in under 8 minutes on one H200, prints one table, and exits 1 when a list is not exact.
Without a CUDA device it says so and exits 0 (``--device cpu`` runs the same code on the CPU at
small sizes: the smoke test in tests/harness runs it that way).

1. **encoders**: text and image items/s at batch sizes 32, 128 and 512, built as the worker builds
   them (torch with bf16/fp16 autocast on CUDA).
2. **floor**: the device's float32 matrix-product rate, exact float32 (no TF32:
   ``index.device_rows.exact_float32_matmul``), on a 16,384 x 3,232 x 16,384 product.
3. **side index** at ``--catalog`` synthetic products on the storage grid (the text+image layout;
   each segment a random unit vector scaled by sqrt(weight), then put on the grid as the encoder
   writes them): the fill (host packing plus the device copy, index/device_rows.py), and the scan
   (``SideIndex.search_scores`` for 256 queries at the refresh's limit): queries/s and the ratio of
   its arithmetic rate to the floor.
4. **all pairs** at ``--catalog``: the every-list pass of a backfill (index/all_pairs.py) on the
   device, seconds and the ratio to the floor (N^2 / 2 products).
5. **exactness**: 64 sampled lists, from the scan and from the all-pairs pass's candidates, each
   equal to a reference: a float64 preselection (top limit + 64, widened by every row within 1e-5),
   ranked by the oracle's own float32 dot products and ``rank_key``.
6. **the scan at ``--big``** products (10M: 129 GB of float32 rows; fewer when the device has less
   free memory, which the table says): rows made on the device directly (the host would need
   minutes to pack them), the scan's own code (``scan_candidates``) with 256 queries; and 8 queries'
   candidates checked to hold their float64 top list.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import synthetic_fused  # type: ignore  # noqa: E402
QUERIES = 256
SAMPLE = 64


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


# --- 1. encoders ----------------------------------------------------------------------------------
def encoders(items: int, batches: list[int], device: Any) -> dict[str, Any]:
    from simstream.encoders.image import ImageEncoder
    from simstream.encoders.text import TextEncoder

    text = TextEncoder(device=device.type)
    texts = [f"wireless headphones model {i} with noise cancelling, black, over-ear, 30 h battery, usb-c "
             "charging, foldable, with a hard case and an audio cable" for i in range(items)]
    image = ImageEncoder(device=device.type)
    pictures = sorted((ROOT / "harness" / "sample" / "images").glob("*.png"))
    tensors = [image.preprocess(p.read_bytes()) for p in pictures]
    tensors = [tensors[i % len(tensors)] for i in range(items)]
    out: dict[str, Any] = {"backend": {"text": text.backend, "image": image.backend}, "items": items}
    for batch in batches:
        text.encode(texts[:batch], batch_size=batch)
        _, text_s = timed(lambda: text.encode(texts, batch_size=batch), device)
        image.encode_tensors(tensors[:batch], batch_size=batch)
        _, image_s = timed(lambda: image.encode_tensors(tensors, batch_size=batch), device)
        out[f"batch_{batch}"] = {"text_items_per_s": round(items / text_s, 1),
                                 "image_items_per_s": round(items / image_s, 1)}
    return out


# --- 2. the floor ---------------------------------------------------------------------------------
def gemm_rate(device: Any, dim: int, side: int) -> float:
    """float32 FLOP/s of a side x dim x side product, exact float32 (the best of 3)."""
    import torch

    from simstream.index.device_rows import exact_float32_matmul

    a = torch.randn(side, dim, device=device)
    b = torch.randn(side, dim, device=device)
    best = float("inf")
    with exact_float32_matmul():
        a @ b.T
        for _ in range(3):
            _, s = timed(lambda: a @ b.T, device)
            best = min(best, s)
    return 2.0 * side * side * dim / best


# --- 3-5. the side index, all pairs, exactness ----------------------------------------------------
def layout() -> Any:
    from simstream.encoders.fusion import ProductEncoder
    from simstream.settings import Settings

    return ProductEncoder(Settings(image_enabled=True, device="cpu"))


def reference_lists(side: Any, queries: np.ndarray, limit: int) -> list[list[str]]:
    """Each query's exact top-``limit`` by the definition (index/exact.py), found without the scan:
    float64 products preselect, the oracle's float32 dot products and ``rank_key`` decide."""
    import torch

    from simstream.index.exact import rank_key

    n = len(side._ids)
    live = np.flatnonzero(side._live[:n])
    dev = side.device
    q64 = torch.from_numpy(queries.astype(np.float64)).to(dev)
    parts = []
    for first in range(0, n, 65_536):
        block = torch.from_numpy(side._rows.read(slice(first, min(n, first + 65_536)))).to(dev, torch.float64)
        parts.append((block @ q64.T).cpu().numpy())
    sims = np.concatenate(parts)[live]  # rows x queries, float64
    out = []
    for j, q in enumerate(queries):
        s = sims[:, j]
        pre = np.argpartition(-s, limit + 64)[:limit + 64]
        kth = np.sort(s[pre])[::-1][limit - 1]
        pool = live[np.union1d(pre, np.flatnonzero(s >= kth - 1e-5))]
        decoded = side._rows.read(pool)
        scored = sorted(((float(decoded[i] @ q), side._ids[r]) for i, r in enumerate(pool.tolist())),
                        key=lambda t: rank_key(t[0], t[1]))[:limit]
        out.append([pid for _, pid in scored])
    return out


def side_index(enc: Any, n: int, device: Any, floor: float, rng: np.random.Generator) -> tuple[dict[str, Any], int]:
    import torch

    from simstream.index.neighbours import TIE_MARGIN
    from simstream.index.rows import StoredProduct
    from simstream.index.side import SideIndex
    from simstream.settings import Settings

    limit = Settings().top_k + 1 + TIE_MARGIN
    side = SideIndex(enc.dim, capacity=n, segments=enc.segments, device=device, resident=True)
    t0 = time.perf_counter()
    page = 20_000
    for start in range(0, n, page):
        vec = synthetic_fused(enc, min(page, n - start), rng)
        side.put([StoredProduct(f"sku-{start + i:08d}", vec[i], 1, {}, enc.model, 1, 2 + start + i)
                  for i in range(len(vec))])
    sync(device)
    fill_s = time.perf_counter() - t0
    sample = rng.choice(n, SAMPLE, replace=False)
    queries = side._rows.read(np.concatenate([sample, rng.choice(n, QUERIES - SAMPLE, replace=False)]))
    side.search_scores(queries[:8], limit)  # warm up
    sync(device)
    t0 = time.perf_counter()
    side.search_scores(queries, limit)
    sync(device)
    scan_s = time.perf_counter() - t0
    want = reference_lists(side, queries[:SAMPLE], limit)
    got = [[pid for pid, _ in row] for row in side.search(queries[:SAMPLE], limit)]
    scan_equal = sum(g == w for g, w in zip(got, want))
    scan = side.all_pairs(limit)
    t0 = time.perf_counter()
    while not scan.done:
        scan.advance(pairs=64)
    sync(device)
    pairs_s = time.perf_counter() - t0
    ids = [side._ids[int(r)] for r in sample]
    from_pass = [[pid for pid, _ in row] for row in side.search(queries[:SAMPLE], limit, ids=ids, scan=scan)]
    held = sum(scan.candidates(int(r)) is not None for r in sample)
    pass_equal = sum(g == w for g, w in zip(from_pass, want))
    scan_flop = 2.0 * QUERIES * n * enc.dim
    pairs_flop = 1.0 * n * n * enc.dim  # N^2 / 2 products of 2 x dim flop
    out = {
        "products": n, "dim": enc.dim, "limit": limit, "fill_s": round(fill_s, 1),
        "resident_gib": round(side._resident.nbytes / 2**30, 2) if side._resident is not None else 0.0,
        "scan_queries_per_s": round(QUERIES / scan_s, 1), "scan_over_floor": round(floor / (scan_flop / scan_s), 2),
        "all_pairs_s": round(pairs_s, 1), "all_pairs_over_floor": round(floor / (pairs_flop / pairs_s), 2),
        "sampled_lists": SAMPLE, "scan_lists_equal": scan_equal, "all_pairs_lists_equal": pass_equal,
        "all_pairs_candidates_held": held,
    }
    del scan, side
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out, limit


# --- 6. the scan at the big size ------------------------------------------------------------------
def big_scan(enc: Any, wanted: int, device: Any, floor: float, limit: int) -> dict[str, Any]:
    """The scan's own code over ``wanted`` rows made on the device (fewer if they do not fit)."""
    import torch

    from simstream.index.device_rows import DeviceRows
    from simstream.index.packed_rows import PackedRows
    from simstream.index.packed_scan import scan_candidates

    row_bytes = enc.dim * 4
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        n = min(wanted, int(0.85 * free / row_bytes))
    else:
        n = wanted
    rows = DeviceRows(enc.dim, n, device)
    gen = torch.Generator(device=device).manual_seed(1)
    live_cols = [(sl, enc.scale[f]) for f, sl in enc.layout.items() if enc.weights[f] > 0]
    t0 = time.perf_counter()
    chunk = 262_144
    for first in range(0, n, chunk):
        block = rows.block(first, min(n, first + chunk))
        for sl, scale in live_cols:
            seg = torch.randn(len(block), sl.stop - sl.start, device=device, generator=gen)
            seg /= seg.norm(dim=1, keepdim=True)
            block[:, sl] = (seg * scale).half().float()  # on a float16 grid, as the text segment is
    sync(device)
    fill_s = time.perf_counter() - t0
    shell = PackedRows(enc.dim, enc.segments, 1)  # the scan reads only its segments and max norm here
    shell.max_norm = max(float(rows.block(f, min(n, f + chunk)).double().norm(dim=1).max())
                         for f in range(0, n, chunk))
    live = np.ones(n, bool)
    pick = torch.randint(0, n, (QUERIES,), device=device, generator=gen)
    queries = rows.data[pick].cpu().numpy()
    scan_candidates(shell, live, n, queries[:8], limit, resident=rows)
    sync(device)
    t0 = time.perf_counter()
    cand = scan_candidates(shell, live, n, queries, limit, resident=rows)
    sync(device)
    scan_s = time.perf_counter() - t0
    # 8 queries: the candidates hold every row of the float64 top-limit (up to ties within 1e-6)
    holds = 0
    q64 = torch.from_numpy(queries[:8].astype(np.float64)).to(device)
    sims = torch.cat([rows.block(f, min(n, f + chunk)).double() @ q64.T for f in range(0, n, chunk)])
    for j in range(8):
        top = torch.topk(sims[:, j], limit)
        sure = top.indices[top.values > top.values[-1] + 1e-6].cpu().numpy()
        holds += bool(np.isin(sure, cand.rows[j]).all())
    del rows, sims
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"products": n, "asked": wanted, "fill_on_device_s": round(fill_s, 1),
            "scan_queries_per_s": round(QUERIES / scan_s, 1),
            "scan_over_floor": round(floor / (2.0 * QUERIES * n * enc.dim / scan_s), 2),
            "checked_queries": 8, "candidates_hold_the_top": holds}


def table(report: dict[str, Any]) -> str:
    lines = [f"gpu_check on {report['device']} (torch {report['torch']})", ""]

    def row(part: str, what: str, value: Any) -> None:
        lines.append(f"  {part:<12} {what:<44} {value}")

    for key, val in report.get("encoders", {}).items():
        if key.startswith("batch_"):
            row("encoders", f"text / image items/s, batch {key[6:]}", f"{val['text_items_per_s']} / {val['image_items_per_s']}")
    row("floor", "float32 GEMM TFLOP/s (no TF32)", report["floor_tflops"])
    s = report["side_index"]
    row("side index", f"{s['products']:,} products: fill s / resident GiB", f"{s['fill_s']} / {s['resident_gib']}")
    row("", f"scan, {QUERIES} queries: queries/s (over the floor)", f"{s['scan_queries_per_s']} ({s['scan_over_floor']}x)")
    row("all pairs", "every list's candidates: s (over the floor)", f"{s['all_pairs_s']} ({s['all_pairs_over_floor']}x)")
    row("exactness", "sampled lists equal: scan / all pairs", f"{s['scan_lists_equal']} / {s['all_pairs_lists_equal']} of {s['sampled_lists']}")
    b = report["big"]
    row("big scan", f"{b['products']:,} products (asked {b['asked']:,}): queries/s", f"{b['scan_queries_per_s']} ({b['scan_over_floor']}x)")
    row("", "candidates hold the float64 top", f"{b['candidates_hold_the_top']} of {b['checked_queries']}")
    row("verdict", "", "EXACT" if report["exact"] else "MISMATCH")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (skips without one), or cpu for a smoke run")
    ap.add_argument("--items", type=int, default=1024, help="items per encoder measurement")
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--no-encoders", action="store_true")
    ap.add_argument("--catalog", type=int, default=1_000_000)
    ap.add_argument("--big", type=int, default=10_000_000)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device visible to torch (torch "
              f"{torch.__version__}, cuda build {torch.version.cuda}); every encoder and scan runs on the CPU here")
        return 0
    device = torch.device(a.device)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__}
    if not a.no_encoders:
        report["encoders"] = encoders(a.items, [int(b) for b in a.batches.split(",") if b], device)
    enc = layout()
    floor = gemm_rate(device, enc.dim, 16_384 if device.type == "cuda" else 2_048)
    report["floor_tflops"] = round(floor / 1e12, 2)
    report["side_index"], limit = side_index(enc, a.catalog, device, floor, rng)
    report["big"] = big_scan(enc, a.big, device, floor, limit)
    s, b = report["side_index"], report["big"]
    report["exact"] = (s["scan_lists_equal"] == s["sampled_lists"] == s["all_pairs_lists_equal"]
                       and b["candidates_hold_the_top"] == b["checked_queries"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(table(report))
    print(f"  {'':<12} {'seconds in all':<44} {report['seconds']}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
