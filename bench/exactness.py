"""Exactness proof: a random product stream through the real worker(s), compared with an exact oracle.

    python bench/exactness.py [--products 1000] [--events 5000] [--workers 1|2] [--kills 0|5]
                              [--seed N] [--json OUT]

Starts the embedded Tansu broker, ``simstream worker`` subprocess(es) (one milvus-lite file, or a
``milvus-lite server`` shared by several workers), publishes the stream, optionally SIGKILLs and
restarts a worker at random moments, waits until quiet, and compares the latest value per key of the
neighbour topic with an exact numpy top-K over the final catalog. The harness lives in
``simstream.harness.exactness`` (harness/exactness.py; the integration test uses it too); docs/exactness.md records the results.
Exit status 0 only when every product is equal and none is lost or resurrected.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simstream.harness.exactness import Options, run_exactness, summary_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=1000)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--kills", type=int, default=0)
    ap.add_argument("--fault", action="append", default=[], metavar="KIND:SECONDS",
                    help="inject a fault between publish chunks: milvus-pause:30, milvus-crash:30, broker-pause:30 "
                         "(repeatable; Milvus faults run against a milvus-lite server)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--candidate-pool", type=int, default=None, help="SIMSTREAM_CANDIDATE_POOL for the workers")
    ap.add_argument("--quiet", type=float, default=10.0, help="seconds without activity that count as quiet")
    ap.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    ap.add_argument("--no-reencode", action="store_true", help="skip re-encoding the final catalog")
    ap.add_argument("--backfill", type=int, default=0, metavar="N",
                    help="load the first N events with `simstream backfill`, then stream the rest")
    ap.add_argument("--milvus-uri", default=None,
                    help="run against this Milvus (e.g. $SIMSTREAM_TEST_MILVUS_URI under scripts/with-milvus-server.sh)")
    ap.add_argument("--no-side-index", action="store_true",
                    help="SIMSTREAM_SIDE_INDEX=false: every neighbour search goes to Milvus")
    ap.add_argument("--bulk-min-backlog", type=int, default=None, metavar="N",
                    help="SIMSTREAM_BULK_MIN_BACKLOG for the workers: a chunk of at least N events (and a quarter "
                         "of the catalog) is loaded on the bulk path, then every list refreshed")
    ap.add_argument("--migrate-to", default=None, metavar="CONFIG",
                    help="run `simstream migrate --to CONFIG` in the middle of the stream, with SIGKILLs of migrate "
                         "and workers during the fill and the switch, then --rollback (harness/migration.py)")
    ap.add_argument("--migrate-set", action="append", default=[], metavar="KEY=VALUE",
                    help="another model setting of the migration's new generation (simstream migrate --set)")
    ap.add_argument("--elastic", action="store_true",
                    help="the elastic proof: a paced stream; 1 -> 3 workers at a quarter (joiners download a peer's "
                         "snapshot), a SIGKILL at three eighths, a rolling restart at half, 3 -> 1 by SIGTERM at "
                         "three quarters; freshness per change against steady state (harness/elastic.py)")
    ap.add_argument("--rate", type=float, default=15.0, help="--elastic: events per second offered (about half of "
                                                            "what one worker sustains)")
    ap.add_argument("--keep", action="store_true", help="keep the data directory (worker logs, milvus)")
    ap.add_argument("--metric", choices=("ip", "l2"), default=None,
                    help="SIMSTREAM_METRIC for the workers and the oracle (default: the model's, inner product)")
    ap.add_argument("--json", type=Path, default=None, help="write the result document here")
    a = ap.parse_args(argv)
    faults = [(kind, float(sec)) for kind, _, sec in (f.partition(":") for f in a.fault)]
    if a.migrate_to:
        return _migration(a)
    if a.elastic:
        return _elastic(a)
    report = run_exactness(Options(products=a.products, events=a.events, workers=a.workers, kills=a.kills, faults=faults,
                                   seed=a.seed, top_k=a.top_k, partitions=a.partitions,
                                   candidate_pool=a.candidate_pool, quiet_s=a.quiet, timeout_s=a.timeout,
                                   reencode_check=not a.no_reencode, keep=a.keep, backfill=a.backfill,
                                   milvus_uri=a.milvus_uri, side_index=not a.no_side_index,
                                   bulk_min_backlog=a.bulk_min_backlog, metric=a.metric))
    print(json.dumps(report["details"], indent=2, default=str))
    print(summary_line(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        keys = ("products", "equal", "equal_share", "lost", "resurrected", "workers", "kills", "faults", "backfill",
                "milvus", "side_index", "match_decision", "metric", "bulk_rounds", "every_list_passes")
        doc = {k: report[k] for k in keys} | {"processing_s": report["details"]["processing_s"],
                                              "max_vector_error": report["details"]["max_vector_error"],
                                              "lists_other_than_ip": report["details"].get("lists_other_than_ip"),
                                              "seed": report["details"]["seed"], "bulk_min_backlog": a.bulk_min_backlog}
        a.json.write_text(json.dumps(doc, indent=2) + "\n")
    ok = report["equal"] == report["products"] and report["lost"] == 0 and report["resurrected"] == 0
    return 0 if ok else 1


def _migration(a: argparse.Namespace) -> int:
    """``--migrate-to``: the migration proof; its --json document has the same keys, plus
    ``migration`` and ``rollback``."""
    from simstream.harness.migration import passed, run_migration

    opts = Options(products=a.products, events=a.events, workers=a.workers, seed=a.seed, top_k=a.top_k,
                   partitions=a.partitions, quiet_s=a.quiet, timeout_s=a.timeout, keep=a.keep, milvus_uri=a.milvus_uri)
    report = run_migration(opts, a.migrate_to, sets=tuple(a.migrate_set))
    print(json.dumps(report, indent=2, default=str))
    ok = passed(report)
    print(f"migration to {a.migrate_to}: {report['equal']}/{report['products']} equal under the new model, "
          f"{report['lost']} lost, {report['resurrected']} resurrected, "
          f"{report['migration']['old_model_messages_after_switch']} old-model messages after the switch; rollback: "
          f"{report['rollback']['equal']}/{report['rollback']['products']} equal -> {'PASS' if ok else 'FAIL'}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {k: report[k] for k in ("products", "equal", "equal_share", "lost", "resurrected", "workers", "milvus")}
        doc |= {"kills": report["migration"]["kills"], "faults": [], "backfill": 0, "side_index": True,
                "seed": a.seed, "processing_s": report["details"]["wall_s"], "migration": report["migration"],
                "rollback": report["rollback"]}
        a.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0 if ok else 1


def _elastic(a: argparse.Namespace) -> int:
    """``--elastic``: the elastic proof; its --json document has the same keys, plus ``elastic``."""
    from simstream.harness.elastic import passed, run_elastic

    opts = Options(products=a.products, events=a.events, seed=a.seed, top_k=a.top_k, partitions=a.partitions,
                   quiet_s=a.quiet, timeout_s=a.timeout, keep=a.keep, milvus_uri=a.milvus_uri)
    report = run_elastic(opts, a.rate)
    print(json.dumps(report, indent=2, default=str))
    ok = passed(report)
    e = report["elastic"]
    print(f"elastic: {report['equal']}/{report['products']} equal, {report['lost']} lost, "
          f"{report['resurrected']} resurrected, {e['unanswered_events']} events without a list; freshness p99 "
          f"steady {e['steady'].get('p99_s')} s, " + ", ".join(f"{k} {w.get('p99_s')} s" for k, w in e["windows"].items())
          + f"; drains {e['drain_s']} s -> {'PASS' if ok else 'FAIL'}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {k: report[k] for k in ("products", "equal", "equal_share", "lost", "resurrected", "workers", "kills",
                                      "faults", "backfill", "milvus", "side_index", "elastic")}
        doc |= {"seed": a.seed, "processing_s": report["details"]["wall_s"]}
        a.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
