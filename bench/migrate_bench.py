"""How long a migration's fill takes, against the encoders alone and a backfill, same run (issue 22).

    python bench/migrate_bench.py [--products 10000] [--milvus-uri URI] [--json OUT]

On the embedded broker and a ``milvus-lite server`` (or the Milvus given), text-only:

1. ``simstream backfill`` of a synthetic catalog under the live config (v3): the baseline, and
   what fills the catalog changelog;
2. the new config's encoders alone over the same catalog (``ProductEncoder.encode``, batches of 1,024);
3. ``simstream migrate``'s fill to a **text-model change** (v2: another text model, other weights):
   the changelog read, the text re-encoded, the other segments carried over, every list recorded;
4. the same to a **weights-only change** (v3's encoders, other weights): nothing re-encoded.

Prints each phase's seconds and rate, and ``fill_over_encoder`` (fill / encoders alone) for the
text-model change. The fills stop at ``catching_up`` (no standby worker runs here) and are
abandoned afterwards. docs/operations.md turns the rates into 1M / 10M estimates.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit, machine, make_doc, to_events  # type: ignore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--milvus-uri", default=None, help="a Milvus server (default: an embedded milvus-lite server)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from simstream.encoders.fusion import ProductEncoder
    from simstream.encoders.fusion_config import resolve_fusion_config
    from simstream.harness.embedded import EmbeddedBroker, MilvusServer
    from simstream.settings import Settings
    from simstream.streams.backfill import backfill_file
    from simstream.streams.migrate import Migrator
    from simstream.streams.runtime import control_store

    rng = random.Random(22)
    now = int(time.time() * 1000)
    docs = [make_doc(rng, f"m{i:07d}", 1, now, []) for i in range(a.products)]
    for d in docs:
        d.pop("image_url", None)
    report: dict[str, Any] = {"bench": "migrate", "products": a.products, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="simstream-migrate-bench-") as tmp, EmbeddedBroker() as broker:
        server = None if a.milvus_uri else MilvusServer(Path(tmp) / "milvus", Path(tmp) / "milvus.log").start()
        try:
            uri = a.milvus_uri or server.uri  # type: ignore[union-attr]
            base = Settings(kafka=broker.url, milvus_uri=uri, image_enabled=False, topic_partitions=2,
                            data_dir=Path(tmp) / "data", flush_every_rows=0, milvus_timeout_s=300,
                            collection=f"mb{int(time.time())}")
            catalog = Path(tmp) / "catalog.jsonl"
            catalog.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
            t0 = time.perf_counter()
            done = backfill_file(base, catalog)
            report["backfill"] = {"seconds": round(time.perf_counter() - t0, 1), "load_s": done.seconds["load"],
                                  "lists_s": done.seconds["lists"], "applied": done.applied}
            print(f"backfill (v3): {report['backfill']}", flush=True)

            target = base.model_copy(update={"fusion_config": "v2"})
            encoder = ProductEncoder(target)
            events = to_events(docs)
            t0 = time.perf_counter()
            for start in range(0, len(events), 1024):
                encoder.encode(events[start:start + 1024])
            report["encoder_v2_s"] = round(time.perf_counter() - t0, 1)
            print(f"encoders alone (v2): {report['encoder_v2_s']} s", flush=True)

            config = json.loads(resolve_fusion_config("v3").read_text())  # type: ignore[union-attr]
            config["weights"] = {**config["weights"], "text": 0.3, "title_lexical": 0.25, "price": 0.1}
            reweighted = Path(tmp) / "v3-reweighted.json"
            reweighted.write_text(json.dumps(config))
            for name, settings in (("text_model_change", target),
                                   ("weights_only", base.model_copy(update={"fusion_config": str(reweighted)}))):
                with control_store(base) as control:
                    m = Migrator(base, control, say=lambda line: print(line, flush=True))
                    record = m.start(settings)
                    t0 = time.perf_counter()
                    record = m.fill(record)
                    seconds = time.perf_counter() - t0
                    progress = record.migration.progress if record.migration else {}
                    m.abandon()
                report[name] = {"fill_s": round(seconds, 1), "rate_per_s": round(a.products / seconds, 1),
                                "progress": progress}
                print(f"{name}: {report[name]}", flush=True)
        finally:
            if server is not None:
                server.stop()
    report["fill_over_encoder"] = round(report["text_model_change"]["fill_s"] / report["encoder_v2_s"], 2)
    report["fill_over_backfill"] = round(report["text_model_change"]["fill_s"] / report["backfill"]["seconds"], 2)
    emit(report, a.json)


if __name__ == "__main__":
    main()
