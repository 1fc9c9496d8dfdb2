"""Run every performance benchmark of issue 5 (a-f) in one process and write one JSON document.

    python bench/run_all.py --json OUT [--quick]

a  encoder ceiling (items/s, pipeline batch size, text-only and text+image)   bench/encoders_bench.py
b  pipeline throughput through broker + worker + milvus-lite                  bench/pipeline_bench.py
c  freshness p50/p95/p99 at 50 % of (b)                                        bench/pipeline_bench.py
d  batching gain: worker with batch size 1 vs the tuned batch                  bench/pipeline_bench.py
e  refresh cost: VectorStore.search vs numpy brute force at 10k and 100k      bench/refresh_bench.py
f  change-aware updates: price-only / full encode cost                         bench/encoders_bench.py
scale  issue 13: RSS/product, start-up, non-encoder ms/event, events/s, exactness at 10k and 100k,
       price-only rate and freshness at 100k; 1M on the side index alone      bench/scale.py
       issue 21: the churned state beside the fresh one (scale.*.churned, churned_over_fresh_100k),
       the same-run arithmetic floor of an event and the worker over it       bench/scan_bench.py

Every number that has a baseline is reported as a ratio to a baseline measured in the same run
(the machine is shared and noisy). ``--quick`` uses small sizes (a smoke run of a few minutes);
the headline keys then describe the quick sizes and say so in ``sizes``.
Headline keys use the default configuration (text+image); ``*_text_only`` keys give text-only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table  # type: ignore  # noqa: E402
from backfill_bench import run as backfill_run  # type: ignore  # noqa: E402
from encoders_bench import backend_speedup, change_aware, encoder_ceiling  # type: ignore  # noqa: E402
from pipeline_bench import pipeline, py_spy  # type: ignore  # noqa: E402
from refresh_bench import refresh_cost  # type: ignore  # noqa: E402
from scan_bench import floors  # type: ignore  # noqa: E402
from scale import FULL as SCALE_FULL, QUICK as SCALE_QUICK, scale, summary as scale_summary  # type: ignore  # noqa: E402

FULL = {"encoder_items": 256, "preload": 20_000, "events": 512, "fresh_s": 30.0, "batch1_events": 64,
        "refresh_sizes": [10_000, 100_000], "refresh_queries": 256, "change_items": 128}
QUICK = {"encoder_items": 64, "preload": 2_000, "events": 128, "fresh_s": 10.0, "batch1_events": 16,
         "refresh_sizes": [2_000, 10_000], "refresh_queries": 64, "change_items": 64}


def headline(r: dict[str, Any]) -> dict[str, Any]:
    enc = r["encoder_ceiling"]
    pipe = r["pipeline"]
    ref = r["refresh"]
    ca = r["change_aware"]
    out: dict[str, Any] = {}
    for mode, suffix in (("text_image", ""), ("text_only", "_text_only")):
        ceiling = enc[mode]["items_per_s"]
        out[f"encoder_ceiling_items_per_s{suffix}"] = ceiling
        p = pipe.get(mode, {})
        rate = p.get("saturation", {}).get("events_per_s")
        out[f"pipeline_events_per_s{suffix}"] = rate
        out[f"pipeline_over_ceiling{suffix}"] = round(rate / ceiling, 3) if rate and ceiling else None
        # The same ratio measured inside the worker during (b): encoder seconds / wall seconds, i.e.
        # events/s over the encoder's own items/s at that moment (immune to load drifting between
        # the (a) and (b) measurements on a shared machine).
        enc_s = sum(v for k, v in p.get("worker_metrics_during_saturation", {}).items()
                    if k.startswith("simstream_encode_seconds_sum"))
        wall = p.get("saturation", {}).get("seconds")
        out[f"pipeline_encoder_share{suffix}"] = round(enc_s / wall, 3) if enc_s and wall else None
        fr = p.get("freshness", {})
        for q in ("p50", "p95", "p99"):
            out[f"freshness_{q}_s{suffix}"] = fr.get(f"{q}_s")
        out[f"price_only_over_full{suffix}"] = ca[mode]["price_only_over_full"]
        out[f"brand_only_over_full{suffix}"] = ca[mode]["brand_only_over_full"]
    out["batching_gain"] = pipe.get("text_only", {}).get("batching_gain")
    out["encoder_batching_gain_text_only"] = enc["text_only"]["encoder_batching_gain"]
    sizes = sorted(int(k) for k in ref if k.isdigit())
    for n in sizes:
        out[f"refresh_over_bruteforce_{n}"] = ref[str(n)]["milvus_over_bruteforce"]
        if "side_index_over_bruteforce" in ref[str(n)]:
            out[f"side_index_over_bruteforce_{n}"] = ref[str(n)]["side_index_over_bruteforce"]
    largest = str(sizes[-1])
    out["refresh_over_bruteforce"] = ref[largest].get("side_index_over_bruteforce", ref[largest]["milvus_over_bruteforce"])
    out["refresh_path"] = "side_index" if "side_index_over_bruteforce" in ref[largest] else "milvus_search"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="do not attach py-spy to the worker during (b)/(c)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: pipeline,refresh,scale,backfill,backends (for debugging)")
    a = ap.parse_args(argv)
    sizes = QUICK if a.quick else FULL
    skip = set(filter(None, a.skip.split(",")))
    started = time.time()
    report: dict[str, Any] = {"machine": machine(), "quick": a.quick, "sizes": sizes}
    encoders: dict[bool, Any] = {}
    t0 = time.monotonic()
    report["encoder_ceiling"] = encoder_ceiling(sizes["encoder_items"], encoders=encoders)
    report["change_aware"] = change_aware(sizes["change_items"], encoders=encoders)
    print(json.dumps({"encoder_ceiling": report["encoder_ceiling"], "change_aware": report["change_aware"]},
                     default=str), flush=True)
    report["seconds_encoders"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    report["pipeline"] = {} if "pipeline" in skip else pipeline(
        sizes["preload"], sizes["events"], sizes["fresh_s"], sizes["batch1_events"], ["text", "image"],
        encoders=encoders, profile=not a.no_profile and py_spy() is not None)
    report["seconds_pipeline"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    report["refresh"] = {"0": {"milvus_over_bruteforce": None}} if "refresh" in skip else refresh_cost(
        sizes["refresh_sizes"], queries=sizes["refresh_queries"], encoder=encoders.get(True))
    report["seconds_refresh"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    scale_params = dict(SCALE_QUICK if a.quick else SCALE_FULL)
    scale_sizes, scale_side = scale_params.pop("sizes"), scale_params.pop("side_only")
    report["scale_run"] = {"skipped": ["scale: skipped with --skip scale"]} if "scale" in skip else scale(
        scale_sizes, scale_side, scale_params, encoders=encoders, ceiling=report["encoder_ceiling"])
    report.update(scale_summary(report["scale_run"]))
    for line in report["scale_not_measured"]:
        print(f"not measured: {line}")
    report["seconds_scale"] = round(time.monotonic() - t0, 1)
    # Issue 21: the same-run arithmetic floor of an event at 100k (20k quick), and the worker's
    # non-encoder time per event over it.
    floor_n = 20_000 if a.quick else 100_000
    big = report["scale"].get(str(max(scale_sizes)) if a.quick else "100000", {})
    report["floors"] = floors(floor_n, big.get("non_encoder_ms_per_event"))
    report["floor_ms_per_event_100k"] = report["floors"]["floor_ms_per_event"]
    report["non_encoder_over_floor_100k"] = report["floors"]["non_encoder_over_floor"]
    t0 = time.monotonic()
    # Issue 13: the bulk path against the encoders alone (100k full; 2k quick), and the encoder
    # backends against today's torch path, each measured in one run.
    bf_products = 2_000 if a.quick else 100_000
    # Issue 21: and the worker's own bulk path (streams/bulk.py) over the same catalog as its backlog.
    report["backfill"] = {"skipped": "--skip backfill"} if "backfill" in skip else \
        backfill_run(bf_products, False, paths=("backfill", "worker"))
    report[f"backfill_over_encoder_{'2k' if a.quick else '100k'}"] = report["backfill"].get("backfill_over_encoder")
    report[f"worker_bulk_over_encoder_{'2k' if a.quick else '100k'}"] = report["backfill"].get("worker_over_encoder")
    report["backends"] = {} if "backends" in skip else backend_speedup()
    for key in ("text_ms_per_item", "image_ms_per_item", "text_speedup_vs_torch", "image_speedup_vs_torch"):
        report[key] = report["backends"].get(key)
    report["seconds_backfill_backends"] = round(time.monotonic() - t0, 1)
    report.update(headline(report))
    report["seconds_total"] = round(time.time() - started, 1)
    report["machine"]["load_avg_at_end"] = list(__import__("os").getloadavg())
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2, default=str) + "\n")

    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [("metric", "value", "target (issue 5)")]
    targets = {"pipeline_over_ceiling": ">= 0.8", "pipeline_encoder_share": ">= 0.8 (same ratio, in-run)", "freshness_p99_s": "<= 2 s", "batching_gain": ">= 10",
               "refresh_over_bruteforce": "<= 1", "price_only_over_full": "<= 0.1",
               "pipeline_over_ceiling_100k_text": ">= 0.8 (issue 13)", "pipeline_over_ceiling_100k_image": ">= 0.9 (issue 13)",
               "price_only_events_per_s_100k": ">= 200 (issue 13)", "freshness_p99_s_100k_text": "<= 2 s (issue 13)",
               "freshness_p99_s_100k_image": "<= 2 s (issue 13)"}
    for key in ("encoder_ceiling_items_per_s", "pipeline_events_per_s", "pipeline_over_ceiling",
                "freshness_p50_s", "freshness_p95_s", "freshness_p99_s",
                "encoder_ceiling_items_per_s_text_only", "pipeline_events_per_s_text_only",
                "pipeline_over_ceiling_text_only", "pipeline_encoder_share", "pipeline_encoder_share_text_only",
                "freshness_p99_s_text_only", "batching_gain",
                "refresh_over_bruteforce", "price_only_over_full", "price_only_over_full_text_only",
                "pipeline_over_ceiling_100k_text", "pipeline_over_ceiling_100k_image", "price_only_events_per_s_100k",
                "freshness_p99_s_100k_text", "freshness_p99_s_100k_image"):
        rows.append((key, fmt(report.get(key)), targets.get(key, "")))
    print(table(rows))
    print(f"wrote {a.json} in {report['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
