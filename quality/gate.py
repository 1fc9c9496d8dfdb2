"""The gate before a switch of generations (``simstream migrate``): is the shadow complete, exact, and no worse?

Four checks, printed as a report and kept as JSON:

- **catalog**: the shadow holds the same (product id, version) set as the live index. Both consume
  the same stream, so a difference still in flight is read again for ``settle_s``; what persists is
  listed and fails the gate.
- **lists**: a seeded sample of the shadow's recorded lists equals an exact top-K over its stored
  vectors (every product scored, page by page; equal ids in order, or equal scores rank by rank
  where near-ties order differently). A mismatch is computed again once after ``settle_s`` (the list
  may have been mid-refresh); what persists fails the gate.
- **labelled** (``--gate DATASET_DIR``): the ``eval`` protocol on a labelled benchmark under both
  generations' models; recall@1, recall@10 and MRR of the new one may not be lower than the live
  one's by more than ``margin``.
- **churn** (reported, and failing only above ``max_churn`` when one is given): the share of lists
  that would change, mean overlap@K with today's lists, top-1 changes, mean score shift.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from simstream.generations import ControlRecord, generation_settings
from simstream.index.milvus import MilvusStore
from simstream.records import NeighbourList
from simstream.settings import Settings

__all__ = ["GateOptions", "SAMPLE_IDS", "METRICS", "run_gate", "format_gate", "catalog_check", "lists_check",
           "churn", "labelled_check"]

SAMPLE_IDS = 20  # ids named per kind of difference
METRICS = ("recall@1", "recall@10", "mrr")  # the labelled check's metrics
_PAGE = 1000


@dataclass(frozen=True)
class GateOptions:
    sample: int = 200  # lists checked against an exact top-K
    margin: float = 0.01  # the largest drop of a labelled metric that still passes
    max_churn: float | None = None  # fail when more than this share of lists would change (None: report only)
    dataset: Path | None = None  # a labelled benchmark folder (tableA.csv, tableB.csv, gold)
    fields: str | None = None  # NAME=COLUMN,... of the dataset (default: the known benchmark's, else title=title)
    gold: str | None = None  # the gold file in the folder (default: the known benchmark's, else test.csv)
    settle_s: float = 10.0
    seed: int = 1


def _open(settings: Settings) -> MilvusStore:
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
    return MilvusStore.connect(settings.resolved_milvus_uri, settings.collection, None, token=token,
                               timeout_s=settings.milvus_timeout_s)


def _versions(store: MilvusStore) -> dict[str, int]:
    return {p.product_id: p.version for page in store.iter_products(_PAGE) for p in page}


def catalog_check(live: MilvusStore, shadow: MilvusStore, *, settle_s: float,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """(id, version) of both indexes; differences re-read until they settle or ``settle_s`` passed."""
    have, want = _versions(shadow), _versions(live)
    differing = [pid for pid in sorted(set(have) | set(want)) if have.get(pid) != want.get(pid)]
    waited = 0.0
    while differing and waited < settle_s:
        sleep(2.0)
        waited += 2.0
        now_live = {pid: p.version for pid, p in live.read_products(differing, with_vectors=False).items()}
        now_shadow = {pid: p.version for pid, p in shadow.read_products(differing, with_vectors=False).items()}
        for pid in differing:
            want.pop(pid, None)
            have.pop(pid, None)
        want.update(now_live)
        have.update(now_shadow)
        differing = [pid for pid in differing if have.get(pid) != want.get(pid)]
    only_live = [p for p in differing if p not in have]
    only_shadow = [p for p in differing if p not in want]
    other = [p for p in differing if p in have and p in want]
    return {"products": len(want), "equal": not differing, "only_in_live": len(only_live),
            "only_in_shadow": len(only_shadow), "version_differs": len(other),
            "examples": {"only_in_live": only_live[:SAMPLE_IDS], "only_in_shadow": only_shadow[:SAMPLE_IDS],
                         "version_differs": other[:SAMPLE_IDS]}}


def _exact(store: MilvusStore, queries: Mapping[str, np.ndarray], k: int) -> dict[str, list[tuple[str, float]]]:
    """The exact top-``k`` of each query vector over every stored product but itself."""
    best: dict[str, list[tuple[float, str]]] = {q: [] for q in queries}
    ids = list(queries)
    matrix = np.stack([queries[q] for q in ids]).astype(np.float32) if ids else np.zeros((0, 0), np.float32)
    for page in store.iter_products(_PAGE, with_vectors=True):
        page_ids = [p.product_id for p in page]
        scores = store.metric.matrix(matrix, np.stack([p.vector for p in page]))
        for row, q in enumerate(ids):
            merged = best[q] + [(float(s), pid) for s, pid in zip(scores[row], page_ids) if pid != q]
            merged.sort(key=lambda t: (-round(t[0], 6), t[1]))
            best[q] = merged[:k]
    return {q: [(pid, s) for s, pid in best[q]] for q in ids}


def _same(recorded: NeighbourList | None, exact: Sequence[tuple[str, float]]) -> bool:
    if recorded is None:
        return False
    got = [(n.product_id, n.score) for n in recorded.neighbours]
    if [p for p, _ in got] == [p for p, _ in exact]:
        return True
    return len(got) == len(exact) and all(abs(a[1] - b[1]) <= 1e-5 for a, b in zip(got, exact))


def lists_check(shadow: MilvusStore, *, sample: int, k: int, seed: int, settle_s: float,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """A seeded sample of the shadow's recorded lists against an exact top-``k`` of its vectors."""
    ids = sorted(_versions(shadow))
    chosen = sorted(random.Random(seed).sample(ids, min(sample, len(ids))))

    def mismatches(pids: list[str]) -> list[str]:
        vectors = {pid: p.vector for pid, p in shadow.read_products(pids, with_vectors=True).items()}
        exact = _exact(shadow, vectors, k)
        recorded = {pid: NeighbourList.from_json(s.payload) if s.payload else None
                    for pid, s in shadow.read_lists(list(vectors)).items()}
        return [pid for pid in vectors if not _same(recorded.get(pid), exact[pid])]

    wrong = mismatches(chosen)
    if wrong:
        sleep(settle_s)
        wrong = mismatches(wrong)
    return {"sampled": len(chosen), "equal": len(chosen) - len(wrong), "unequal": wrong[:SAMPLE_IDS]}


def churn(live: MilvusStore, shadow: MilvusStore, k: int) -> dict[str, Any]:
    """How the published lists would change: share changed, overlap@K, top-1 changes, score shift."""
    ids = sorted(_versions(shadow))
    compared = changed = top1 = 0
    overlap = shift = 0.0
    for start in range(0, len(ids), _PAGE):
        page = ids[start:start + _PAGE]
        old, new = live.read_lists(page), shadow.read_lists(page)
        for pid in page:
            if pid not in old or pid not in new or not old[pid].payload or not new[pid].payload:
                continue
            a = NeighbourList.from_json(old[pid].payload).neighbours[:k]
            b = NeighbourList.from_json(new[pid].payload).neighbours[:k]
            compared += 1
            a_ids, b_ids = [n.product_id for n in a], [n.product_id for n in b]
            changed += a_ids != b_ids
            top1 += bool(a_ids and b_ids and a_ids[0] != b_ids[0])
            overlap += len(set(a_ids) & set(b_ids)) / max(k, 1)
            if a and b:
                shift += float(np.mean([n.score for n in b]) - np.mean([n.score for n in a]))
    n = max(compared, 1)
    return {"lists_compared": compared, "changed_share": round(changed / n, 4), "mean_overlap_at_k": round(overlap / n, 4),
            "top1_changed_share": round(top1 / n, 4), "mean_score_shift": round(shift / n, 4)}


def labelled_check(dataset: Path, fields_spec: str | None, gold_name: str | None, live: Settings, shadow: Settings,
                   margin: float) -> dict[str, Any]:
    """The ``eval`` protocol under both models; the new one may lose at most ``margin`` on ``METRICS``."""
    from simstream.quality.datasets import parse_field_map
    from simstream.quality.evaluate import evaluate
    from simstream.quality.generalise import BENCHMARKS

    known = next((b for b in BENCHMARKS if b.name == dataset.name), None)
    fields = parse_field_map((fields_spec or (known.fields if known else "title=title")).split(","))
    gold = dataset / (gold_name or (known.gold if known else "test.csv"))

    def measure(settings: Settings) -> dict[str, float]:
        update: dict[str, Any] = {"image_enabled": False} if "image" not in fields else {"image_root": dataset}
        # each generation's method on the benchmark: its lexicon was fitted on the live catalog, so
        # one with a lexicon gets the benchmark's own (as its migration would fit), one without none
        update["lexicon"] = "catalog" if settings.lexicon.strip() not in ("", "none") else "none"
        report = evaluate(dataset / "tableA.csv", dataset / "tableB.csv", gold, fields, with_tfidf=False,
                          settings=settings.model_copy(update=update))
        return {m: float(report["simstream"][m]) for m in METRICS}

    before, after = measure(live), measure(shadow)
    worse = [m for m in METRICS if after[m] < before[m] - margin]
    return {"dataset": str(dataset), "gold": gold.name, "live": before, "shadow": after, "margin": margin,
            "passed": not worse, "worse": worse}


def run_gate(base: Settings, record: ControlRecord, opts: GateOptions, *, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every check of the migration in ``record`` (shadow = its target); ``passed`` and ``reasons``."""
    m = record.migration
    assert m is not None
    live_settings = generation_settings(base, record.generations.get(m.source), m.source)
    shadow_settings = generation_settings(base, record.generations.get(m.target), m.target)
    live, shadow = _open(live_settings), _open(shadow_settings)
    try:
        say("gate: comparing the catalogs")
        report: dict[str, Any] = {"source": m.source, "target": m.target,
                                  "catalog": catalog_check(live, shadow, settle_s=opts.settle_s)}
        say(f"gate: checking {opts.sample} lists against an exact top-K")
        report["lists"] = lists_check(shadow, sample=opts.sample, k=shadow_settings.top_k, seed=opts.seed,
                                      settle_s=opts.settle_s)
        report["churn"] = churn(live, shadow, shadow_settings.top_k)
    finally:
        live.close()
        shadow.close()
    report["labelled"] = None
    if opts.dataset is not None:
        say(f"gate: measuring both models on {opts.dataset.name}")
        report["labelled"] = labelled_check(opts.dataset, opts.fields, opts.gold, live_settings, shadow_settings,
                                            opts.margin)
    reasons = []
    c = report["catalog"]
    if not c["equal"]:
        reasons.append(f"catalog differs: {c['only_in_live']} only live, {c['only_in_shadow']} only shadow, "
                       f"{c['version_differs']} other versions")
    if report["lists"]["equal"] != report["lists"]["sampled"]:
        reasons.append(f"{report['lists']['sampled'] - report['lists']['equal']} sampled lists are not the exact top-K")
    if report["labelled"] is not None and not report["labelled"]["passed"]:
        lab = report["labelled"]
        reasons.append("worse on " + ", ".join(f"{k} {lab['shadow'][k]:.4f} < {lab['live'][k]:.4f} - {opts.margin}"
                                               for k in lab["worse"]))
    if opts.max_churn is not None and report["churn"]["changed_share"] > opts.max_churn:
        reasons.append(f"{report['churn']['changed_share']:.1%} of lists would change (over {opts.max_churn:.1%})")
    report["passed"], report["reasons"] = not reasons, reasons
    return report


def format_gate(report: Mapping[str, Any]) -> str:
    """The gate's report for people."""
    c, lists, ch, lab = report["catalog"], report["lists"], report["churn"], report.get("labelled")
    lines = [f"gate {'PASSED' if report['passed'] else 'FAILED'}" + (f": {'; '.join(report['reasons'])}" if report["reasons"] else ""),
             f"  catalog   {c['products']} products; only live {c['only_in_live']}, only shadow {c['only_in_shadow']}, "
             f"other versions {c['version_differs']}",
             f"  lists     {lists['equal']}/{lists['sampled']} sampled lists equal an exact top-K",
             f"  churn     {ch['changed_share']:.1%} of {ch['lists_compared']} lists change; overlap@K "
             f"{ch['mean_overlap_at_k']:.3f}; top-1 changes {ch['top1_changed_share']:.1%}; score shift "
             f"{ch['mean_score_shift']:+.4f}"]
    if lab is not None:
        lines.append(f"  labelled  {Path(lab['dataset']).name}: " + ", ".join(
            f"{m} {lab['live'][m]:.4f} -> {lab['shadow'][m]:.4f}" for m in METRICS) + f" (margin {lab['margin']})")
    else:
        lines.append("  labelled  not measured (--gate DATASET_DIR)")
    return "\n".join(lines)
