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
import sys
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simstream.harness.embedded import EmbeddedBroker, MilvusServer, WorkerProcess, free_port
from simstream.harness.synthetic import Stream, generate_stream
from simstream.index.exact import exact_top_k
from simstream.index.neighbours import match_probabilities
from simstream.match import PROBABILITY_DECIMALS, MatchModel
from simstream.metric import IP, Metric
from simstream.records import NeighbourList
from simstream.settings import Settings
from simstream.streams.contracts import parse_event
from simstream.streams.neighbour_reader import NeighbourReader
from simstream.streams.producer import EventProducer

__all__ = [
    "SCORE_TOLERANCE", "PROBABILITY_TOLERANCE", "metric_total", "oracle_lists", "Comparison", "Decision", "compare", "Options", "milvus_for", "proof_env",
    "run_exactness", "run_backfill",
    "inject", "read_catalog", "workers_encoder", "reencode_error", "explain", "summary_line"
]

SCORE_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 10.0 ** -PROBABILITY_DECIMALS  # one unit of the last decimal

# --- the oracle -----------------------------------------------------------------------------
def oracle_lists(vectors: dict[str, np.ndarray], k: int, metric: Metric = IP) -> dict[str, list[tuple[str, float]]]:
    """Exact top-k by the model's metric over ``vectors``, ties (to 1e-6) broken by product_id."""
    ids = sorted(vectors)
    if not ids:
        return {}
    rows = exact_top_k(np.stack([vectors[i] for i in ids]), ids, k, metric=metric)
    return dict(zip(ids, rows))


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


@dataclass(frozen=True)
class Decision:
    """The match decision the workers' model applies (``simstream.match``), for the oracle to apply too."""

    match: MatchModel
    weights: dict[str, float]
    layout: dict[str, slice]

    @classmethod
    def of(cls, encoder: Any) -> "Decision | None":
        """The decision of the workers' ``ProductEncoder`` (None: its model has none)."""
        return cls(encoder.match, dict(encoder.weights), dict(encoder.layout)) if encoder.match is not None else None

    def agrees(self, nl: NeighbourList, stored: dict[str, tuple[int, np.ndarray]]) -> bool:
        """Every entry carries the probability the oracle computes from the two stored vectors (to
        one unit of its last decimal: a rounding boundary may fall between two float summations)."""
        if not nl.neighbours:
            return True
        want = match_probabilities(self.match, self.weights, self.layout, stored[nl.product_id][1],
                                   np.stack([stored[n.product_id][1] for n in nl.neighbours]))
        return all(n.match_probability is not None and abs(n.match_probability - p) <= PROBABILITY_TOLERANCE
                   for n, p in zip(nl.neighbours, want))


def compare(stream: Stream, topic: dict[str, NeighbourList | None], stored: dict[str, tuple[int, np.ndarray]],
            k: int, decision: Decision | None = None, metric: Metric = IP) -> Comparison:
    """``stored``: product_id -> (version, vector) read back from Milvus after the run; ``decision``:
    also check every entry's match probability against it; ``metric``: the workers' model's."""
    live, deleted = stream.live, stream.deleted
    lost = sorted(pid for pid in live if pid not in stored or topic.get(pid) is None)
    resurrected = sorted(pid for pid in deleted if pid in stored or topic.get(pid) is not None)
    wrong_version = sorted(pid for pid in live if pid in stored and stored[pid][0] != live[pid]["version"])
    strays = sorted(set(stored) - set(stream.final))
    oracle = oracle_lists({pid: vec for pid, (_, vec) in stored.items() if pid in live}, k, metric)
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
        same = same and (decision is None or decision.agrees(nl, stored))
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
def metric_total(port: int) -> float | None:
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
    """One run of the proof: the stream, the workers, the faults, where Milvus runs."""

    products: int = 1000
    events: int = 5000
    workers: int = 1
    kills: int = 0
    # Faults injected between publish chunks, after the kills: ("milvus-pause" | "milvus-crash" |
    # "broker-pause", seconds). Milvus faults run the workers against a `milvus-lite server`.
    faults: list[tuple[str, float]] = field(default_factory=list)
    seed: int = 7
    top_k: int = 10
    partitions: int = 4
    candidate_pool: int | None = None
    quiet_s: float = 10.0
    timeout_s: float = 1800.0
    reencode_check: bool = True
    # The first ``backfill`` events are loaded with `simstream backfill FILE` before the workers
    # start; the rest streams through them (a backfill followed by a stream).
    backfill: int = 0
    # A Milvus to run against instead of an embedded one (e.g. the real Milvus 2.3.5 of
    # scripts/with-milvus-server.sh; its collections must not exist yet), and whether the workers
    # keep the side index (False: every neighbour search goes to Milvus).
    milvus_uri: str | None = None
    side_index: bool = True
    # SIMSTREAM_BULK_MIN_BACKLOG for the workers (None: their default, which these streams never
    # reach): a published chunk then arrives as a backlog the workers load in bulk (streams/bulk.py).
    bulk_min_backlog: int | None = None
    # SIMSTREAM_METRIC for the workers and the oracle (simstream.metric); None: their default
    metric: str | None = None
    keep: bool = False
    data_dir: Path | None = None
    log: Callable[[str], None] = print
    # A given stream instead of the synthetic one (e.g. a real catalog's creates: bench/mixed_catalog.py)
    stream: Stream | None = None
    # Filled, when given, with what the proof compared: "topic" (product_id -> the latest list) and
    # "stored" (product_id -> (version, vector)), for measurements beyond exactness.
    collect: dict[str, Any] | None = None


def milvus_for(opts: Options, data_dir: Path, *, shared: bool) -> tuple[str, MilvusServer | None]:
    """Where a proof's workers keep the index: the Milvus given, else an embedded ``milvus-lite
    server`` when ``shared`` (several workers, or faults injected into it), else a milvus-lite
    file; with the server it started, for the caller to stop."""
    if opts.milvus_uri:
        return opts.milvus_uri, None
    if shared:
        server = MilvusServer(data_dir / "milvus", data_dir / "milvus-server.log").start()
        return server.uri, server
    return str(data_dir / "milvus" / "simstream.db"), None


def proof_env(opts: Options, broker_url: str, app_id: str, milvus_uri: str) -> dict[str, str]:
    """The settings every proof's workers share: the stream and the index, text-only, JSON logs."""
    return {
        "SIMSTREAM_KAFKA": broker_url, "SIMSTREAM_APP_ID": app_id, "SIMSTREAM_MILVUS_URI": milvus_uri,
        "SIMSTREAM_IMAGE_ENABLED": "false", "SIMSTREAM_SESSION_TIMEOUT_S": "6",
        "SIMSTREAM_TOPIC_PARTITIONS": str(opts.partitions), "SIMSTREAM_TOP_K": str(opts.top_k),
        "SIMSTREAM_LOG_FORMAT": "json", "SIMSTREAM_LOG_LEVEL": "INFO",
    } | ({"SIMSTREAM_METRIC": opts.metric} if opts.metric else {})


def run_exactness(opts: Options) -> dict[str, Any]:
    """Run the whole proof; returns the report (the --json document plus details)."""
    say = opts.log
    started = time.monotonic()
    deadline = started + opts.timeout_s
    stream = opts.stream or generate_stream(opts.products, opts.events, opts.seed)
    say(f"{'given' if opts.stream else 'generated'} {len(stream.events)} events over {len(stream.final)} products "
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
            milvus_uri, server = milvus_for(
                opts, data_dir, shared=opts.workers > 1 or any(kind.startswith("milvus") for kind, _ in opts.faults))
            base_env = {**proof_env(opts, broker.url, app_id, milvus_uri),
                        "SIMSTREAM_SIDE_INDEX": "true" if opts.side_index else "false"}
            if opts.candidate_pool:
                base_env["SIMSTREAM_CANDIDATE_POOL"] = str(opts.candidate_pool)
            if opts.bulk_min_backlog is not None:
                base_env["SIMSTREAM_BULK_MIN_BACKLOG"] = str(opts.bulk_min_backlog)

            def make_worker(i: int) -> WorkerProcess:
                (data_dir / f"worker-{i}").mkdir(parents=True, exist_ok=True)
                env = {**base_env, "SIMSTREAM_DATA_DIR": str(data_dir / f"worker-{i}"), "SIMSTREAM_WEB_PORT": str(free_port())}
                return WorkerProcess(env, log_path=data_dir / f"worker-{i}.log").start()

            backfill_s = run_backfill(stream.events[:opts.backfill], data_dir, base_env, deadline) if opts.backfill else 0.0
            if opts.backfill:
                say(f"backfilled {opts.backfill} events in {backfill_s:.0f} s")
            streamed = stream.events[opts.backfill:]
            for i in range(opts.workers):
                workers.append(make_worker(i))
            for w in workers:
                w.wait_ready(timeout_s=min(240.0, deadline - time.monotonic()))
            say(f"{opts.workers} worker(s) ready after {time.monotonic() - started:.0f} s (milvus: {milvus_uri})")

            settings = Settings(kafka=broker.url, topic_partitions=opts.partitions, app_id=app_id)
            reader = NeighbourReader(settings)
            chunks = opts.kills + len(opts.faults) + 1
            size = -(-len(streamed) // chunks)
            kills_done = 0
            faults_done: list[str] = []
            t_pub = time.monotonic()
            for c in range(chunks):
                with EventProducer(settings) as producer:
                    for doc in streamed[c * size:(c + 1) * size]:
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
                elif c < opts.kills + len(opts.faults):
                    kind, seconds = opts.faults[c - opts.kills]
                    reader.poll(rng.uniform(1.0, 4.0))
                    say(f"  fault {kind} for {seconds:.0f} s at {time.monotonic() - t_pub:.1f} s")
                    inject(kind, seconds, broker, server)
                    faults_done.append(f"{kind}:{seconds:.0f}")
            say(f"published {len(streamed)} events in {time.monotonic() - t_pub:.1f} s; waiting until quiet")

            # Quiet = no neighbour message and no worker counter change for quiet_s seconds.
            last_change = time.monotonic()
            last_metrics: list[float | None] = []
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not quiet within {opts.timeout_s} s")
                for w in workers:
                    w.check()
                got = reader.poll(1.0)
                metrics_now = [metric_total(w.web_port) for w in workers]
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

    encoder = workers_encoder(opts.metric)  # loaded once: the oracle's metric and match decision, the re-encoding check
    decision = Decision.of(encoder)
    result = compare(stream, topic, stored, opts.top_k, decision, encoder.metric)
    if opts.collect is not None:
        opts.collect.update(topic=topic, stored=stored)
    if opts.reencode_check:
        result.max_vector_error = reencode_error(stream, stored, encoder)
    report: dict[str, Any] = {
        "products": result.products, "equal": result.equal, "equal_share": result.equal_share,
        "lost": len(result.lost), "resurrected": len(result.resurrected), "workers": opts.workers,
        "kills": kills_done, "faults": faults_done, "backfill": opts.backfill,
        "milvus": "external" if opts.milvus_uri else ("milvus-lite server" if server is not None else "milvus-lite file"),
        "side_index": opts.side_index, "match_decision": decision.match.digest if decision else None,
        "metric": encoder.metric.name,
        "bulk_rounds": _logged(data_dir, "bulk load round done"),
        "every_list_passes": _logged(data_dir, "every list refreshed"),
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
    if encoder.metric.has_offsets:  # how many lists the metric decides: the proof is not ip's in disguise
        live = {pid: vec for pid, (_, vec) in stored.items() if pid in stream.live}
        by_ip, by_metric = oracle_lists(live, opts.top_k), oracle_lists(live, opts.top_k, encoder.metric)
        report["details"]["lists_other_than_ip"] = sum(
            [q for q, _ in by_ip[pid]] != [q for q, _ in by_metric[pid]] for pid in live)
    if result.unequal:
        report["details"]["first_unequal"] = explain(result.unequal[0], topic, stored, stream, opts.top_k, encoder.metric)
    if not opts.keep and result.equal == result.products and opts.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def _logged(data_dir: Path, event: str) -> int:
    """How many times the workers logged ``event`` (their logs append across restarts)."""
    return sum(log.read_text(errors="replace").count(f'"event": "{event}') for log in data_dir.glob("worker-*.log"))


def run_backfill(events: list[dict[str, Any]], data_dir: Path, env: dict[str, str], deadline: float) -> float:
    """`simstream backfill` over ``events`` as a JSON Lines file, in its own process (as an operator
    runs it); returns its seconds. Raises when it fails."""
    path = data_dir / "backfill.jsonl"
    path.write_bytes(b"".join(json.dumps(doc).encode() + b"\n" for doc in events))
    (data_dir / "backfill").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with (data_dir / "backfill.log").open("wb") as log_file:
        subprocess.run([sys.executable, "-m", "simstream", "backfill", str(path)], check=True, stdout=log_file,
                       stderr=subprocess.STDOUT, timeout=max(1.0, deadline - time.monotonic()),
                       env={**os.environ, **env, "SIMSTREAM_DATA_DIR": str(data_dir / "backfill")})
    return time.monotonic() - t0


def inject(kind: str, seconds: float, broker: EmbeddedBroker, server: MilvusServer | None) -> None:
    """One fault, by name: freeze the broker or the Milvus server, or crash and restart the latter."""
    if kind == "broker-pause":
        broker.pause(seconds)
    elif kind == "milvus-pause" and server is not None:
        server.pause(seconds)
    elif kind == "milvus-crash" and server is not None:
        server.crash(seconds)
    else:
        raise ValueError(f"unknown fault {kind!r} (or no Milvus server to inject it into)")


def read_catalog(milvus_uri: str, opts: Options, *, collection: str = "simstream") -> dict[str, tuple[int, np.ndarray]]:
    """Every product in Milvus with its version and vector (after the workers stopped)."""
    from simstream.index.milvus import MilvusStore

    store = MilvusStore.connect(milvus_uri, collection, dim=None)
    try:
        return {p.product_id: (p.version, p.vector) for page in store.iter_products(1000, with_vectors=True)
                for p in page}
    finally:
        store.close()


def workers_encoder(metric: str | None = None) -> Any:
    """The ``ProductEncoder`` the proof's workers run (their environment, images off, ``metric``:
    ``proof_env``)."""
    from simstream.encoders.fusion import ProductEncoder

    settings = Settings(image_enabled=False)
    return ProductEncoder(settings.model_copy(update={"metric": metric}) if metric else settings)


def reencode_error(stream: Stream, stored: dict[str, tuple[int, np.ndarray]], encoder: Any = None) -> float:
    """Re-encode the expected final catalog from scratch; the largest |stored - fresh| element."""
    encoder = encoder or workers_encoder()
    events = [parse_event(pid.encode(), json.dumps(doc).encode()) for pid, doc in sorted(stream.live.items())
              if pid in stored]
    worst = 0.0
    for start in range(0, len(events), 256):
        enc = encoder.encode(events[start:start + 256], {})
        for p, v in zip(enc.products, enc.vectors):
            worst = max(worst, float(np.max(np.abs(np.asarray(v, np.float32) - stored[p.product_id][1]))))
    return worst


def explain(pid: str, topic: dict[str, NeighbourList | None], stored: dict[str, tuple[int, np.ndarray]],
            stream: Stream, k: int, metric: Metric = IP) -> dict[str, Any]:
    nl = topic.get(pid)
    oracle = oracle_lists({p: v for p, (_, v) in stored.items() if p in stream.live}, k, metric).get(pid, [])
    return {"product_id": pid, "published": [(n.product_id, n.score) for n in nl.neighbours] if nl else None,
            "published_version": nl.version if nl else None, "expected_version": stream.final[pid]["version"],
            "oracle": [(a, round(b, 6)) for a, b in oracle]}


def summary_line(report: dict[str, Any]) -> str:
    return (f"equal: {report['equal']}/{report['products']} = {report['equal_share']:.4%}   "
            f"lost: {report['lost']}   resurrected: {report['resurrected']}   "
            f"(workers {report['workers']}, kills {report['kills']}, faults {report.get('faults') or 'none'}, "
            f"bulk rounds {report.get('bulk_rounds', 0)}, every-list passes {report.get('every_list_passes', 0)}"
            + (f", match probabilities checked: m{report['match_decision']}" if report.get("match_decision") else "")
            + (f", metric {report['metric']}" if report.get("metric", "ip") != "ip" else "")
            + ")")
