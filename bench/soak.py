"""Soak (issue 23 item 5): mixed traffic at about half of saturation for an hour against a 100k
catalog, with a scale-out and scale-in and a Milvus restart in the middle.

    python bench/soak.py [--products 100000] [--minutes 60] [--load 0.5 | --rate R] [--json OUT]

1. The catalog and its exact lists are pre-loaded into a ``milvus-lite server`` (bench/scale.py's
   catalog, text-only), and worker A starts.
2. Saturation: a backlog of ``--saturation-events`` mixed events at once (unless ``--rate``);
   events/s over its second half, where the rate is sustained (a short backlog on a freshly
   started worker reads ~2.7x what it sustains at 100k).
3. Paced traffic at ``load`` x saturation for ``--minutes``: 60 % full updates of catalog
   products, 20 % price-only updates, 10 % new products, 10 % deletes (so the catalog keeps its
   size: any RSS growth is not the catalog's own). At a third of the time worker B joins (it
   downloads A's snapshot), at half the Milvus server is killed and started again after 10 s,
   at two thirds B leaves with SIGTERM. A worker that exits unasked (its watchdog restarts it,
   streams/watchdog.py) is started again, as its pod would be, and listed under ``changes``.
4. Every 30 s: each worker's RSS (its own process) and the server's. Every upsert: its freshness
   (send -> first list at that version, the broker's timestamp).
5. At the end, once quiet: the dead letters, and the lists of a sample of products against an
   exact top-K over the final catalog as Milvus holds it (the newest list on the topic, else the
   recorded one).
Reports the RSS series and A's slope per hour after the warm-up (a least-squares line over the
samples after ``--warm-up-share`` of the run, as a share of its mean), freshness p50/p99 per 5
minutes, the dead letters, and the sample's exactness. Not a timed test: a run is an hour.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import (  # type: ignore
    TopicTail, emit, encoder_settings, exact_rows, image_root, machine, make_doc, percentile, process_rss,
)

MIX = (("update", 0.6), ("price", 0.2), ("create", 0.1), ("delete", 0.1))
RSS_EVERY_S = 30.0
WINDOW_S = 300.0


class Traffic:
    """Mixed events over the pre-loaded catalog; remembers every product's latest version and doc."""

    def __init__(self, docs: list[dict[str, Any]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.docs = {d["product_id"]: d for d in docs}
        self.live = list(self.docs)
        self.versions = {pid: int(d["version"]) for pid, d in self.docs.items()}
        self.deleted: set[str] = set()
        self.created = 0

    def next(self) -> dict[str, Any]:
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        now = int(time.time() * 1000)
        if kind == "create" or len(self.live) < 100:
            pid = f"s{self.created:08d}"
            self.created += 1
            doc = make_doc(self.rng, pid, 1, now, [])
            self.live.append(pid)
        else:
            i = self.rng.randrange(len(self.live))
            pid = self.live[i]
            version = self.versions[pid] + 1
            if kind == "delete":
                self.live[i] = self.live[-1]
                self.live.pop()
                self.deleted.add(pid)
                self.versions[pid] = version
                self.docs.pop(pid, None)
                return {"product_id": pid, "op": "delete", "version": version, "event_time": now}
            if kind == "price":
                doc = {**self.docs[pid], "version": version, "event_time": now,
                       "price": round(float(self.docs[pid]["price"]) * self.rng.uniform(0.8, 1.2), 2)}
            else:
                doc = make_doc(self.rng, pid, version, now, [])
        self.docs[doc["product_id"]] = doc
        self.versions[doc["product_id"]] = int(doc["version"])
        self.deleted.discard(doc["product_id"])
        return doc


def rss_sample(t0: float, workers: dict[str, Any], server: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"t_s": round(time.monotonic() - t0, 1)}
    for name, w in workers.items():
        if w is not None and w.running:
            out[name] = process_rss(w.proc.pid)["self"]
    if server.proc is not None and server.proc.poll() is None:
        out["milvus"] = process_rss(server.proc.pid)["tree"]
    return out


def slope_per_hour(samples: list[dict[str, Any]], key: str, after_s: float) -> dict[str, Any]:
    pts = [(s["t_s"], s[key]) for s in samples if key in s and s["t_s"] >= after_s]
    if len(pts) < 3:
        return {"points": len(pts)}
    t, y = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    slope = float(np.polyfit(t, y, 1)[0]) * 3600.0
    return {"points": len(pts), "bytes_per_hour": round(slope), "share_per_hour": round(slope / float(y.mean()), 4),
            "mean_mib": round(float(y.mean()) / 2**20, 1)}


def check_sample(uri: str, collection: str, tail: TopicTail, traffic: Traffic, sample: int, k: int,
                 seed: int) -> dict[str, Any]:
    """The lists of a sample of live products against an exact top-K over Milvus' final catalog."""
    from simstream.index.milvus import MilvusStore
    from simstream.records import NeighbourList

    store = MilvusStore.connect(uri, collection, None, timeout_s=600)
    try:
        ids, vecs, versions = [], [], {}
        for page in store.iter_products(2_000, with_vectors=True):
            for p in page:
                ids.append(p.product_id)
                vecs.append(p.vector)
                versions[p.product_id] = p.version
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(ids, min(sample, len(ids)), replace=False).tolist())
        recorded = store.read_lists([pid for pid in chosen if pid not in tail.latest])
    finally:
        store.close()
    mat = np.stack(vecs)
    position = {pid: i for i, pid in enumerate(ids)}
    want = exact_rows(mat, ids, [position[pid] for pid in chosen], k)
    wrong_version = [pid for pid in ids if versions[pid] != traffic.versions.get(pid, versions[pid])]
    resurrected = [pid for pid in ids if pid in traffic.deleted]
    equal, unequal = 0, []
    for pid, rows in zip(chosen, want):
        raw = tail.latest.get(pid) or (recorded[pid].payload if pid in recorded else b"")
        nl = NeighbourList.from_json(raw) if raw else None
        if nl is not None and [x.product_id for x in nl.neighbours] == [ids[j] for j, _ in rows] \
                and all(abs(x.score - s) <= 1e-4 for x, (_, s) in zip(nl.neighbours, rows)):
            equal += 1
        else:
            unequal.append(pid)
    return {"catalog": len(ids), "checked": len(chosen), "equal": equal, "unequal_examples": unequal[:10],
            "wrong_version_in_milvus": len(wrong_version), "resurrected_in_milvus": len(resurrected)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--load", type=float, default=0.5, help="share of the measured saturation offered")
    ap.add_argument("--rate", type=float, default=None, help="events/s offered (skips the saturation run)")
    ap.add_argument("--saturation-events", type=int, default=6_000)
    ap.add_argument("--warm-up-share", type=float, default=0.2)
    ap.add_argument("--check", type=int, default=2_000, help="lists checked against the exact top-K at the end")
    ap.add_argument("--seed", type=int, default=29)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from scale import prepare, scale_run  # type: ignore

    from simstream.encoders.fusion import ProductEncoder
    from simstream.harness.embedded import EmbeddedBroker, MilvusServer, WorkerProcess, free_port
    from simstream.settings import Settings
    from simstream.streams.dlq import read_dead_letters
    from simstream.streams.producer import EventProducer

    root, names = image_root()
    encoders = {m: ProductEncoder(encoder_settings(m, image_root=root)) for m in (False, True)}
    settings0 = encoder_settings(False)
    report: dict[str, Any] = {"bench": "soak", "products": a.products, "minutes": a.minutes, "machine": machine(),
                              "mix": dict(MIX)}
    tmp = Path(tempfile.mkdtemp(prefix="simstream-soak-"))
    server = MilvusServer(tmp / "milvus", tmp / "milvus.log").start()
    os.environ["SIMSTREAM_BENCH_MILVUS_URI"] = server.uri
    workers: dict[str, Any] = {"a": None, "b": None}
    try:
        fv, tops, info = prepare(a.products, a.seed, encoders, root, names, settings0.resolved_list_depth, None)
        run = scale_run(False, a.products, a.seed, root, names, encoders[False], fv, tops[False],
                        env={"SIMSTREAM_SNAPSHOT_INTERVAL_S": "120"})
        report["preload"] = run.load()
        traffic = Traffic(list(fv.docs), a.seed)
        with EmbeddedBroker() as broker:
            settings = Settings(kafka=broker.url, topic_partitions=2)
            ports = {"a": free_port(), "b": free_port()}
            env = run.env(broker.url)

            def worker(name: str, **extra: str) -> Any:
                return WorkerProcess({**env, "SIMSTREAM_DATA_DIR": str(tmp / name), "SIMSTREAM_WEB_PORT": str(ports[name]),
                                      **extra}, log_path=tmp / f"{name}.log")

            workers["a"] = worker("a").start()
            workers["a"].wait_ready(timeout_s=1800)
            tail = TopicTail(settings)
            sent: list[tuple[str, int, float]] = []
            with EventProducer(settings) as producer:
                if a.rate is None:
                    docs = [traffic.next() for _ in range(a.saturation_events)]
                    t0 = time.time()
                    for d in docs:
                        producer.send(d)
                    producer.flush()
                    wanted = {d["product_id"]: d["version"] for d in docs if d["op"] == "upsert"}
                    tail.wait_for(wanted, 3600, check=workers["a"].check)
                    # sustained: the backlog's second half (the first rides on a fresh worker's
                    # warm start; 1,000 events read 24.6/s at 100k where 9/s was sustained)
                    done = sorted(tail.first[(pid, v)]["ts"] for pid, v in wanted.items() if (pid, v) in tail.first)
                    half = done[len(done) // 2:]
                    saturation = (len(docs) / 2) / max(half[-1] - half[0], 1e-3) if len(half) > 1 \
                        else len(docs) / (time.time() - t0)
                    report["saturation_events_per_s"] = round(saturation, 2)
                    report["saturation_whole_backlog_events_per_s"] = round(len(docs) / (time.time() - t0), 2)
                    rate = a.load * saturation
                else:
                    rate = a.rate
                report["offered_events_per_s"] = round(rate, 2)
                print(f"offering {rate:.1f} events/s for {a.minutes} min", flush=True)
                duration = a.minutes * 60.0
                plan = [(duration / 3, "join"), (duration / 2, "milvus_restart"), (2 * duration / 3, "leave")]
                rss: list[dict[str, Any]] = []
                events: list[dict[str, Any]] = []
                stopped: set[str] = set()  # workers stopped on purpose
                t_start = time.monotonic()
                next_rss, k = t_start, 0
                while (now := time.monotonic()) - t_start < duration:
                    if plan and now - t_start >= plan[0][0]:
                        action = plan.pop(0)[1]
                        events.append({"t_s": round(now - t_start, 1), "change": action})
                        print(f"  {action} at {now - t_start:.0f} s", flush=True)
                        if action == "join":
                            workers["b"] = worker("b", SIMSTREAM_SNAPSHOT_PEERS=f"127.0.0.1:{ports['a']}").start()
                        elif action == "milvus_restart":  # beside the traffic, which keeps its pace
                            threading.Thread(target=server.crash, args=(10.0,), kwargs={"timeout_s": 600},
                                             daemon=True).start()
                        else:
                            t0 = time.monotonic()
                            stopped.add("b")
                            code = workers["b"].stop(timeout_s=120)
                            events[-1] |= {"drain_s": round(time.monotonic() - t0, 1), "exit": code}
                    for name, w in workers.items():  # exited unasked (its watchdog): its pod would restart
                        if w is not None and name not in stopped and w.exited:
                            events.append({"t_s": round(now - t_start, 1), "change": f"{name} restarted",
                                           "exit": w.proc.returncode})
                            print(f"  worker {name} exited ({w.proc.returncode}): restarted", flush=True)
                            w.start()
                    if now >= next_rss:
                        rss.append(rss_sample(t_start, workers, server))
                        next_rss += RSS_EVERY_S
                    due = t_start + k / rate
                    if (wait := due - time.monotonic()) > 0:
                        tail.poll(min(wait, 0.2))
                        continue
                    d = traffic.next()
                    producer.send(d)
                    if d["op"] == "upsert":
                        sent.append((d["product_id"], int(d["version"]), time.time()))
                    k += 1
                producer.flush()
            report["events_sent"] = k
            report["changes"] = events
            quiet_until = time.monotonic() + 60
            while time.monotonic() < quiet_until:
                if tail.poll(3.0):
                    quiet_until = time.monotonic() + 60
            per_window: dict[int, list[float]] = {}
            unanswered = 0
            for pid, version, at in sent:
                first = tail.first.get((pid, version))
                if first is None:
                    if traffic.versions.get(pid) == version and pid not in traffic.deleted:
                        unanswered += 1  # its own version is the last: it must have a list
                    continue
                per_window.setdefault(int((at - sent[0][2]) // WINDOW_S), []).append(first["ts"] - at)
            report["freshness"] = [{"from_min": w * WINDOW_S / 60, "events": len(v), "p50_s": round(percentile(v, 50), 2),
                                    "p99_s": round(percentile(v, 99), 2)} for w, v in sorted(per_window.items())]
            report["unanswered_latest_versions"] = unanswered
            report["rss"] = rss
            # a restart starts A's memory again: the slope counts from its last start, warmed up
            a_started = max([e["t_s"] for e in events if e["change"] == "a restarted"], default=0.0)
            report["rss_slope_a"] = slope_per_hour(rss, "a", a_started + a.warm_up_share * duration)
            for name in ("a", "b"):
                if workers[name] is not None and workers[name].running:
                    workers[name].stop(timeout_s=120)
            report["dead_letters"] = len(read_dead_letters(settings, timeout_s=120))
            tail.close()
            report["exactness"] = check_sample(run.milvus_uri, run.collection, tail, traffic, a.check,
                                               settings.top_k, a.seed)
    finally:
        for w in workers.values():
            if w is not None and w.running:
                w.kill()
        os.environ.pop("SIMSTREAM_BENCH_MILVUS_URI", None)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    emit(report, a.json)


if __name__ == "__main__":
    main()
