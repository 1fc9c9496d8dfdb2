"""Bulk backfill vs the encoders alone, same run (issue 13, item 3).

    python bench/backfill_bench.py [--products 10000] [--image] [--json OUT]

1. The encoders alone: ``ProductEncoder.encode`` over the whole synthetic catalog in batches of
   1,024 (what the backfill encodes per batch), no index, no Kafka.
2. ``simstream backfill`` (``streams.backfill.backfill_file``) of the same catalog as a JSON Lines
   file into an empty milvus-lite file, lists published to the embedded broker: load time (the
   ingest steps: encode, write) and lists time (every list: blocked all-pairs top-K, publish,
   record).
3. (``--paths worker``) the worker's own bulk path (streams/bulk.py): the same catalog published to
   the embedded broker first, then a real ``simstream worker`` started on an empty milvus-lite file
   (``SIMSTREAM_BULK_MIN_BACKLOG`` a tenth of the catalog): timed from its /readyz to the last
   product's list on the neighbour topic, so model loading is not counted, as for the encoders.
Prints ``backfill_over_encoder`` = backfill seconds / encoder seconds (and ``worker_over_encoder``).
The target at 100k is <= 1.3; the lists phase is N^2 x dim arithmetic, so the ratio grows with N on
a CPU (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from common import emit, encoder_settings, image_root, machine, make_doc, to_events  # type: ignore


def worker_bulk(docs: list[dict[str, Any]], image: bool, root: Path, timeout_s: float) -> dict[str, Any]:
    """A real worker meeting the whole catalog as its backlog: from /readyz to every list published."""
    from common import TopicTail  # type: ignore

    from simstream.harness.embedded import EmbeddedBroker, WorkerProcess
    from simstream.settings import Settings
    from simstream.streams.producer import EventProducer

    with tempfile.TemporaryDirectory(prefix="simstream-bulk-bench-") as tmp, EmbeddedBroker() as broker:
        settings = Settings(kafka=broker.url, topic_partitions=2)
        with EventProducer(settings) as producer:
            for d in docs:
                producer.send(d)
        env = {"SIMSTREAM_KAFKA": broker.url, "SIMSTREAM_DATA_DIR": tmp, "SIMSTREAM_TOPIC_PARTITIONS": "2",
               "SIMSTREAM_IMAGE_ENABLED": "true" if image else "false", "SIMSTREAM_IMAGE_ROOT": str(root),
               "SIMSTREAM_BULK_MIN_BACKLOG": str(max(1, len(docs) // 10)), "SIMSTREAM_SESSION_TIMEOUT_S": "10",
               "SIMSTREAM_MILVUS_TIMEOUT_S": "300", "SIMSTREAM_LOG_FORMAT": "json"}
        tail = TopicTail(settings)
        log_path = Path(tmp) / "worker.log"
        with WorkerProcess(env, log_path=log_path) as worker:
            worker.wait_ready(timeout_s=600)
            t0 = time.perf_counter()
            done = tail.wait_for({str(d["product_id"]): int(d["version"]) for d in docs}, timeout_s, check=worker.check)
            seconds = time.perf_counter() - t0
            text = log_path.read_text(errors="replace")
        tail.close()
    return {"worker_s": round(seconds, 1), "all_published": done,
            "bulk_rounds": text.count('"event": "bulk load round done'),
            "every_list_passes": text.count('"event": "every list refreshed')}


def run(products: int, image: bool, seed: int = 5, paths: tuple[str, ...] = ("backfill",),
        timeout_s: float = 7200.0) -> dict[str, Any]:
    from simstream.encoders.fusion import ProductEncoder
    from simstream.harness.embedded import EmbeddedBroker
    from simstream.streams.backfill import backfill_file

    root, names = image_root()
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    docs = [make_doc(rng, f"b{i:07d}", 1, now, names if image else []) for i in range(products)]
    settings = encoder_settings(image, image_root=root)
    encoder = ProductEncoder(settings)
    encoder.warm_up()
    events = to_events(docs)
    t0 = time.perf_counter()
    for start in range(0, len(events), 1024):
        encoder.encode(events[start:start + 1024])
    encoder_s = time.perf_counter() - t0
    out: dict[str, Any] = {"products": products, "image": image, "encoder_s": round(encoder_s, 1)}
    if "backfill" in paths:
        with tempfile.TemporaryDirectory(prefix="simstream-backfill-bench-") as tmp, EmbeddedBroker() as broker:
            path = Path(tmp) / "catalog.jsonl"
            path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
            bf_settings = encoder_settings(image, image_root=root, kafka=broker.url, data_dir=Path(tmp),
                                           milvus_timeout_s=300.0)
            t0 = time.perf_counter()
            report = backfill_file(bf_settings, path)
            backfill_s = time.perf_counter() - t0
        out |= {"backfill_s": round(backfill_s, 1), "load_s": report.seconds["load"], "lists_s": report.seconds["lists"],
                "published": report.published, "backfill_over_encoder": round(backfill_s / encoder_s, 2)}
    if "worker" in paths:
        got = worker_bulk(docs, image, root, timeout_s)
        out |= got | {"worker_over_encoder": round(got["worker_s"] / encoder_s, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--image", action="store_true", help="with images (text-only by default)")
    ap.add_argument("--paths", default="backfill", help="backfill (simstream backfill), worker (its own bulk path)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    res = run(a.products, a.image, paths=tuple(a.paths.split(",")))
    if "backfill_s" in res:
        print(f"backfill of {res['products']} products: {res['backfill_s']} s (load {res['load_s']} s, lists "
              f"{res['lists_s']} s) vs encoders alone {res['encoder_s']} s: backfill_over_encoder "
              f"{res['backfill_over_encoder']}")
    if "worker_s" in res:
        print(f"worker bulk path, {res['products']} products: {res['worker_s']} s from ready to every list "
              f"({res['bulk_rounds']} rounds) vs encoders alone {res['encoder_s']} s: worker_over_encoder "
              f"{res['worker_over_encoder']}")
    emit({"machine": machine(), "backfill": res}, a.json)


if __name__ == "__main__":
    main()
