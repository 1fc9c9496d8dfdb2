"""How fast a worker serves after it starts: built from Milvus, restored from its own snapshot, or
from a peer's (issue 23 item 1), same run.

    python bench/start_bench.py [--sizes 10000,100000] [--side-only 1000000] [--json OUT]

Per size N (text-only; a ``milvus-lite server`` shared by the workers, as on Kubernetes):
 1. the catalog and its exact lists are pre-loaded into Milvus (bench/scale.py's catalog);
 2. worker A starts with no snapshot: it builds its copies from Milvus (the baseline);
 3. worker B starts with an empty data directory and ``SIMSTREAM_SNAPSHOT_PEERS`` = A: it
    downloads A's snapshot, restores it and joins (a scale-out);
 4. A stops with SIGTERM (the drain, timed; it writes a last snapshot) and starts again: it
    restores its own snapshot and catches up with what B wrote meanwhile (a rolling restart).
Each start is timed from the process's start to /readyz and to its first published list (a few
events are sent once it is ready; its /metrics says when it published), with the copies' part
from its log (built / downloaded / restored, and the catch-up).

``--side-only`` sizes (1M by default) cannot run a worker here (milvus-lite holds the catalog
too); there the snapshot of a side index and list mirror of N synthetic products is written
and read back, timed, beside the rate at which a build reads products from Milvus at 100k.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import emit, encoder_settings, image_root, machine, worker_log_events  # type: ignore
from pipeline_bench import scrape  # type: ignore

COPIES_EVENTS = ("side index built", "list mirror built", "copies restored from a snapshot",
                 "snapshot downloaded from a peer", "snapshot written")


def published(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k.startswith("simstream_lists_total") and 'published' in k)


def timed_start(worker: Any, producer: Any, run: Any, timeout_s: float) -> dict[str, Any]:
    """Start ``worker``; seconds to /readyz and to its first published list (events are sent once
    it is ready, to every partition, until it publishes one)."""
    t0 = time.monotonic()
    worker.start()
    worker.wait_ready(timeout_s=timeout_s)
    out: dict[str, Any] = {"ready_s": round(time.monotonic() - t0, 1)}
    before = published(worker.web_port)
    deadline = time.monotonic() + timeout_s
    while published(worker.web_port) <= before:
        if time.monotonic() > deadline:
            raise TimeoutError("no list published")
        worker.check()
        for d in run.events(8):
            producer.send(d)
        producer.flush()
        time.sleep(0.5)
    out["first_list_s"] = round(time.monotonic() - t0, 1)
    return out


PHASES = ("starting worker", "in-memory index copies fit", "encoders ready", "ingested", "refreshed")


def phases(log: Path, since: int) -> dict[str, float]:
    """Seconds from "starting worker" (settings read, imports done) to each phase's first log line,
    for the start whose "starting worker" line is the ``since``-th (0: the first)."""
    from datetime import datetime

    found: dict[str, float] = {}
    starts = 0
    for e in worker_log_events(log, PHASES):
        t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        if e["event"] == "starting worker":
            starts += 1
            if starts == since + 1:
                found = {"starting worker": t}
            elif starts > since + 1:
                break
        elif found and e["event"] not in found:
            found[e["event"]] = t
    t0 = found.pop("starting worker", None)
    return {k: round(v - t0, 1) for k, v in found.items()} if t0 is not None else {}


def copies(log: Path, since: int) -> list[dict[str, Any]]:
    """What the worker's log says about its copies, from line ``since`` on."""
    keep = ("seconds", "products", "lists", "mib", "read_s", "caught_up_writes", "checked_row_by_row", "age_s")
    events = worker_log_events(log, COPIES_EVENTS)[since:]
    return [{"event": e["event"], **{k: e[k] for k in keep if k in e}} for e in events]


def worker_run(n: int, seed: int, timeout_s: float) -> dict[str, Any]:
    from scale import prepare, scale_run  # type: ignore

    from simstream.harness.embedded import EmbeddedBroker, MilvusServer, WorkerProcess, free_port
    from simstream.encoders.fusion import ProductEncoder
    from simstream.settings import Settings
    from simstream.streams.producer import EventProducer

    root, names = image_root()
    encoders = {m: ProductEncoder(encoder_settings(m, image_root=root)) for m in (False, True)}
    depth = encoder_settings(False).resolved_list_depth
    res: dict[str, Any] = {"products": n}
    tmp = Path(tempfile.mkdtemp(prefix="simstream-start-bench-"))
    server = MilvusServer(tmp / "milvus", tmp / "milvus.log").start()
    os.environ["SIMSTREAM_BENCH_MILVUS_URI"] = server.uri
    try:
        fv, tops, info = prepare(n, seed, encoders, root, names, depth, None)
        run = scale_run(False, n, seed, root, names, encoders[False], fv, tops[False],
                        env={"SIMSTREAM_SNAPSHOT_INTERVAL_S": "30"})
        res["preload"] = run.load()
        with EmbeddedBroker() as broker:
            settings = Settings(kafka=broker.url, topic_partitions=2)
            port_a, port_b = free_port(), free_port()
            dir_a, dir_b = tmp / "a", tmp / "b"
            env = run.env(broker.url)
            a = WorkerProcess({**env, "SIMSTREAM_DATA_DIR": str(dir_a), "SIMSTREAM_WEB_PORT": str(port_a)},
                              log_path=tmp / "a.log")
            b = WorkerProcess({**env, "SIMSTREAM_DATA_DIR": str(dir_b), "SIMSTREAM_WEB_PORT": str(port_b),
                               "SIMSTREAM_SNAPSHOT_PEERS": f"127.0.0.1:{port_a}"}, log_path=tmp / "b.log")
            with EventProducer(settings) as producer:
                try:
                    res["built"] = timed_start(a, producer, run, timeout_s)
                    res["built"]["copies"] = copies(a.log_path, 0)
                    res["built"]["phases_s"] = phases(a.log_path, 0)
                    # A's first snapshot: at its interval, or ask for it by waiting
                    deadline = time.monotonic() + timeout_s
                    snapshot: Path | None = None
                    while snapshot is None and time.monotonic() < deadline:
                        found = list((dir_a / "snapshots").glob("*.snapshot.npz"))
                        snapshot = found[0] if found else None
                        time.sleep(1.0)
                    if snapshot is None:
                        raise TimeoutError("worker A wrote no snapshot")
                    res["snapshot_mib"] = round(snapshot.stat().st_size / 2**20, 1)
                    res["peer_join"] = timed_start(b, producer, run, timeout_s)
                    res["peer_join"]["copies"] = copies(b.log_path, 0)
                    res["peer_join"]["phases_s"] = phases(b.log_path, 0)
                    seen = len(worker_log_events(a.log_path, COPIES_EVENTS))
                    t0 = time.monotonic()
                    code = a.stop(timeout_s=120)
                    res["drain"] = {"seconds": round(time.monotonic() - t0, 1), "exit": code,
                                    "copies": copies(a.log_path, seen)}
                    for d in run.events(64):  # written by B while A is away: A catches up with them
                        producer.send(d)
                    producer.flush()
                    time.sleep(5)
                    seen = len(worker_log_events(a.log_path, COPIES_EVENTS))
                    res["own_restart"] = timed_start(a, producer, run, timeout_s)
                    res["own_restart"]["copies"] = copies(a.log_path, seen)
                    res["own_restart"]["phases_s"] = phases(a.log_path, 1)
                finally:
                    for w in (a, b):
                        if w.running:
                            w.stop(timeout_s=60)
    finally:
        os.environ.pop("SIMSTREAM_BENCH_MILVUS_URI", None)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def side_only(n: int, seed: int) -> dict[str, Any]:
    """A snapshot of a side index, list mirror and markers of ``n`` synthetic products, written
    and read back."""
    from common import synthetic_fused  # type: ignore

    from simstream.encoders.fusion import ProductEncoder
    from simstream.index.budget import side_capacity
    from simstream.index.list_mirror import ListMirror
    from simstream.index.rows import ListHead, StoredProduct
    from simstream.index.side import SideIndex
    from simstream.index.snapshot import identity, read_snapshot, write_snapshot
    from simstream.index.tombstone_mirror import TombstoneMirror

    encoder = ProductEncoder(encoder_settings(False))
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    side = SideIndex(encoder.dim, capacity=side_capacity(n), segments=encoder.segments)
    hashes = {f: "0123456789abcdef" for f in encoder.layout}
    t0 = time.perf_counter()
    ids = [f"sku-{i:08d}" for i in range(n)]
    for start in range(0, n, 4_000):
        vec = synthetic_fused(encoder, min(4_000, n - start), rng)
        side.put([StoredProduct(ids[start + i], vec[i], 1, dict(hashes), encoder.model, 1_700_000_000_000,
                                1_700_000_000_000 + start + i) for i in range(len(vec))])
    mirror = ListMirror()
    depth = encoder_settings(False).resolved_list_depth
    for start in range(0, n, 10_000):
        mirror.put([ListHead(ids[i], tuple(prng.sample(ids, depth)), prng.uniform(0.3, 0.9), 1_700_000_000_000 + i)
                    for i in range(start, min(n, start + 10_000))])
    fill_s = time.perf_counter() - t0
    ident = identity("bench", encoder.dim, encoder.segments, {"bench_products": 0})
    tmp = Path(tempfile.mkdtemp(prefix="simstream-snap-bench-"))
    try:
        path = tmp / "bench.snapshot.npz"
        t0 = time.perf_counter()
        size = write_snapshot(path, ident, side=side, mirror=mirror, tombstones=TombstoneMirror(), side_synced_at=1,
                              mirror_synced_at=1)
        write_s = time.perf_counter() - t0
        del side, mirror
        t0 = time.perf_counter()
        got = read_snapshot(path, ident, capacity=side_capacity(n), segments=encoder.segments)
        read_s = time.perf_counter() - t0
        assert got is not None and len(got.side) == n and got.mirror is not None and len(got.mirror) == n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"products": n, "lists": n, "vectors": "synthetic (fused text-only layout, on the grid)",
            "fill_s": round(fill_s, 1), "snapshot_mib": round(size / 2**20, 1), "write_s": round(write_s, 1),
            "read_s": round(read_s, 1), "read_from": "page cache (the file was just written)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--side-only", default="1000000")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--timeout", type=float, default=1800.0, help="bound of each start")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    report: dict[str, Any] = {"bench": "start", "machine": machine(), "workers": [], "side_only": []}
    for n in [int(x) for x in a.side_only.split(",") if x]:
        report["side_only"].append(r := side_only(n, a.seed))
        print(f"side only {n}: {r}", flush=True)
    for n in [int(x) for x in a.sizes.split(",") if x]:
        report["workers"].append(r := worker_run(n, a.seed, a.timeout))
        print(f"workers {n}: {r}", flush=True)
    emit(report, a.json)


if __name__ == "__main__":
    main()
