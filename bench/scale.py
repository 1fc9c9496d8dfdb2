"""Scale benchmark (issue 13, item 1): the steady-state measurement at catalog sizes of 10k-1M.

    python bench/scale.py [--sizes 10000,100000] [--side-only 1000000] [--quick] [--json OUT]

Per size N (every phase bounded in time; a phase past its bound is reported as skipped, with why):
 1. catalog: N synthetic products (bench/common.py says which parts of their vectors are real
    encodings and which are perturbed), and every product's exact top-``depth`` list for both
    encoder modes in one all-pairs pass (``common.exact_lists_by_mode``, same answer as
    index/exact.py ``exact_top_k``; cached in bench/.cache);
 2. per mode (text-only, text+image) and state (fresh; churned: ``--states``): a milvus-lite file is
    pre-loaded with the catalog and its lists through the index API (``common.preload``; churned:
    constructed directly, with the write and list times that 3 x N random writes leave behind,
    ``common.churned_times``; streamed: reached for real, by streaming 3 x N rewrites of random
    products through the worker after the warm-up, to show the constructed state agrees), the Tansu
    broker and a real ``simstream worker`` start; measured: start-up (``VectorStore.load_into_memory``: side index + list mirror built, from
    the worker's log; and process start to /readyz), the worker's RSS after a warm-up batch (its
    process tree: milvus-lite runs inside it) minus the RSS of a worker holding ~0 products in the
    same mode, per product; a backlog of events at once (pipeline_bench.py's (b): events/s, and
    from the worker's /metrics the encoder seconds, so non-encoder ms per event); freshness at
    50 % of that rate (pipeline_bench.py's (c)); text-only also a backlog of price-only updates of
    pre-loaded products (no encoder runs), twice over the same products: ``price_only`` meets the
    list heads as loaded from Milvus, ``price_only_warm`` as a running worker holds them (with
    their members' exact scores, docs/exactness.md §2a);
 3. exactness at the end: the worker stopped, the products the run wrote are read back from Milvus
    (the vectors the worker scored with) into the catalog matrix, and the lists of a sample (every
    product the run changed or published a list for, plus random others; up to ``--check``) are
    compared with an exact top-K over the final catalog: the newest list on the neighbour topic,
    else the list recorded in Milvus. Equal = same ids in the same order, scores within 1e-4.
The encoders alone (bench/encoders_bench.py's ceiling) are measured in the same run, so each
pipeline rate also comes as a ratio to it.

``--milvus-uri`` (inside scripts/with-milvus-server.sh) keeps every run's collections on a Milvus
server instead of a milvus-lite file in the worker: e.g. ``--modes milvus`` at 100k, the
Milvus-search mode where it belongs (the RSS then counts the worker alone).

``--side-only`` sizes (1M by default) do not fit milvus-lite plus a worker on a 24 GB machine
(N x 3,232 float32 = 12.9 GB per copy, and milvus-lite holds its own): there only the in-memory
side index (index/side.py) is measured, with clearly synthetic vectors shaped like fused ones
(same segment layout, each segment a random unit vector scaled by sqrt(weight)): RSS per product
while filling it and search milliseconds per query.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import (  # type: ignore
    CACHE, MILVUS_SERVER_ENV, FieldVectors, TopicTail, emit, encoder_settings, exact_lists_by_mode, field_vectors,
    fuse, image_root, machine, make_doc, preload, process_rss, synthetic_fused, worker_log_events,
)

MODES = {"text": False, "image": True, "milvus": False}  # mode -> images on
# "milvus": text-only with SIMSTREAM_SIDE_INDEX=false, every neighbour search and list read going
# to Milvus (issue 21 item 7: the mode for a catalog beyond one worker's memory), fresh state only.
MODE_ENV = {"milvus": {"SIMSTREAM_SIDE_INDEX": "false"}}
MODE_NAMES = {"milvus": "milvus_search"}
# A 100k-product milvus-lite flush takes longer than the 10 s default deadline on a busy 2-core
# machine; the bench's own calls and the worker's get this one (a deadline, not a cost).
MILVUS_TIMEOUT_S = 300.0
# The bulk path stays off: this bench measures streaming, and the streamed state's 3 x N rewrites
# would otherwise arrive as one bulk round (every list searched afresh, not a churned catalog).
WORKER_ENV = {"SIMSTREAM_MILVUS_TIMEOUT_S": str(int(MILVUS_TIMEOUT_S)), "SIMSTREAM_BULK_MIN_BACKLOG": "0"}
QUICK = {"sizes": [2_000], "side_only": [20_000], "events": 48, "fresh_s": 8.0, "price_events": 48,
         "check": 300, "encoder_items": 32, "phase_s": 600.0}
FULL = {"sizes": [10_000, 100_000], "side_only": [1_000_000], "events": 256, "fresh_s": 20.0, "price_events": 256,
        "check": 3_000, "encoder_items": 128, "phase_s": 2_400.0, "churned_states": (False, True)}


# --- 1. the catalog and its exact lists ---------------------------------------------------------
def catalog(n: int, seed: int, encoder: Any, root: Path, names: list[str]) -> FieldVectors:
    """N pre-loaded products ``p0000000``... (the ids pipeline_bench.Run updates)."""
    rng = random.Random(seed)
    now = int(time.time() * 1000) - 3_600_000
    docs = [make_doc(rng, f"p{i:07d}", 1, now, names) for i in range(n)]
    return field_vectors(encoder, docs, root, seed)


def cached_exact_lists(encoders: list[Any], fv: FieldVectors, depth: int, seed: int,
                       deadline: float | None) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """``exact_lists_by_mode`` for these encoders and catalog, from bench/.cache when it was
    computed before for the same vectors (a checksum of the fused vectors is the key)."""
    digest = hashlib.sha256()
    for e in encoders:
        digest.update(e.model.encode())
        digest.update(np.ascontiguousarray(fuse(e, fv)).tobytes())
    key = f"scale-lists-{len(fv.ids)}-{seed}-{depth}-{digest.hexdigest()[:16]}.npz"
    path = CACHE / key
    t0 = time.perf_counter()
    if path.exists():
        data = np.load(path)
        tops = [(data[f"idx{m}"], data[f"scores{m}"]) for m in range(len(encoders))]
        return tops, {"exact_lists_s": round(time.perf_counter() - t0, 1), "cached": str(path)}
    tops = exact_lists_by_mode(encoders, fv, depth, deadline=deadline)
    spent = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"idx{m}": t[0] for m, t in enumerate(tops)}, **{f"scores{m}": t[1] for m, t in enumerate(tops)})
    return tops, {"exact_lists_s": round(spent, 1), "cached": None}


def prepare(n: int, seed: int, encoders: dict[bool, Any], root: Path, names: list[str], depth: int,
            deadline: float | None) -> tuple[FieldVectors, dict[bool, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    t0 = time.perf_counter()
    fv = catalog(n, seed, encoders[True], root, names)
    info: dict[str, Any] = {"field_vectors_s": round(time.perf_counter() - t0, 1)}
    order = [False, True]
    tops, timing = cached_exact_lists([encoders[m] for m in order], fv, depth, seed, deadline)
    info.update(timing)
    return fv, dict(zip(order, tops)), info


# --- 2. one mode at one size through the real worker ---------------------------------------------
def _runs() -> tuple[Any, Any, Any, Any]:
    from pipeline_bench import Run, backlog_rate, freshness, scrape  # type: ignore

    return Run, backlog_rate, freshness, scrape


def profiler(pid: int, out: Path, on: bool) -> Any:
    """pipeline_bench.Profiler (py-spy on the worker) when ``--profile`` asks for it, else None."""
    if not on:
        return None
    from pipeline_bench import Profiler  # type: ignore

    return Profiler(pid, out)


def scale_run(image: bool, n: int, seed: int, root: Path, names: list[str], encoder: Any, fv: FieldVectors,
              top: tuple[np.ndarray, np.ndarray] | None, churned: bool = False, env: dict[str, str] | None = None) -> Any:
    """pipeline_bench.Run, pre-loading the given exact lists (as a fresh load, or with the write
    and list times of a churned catalog: common.churned_times) and able to send price-only updates."""
    Run = _runs()[0]

    class ScaleRun(Run):  # type: ignore[misc, valid-type]
        price_only = False
        rewrite = False  # re-publish random pre-loaded products unchanged, at a new version

        def load(self) -> dict[str, float]:
            t0 = time.perf_counter()
            settings = encoder_settings(self.image, image_root=self.root)
            timings = preload(self.milvus_uri, self.collection, self.encoder,
                              self.fv, k=settings.top_k, depth=settings.resolved_list_depth, top=top,
                              timeout_s=MILVUS_TIMEOUT_S)
            timings["total_s"] = time.perf_counter() - t0
            for d in self.fv.docs:
                self.versions[d["product_id"]] = d["version"]
            return {k: round(v, 2) for k, v in timings.items()}

        def events(self, count: int, now_ms: int | None = None) -> list[dict[str, Any]]:
            if self.rewrite:
                out = []
                for _ in range(count):
                    doc = dict(self.fv.docs[self.rng.randrange(len(self.fv.docs))])
                    doc["version"] = self.versions[doc["product_id"]] + 1
                    self.versions[doc["product_id"]] = doc["version"]
                    doc["event_time"] = now_ms if now_ms is not None else int(time.time() * 1000)
                    out.append(doc)
                return out
            if not self.price_only:
                return super().events(count, now_ms)
            out = []
            for _ in range(count):  # untouched pre-loaded products, only the price changes
                doc = dict(self.fv.docs[self.next_update])
                self.next_update += 1
                doc["version"] = self.versions[doc["product_id"]] + 1
                self.versions[doc["product_id"]] = doc["version"]
                doc["price"] = round(doc["price"] * self.rng.uniform(0.8, 1.2), 2)
                doc["event_time"] = now_ms if now_ms is not None else int(time.time() * 1000)
                out.append(doc)
            return out

    return ScaleRun(image, n, seed, root, names, encoder, fv, {**WORKER_ENV, **(env or {})})


def encode_seconds(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("simstream_encode_seconds_sum"))


def refresh_work(after: dict[str, float], before: dict[str, float], events: int) -> dict[str, Any]:
    """Lists merged and searched per event, and seconds per worker step, between two scrapes."""
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    steps = {k.split('op="')[1].rstrip('"}'): round(delta(k), 3) for k in after
             if k.startswith("simstream_milvus_seconds_sum{op=")}
    per = max(events, 1)
    return {"merged_per_event": round(delta('simstream_refresh_lists_total{method="merged"}') / per, 2),
            "searched_per_event": round(delta('simstream_refresh_lists_total{method="searched"}') / per, 2),
            "step_seconds": {k: v for k, v in steps.items() if v}}


def empty_worker_rss(image: bool, seed: int, root: Path, names: list[str], encoder: Any, warm: int) -> dict[str, Any]:
    """RSS of a worker in this mode holding ~0 products (only a warm-up batch), after that batch."""
    from simstream.harness.embedded import EmbeddedBroker, WorkerProcess
    from simstream.settings import Settings
    from simstream.streams.producer import EventProducer

    Run, backlog_rate, _, _ = _runs()
    run = Run(image, 0, seed, root, names, encoder, None, WORKER_ENV)
    try:
        with EmbeddedBroker() as broker:
            settings = Settings(kafka=broker.url, topic_partitions=2)
            with WorkerProcess(run.env(broker.url), log_path=run.data / "worker.log") as worker:
                worker.wait_ready(timeout_s=300)
                assert worker.proc is not None
                ready = process_rss(worker.proc.pid)
                tail = TopicTail(settings)
                with EventProducer(settings) as producer:
                    backlog_rate(run, producer, tail, worker, warm, 600)
                tail.close()
                assert worker.proc is not None
                rss = process_rss(worker.proc.pid)
        return {"products": warm, **{f"rss_{k}_bytes": v for k, v in rss.items()},
                **{f"rss_ready_{k}_bytes": v for k, v in ready.items()}}
    finally:
        shutil.rmtree(run.data, ignore_errors=True)


def run_mode(image: bool, n: int, seed: int, root: Path, names: list[str], encoder: Any, fv: FieldVectors,
             top: tuple[np.ndarray, np.ndarray], p: dict[str, Any], deadline: float, churned: bool = False,
             env: dict[str, str] | None = None, stream_churn: int = 0) -> dict[str, Any]:
    """One mode and state: pre-load, start a worker, measure. ``stream_churn``: after the warm-up,
    stream that many rewrites of random pre-loaded products (a new version, the same content)
    through the worker before measuring: the churned state reached by streaming, to compare with
    the constructed one (``churned``)."""
    from simstream.harness.embedded import EmbeddedBroker, WorkerProcess
    from simstream.settings import Settings
    from simstream.streams.producer import EventProducer

    _, backlog_rate, freshness, scrape = _runs()
    run = scale_run(image, n, seed, root, names, encoder, fv, top, churned, env)
    state = "streamed" if stream_churn else ("churned" if churned else "fresh")
    res: dict[str, Any] = {"products": n, "state": state}
    left = lambda: max(60.0, deadline - time.monotonic())  # noqa: E731
    try:
        res["preload"] = run.load()
        with EmbeddedBroker() as broker:
            settings = Settings(kafka=broker.url, topic_partitions=2)
            t0 = time.monotonic()
            worker = WorkerProcess(run.env(broker.url), log_path=run.data / "worker.log").start()
            tail = TopicTail(settings)
            try:
                worker.wait_ready(timeout_s=min(1800.0, left()))
                res["ready_s"] = round(time.monotonic() - t0, 1)
                assert worker.proc is not None
                res.update({f"rss_ready_{k}_bytes": v for k, v in process_rss(worker.proc.pid).items()})
                built = {d["event"]: d for d in worker_log_events(run.data / "worker.log",
                                                                  ("side index built", "list mirror built"))}
                res["startup"] = {k: v.get("seconds") for k, v in built.items()}
                # RSS with Milvus open and loaded, before the copies are built (memory model: what
                # milvus-lite holds inside the worker vs what the side index and list mirror add)
                fit = worker_log_events(run.data / "worker.log", ("in-memory index copies fit",))
                res["rss_before_copies_mib"] = fit[0].get("rss_mib") if fit else None
                res["startup_s"] = round(sum(v.get("seconds") or 0.0 for v in built.values()), 2) if built else None
                with EventProducer(settings) as producer:
                    res["warm_up"] = backlog_rate(run, producer, tail, worker, 64, min(900.0, left()))
                    if stream_churn:
                        run.rewrite = True
                        res["churn_stream"] = backlog_rate(run, producer, tail, worker, stream_churn, left())
                        run.rewrite = False
                    assert worker.proc is not None
                    res.update({f"rss_{k}_bytes": v for k, v in process_rss(worker.proc.pid).items()})
                    before = scrape(worker.web_port)
                    prof = profiler(worker.proc.pid, run.data / "profile-saturation.txt", p.get("profile", False))
                    sat = backlog_rate(run, producer, tail, worker, p["events"], left())
                    if prof is not None:
                        res["saturation_profile"] = prof.stop()
                    after = scrape(worker.web_port)
                    res["saturation"] = sat
                    enc_s = encode_seconds(after) - encode_seconds(before)
                    res["encode_s"] = round(enc_s, 2)
                    res["refresh_work"] = refresh_work(after, before, sat.get("completed") or 0)
                    if sat.get("completed"):
                        res["non_encoder_ms_per_event"] = round((sat["seconds"] - enc_s) / sat["completed"] * 1000, 1)
                    if p["fresh_s"] > 0 and sat["events_per_s"] > 0 and time.monotonic() < deadline:
                        res["freshness"] = freshness(run, producer, tail, worker, 0.5 * sat["events_per_s"], p["fresh_s"])
                    if not image and p["price_events"] and time.monotonic() < deadline:
                        # Twice over the same products: first with the heads as loaded from Milvus
                        # (no member scores held yet), then again, as a running worker meets them.
                        run.price_only = True
                        first = run.next_update
                        for key, profile_name in (("price_only", "profile-price.txt"), ("price_only_warm", None)):
                            if time.monotonic() >= deadline:
                                break
                            run.next_update = first
                            before = scrape(worker.web_port)
                            prof = profiler(worker.proc.pid, run.data / profile_name, p.get("profile", False)) \
                                if profile_name else None
                            res[key] = price = backlog_rate(run, producer, tail, worker, p["price_events"], left())
                            if prof is not None:
                                res["price_only_profile"] = prof.stop()
                            after = scrape(worker.web_port)
                            price["encode_s"] = round(encode_seconds(after) - encode_seconds(before), 3)
                            price["refresh_work"] = refresh_work(after, before, price.get("completed") or 0)
                        run.price_only = False
                # lists still arriving for the last events' neighbours
                quiet_until = time.monotonic() + 60
                while time.monotonic() < quiet_until and tail.poll(3.0):
                    pass
            except Exception:
                print(worker.tail(), flush=True)
                raise
            finally:
                worker.stop()
                tail.close()
        res["neighbour_messages"] = tail.messages
        if time.monotonic() < deadline:
            res["exactness"] = check_exactness(run, tail, encoder, p["check"], seed)
        else:
            res["exactness"] = {"skipped": "time bound of the size passed"}
    finally:
        for name in ("worker.log", "profile-saturation.txt", "profile-price.txt"):
            keep = Path(tempfile.gettempdir()) / \
                f"simstream-scale-{n}-{'image' if image else 'text'}{'' if state == 'fresh' else '-' + state}-{name}"
            if (run.data / name).exists():
                shutil.copy(run.data / name, keep)
                res["worker_log" if name == "worker.log" else name.split(".")[0].replace("-", "_")] = str(keep)
        shutil.rmtree(run.data, ignore_errors=True)
    return res


# --- 3. exactness at the end ---------------------------------------------------------------------
def check_exactness(run: Any, tail: TopicTail, encoder: Any, check: int, seed: int) -> dict[str, Any]:
    """Share of sampled lists equal to an exact top-K over the final catalog (see module docstring)."""
    from simstream.index.milvus import MilvusStore
    from simstream.records import NeighbourList
    from simstream.settings import Settings
    from simstream.vector_codec import canonical

    from common import exact_rows  # type: ignore

    t0 = time.perf_counter()
    settings = Settings()
    k = settings.top_k
    ids = list(run.fv.ids)
    position = {pid: i for i, pid in enumerate(ids)}
    preloaded = {d["product_id"]: d["version"] for d in run.fv.docs}
    written = sorted(pid for pid, v in run.versions.items() if preloaded.get(pid) != v)
    store = MilvusStore.connect(run.milvus_uri, run.collection, encoder.dim, timeout_s=MILVUS_TIMEOUT_S)
    try:
        got = store.read_products(written)
        missing = [pid for pid in written if pid not in got or got[pid].version != run.versions[pid]]
        new = [pid for pid in written if pid not in position and pid in got]
        mat = np.zeros((len(ids) + len(new), encoder.dim), np.float32)  # fuse() into place: one copy at 100k
        for f, sl in encoder.layout.items():
            if encoder.weights[f] > 0:  # as common.fuse: on the field's storage grid
                np.multiply(run.fv.fields[f], encoder.scale[f], out=mat[:len(ids), sl])
                mat[:len(ids), sl] = canonical(mat[:len(ids), sl], encoder.codecs[f])
        for pid in new:
            position[pid] = len(ids)
            ids.append(pid)
        for pid in written:
            if pid in got:
                mat[position[pid]] = got[pid].vector
        rng = np.random.default_rng(seed)
        touched = sorted(set(tail.latest) | set(written))
        if len(touched) > check:
            touched = sorted(rng.choice(touched, check, replace=False).tolist())
        others = sorted(set(ids) - set(tail.latest) - set(written))
        sample_others = sorted(rng.choice(others, min(len(others), max(check // 4, 1)), replace=False).tolist()) \
            if others else []
        sample = touched + sample_others
        recorded = store.read_lists([pid for pid in sample if pid not in tail.latest])
    finally:
        store.close()
    want = exact_rows(mat, ids, [position[pid] for pid in sample], k)
    equal, unequal, no_list = 0, [], []
    for pid, rows in zip(sample, want):
        raw = tail.latest.get(pid) or (recorded[pid].payload if pid in recorded else b"")
        if not raw:
            no_list.append(pid)
            continue
        nl = NeighbourList.from_json(raw)
        same = ([x.product_id for x in nl.neighbours] == [ids[j] for j, _ in rows]
                and all(abs(x.score - s) <= 1e-4 for x, (_, s) in zip(nl.neighbours, rows))
                and nl.version == run.versions[pid])
        if same:
            equal += 1
        else:
            unequal.append(pid)
    return {"checked": len(sample), "checked_touched": len(touched), "checked_untouched": len(sample_others),
            "equal": equal, "equal_share": round(equal / len(sample), 4) if sample else None,
            "unequal_examples": unequal[:10], "without_list": no_list[:10], "written": len(written),
            "written_missing_in_milvus": missing[:10], "seconds": round(time.perf_counter() - t0, 1)}


# --- 1M: the side index alone ---------------------------------------------------------------------
def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def side_only(n: int, encoder: Any, seed: int, queries: int = 64, page: int = 2_000,
              deadline: float | None = None) -> dict[str, Any]:
    """Fill index/side.py's SideIndex with ``n`` synthetic fused-shaped vectors: RSS per product and
    search ms per query (the refresh step's shape: limit top_k + 1 + TIE_MARGIN)."""
    from simstream.index.budget import side_capacity
    from simstream.index.neighbours import TIE_MARGIN
    from simstream.index.rows import StoredProduct
    from simstream.index.side import SideIndex
    from simstream.memory import current_rss
    from simstream.settings import Settings

    from simstream.index.budget import PRODUCT_META_BYTES
    from simstream.vector_codec import bytes_per_row

    dim = encoder.dim
    need = int(side_capacity(n) * bytes_per_row(encoder.segments) + n * PRODUCT_META_BYTES)
    avail = mem_available()
    if need > 0.8 * avail:
        return {"skipped": f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available (80 % rule)"}
    rng = np.random.default_rng(seed)

    def vectors(count: int) -> np.ndarray:
        return synthetic_fused(encoder, count, rng)

    before = current_rss()
    t0 = time.perf_counter()
    side = SideIndex(dim, capacity=side_capacity(n), segments=encoder.segments)
    hashes = {f: "0123456789abcdef" for f in encoder.layout}
    for start in range(0, n, page):
        if deadline is not None and time.monotonic() > deadline:
            return {"skipped": f"time bound passed after {start} products"}
        vec = vectors(min(page, n - start))
        side.put([StoredProduct(f"sku-{start + i:08d}", vec[i], 1, dict(hashes), encoder.model,
                                1_700_000_000_000, 1_700_000_000_000 + start + i) for i in range(len(vec))])
    fill_s = time.perf_counter() - t0
    after = current_rss()
    q = vectors(queries)
    limit = Settings().top_k + 1 + TIE_MARGIN
    side.search(q[:4], limit)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        side.search(q, limit)
        best = min(best, time.perf_counter() - t0)
    res = {"products": n, "vectors": "synthetic (segment layout and sqrt(weight) scaling of the text+image "
                                     "fusion; random unit segments)",
           "dim": dim, "fill_s": round(fill_s, 1), "rss_bytes_per_product": round((after - before) / n),
           "allocated_bytes_per_product": round(side.nbytes / n),
           "matrix_bytes_per_product": side.row_bytes, "loose_rows": side.loose_rows,
           "search_ms_per_query": round(best / queries * 1000, 2),
           "queries_per_call": queries, "limit": limit}
    del side
    return res


# --- the whole benchmark ------------------------------------------------------------------------
def scale(sizes: list[int], side_sizes: list[int], p: dict[str, Any], seed: int = 11,
          modes: tuple[str, ...] = ("text", "image"), encoders: dict[bool, Any] | None = None,
          ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    from simstream.encoders.fusion import ProductEncoder

    from encoders_bench import encoder_ceiling  # type: ignore

    root, names = image_root()
    encoders = encoders if encoders is not None else {}
    for image in (False, True):
        if image not in encoders:
            encoders[image] = ProductEncoder(encoder_settings(image, image_root=root))
    out: dict[str, Any] = {"params": p, "modes": list(modes), "skipped": []}
    if ceiling is None and sizes:
        ceiling = encoder_ceiling(p["encoder_items"], encoders=encoders)
    out["encoder_ceiling"] = {m: ceiling[m]["items_per_s"] for m in ("text_only", "text_image")} if sizes else {}
    depth = encoder_settings(True).resolved_list_depth
    empty: dict[bool, dict[str, Any]] = {}
    for n in sizes:
        deadline = time.monotonic() + p["phase_s"]
        res: dict[str, Any] = {}
        out[str(n)] = res
        try:
            fv, tops, info = prepare(n, seed, encoders, root, names, depth, deadline)
        except TimeoutError as exc:
            res["skipped"] = f"exact lists: {exc}"
            out["skipped"].append(f"{n}: {res['skipped']}")
            print(json.dumps({str(n): res}), flush=True)
            continue
        res["catalog"] = info
        states = [st for st, on in (("fresh", False in p.get("churned_states", (False,))),
                                    ("churned", True in p.get("churned_states", ())),
                                    ("streamed", p.get("streamed", False))) if on]
        for mode, state in [(m, st) for m in modes for st in states if st == "fresh" or m not in MODE_ENV]:
            image = MODES[mode]
            churned = state == "churned"
            base = MODE_NAMES.get(mode) or ("text_image" if image else "text_only")
            name = base + ("" if state == "fresh" else "_" + state)
            deadline = time.monotonic() + p["phase_s"]
            if image not in empty:
                empty[image] = empty_worker_rss(image, seed, root, names, encoders[image], 64)
            r = run_mode(image, n, seed, root, names, encoders[image], fv, tops[image], p, deadline, churned,
                         MODE_ENV.get(mode), stream_churn=3 * n if state == "streamed" else 0)
            e = empty[image]
            r["empty_worker"] = e
            # after the same warm-up batch in both; and at /readyz, before any event (no encoder buffers yet)
            r["rss_bytes_per_product"] = round((r["rss_tree_bytes"] - e["rss_tree_bytes"]) / n)
            r["rss_ready_bytes_per_product"] = round((r["rss_ready_tree_bytes"] - e["rss_ready_tree_bytes"]) / n)
            rate = r.get("saturation", {}).get("events_per_s")
            ceil = out["encoder_ceiling"]["text_image" if image else "text_only"]
            r["over_ceiling"] = round(rate / ceil, 3) if rate and ceil else None
            res[name] = r
            print(json.dumps({str(n): {name: r}}, default=str), flush=True)
        del fv, tops
    for n in side_sizes:
        res = side_only(n, encoders[True], seed, deadline=time.monotonic() + p["phase_s"])
        out[f"side_only_{n}"] = res
        if "skipped" in res:
            out["skipped"].append(f"side index at {n}: {res['skipped']}")
        print(json.dumps({f"side_only_{n}": res}), flush=True)
    return out


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The run_all.py keys: ``scale`` per size and the 100k headline numbers (None when not measured)."""
    per: dict[str, Any] = {}
    why: list[str] = list(r.get("skipped", []))
    for key, res in r.items():
        if not key.isdigit():
            continue
        per[key] = _size_fields(res.get("text_only", {}), res.get("text_image", {}))
        if "milvus_search" in res:
            per[key]["milvus_search"] = _size_fields(res["milvus_search"], {})
        if "text_only_churned" in res or "text_image_churned" in res:
            per[key]["churned"] = _size_fields(res.get("text_only_churned", {}), res.get("text_image_churned", {}))
        if "text_only_streamed" in res or "text_image_streamed" in res:
            per[key]["streamed"] = _size_fields(res.get("text_only_streamed", {}), res.get("text_image_streamed", {}))
    for key, res in r.items():
        if key.startswith("side_only_") and "skipped" not in res:
            per.setdefault(key.removeprefix("side_only_"), {}).update(
                {"side_index_only": True, "rss_bytes_per_product": res["rss_bytes_per_product"],
                 "side_search_ms_per_query": res["search_ms_per_query"]})
    big = r.get("100000", {})
    t, i = big.get("text_only", {}), big.get("text_image", {})
    tc = big.get("text_only_churned", {})
    fresh_rate, churned_rate = t.get("saturation", {}).get("events_per_s"), tc.get("saturation", {}).get("events_per_s")
    out = {"scale": per,
           "price_only_events_per_s_100k": t.get("price_only", {}).get("events_per_s"),
           "price_only_warm_events_per_s_100k": t.get("price_only_warm", {}).get("events_per_s"),
           "freshness_p99_s_100k_text": t.get("freshness", {}).get("p99_s"),
           "freshness_p99_s_100k_image": i.get("freshness", {}).get("p99_s"),
           "pipeline_over_ceiling_100k_text": t.get("over_ceiling"),
           "pipeline_over_ceiling_100k_image": i.get("over_ceiling"),
           "churned_over_fresh_100k": round(churned_rate / fresh_rate, 3) if fresh_rate and churned_rate else None,
           "milvus_search_mode_events_per_s_100k": big.get("milvus_search", {}).get("saturation", {}).get("events_per_s")}
    for key, value in out.items():
        if value is None:
            why.append(f"{key}: not measured ({'100000 not among the sizes' if not big else 'see the 100000 entry'})")
    out["scale_not_measured"] = why
    return out


def _size_fields(t: dict[str, Any], i: dict[str, Any]) -> dict[str, Any]:
    """One state's headline fields at one size (text-only ``t``, with images ``i``)."""
    return {"rss_bytes_per_product": t.get("rss_bytes_per_product"),
            "rss_bytes_per_product_image": i.get("rss_bytes_per_product"),
            "rss_ready_bytes_per_product": t.get("rss_ready_bytes_per_product"),
            "startup_s": t.get("startup_s"),
            "non_encoder_ms_per_event": t.get("non_encoder_ms_per_event"),
            "non_encoder_ms_per_event_image": i.get("non_encoder_ms_per_event"),
            "events_per_s_text": t.get("saturation", {}).get("events_per_s"),
            "events_per_s_image": i.get("saturation", {}).get("events_per_s"),
            "equal_share": min((x for x in (t.get("exactness", {}).get("equal_share"),
                                            i.get("exactness", {}).get("equal_share")) if x is not None),
                               default=None),
            "price_only_events_per_s": t.get("price_only", {}).get("events_per_s"),
            "price_only_warm_events_per_s": t.get("price_only_warm", {}).get("events_per_s"),
            "refresh_work": t.get("refresh_work"),
            }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma list, default 10000,100000 (--quick: 2000)")
    ap.add_argument("--side-only", default=None, help="sizes measured on the side index alone, default 1000000")
    ap.add_argument("--modes", default="text,image", help="text, image, milvus (text-only, searches in Milvus)")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--fresh-s", type=float, default=None)
    ap.add_argument("--phase-s", type=float, default=None, help="time bound of each phase (catalog, each mode)")
    ap.add_argument("--check", type=int, default=None, help="lists compared with the exact top-K per mode (sample)")
    ap.add_argument("--encoder-items", type=int, default=None, help="items of the same-run encoder ceiling")
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    ap.add_argument("--profile", action="store_true", help="py-spy the worker during the backlogs (top entries in the JSON)")
    ap.add_argument("--states", default=None,
                    help="fresh,churned (default; --quick: fresh): the catalog as freshly loaded, and as churned; "
                         "streamed: churned by streaming 3 x N rewrites through the worker (to compare with churned)")
    ap.add_argument("--milvus-uri", default=None,
                    help="a Milvus server for every run's collections, instead of milvus-lite files (run inside "
                         "scripts/with-milvus-server.sh: --milvus-uri \"$SIMSTREAM_TEST_MILVUS_URI\")")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.profile:
        from pipeline_bench import py_spy  # type: ignore

        if py_spy() is None:  # say so now, not when the first backlog begins
            ap.error("--profile needs py-spy: pip install -e '.[bench]'")
    if a.milvus_uri:
        os.environ[MILVUS_SERVER_ENV] = a.milvus_uri
    p = dict(QUICK if a.quick else FULL, profile=a.profile)
    if a.states is not None:
        wanted = [state for state in a.states.split(",") if state]
        p["churned_states"] = tuple(state == "churned" for state in wanted if state in ("fresh", "churned"))
        p["streamed"] = "streamed" in wanted
    for key, value in (("events", a.events), ("price_events", a.events), ("fresh_s", a.fresh_s), ("phase_s", a.phase_s),
                       ("check", a.check), ("encoder_items", a.encoder_items)):
        if value is not None:
            p[key] = value
    sizes = [int(x) for x in a.sizes.split(",") if x] if a.sizes is not None else p.pop("sizes")
    side = [int(x) for x in a.side_only.split(",") if x] if a.side_only is not None else p.pop("side_only")
    p.pop("sizes", None)
    p.pop("side_only", None)
    started = time.monotonic()
    r = scale(sizes, side, p, modes=tuple(a.modes.split(",")))
    report = {"machine": machine(), "milvus": a.milvus_uri or "milvus-lite file in the worker", "scale_run": r, **summary(r), "seconds_total": round(time.monotonic() - started, 1)}
    for line in report["scale_not_measured"]:
        print(f"not measured: {line}")
    emit(report, a.json)


if __name__ == "__main__":
    main()
