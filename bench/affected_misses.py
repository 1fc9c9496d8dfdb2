"""How often would the candidate pool alone miss a list that a changed product enters?

    python bench/affected_misses.py [--products 1000] [--changes 400] [--pool 64] [--seed 7]

Offline and exact: encodes the final catalog of the bench/exactness.py stream (same generator,
real text encoder, no images), then moves random products to a new random content ("far updates"
and new products). For each move it computes with numpy the exact set of lists X enters
(score(X, Y) >= k-th score of Y, ties by product_id) and compares it with what the pool search of
``index.neighbours.affected_by`` finds (top-``pool`` around X, widened x4 up to 256 while the
weakest hit still qualifies) *without* the exact tail, and reports the size of the exact tail's
loose set (lists with k-th score <= the pool's weakest score) that closes the gap.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simstream.encoders.fusion import ProductEncoder  # noqa: E402
from simstream.streams.contracts import parse_event  # noqa: E402
from simstream.settings import Settings  # noqa: E402
from simstream.harness.synthetic import generate_stream, random_content  # noqa: E402


def encode(encoder: ProductEncoder, docs: list[dict]) -> np.ndarray:
    events = [parse_event(d["product_id"].encode(), json.dumps(d).encode()) for d in docs]
    out = []
    for s in range(0, len(events), 256):
        out.append(np.asarray(encoder.encode(events[s:s + 256], {}).vectors, np.float32))
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=1000)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--changes", type=int, default=400)
    ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--max-pool", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    stream = generate_stream(a.products, a.events, a.seed)
    live = sorted(stream.live)
    encoder = ProductEncoder(Settings(image_enabled=False))
    V = encode(encoder, [stream.live[p] for p in live])
    news = [{"product_id": f"new{i}", "op": "upsert", "version": 1,
             **{k: v for k, v in random_content(rng).items() if not k.startswith("_")}} for i in range(a.changes)]
    N = encode(encoder, news)
    n, k = len(live), a.k
    entered_total = missed_total = changes_with_miss = 0
    loose_sizes = []
    sims = V @ V.T
    np.fill_diagonal(sims, -np.inf)
    for t in range(a.changes):
        x = rng.randrange(n)  # X moves from its old vector to N[t]
        s_cat = sims.copy()
        s_cat[:, x] = -np.inf  # Y's lists without X's old vector
        kth = -np.sort(-s_cat, axis=1)[:, k - 1]
        sx = V @ N[t]
        sx[x] = -np.inf
        entered = {y for y in range(n) if y != x and sx[y] >= kth[y]}
        limit = a.pool
        found: set[int] = set()
        while True:
            order = np.argsort(-sx)[:limit]
            hit = {int(y) for y in order if sx[y] >= kth[y] - 1e-5}
            found |= hit
            weakest = int(order[-1])
            if weakest in hit and limit < a.max_pool:
                limit = min(a.max_pool, limit * 4)
                continue
            floor = float(sx[weakest])
            break
        missed = entered - found
        entered_total += len(entered)
        missed_total += len(missed)
        changes_with_miss += bool(missed)
        loose_sizes.append(int(np.sum(kth <= floor + 1e-5)))
    report = {"products": n, "changes": a.changes, "pool": a.pool, "max_pool": a.max_pool, "k": k,
              "lists_entered": entered_total, "missed_by_pool": missed_total,
              "miss_rate": missed_total / max(1, entered_total),
              "changes_with_a_miss": changes_with_miss,
              "exact_tail_loose_lists_mean": float(np.mean(loose_sizes)),
              "exact_tail_loose_lists_max": int(np.max(loose_sizes))}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
