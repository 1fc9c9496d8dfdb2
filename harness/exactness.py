"""The exactness proof: a random product stream through real workers, compared with an exact oracle.

``run_exactness`` generates a random stream (creates, near and far updates, deletes, re-creates,
exact duplicate events, out-of-order older versions, delete-then-stale-upsert), publishes it with
``EventProducer`` through the embedded Tansu broker to ``simstream worker`` subprocess(es),
optionally SIGKILLs and restarts a worker at random moments, waits (bounded) until everything is
quiet, and then compares the latest value per key of the neighbour topic with an exact numpy top-K
over the final catalog.

The oracle's vectors are read back from Milvus after the workers stopped (the same float32 numbers
the worker scored with, so a near-tie cannot flip because of encoder noise); the final Milvus
catalog is first checked against the expected catalog (ids and versions), and a re-encoding of the
expected final catalog with ``ProductEncoder`` checks that every stored vector is the vector of the
latest version (``max_vector_error``). ``bench/exactness.py`` is the command line; the integration
test runs the same code at a small size. docs/exactness.md records results.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simstream.streams.contracts import parse_event

from simstream.records import NeighbourList
from simstream.harness.embedded import EmbeddedBroker, WorkerProcess, free_port, wait_for_port
from simstream.streams.neighbour_reader import NeighbourReader
from simstream.streams.producer import EventProducer
from simstream.settings import Settings

SCORE_TOLERANCE = 1e-4

# Product families: a "far" update moves a product to another family (title, brand, category, price).
FAMILIES: list[dict[str, Any]] = [
    {"noun": ["Wireless Headphones", "Noise Cancelling Headphones", "Over-Ear Headphones", "Earbuds"],
     "brand": ["Sony", "Bose", "Sennheiser", "JBL", "Jabra"], "category": "Electronics > Audio > Headphones",
     "price": (30, 450), "adj": ["Bluetooth", "Active", "Studio", "Sport", "Travel"]},
    {"noun": ["Laptop", "Ultrabook", "Gaming Laptop", "Notebook"],
     "brand": ["Lenovo", "Dell", "HP", "Asus", "Acer"], "category": "Computers > Laptops",
     "price": (400, 3000), "adj": ["14-inch", "15.6-inch", "Slim", "Pro", "OLED"]},
    {"noun": ["Running Shoes", "Trail Shoes", "Sneakers", "Walking Shoes"],
     "brand": ["Nike", "Adidas", "Asics", "Brooks", "Hoka"], "category": "Sports > Footwear > Running",
     "price": (50, 250), "adj": ["Men's", "Women's", "Lightweight", "Cushioned", "Waterproof"]},
    {"noun": ["Espresso Machine", "Coffee Maker", "Coffee Grinder", "Drip Coffee Machine"],
     "brand": ["DeLonghi", "Breville", "Krups", "Philips", "Melitta"], "category": "Home > Kitchen > Coffee",
     "price": (40, 900), "adj": ["Automatic", "Manual", "Stainless", "Compact", "Programmable"]},
    {"noun": ["Cordless Drill", "Impact Driver", "Circular Saw", "Angle Grinder"],
     "brand": ["Bosch", "Makita", "DeWalt", "Milwaukee", "Ryobi"], "category": "Tools > Power Tools",
     "price": (50, 400), "adj": ["18V", "Brushless", "Heavy Duty", "Compact", "Kit"]},
    {"noun": ["Yoga Mat", "Dumbbell Set", "Kettlebell", "Resistance Bands"],
     "brand": ["Decathlon", "Reebok", "Gaiam", "Bowflex", "Manduka"], "category": "Sports > Fitness",
     "price": (10, 300), "adj": ["Non-Slip", "Adjustable", "Premium", "Eco", "Thick"]},
    {"noun": ["Smartphone", "Phone Case", "Screen Protector", "Phone Charger"],
     "brand": ["Samsung", "Apple", "Xiaomi", "Google", "OnePlus"], "category": "Electronics > Phones",
     "price": (10, 1400), "adj": ["5G", "128GB", "Fast", "Rugged", "Unlocked"]},
    {"noun": ["Board Game", "Jigsaw Puzzle", "Card Game", "Building Blocks Set"],
     "brand": ["Hasbro", "Ravensburger", "Lego", "Mattel", "Asmodee"], "category": "Toys > Games",
     "price": (8, 200), "adj": ["Family", "1000-Piece", "Strategy", "Kids", "Classic"]},
    {"noun": ["Office Chair", "Standing Desk", "Bookshelf", "Desk Lamp"],
     "brand": ["Ikea", "Herman Miller", "Steelcase", "Flexispot", "Songmics"], "category": "Home > Furniture > Office",
     "price": (30, 1500), "adj": ["Ergonomic", "Adjustable", "Oak", "Mesh", "LED"]},
    {"noun": ["Dog Food", "Cat Litter", "Dog Leash", "Cat Tree"],
     "brand": ["Purina", "Royal Canin", "Kong", "Trixie", "Whiskas"], "category": "Pets > Supplies",
     "price": (5, 150), "adj": ["Grain-Free", "Large", "Clumping", "Reflective", "Indoor"]},
]
COLORS = ["Black", "White", "Silver", "Blue", "Red", "Green", "Grey", "Navy"]


@dataclass
class Stream:
    """The generated events (in publish order) and what the final catalog must be."""

    events: list[dict[str, Any]]
    final: dict[str, dict[str, Any]]  # product_id -> the highest-version event
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> dict[str, dict[str, Any]]:
        return {pid: e for pid, e in self.final.items() if e["op"] == "upsert"}

    @property
    def deleted(self) -> set[str]:
        return {pid for pid, e in self.final.items() if e["op"] == "delete"}


def _content(rng: random.Random, family: int | None = None) -> dict[str, Any]:
    f = FAMILIES[rng.randrange(len(FAMILIES)) if family is None else family]
    brand = rng.choice(f["brand"])
    noun = rng.choice(f["noun"])
    title = f"{brand} {rng.choice(f['adj'])} {noun} {rng.choice(COLORS)} {rng.choice('ABCDEFGHJKLMNPRSTXZ')}{rng.randint(10, 999)}"
    lo, hi = f["price"]
    doc: dict[str, Any] = {"title": title, "brand": brand, "category": f["category"],
                           "price": round(rng.uniform(lo, hi), 2), "currency": "EUR",
                           "mpn": f"{brand[:3].upper()}-{rng.randint(1000, 99999)}",
                           "_family": FAMILIES.index(f)}
    if rng.random() < 0.5:
        doc["description"] = f"{rng.choice(f['adj'])} {noun.lower()} by {brand}, {rng.choice(COLORS).lower()} finish."
    return doc


def generate_stream(n_products: int, n_events: int, seed: int) -> Stream:
    """A random stream with every kind of event the worker must get right.

    Versions are per product and unique per content: a re-sent event is byte-identical (an exact
    duplicate) and an out-of-order event carries an older version than one already sent.
    """
    rng = random.Random(seed)
    ids = [f"p{i:05d}" for i in range(n_products)]
    version: dict[str, int] = {}  # highest version generated so far
    history: dict[str, list[dict[str, Any]]] = {}  # every distinct event generated, per product
    current: dict[str, dict[str, Any]] = {}  # content of the live product
    events: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    held_back: list[tuple[int, dict[str, Any]]] = []  # (release at len(events), event): out of order
    base_time = int(time.time() * 1000)

    def emit(doc: dict[str, Any], kind: str) -> None:
        kinds[kind] = kinds.get(kind, 0) + 1
        events.append(doc)

    def new_event(pid: str, op: str, content: dict[str, Any] | None) -> dict[str, Any]:
        version[pid] = version.get(pid, 0) + rng.randint(1, 3)
        doc = {"product_id": pid, "op": op, "version": version[pid], "event_time": base_time + len(events)}
        if content is not None:
            doc.update({k: v for k, v in content.items() if not k.startswith("_")})
        history.setdefault(pid, []).append(doc)
        return doc

    # First a creation wave over every product (so the catalog has >= n_products), then the mix.
    order = ids[:]
    rng.shuffle(order)
    clones = 0
    for pid in order:
        if current and rng.random() < 0.03 and clones < n_products // 30:
            # Identical content to another product: exact score ties, broken by product_id.
            content = dict(rng.choice(list(current.values())))
            clones += 1
        else:
            content = _content(rng)
        current[pid] = content
        emit(new_event(pid, "upsert", content), "create")
    while len(events) < n_events:
        while held_back and held_back[0][0] <= len(events):
            emit(held_back.pop(0)[1], "out_of_order_late")
        pid = rng.choice(ids)
        r = rng.random()
        if pid in current:
            if r < 0.25:  # near update: same family, new details
                content = dict(current[pid])
                content["price"] = round(content["price"] * rng.uniform(0.7, 1.3), 2)
                content["title"] = content["title"].rsplit(" ", 1)[0] + f" {rng.choice('ABCDEFGH')}{rng.randint(10, 999)}"
                current[pid] = content
                emit(new_event(pid, "upsert", content), "update_near")
            elif r < 0.50:  # far update: another family entirely
                fam = current[pid].get("_family", 0)
                content = _content(rng, (fam + rng.randrange(1, len(FAMILIES))) % len(FAMILIES))
                current[pid] = content
                emit(new_event(pid, "upsert", content), "update_far")
            elif r < 0.62:
                del current[pid]
                emit(new_event(pid, "delete", None), "delete")
            elif r < 0.75:  # exact duplicate of the last event of this product
                emit(dict(history[pid][-1]), "duplicate")
            elif r < 0.85 and len(history[pid]) > 1:  # an older version arriving late
                emit(dict(rng.choice(history[pid][:-1])), "stale")
            else:  # out of order: v+2 goes out now, v+1 (older) some events later
                first = new_event(pid, "upsert", _content(rng))
                second_content = _content(rng) if rng.random() < 0.7 else None
                second = new_event(pid, "upsert" if second_content else "delete", second_content)
                if second_content is None:
                    current.pop(pid, None)
                else:
                    current[pid] = second_content
                emit(second, "out_of_order_new")
                held_back.append((len(events) + rng.randint(1, 200), first))
        else:
            if r < 0.55 and pid in history:  # re-create after a delete
                content = _content(rng)
                current[pid] = content
                emit(new_event(pid, "upsert", content), "recreate")
            elif r < 0.85 and any(e["op"] == "upsert" for e in history.get(pid, [])):
                # An old upsert after the delete: must not resurrect the product.
                emit(dict(rng.choice([e for e in history[pid] if e["op"] == "upsert"])), "stale_after_delete")
            elif pid in history:
                emit(dict(history[pid][-1]), "duplicate_delete")
    for _, doc in held_back:
        emit(doc, "out_of_order_late")
    final: dict[str, dict[str, Any]] = {}
    for doc in events:
        cur = final.get(doc["product_id"])
        if cur is None or doc["version"] > cur["version"]:
            final[doc["product_id"]] = doc
    return Stream(events, final, kinds)


# --- the oracle -----------------------------------------------------------------------------
def oracle_lists(vectors: dict[str, np.ndarray], k: int) -> dict[str, list[tuple[str, float]]]:
    """Exact top-k by inner product over ``vectors``, ties (to 1e-6) broken by product_id."""
    from simstream.index.neighbours import rank_key

    ids = sorted(vectors)
    if not ids:
        return {}
    mat = np.stack([vectors[i] for i in ids]).astype(np.float32)
    sims = mat @ mat.T
    out: dict[str, list[tuple[str, float]]] = {}
    pre = min(len(ids), k + 64)
    for row, pid in enumerate(ids):
        s = sims[row].copy()
        s[row] = -np.inf
        # Pre-select generously, then score exactly like the worker does (float32 dot, rank_key).
        top = np.argpartition(-s, pre - 1)[:pre] if pre < len(ids) else np.arange(len(ids))
        kth_floor = np.sort(s[top])[::-1][min(k, len(top)) - 1] if len(top) else -np.inf
        cand = set(top.tolist()) | set(np.nonzero(s >= kth_floor - 1e-5)[0].tolist())
        cand.discard(row)
        me = mat[row]
        scored = sorted(((float(mat[j] @ me), ids[j]) for j in cand), key=lambda t: rank_key(t[0], t[1]))[:k]
        out[pid] = [(nid, sc) for sc, nid in scored]
    return out


@dataclass
class Comparison:
    products: int
    live: int
    equal: int
    lost: list[str]
    resurrected: list[str]
    wrong_version: list[str]
    unequal: list[str]
    near_tie_unequal: list[str]
    max_vector_error: float | None

    @property
    def equal_share(self) -> float:
        return self.equal / self.products if self.products else 1.0


def compare(stream: Stream, topic: dict[str, NeighbourList | None], stored: dict[str, tuple[int, np.ndarray]],
            k: int) -> Comparison:
    """``stored``: product_id -> (version, vector) read back from Milvus after the run."""
    live, deleted = stream.live, stream.deleted
    lost = sorted(pid for pid in live if pid not in stored or topic.get(pid) is None)
    resurrected = sorted(pid for pid in deleted if pid in stored or topic.get(pid) is not None)
    wrong_version = sorted(pid for pid in live if pid in stored and stored[pid][0] != live[pid]["version"])
    strays = sorted(set(stored) - set(stream.final))
    oracle = oracle_lists({pid: vec for pid, (_, vec) in stored.items() if pid in live}, k)
    equal = 0
    unequal: list[str] = []
    near: list[str] = []
    for pid in sorted(stream.final):
        if pid in deleted:
            if pid not in stored and topic.get(pid) is None:
                equal += 1
            continue
        nl = topic.get(pid)
        want = oracle.get(pid)
        if nl is None or want is None or pid in wrong_version:
            continue
        got_ids = [n.product_id for n in nl.neighbours]
        want_ids = [nid for nid, _ in want]
        same = got_ids == want_ids and all(abs(n.score - s) <= SCORE_TOLERANCE for n, (_, s) in zip(nl.neighbours, want))
        same = same and nl.version == live[pid]["version"]
        if same:
            equal += 1
        else:
            unequal.append(pid)
            # Was it only an ordering of (near-)equal scores? Still counted as unequal.
            want_scores = dict(want)
            if sorted(got_ids) == sorted(want_ids) or all(
                    abs(n.score - want_scores.get(n.product_id, -9)) <= 1e-5 for n in nl.neighbours):
                near.append(pid)
    # Products in Milvus that never appeared in the stream count as wrong too.
    wrong_version = sorted(set(wrong_version) | set(strays))
    return Comparison(len(stream.final), len(live), equal, lost, resurrected, wrong_version, unequal, near, None)


# --- processes --------------------------------------------------------------------------------
class MilvusServer:
    """``milvus-lite server`` on a free loopback port; stopped by PID."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "MilvusServer":
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "milvus_lite"]
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*cmd, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        wait_for_port(self.port, timeout_s)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def _metric_total(port: int) -> float | None:
    """Sum of the worker's event and list counters (changes while it works); None if unreachable."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("simstream_events_total", "simstream_lists_total", "simstream_batch_size_count")):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Options:
    products: int = 1000
    events: int = 5000
    workers: int = 1
    kills: int = 0
    seed: int = 7
    top_k: int = 10
    partitions: int = 4
    candidate_pool: int | None = None
    quiet_s: float = 10.0
    timeout_s: float = 1800.0
    reencode_check: bool = True
    keep: bool = False
    data_dir: Path | None = None
    log: Callable[[str], None] = print


def run_exactness(opts: Options) -> dict[str, Any]:
    """Run the whole proof; returns the report (the --json document plus details)."""
    say = opts.log
    started = time.monotonic()
    deadline = started + opts.timeout_s
    stream = generate_stream(opts.products, opts.events, opts.seed)
    say(f"generated {len(stream.events)} events over {len(stream.final)} products "
        f"({len(stream.live)} live at the end, {len(stream.deleted)} deleted): {dict(sorted(stream.kinds.items()))}")
    for doc in stream.events:  # the stream must be valid input: no dead letters expected
        parse_event(doc["product_id"].encode(), json.dumps(doc).encode())
    data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="simstream-exactness-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app_id = f"exact-{opts.seed}-{os.getpid()}"
    server: MilvusServer | None = None
    workers: list[WorkerProcess] = []
    rng = random.Random(opts.seed + 1)
    try:
        with EmbeddedBroker() as broker:
            if opts.workers > 1:
                server = MilvusServer(data_dir / "milvus", data_dir / "milvus-server.log").start()
                milvus_uri = server.uri
            else:
                milvus_uri = str(data_dir / "milvus" / "simstream.db")
            base_env = {
                "SIMSTREAM_KAFKA": broker.url, "SIMSTREAM_APP_ID": app_id, "SIMSTREAM_MILVUS_URI": milvus_uri,
                "SIMSTREAM_IMAGE_ENABLED": "false", "SIMSTREAM_SESSION_TIMEOUT_S": "6",
                "SIMSTREAM_TOPIC_PARTITIONS": str(opts.partitions), "SIMSTREAM_TOP_K": str(opts.top_k),
                "SIMSTREAM_LOG_FORMAT": "json", "SIMSTREAM_LOG_LEVEL": "INFO",
            }
            if opts.candidate_pool:
                base_env["SIMSTREAM_CANDIDATE_POOL"] = str(opts.candidate_pool)

            def make_worker(i: int) -> WorkerProcess:
                (data_dir / f"worker-{i}").mkdir(parents=True, exist_ok=True)
                env = {**base_env, "SIMSTREAM_DATA_DIR": str(data_dir / f"worker-{i}"), "SIMSTREAM_WEB_PORT": str(free_port())}
                return WorkerProcess(env, log_path=data_dir / f"worker-{i}.log").start()

            for i in range(opts.workers):
                workers.append(make_worker(i))
            for w in workers:
                w.wait_ready(timeout_s=min(240.0, deadline - time.monotonic()))
            say(f"{opts.workers} worker(s) ready after {time.monotonic() - started:.0f} s (milvus: {milvus_uri})")

            settings = Settings(kafka=broker.url, topic_partitions=opts.partitions, app_id=app_id)
            reader = NeighbourReader(settings)
            chunks = opts.kills + 1
            size = -(-len(stream.events) // chunks)
            kills_done = 0
            t_pub = time.monotonic()
            for c in range(chunks):
                with EventProducer(settings) as producer:
                    for doc in stream.events[c * size:(c + 1) * size]:
                        producer.send(doc)
                del producer  # no client may outlive the broker (librdkafka would keep reconnecting)
                if c < opts.kills:
                    # Let the workers get going on this chunk, then kill one at a random moment.
                    reader.poll(rng.uniform(1.0, 8.0))
                    victim = rng.randrange(len(workers))
                    workers[victim].kill()
                    kills_done += 1
                    say(f"  SIGKILLed worker {victim} (kill {kills_done}/{opts.kills}) "
                        f"at {time.monotonic() - t_pub:.1f} s; restarting")
                    if rng.random() < 0.5:
                        reader.poll(rng.uniform(0.0, 3.0))  # sometimes stay down a moment
                    workers[victim] = WorkerProcess(workers[victim].env, log_path=workers[victim].log_path).start()
                    workers[victim].wait_ready(timeout_s=min(240.0, deadline - time.monotonic()))
            say(f"published {len(stream.events)} events in {time.monotonic() - t_pub:.1f} s; waiting until quiet")

            # Quiet = no neighbour message and no worker counter change for quiet_s seconds.
            last_change = time.monotonic()
            last_metrics: list[float | None] = []
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not quiet within {opts.timeout_s} s")
                for w in workers:
                    w.check()
                got = reader.poll(1.0)
                metrics_now = [_metric_total(w.web_port) for w in workers]
                if got or metrics_now != last_metrics:
                    last_change = time.monotonic()
                    last_metrics = metrics_now
                have_all = all(reader.latest.get(pid) is not None for pid in stream.live)
                quiet_for = time.monotonic() - last_change
                if quiet_for >= opts.quiet_s and (have_all or quiet_for >= max(60.0, 4 * opts.quiet_s)):
                    break
            processing_s = time.monotonic() - t_pub
            topic = dict(reader.latest)
            messages = reader.messages
            reader.close()
            say(f"quiet after {processing_s:.0f} s; {messages} neighbour messages, {len(topic)} keys")
            for w in workers:
                w.stop()
            stored = read_catalog(milvus_uri, opts)
    finally:
        for w in workers:
            if w.running:
                w.kill()
        if server is not None:
            server.stop()

    result = compare(stream, topic, stored, opts.top_k)
    if opts.reencode_check:
        result.max_vector_error = reencode_error(stream, stored)
    report: dict[str, Any] = {
        "products": result.products, "equal": result.equal, "equal_share": result.equal_share,
        "lost": len(result.lost), "resurrected": len(result.resurrected), "workers": opts.workers,
        "kills": kills_done,
        "details": {
            "events": len(stream.events), "event_kinds": stream.kinds, "live": result.live,
            "deleted": len(stream.deleted), "unequal": len(result.unequal),
            "unequal_only_tie_order": len(result.near_tie_unequal), "wrong_version": len(result.wrong_version),
            "examples": {"lost": result.lost[:10], "resurrected": result.resurrected[:10],
                         "unequal": result.unequal[:10], "wrong_version": result.wrong_version[:10]},
            "max_vector_error": result.max_vector_error, "processing_s": round(processing_s, 1),
            "neighbour_messages": messages, "seed": opts.seed, "top_k": opts.top_k,
            "partitions": opts.partitions, "wall_s": round(time.monotonic() - started, 1),
            "data_dir": str(data_dir),
        },
    }
    if result.unequal:
        report["details"]["first_unequal"] = explain(result.unequal[0], topic, stored, stream, opts.top_k)
    if not opts.keep and result.equal == result.products and opts.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def read_catalog(milvus_uri: str, opts: Options) -> dict[str, tuple[int, np.ndarray]]:
    """Every product in Milvus with its version and vector (after the workers stopped)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_uri)
    try:
        name = "simstream_products"
        client.load_collection(name)
        out: dict[str, tuple[int, np.ndarray]] = {}
        it = client.query_iterator(name, batch_size=1000, filter="", output_fields=["version", "vector"])
        try:
            while page := it.next():
                for r in page:
                    out[r["product_id"]] = (int(r["version"]), np.asarray(r["vector"], dtype=np.float32))
        finally:
            it.close()
        return out
    finally:
        client.close()


def reencode_error(stream: Stream, stored: dict[str, tuple[int, np.ndarray]]) -> float:
    """Re-encode the expected final catalog from scratch; the largest |stored - fresh| element."""
    from simstream.encoders.fusion import ProductEncoder

    settings = Settings(image_enabled=False)
    encoder = ProductEncoder(settings)
    events = [parse_event(pid.encode(), json.dumps(doc).encode()) for pid, doc in sorted(stream.live.items())
              if pid in stored]
    worst = 0.0
    for start in range(0, len(events), 256):
        enc = encoder.encode(events[start:start + 256], {})
        for p, v in zip(enc.products, enc.vectors):
            worst = max(worst, float(np.max(np.abs(np.asarray(v, np.float32) - stored[p.product_id][1]))))
    return worst


def explain(pid: str, topic: dict[str, NeighbourList | None], stored: dict[str, tuple[int, np.ndarray]],
            stream: Stream, k: int) -> dict[str, Any]:
    nl = topic.get(pid)
    oracle = oracle_lists({p: v for p, (_, v) in stored.items() if p in stream.live}, k).get(pid, [])
    return {"product_id": pid, "published": [(n.product_id, n.score) for n in nl.neighbours] if nl else None,
            "published_version": nl.version if nl else None, "expected_version": stream.final[pid]["version"],
            "oracle": [(a, round(b, 6)) for a, b in oracle]}


def summary_line(report: dict[str, Any]) -> str:
    return (f"equal: {report['equal']}/{report['products']} = {report['equal_share']:.4%}   "
            f"lost: {report['lost']}   resurrected: {report['resurrected']}   "
            f"(workers {report['workers']}, kills {report['kills']})")
