"""The list mirror's per-batch question at catalog scale: "which lists have a boundary at most x".

    python bench/list_mirror_bench.py [--sizes 100000,1000000] [--json OUT]

Issue 21 item 3: the ingest step asks it once per batch (index/neighbours.py ``affected_by``,
the exact tail). It was a Python pass over every list head; the mirror now keeps real lists
sorted by boundary. Same run, same heads: the old scan (the baseline, re-implemented here as it
was) against ``ListMirror.boundaries_at_most``, both returning the same dict (checked), and the
cost of recording a head (``put``), which the sorted index makes slightly dearer.
Boundaries are drawn like a catalog's: most lists' k-th scores are high, a thin tail is low.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simstream.index.list_mirror import ListMirror  # noqa: E402
from simstream.index.rows import ListHead  # noqa: E402


def heads(n: int, rng: random.Random) -> list[ListHead]:
    ids = [f"p{i:07d}" for i in range(n)]
    out = []
    for pid in ids:
        boundary = min(0.99, max(-1.0, rng.gauss(0.62, 0.08)))
        out.append(ListHead(pid, tuple(rng.choice(ids) for _ in range(15)), boundary, 1))
    return out


class _NoIndex:
    def add(self, owner: str) -> None: ...

    def remove(self, owner: str) -> None: ...

    def update(self, owners: list[str]) -> None: ...


class ScanMirror(ListMirror):
    """The mirror as it was: no boundary index (the baseline of ``put`` and of loading)."""

    def __init__(self) -> None:
        super().__init__()
        self._by_boundary = _NoIndex()  # type: ignore[assignment]


def old_scan(mirror: ListMirror, score: float) -> dict[str, float]:
    """The former implementation: a pass over every head."""
    return {pid: h.boundary for pid, h in mirror._heads.items() if not h.is_tombstone and h.boundary <= score}


def best_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def run(n: int) -> dict[str, float]:
    rng = random.Random(5)
    all_heads = heads(n, rng)
    mirror = ListMirror()
    t = time.perf_counter()
    mirror.put(all_heads)
    load_s = time.perf_counter() - t
    # the exact tail's threshold: the weakest score of a search row, usually below all but a few lists
    score = sorted(h.boundary for h in all_heads)[max(0, n // 2000)]
    assert mirror.boundaries_at_most(score) == old_scan(mirror, score)
    answer = len(mirror.boundaries_at_most(score))
    new_ms = best_ms(lambda: mirror.boundaries_at_most(score), 20)
    old_ms = best_ms(lambda: old_scan(mirror, score), 5)
    baseline = ScanMirror()
    t = time.perf_counter()
    baseline.put(all_heads)
    baseline_load_s = time.perf_counter() - t
    again = [ListHead(h.product_id, h.neighbour_ids, min(0.99, h.boundary + 0.01), 2) for h in all_heads[:2000]]
    put_us = best_ms(lambda: mirror.put(again), 3) / len(again) * 1000
    baseline_put_us = best_ms(lambda: baseline.put(again), 3) / len(again) * 1000
    return {"lists": n, "answer": answer, "scan_ms": round(old_ms, 3), "sorted_ms": round(new_ms, 4),
            "scan_over_sorted": round(old_ms / max(new_ms, 1e-6), 1), "put_us_per_head": round(put_us, 2),
            "put_over_baseline": round(put_us / baseline_put_us, 2), "load_s": round(load_s, 2),
            "load_over_baseline": round(load_s / baseline_load_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--json")
    args = ap.parse_args()
    results = [run(int(s)) for s in args.sizes.split(",") if s]
    for r in results:
        print(f"{r['lists']:>9,} lists: boundaries_at_most {r['sorted_ms']} ms (answer {r['answer']}) vs scan "
              f"{r['scan_ms']} ms = {r['scan_over_sorted']}x faster; put {r['put_us_per_head']} us/head "
              f"({r['put_over_baseline']}x the unindexed mirror); load {r['load_s']} s ({r['load_over_baseline']}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
