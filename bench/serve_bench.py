"""simstream serve under load, and the quality of its text search (docs/serving.md).

Latency: a catalog of N products is written straight into a milvus-lite file through the index API
(``index.rows.product_row`` + ``MilvusStore``): titles, brands, 3-level categories and prices are
synthetic, the fused vectors are *random but valid* (each field segment a random unit vector scaled
by sqrt(weight), as fusion lays them out), and every product gets a published list of 10 random
catalog ids in the wire format. Exactness does not matter for latency; the shapes and sizes do.
Then ``simstream serve`` runs as its own process, and 32 concurrent clients (aiohttp, asyncio) call
one endpoint at a time for a bounded time each: p50 / p99 latency, throughput, errors.

Quality: the right table of Abt-Buy and Amazon-Google through the real encoders into Milvus; each
left title (test-split gold pairs) as a ``GET /v1/search`` query; recall@1/@10 and MRR, beside the
char-trigram TF-IDF baseline (left titles vs the right table's texts) in the same run.

    python bench/serve_bench.py --sizes 10000 --seconds 20 --json bench/results/serve.json
    python bench/serve_bench.py --skip-latency --quality      # quality only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORDS = ("wireless bluetooth noise cancelling headphones over-ear black silver steel travel mug ceramic "
         "cotton t-shirt running shoe laptop 13 inch 16gb ssd gaming bottle insulated stainless 1l pro air "
         "compact portable charger usb-c cable hdmi 4k monitor keyboard mechanical mouse optical").split()
BRANDS = [f"brand{i:02d}" for i in range(50)]
JSON_BODY = {"Content-Type": "application/json"}
CATEGORIES = [f"Dept{a} > Group{b} > Kind{c}" for a in range(5) for b in range(6) for c in range(8)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the synthetic catalog --------------------------------------------------------------------
def write_catalog(uri: str, collection: str, n: int, seed: int = 7) -> dict[str, Any]:
    """N products with random-but-valid fused vectors and random published lists; returns a sample
    of ids, brands and categories for the request generators."""
    from simstream.encoders.fusion import FIELDS, load_weights
    from simstream.index.milvus import MilvusStore
    from simstream.index.rows import StoredList, product_row
    from simstream.records import Neighbour, NeighbourList, ProductEvent
    from simstream.settings import Settings

    from simstream.encoders.fusion import ProductEncoder
    from simstream.vector_codec import canonical_rows

    settings = Settings()
    weights = load_weights(settings)
    encoder = ProductEncoder(settings)  # serve's own layout and storage grid: rows on the grid, as the worker writes
    dims = {f: s.stop - s.start for f, s in encoder.layout.items()}
    dim = encoder.dim
    rng = np.random.default_rng(seed)
    rnd = random.Random(seed)
    store = MilvusStore.connect(uri, collection, dim, flush_every_rows=0, timeout_s=600)  # bulk flushes take long
    ids = [f"p{i:07d}" for i in range(n)]
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for start in range(0, n, 2000):
        chunk = ids[start:start + 2000]
        parts = []
        for f in FIELDS:
            seg = rng.normal(size=(len(chunk), dims[f])).astype(np.float32)
            seg /= np.linalg.norm(seg, axis=1, keepdims=True)
            parts.append(seg * np.float32(np.sqrt(weights[f])))
        vectors = np.concatenate(parts, axis=1)
        canonical_rows(vectors, encoder.segments)
        rows = []
        for pid, vec in zip(chunk, vectors):
            event = ProductEvent(pid, "upsert", 1, title=" ".join(rnd.choices(WORDS, k=6)), brand=rnd.choice(BRANDS),
                                 category=rnd.choice(CATEGORIES), price=round(float(rng.lognormal(3.5, 1.0)), 2),
                                 currency="EUR", attributes={"colour": rnd.choice(["black", "white", "red"])},
                                 event_time=now)
            rows.append(product_row(event, vec, {}, "bench-random", now))
        store.insert_products(rows)
        lists = []
        for pid in chunk:
            picks = rnd.sample(ids, 10)
            nl = NeighbourList(pid, 1, [Neighbour(x, round(0.9 - 0.05 * j, 6), {f: round((0.9 - 0.05 * j) * weights[f], 6)
                                                                                   for f in FIELDS})
                                        for j, x in enumerate(picks)], "bench-random", now, now)
            lists.append(StoredList(pid, picks, 0.4, nl.to_json(), now))
        store.upsert_lists(lists, now)
    store.flush()
    store.close()
    return {"ids": ids, "seconds": round(time.perf_counter() - t0, 1), "dim": dim}


# --- load ------------------------------------------------------------------------------------
def endpoints(ids: list[str]) -> dict[str, Callable[[random.Random], tuple[str, str, Any]]]:
    """Request generators per endpoint: (method, path, json body)."""
    return {
        "GET /v1/products/{id}": lambda r: ("GET", f"/v1/products/{r.choice(ids)}", None),
        "GET /v1/products/{id}/neighbors": lambda r: ("GET", f"/v1/products/{r.choice(ids)}/neighbors?k=10", None),
        "GET neighbors, filter brand": lambda r: (
            "GET", f"/v1/products/{r.choice(ids)}/neighbors?k=10&brand={r.choice(BRANDS)}", None),
        "GET neighbors, filter category+price": lambda r: (
            "GET", f"/v1/products/{r.choice(ids)}/neighbors?k=10&category=Dept{r.randrange(5)}&price_max=100", None),
        "GET /v1/search": lambda r: ("GET", "/v1/search?k=10&q=" + "+".join(r.choices(WORDS, k=4)), None),
        "GET /v1/search, filter brand": lambda r: (
            "GET", f"/v1/search?k=10&brand={r.choice(BRANDS)}&q=" + "+".join(r.choices(WORDS, k=4)), None),
        "GET neighbors, weights (live)": lambda r: (
            "GET", f"/v1/products/{r.choice(ids)}/neighbors?k=10&weights=text:2,brand:0", None),
        "GET neighbors, exclude+per_brand": lambda r: (
            "GET", f"/v1/products/{r.choice(ids)}/neighbors?k=10&per_brand=2&exclude={r.choice(ids)}"
                   f"&brand_not={r.choice(BRANDS)}", None),
        "POST /v1/recommend": lambda r: ("POST", "/v1/recommend", {
            "k": 10, "positive": r.sample(ids, 3), "negative": r.sample(ids, 1)}),
        "POST /v1/recommend, filter category": lambda r: ("POST", "/v1/recommend", {
            "k": 10, "positive": r.sample(ids, 3), "filters": {"category": f"Dept{r.randrange(5)}"}}),
        "POST /v1/batch (10 queries)": lambda r: ("POST", "/v1/batch", {"queries": [
            {"op": "neighbors", "product_id": r.choice(ids), "k": 10, "filters": {"brand": r.choice(BRANDS)}}
            for _ in range(5)] + [{"op": "recommend", "positive": r.sample(ids, 2), "k": 10} for _ in range(5)]}),
        "POST /v1/similar": lambda r: ("POST", "/v1/similar", {"k": 10, "product": {
            "title": " ".join(r.choices(WORDS, k=6)), "brand": r.choice(BRANDS), "category": r.choice(CATEGORIES),
            "price": round(r.uniform(5, 500), 2)}}),
    }


async def load(base: str, gen: Callable[[random.Random], tuple[str, str, Any]], clients: int,
               seconds: float) -> dict[str, Any]:
    """``clients`` closed-loop clients on keep-alive connections for ``seconds``. aiohttp, not
    httpx: the load generator shares the 2 cores with serve, and httpx spent a whole core to make
    ~450 req/s (it, not serve, was the limit of the cheap endpoints)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def one(seed: int) -> None:
            r = random.Random(seed)
            while time.perf_counter() < deadline:
                method, path, body = gen(r)
                t0 = time.perf_counter()
                try:
                    async with client.request(method, path, data=orjson.dumps(body) if body is not None else None,
                                              headers=JSON_BODY if body is not None else None) as resp:
                        await resp.read()
                        ok = resp.status == 200
                        key = str(resp.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    ok, key = False, type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    pct = lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None  # noqa: E731
    return {"requests": len(lat), "rps": round(len(lat) / wall, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None, "errors": errors}


def serve_process(data_dir: Path, collection: str, port: int, log: Path, copy: str = "auto",
                  threads: int | None = None, milvus_uri: str | None = None,
                  log_level: str = "INFO") -> subprocess.Popen[bytes]:
    """``threads``: SIMSTREAM_TORCH_THREADS (None: serve's default, every core); ``log_level``:
    INFO, serve's default, writes an access line per request into ``log`` (runs before session 27:
    WARNING, without them)."""
    env = {**os.environ, "SIMSTREAM_DATA_DIR": str(data_dir), "SIMSTREAM_COLLECTION": collection,
           "SIMSTREAM_SERVE_COPY": copy, **({"SIMSTREAM_TORCH_THREADS": str(threads)} if threads else {}),
           "SIMSTREAM_SERVE_RATE_LIMIT": "",  # the load generator is one client: no per-client limit
           "SIMSTREAM_LOG_LEVEL": log_level, "SIMSTREAM_LOG_FORMAT": "json",
           **({"SIMSTREAM_MILVUS_URI": milvus_uri} if milvus_uri else {})}
    exe = Path(sys.executable).with_name("simstream")
    out = open(log, "ab")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("serve did not become ready")


def latency_run(n: int, clients: int, seconds: float, copy: str = "auto", threads: int | None = None,
                only: str = "", milvus_uri: str | None = None, keep: Path | None = None,
                log_level: str = "INFO") -> dict[str, Any]:
    """``milvus_uri``: a Milvus server to write the catalog into and serve from (else a milvus-lite file).
    ``keep``: a folder that keeps the written milvus-lite catalog between runs (written once per size)."""
    work = keep / str(n) if keep else Path(tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    collection = f"bench{n}" if milvus_uri else "bench"
    try:
        saved = work / "catalog.json"
        if keep and not milvus_uri and saved.exists():
            info = orjson.loads(saved.read_bytes())
            print(f"[{n}] reusing the catalog in {work}", flush=True)
        else:
            print(f"[{n}] writing {n} products (random-but-valid vectors) ...", flush=True)
            info = write_catalog(milvus_uri or str((work / "simstream.db").resolve()), collection, n)
            saved.write_bytes(orjson.dumps(info))
        print(f"[{n}] written in {info['seconds']} s (dim {info['dim']}); starting simstream serve ...", flush=True)
        port = free_port()
        t_start = time.perf_counter()
        proc = serve_process(work, collection, port, work / "serve.log", copy, threads, milvus_uri, log_level)
        ready_s = round(time.perf_counter() - t_start, 1)
        deadline = time.monotonic() + 600  # the published lists are read in the background after ready
        while time.monotonic() < deadline:
            held = (httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=10).json().get("published_lists") or {})
            if held.get("preloaded", True):
                break
            time.sleep(1)
        lists_s = round(time.perf_counter() - t_start - ready_s, 1)
        print(f"[{n}] ready in {ready_s} s; published lists read into memory {lists_s} s later", flush=True)
        try:
            out: dict[str, Any] = {"products": n, "clients": clients, "seconds": seconds, "write_s": info["seconds"],
                                   "milvus": "server " + milvus_uri if milvus_uri else "milvus-lite file",
                                   "serve_copy": copy, "log_level": log_level, "torch_threads": threads or f"default ({os.cpu_count()} cores)", "serve_ready_s": ready_s,
                                   "published_lists_read_s": lists_s,
                                   "endpoints": {}}
            base = f"http://127.0.0.1:{port}"
            for name, gen in endpoints(info["ids"]).items():
                if only and only not in name:
                    continue
                asyncio.run(load(base, gen, clients, min(3.0, seconds)))  # warm-up, not recorded
                res = asyncio.run(load(base, gen, clients, seconds))
                out["endpoints"][name] = res
                print(f"[{n}] {name:<40} p50 {res['p50_ms']:>7} ms  p99 {res['p99_ms']:>7} ms  "
                      f"{res['rps']:>7} req/s  errors {res['errors'] or 0}", flush=True)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            for key, name in (("VmRSS", "serve_rss_mib"), ("VmHWM", "serve_peak_rss_mib")):
                out[name] = round(int(status.split(key + ":")[1].split()[0]) / 1024)
            print(f"[{n}] serve memory: {out['serve_rss_mib']} MiB resident, peak {out['serve_peak_rss_mib']} MiB "
                  "(a milvus-lite file's data lives in serve's process)", flush=True)
            return out
        finally:
            from simstream.harness.embedded import stop_process

            stop_process(proc, signal.SIGINT, 30)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# --- quality ----------------------------------------------------------------------------------
QUALITY = {"abt_buy": ({"title": "name", "description": "description", "price": "price"}, "name"),
           "amazon_google": ({"title": "title", "brand": "manufacturer", "price": "price"}, "title")}


def quality_run(names: list[str]) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from simstream.index.milvus import MilvusStore
    from simstream.index.rows import product_row
    from simstream.quality.datasets import read_gold, read_table
    from simstream.quality.evaluate import retrieval_metrics, tfidf_rankings
    from simstream.serve.app import create_app
    from simstream.serve.queries import QueryEncoder
    from simstream.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="serve-quality-"))
    out: dict[str, Any] = {}
    settings = Settings(data_dir=work)
    encoder = QueryEncoder(settings)
    try:
        for name in names:
            folder = DATA / name
            if not folder.exists():
                print(f"[quality] {folder} is absent: skipped", flush=True)
                continue
            fields, title_col = QUALITY[name]
            right = read_table(folder / "tableB.csv", fields)
            left_titles = read_table(folder / "tableA.csv", {"title": title_col})
            gold = {q: r for q, r in read_gold(folder / "test.csv").items()}
            t0 = time.perf_counter()
            batch = encoder.encoder.encode(right.events)
            store = MilvusStore.connect(str(work / f"{name}.db"), name, encoder.dim, flush_every_rows=0, timeout_s=600)
            store.insert_products([product_row(p, v, h, encoder.model, 1)
                                   for p, v, h in zip(batch.products, batch.vectors, batch.hashes)])
            store.flush()
            encode_s = time.perf_counter() - t0
            where = {rid: i for i, rid in enumerate(left_titles.ids)}
            queries = [where[q] for q in gold if q in where]
            ranked: dict[str, list[str]] = {}
            t0 = time.perf_counter()
            with TestClient(create_app(settings, milvus=store, encoder=encoder)) as client:
                for i in queries:
                    resp = client.get("/v1/search", params={"q": left_titles.texts[i][:500], "k": 10})
                    resp.raise_for_status()
                    ranked[left_titles.ids[i]] = [n["product_id"] for n in resp.json()["neighbors"]]
            search_s = time.perf_counter() - t0
            store.close()
            tfidf = tfidf_rankings(left_titles, right, queries, 10)
            ks = [1, 10]
            out[name] = {"right_products": len(right.ids), "queries": len(queries), "encode_s": round(encode_s, 1),
                         "search_ms_mean": round(1000 * search_s / max(len(queries), 1), 1),
                         "serve_search": retrieval_metrics(ranked, gold, ks), "tfidf": retrieval_metrics(tfidf, gold, ks)}
            s, b = out[name]["serve_search"], out[name]["tfidf"]
            print(f"[quality] {name}: {len(queries)} queries vs {len(right.ids)} products | serve search "
                  f"R@1 {s['recall@1']} R@10 {s['recall@10']} MRR {s['mrr']} | TF-IDF R@1 {b['recall@1']} "
                  f"R@10 {b['recall@10']} MRR {b['mrr']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000", help="catalog sizes, comma-separated (e.g. 10000,100000)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0, help="load time per endpoint")
    ap.add_argument("--copy", default="auto", choices=["auto", "on", "off"],
                    help="SIMSTREAM_SERVE_COPY of the serve process (off: every live query a Milvus search)")
    ap.add_argument("--threads", type=int, default=None,
                    help="SIMSTREAM_TORCH_THREADS of the serve process (default: serve's own, every core)")
    ap.add_argument("--only", default="", help="endpoint names containing this text only")
    ap.add_argument("--milvus-uri", default=None, help="a Milvus server (e.g. under scripts/with-milvus-server.sh: "
                                                       "$SIMSTREAM_TEST_MILVUS_URI); default a milvus-lite file")
    ap.add_argument("--keep", type=Path, default=None, help="keep the written catalogs in this folder and reuse "
                                                            "them on the next run (milvus-lite only)")
    ap.add_argument("--log-level", default="INFO", help="serve's SIMSTREAM_LOG_LEVEL: INFO (its default) writes "
                                                        "an access line per request; WARNING, none (runs before session 27)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--quality", action="store_true", help="also measure search quality (Abt-Buy, Amazon-Google)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "latency": [], "quality": {}}
    if not args.skip_latency:
        for n in [int(x) for x in args.sizes.split(",") if x]:
            report["latency"].append(latency_run(n, args.clients, args.seconds, args.copy, args.threads, args.only,
                                                 args.milvus_uri, args.keep, args.log_level))
    if args.quality:
        report["quality"] = quality_run(list(QUALITY))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
