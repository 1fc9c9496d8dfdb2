"""GPU readiness check: the encoders, an exact side-index search and a blocked all-pairs top-K on CUDA.

    python bench/gpu_check.py [--items 512] [--catalog 1000000] [--dim 1024] [--json OUT]

Without a CUDA device it prints why and exits 0 (nothing here needs a GPU to pass CI). With one:
- text and image encoders as the worker builds them (``encoders.device``: torch, bf16/fp16 autocast,
  pinned host copies), items/s at the pipeline batch size;
- side-index search stand-in: one query batch against ``--catalog`` float16 vectors (matmul + top-k);
- backfill stand-in: blocked all-pairs top-K over the same catalog (every product's list), products/s
  and the projected time for the whole catalog.
Vectors are random for the searches (the cost depends on shapes only); the encoders use real
weights and the bundled sample pictures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def encoders(items: int, batch: int) -> dict[str, Any]:
    from simstream.encoders.image import ImageEncoder
    from simstream.encoders.text import TextEncoder

    text = TextEncoder(device="cuda")
    texts = [f"wireless headphones model {i} with noise cancelling, black, over-ear" for i in range(items)]
    text.encode(texts[:batch], batch_size=batch)
    _sync()
    t0 = time.perf_counter()
    text.encode(texts, batch_size=batch)
    _sync()
    text_s = time.perf_counter() - t0
    image = ImageEncoder(device="cuda")
    pictures = sorted((ROOT / "harness" / "sample" / "images").glob("*.png"))
    tensors = [image.preprocess(p.read_bytes()) for p in pictures]
    tensors = [tensors[i % len(tensors)] for i in range(items)]
    image.encode_tensors(tensors[:batch], batch_size=batch)
    _sync()
    t0 = time.perf_counter()
    image.encode_tensors(tensors, batch_size=batch)
    _sync()
    image_s = time.perf_counter() - t0
    return {"backend": {"text": text.backend, "image": image.backend}, "items": items, "batch_size": batch,
            "text_items_per_s": round(items / text_s, 1), "image_items_per_s": round(items / image_s, 1),
            "image_includes_decode": False}


def searches(catalog: int, dim: int, k: int, queries: int, block: int) -> dict[str, Any]:
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    vectors = torch.randn(catalog, dim, device="cuda", dtype=torch.float16, generator=gen)
    vectors /= vectors.norm(dim=1, keepdim=True)
    q = vectors[:queries]
    torch.topk(q @ vectors.T, k + 1, dim=1)
    _sync()
    t0 = time.perf_counter()
    torch.topk(q @ vectors.T, k + 1, dim=1)
    _sync()
    search_s = time.perf_counter() - t0
    # Blocked all-pairs: each block of rows against the whole catalog, top-(k+1) (self included).
    done, t0 = 0, time.perf_counter()
    budget_s = 20.0
    while done < catalog and time.perf_counter() - t0 < budget_s:
        rows = vectors[done:done + block]
        torch.topk(rows @ vectors.T, k + 1, dim=1)
        done += len(rows)
    _sync()
    allpairs_s = time.perf_counter() - t0
    rate = done / allpairs_s
    return {"catalog": catalog, "dim": dim, "k": k, "dtype": "float16",
            "search_queries": queries, "search_ms_per_query": round(search_s / queries * 1000, 4),
            "backfill_rows_done": done, "backfill_products_per_s": round(rate, 1),
            "backfill_projected_s": round(catalog / rate, 1),
            "catalog_bytes": catalog * dim * 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--catalog", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--block", type=int, default=512)  # 512 x 1M float16 scores: 1 GB
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device visible to torch (torch "
              f"{torch.__version__}, cuda build {torch.version.cuda}); every encoder runs on the CPU here")
        return 0
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "bf16": torch.cuda.is_bf16_supported(),
        "encoders": encoders(a.items, a.batch),
        "search": searches(a.catalog, a.dim, a.k, a.queries, a.block),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
