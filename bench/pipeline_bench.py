"""(b) pipeline throughput, (c) freshness, (d) batching gain: the real Tansu broker, a real
``simstream worker`` subprocess and a milvus-lite file pre-loaded with ``--preload`` products.

    python bench/pipeline_bench.py [--preload 20000] [--events 512] [--fresh-s 30] [--modes text,image] [--json OUT]

Per mode (text-only = SIMSTREAM_IMAGE_ENABLED=false; text+image):
 1. pre-load the milvus-lite file straight through VectorStore's client (bench/common.py says what
    the vectors are), with each product's exact top-K list, flushed;
 2. start the broker and the worker, wait for /readyz, push a warm-up batch through;
 3. (b) publish ``--events`` events at once (half full updates of pre-loaded products, half new
    products; every event a distinct product) and time from the first publish to the broker
    timestamp of the last of their own neighbour lists (matched by product and version): events/s;
 4. (c) offered load at 50 % of (b) for ``--fresh-s`` seconds, each event stamped with
    event_time = send time; freshness = broker timestamp of the product's list (first message
    with that version) - event_time; p50/p95/p99;
 5. (d, text-only) restart the worker with SIMSTREAM_BATCH_SIZE=1 and time a smaller backlog.
Messages are counted on the neighbour topic (never end offsets). The worker's /metrics histograms
(encode / Milvus seconds per step) are scraped after (b) for the breakdown.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import (  # type: ignore
    TopicTail, emit, encoder_settings, field_vectors, image_root, machine, make_doc, milvus_target, percentile,
    preload,
)


def scrape(port: int) -> dict[str, float]:
    """Sum and count of the worker's timing histograms (seconds), by label."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if any(name.startswith(p) for p in ("simstream_encode_seconds_sum", "simstream_milvus_seconds_sum",
                                             "simstream_encode_seconds_count", "simstream_milvus_seconds_count",
                                             "simstream_batch_size_sum", "simstream_batch_size_count",
                                             "simstream_lists_total", "simstream_events_total",
                                             "simstream_refresh_lists_total")):
            out[name] = float(value)
    return out


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Top self and inclusive entries of a py-spy ``--format raw`` (collapsed stacks) file."""
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    if not total:
        return {}
    return {"samples": total,
            "self": [(f, round(n / total, 3)) for f, n in own.most_common(top)],
            "inclusive": [(f, round(n / total, 3)) for f, n in incl.most_common(4 * top)
                          if "process_" not in f and "thread" not in f.split(" ")[0].lower()][:top],
            "ours_inclusive": [(f, round(n / total, 3)) for f, n in incl.most_common()
                               if any(f"({d}/" in f for d in ("index", "streams", "encoders"))][:2 * top]}


def py_spy() -> str | None:
    """The py-spy executable (the ``bench`` extra), or None when it is not installed."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


class Profiler:
    """py-spy attached to the worker for one measurement (all threads, idle excluded)."""

    def __init__(self, pid: int, out: Path) -> None:
        import subprocess

        self.out = out
        exe = py_spy()
        if exe is None:
            raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
        self.proc = subprocess.Popen([exe, "record", "-p", str(pid), "-r", "50", "-f", "raw", "-o", str(out),
                                      "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> dict[str, Any]:
        import signal

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
        return summarize_profile(self.out) if self.out.exists() else {}


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items() if v - before.get(k, 0.0)}


class Run:
    """One broker + one data dir + worker(s) for one encoder mode."""

    def __init__(self, image: bool, preload_n: int, seed: int, root: Path, names: list[str], encoder: Any,
                 fv: Any, extra_env: dict[str, str] | None = None) -> None:
        self.image = image
        self.names = names if image else []
        self.root = root
        self.rng = random.Random(seed)
        self.preload_n = preload_n
        self.next_new = 0
        self.next_update = 0
        self.versions: dict[str, int] = {}
        self.data = Path(tempfile.mkdtemp(prefix="simstream-bench-pipe-"))
        self.milvus_uri, self.collection, self.milvus_env = milvus_target(self.data)
        self.encoder = encoder
        self.fv = fv
        self.extra_env = extra_env or {}

    def load(self) -> dict[str, float]:
        t0 = time.perf_counter()
        settings = encoder_settings(self.image, image_root=self.root)
        timings = preload(self.milvus_uri, self.collection, self.encoder,
                          self.fv, k=settings.top_k, depth=settings.resolved_list_depth)
        timings["total_s"] = time.perf_counter() - t0
        for d in self.fv.docs:
            self.versions[d["product_id"]] = d["version"]
        return {k: round(v, 2) for k, v in timings.items()}

    def env(self, broker_url: str, **over: str) -> dict[str, str]:
        return {
            "SIMSTREAM_KAFKA": broker_url, "SIMSTREAM_DATA_DIR": str(self.data),
            "SIMSTREAM_IMAGE_ENABLED": "true" if self.image else "false", "SIMSTREAM_IMAGE_ROOT": str(self.root),
            "SIMSTREAM_SESSION_TIMEOUT_S": "10", "SIMSTREAM_TOPIC_PARTITIONS": "2",
            "SIMSTREAM_LOG_FORMAT": "json", "SIMSTREAM_LOG_LEVEL": "INFO", **self.milvus_env, **self.extra_env, **over,
        }

    def events(self, n: int, now_ms: int | None = None) -> list[dict[str, Any]]:
        """n events on distinct products: alternately a full update of a pre-loaded product and a new one."""
        out = []
        for i in range(n):
            if i % 2 == 0 and self.next_update < self.preload_n:
                pid = f"p{self.next_update:07d}"
                self.next_update += 1
            else:
                pid = f"n{self.next_new:07d}"
                self.next_new += 1
            v = self.versions.get(pid, 0) + 1
            self.versions[pid] = v
            t = now_ms if now_ms is not None else int(time.time() * 1000)
            out.append(make_doc(self.rng, pid, v, t, self.names))
        return out


def backlog_rate(run: Run, producer: Any, tail: TopicTail, worker: Any, n: int, timeout_s: float) -> dict[str, Any]:
    docs = run.events(n)
    wanted = {d["product_id"]: d["version"] for d in docs}
    t0 = time.time()
    for d in docs:
        producer.send(d)
    producer.flush()
    sent_s = time.time() - t0
    ok = tail.wait_for(wanted, timeout_s, check=worker.check)
    done = [tail.first[(p, v)]["ts"] for p, v in wanted.items() if (p, v) in tail.first]
    if not done:
        return {"events": n, "completed": 0, "events_per_s": 0.0}
    end = max(done)
    return {"events": n, "completed": len(done), "all_completed": ok, "publish_s": round(sent_s, 2),
            "seconds": round(end - t0, 2), "events_per_s": round(len(done) / (end - t0), 2)}


def freshness(run: Run, producer: Any, tail: TopicTail, worker: Any, rate: float, seconds: float) -> dict[str, Any]:
    interval = 1.0 / rate
    wanted: dict[str, int] = {}
    sent: dict[tuple[str, int], float] = {}
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < seconds:
        due = start + k * interval
        if (delay := due - time.monotonic()) > 0:
            tail.poll(min(delay, 0.05)) if delay > 0.06 else time.sleep(delay)
            continue
        d = run.events(1)[0]
        producer.send(d)  # sent at once: EventProducer serves delivery reports after each send
        wanted[d["product_id"]] = d["version"]
        sent[(d["product_id"], d["version"])] = d["event_time"] / 1000.0
        k += 1
    producer.flush()
    tail.wait_for(wanted, 120, check=worker.check)
    lat = [tail.first[key]["ts"] - t for key, t in sent.items() if key in tail.first]
    lat_recv = [tail.first[key]["recv"] - t for key, t in sent.items() if key in tail.first]
    lat_src = [tail.first[key]["ts"] - tail.first[key]["source_event_time"] for key in sent if key in tail.first]
    return {"offered_events_per_s": round(rate, 2), "seconds": seconds, "events": len(sent), "measured": len(lat),
            "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
            "p99_s": round(percentile(lat, 99), 3), "max_s": round(max(lat), 3) if lat else None,
            "p99_s_local_receive": round(percentile(lat_recv, 99), 3),
            "p99_s_from_source_event_time_field": round(percentile(lat_src, 99), 3)}


def run_mode(image: bool, preload_n: int, events_n: int, fresh_s: float, batch1_events: int, seed: int,
             encoder: Any, fv: Any, root: Path, names: list[str], timeout_s: float = 1800,
             profile: bool = False, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    from simstream.harness.embedded import EmbeddedBroker, WorkerProcess
    from simstream.streams.producer import EventProducer
    from simstream.settings import Settings

    run = Run(image, preload_n, seed, root, names, encoder, fv, extra_env)
    res: dict[str, Any] = {"preloaded": preload_n, "preload": run.load()}
    with EmbeddedBroker() as broker:
        settings = Settings(kafka=broker.url, topic_partitions=2)
        worker = WorkerProcess(run.env(broker.url), log_path=run.data / "worker.log").start()
        tail = TopicTail(settings)
        try:
            t0 = time.monotonic()
            worker.wait_ready(timeout_s=300)
            res["worker_ready_s"] = round(time.monotonic() - t0, 1)
            with EventProducer(settings) as producer:
                warm = backlog_rate(run, producer, tail, worker, 2 * 64, 600)
                res["warm_up"] = warm
                before = scrape(worker.web_port)
                prof = Profiler(worker.proc.pid, run.data / "profile.txt") if profile else None
                sat = backlog_rate(run, producer, tail, worker, events_n, timeout_s)
                if prof is not None:
                    res["profile"] = prof.stop()
                res["saturation"] = sat
                res["worker_metrics_during_saturation"] = diff(scrape(worker.web_port), before)
                if fresh_s > 0 and sat["events_per_s"] > 0:
                    prof = Profiler(worker.proc.pid, run.data / "profile-fresh.txt") if profile else None
                    res["freshness"] = freshness(run, producer, tail, worker, 0.5 * sat["events_per_s"], fresh_s)
                    if prof is not None:
                        res["freshness_profile"] = prof.stop()
        except Exception:
            print(worker.tail(), flush=True)
            raise
        finally:
            worker.stop()
        if batch1_events:
            worker = WorkerProcess(run.env(broker.url, SIMSTREAM_BATCH_SIZE="1"),
                                   log_path=run.data / "worker-batch1.log").start()
            try:
                worker.wait_ready(timeout_s=300)
                with EventProducer(settings) as producer:
                    backlog_rate(run, producer, tail, worker, 4, 300)  # warm-up
                    b1 = backlog_rate(run, producer, tail, worker, batch1_events, timeout_s)
                res["batch1"] = b1
                if b1["events_per_s"]:
                    res["batching_gain"] = round(res["saturation"]["events_per_s"] / b1["events_per_s"], 2)
            except Exception:
                print(worker.tail(), flush=True)
                raise
            finally:
                worker.stop()
        tail.close()
    res["neighbour_messages"] = tail.messages
    mode = "text_image" if image else "text_only"
    for name in ("profile.txt", "profile-fresh.txt", "worker.log", "worker-batch1.log"):
        if (run.data / name).exists():
            keep = Path(tempfile.gettempdir()) / f"simstream-bench-{mode}-{name}"
            shutil.copy(run.data / name, keep)
            res.setdefault("kept_files", []).append(str(keep))
    shutil.rmtree(run.data, ignore_errors=True)
    return res


def pipeline(preload_n: int, events_n: int, fresh_s: float, batch1_events: int, modes: list[str], seed: int = 11,
             encoders: dict[bool, Any] | None = None, profile: bool = False,
             extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    from simstream.encoders.fusion import ProductEncoder

    root, names = image_root()
    encoders = encoders if encoders is not None else {}
    if True not in encoders:
        encoders[True] = ProductEncoder(encoder_settings(True, image_root=root))
    rng = random.Random(seed)
    now = int(time.time() * 1000) - 3_600_000
    docs = [make_doc(rng, f"p{i:07d}", 1, now, names) for i in range(preload_n)]
    t0 = time.perf_counter()
    fv = field_vectors(encoders[True], docs, root, seed)
    out: dict[str, Any] = {"field_vectors_s": round(time.perf_counter() - t0, 1)}
    for mode in modes:
        image = mode == "image"
        if image not in encoders:
            encoders[image] = ProductEncoder(encoder_settings(image, image_root=root))
        name = "text_image" if image else "text_only"
        out[name] = run_mode(image, preload_n, events_n, fresh_s, batch1_events if not image else 0, seed,
                             encoders[image], fv, root, names, profile=profile, extra_env=extra_env)
        print(json.dumps({name: out[name]}, default=str), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preload", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=512)
    ap.add_argument("--fresh-s", type=float, default=30.0)
    ap.add_argument("--batch1-events", type=int, default=64)
    ap.add_argument("--modes", default="text,image")
    ap.add_argument("--profile", action="store_true", help="py-spy the worker during (b); top entries in the JSON")
    ap.add_argument("--env", action="append", default=[], help="extra worker env, e.g. SIMSTREAM_SIDE_INDEX=false")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    extra = dict(e.split("=", 1) for e in a.env)
    report = {"machine": machine(), "worker_env": extra,
              "pipeline": pipeline(a.preload, a.events, a.fresh_s, a.batch1_events, a.modes.split(","),
                                   profile=a.profile, extra_env=extra)}
    emit(report, a.json)


if __name__ == "__main__":
    main()
