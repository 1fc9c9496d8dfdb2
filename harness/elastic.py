"""The elastic proof: workers join and leave under a steady load, and every list is still exact.

``run_elastic`` publishes the stream of ``harness/exactness.py`` at a steady rate (``rate``
events/s, meant to be about half of what the workers sustain) to workers sharing a Milvus server
(the embedded ``milvus-lite server``, or the one given), and changes the group as an autoscaler
and a rolling upgrade would:

- at a quarter of the stream, two workers join (1 -> 3). They have no snapshot of their own and
  download the running worker's (``SIMSTREAM_SNAPSHOT_PEERS``, streams/peers.py);
- at three eighths, a random worker is SIGKILLed and started again at once (it restores its own
  snapshot, or builds);
- at half, a rolling restart: each worker in turn gets SIGTERM, is started again once it has
  left (with its data volume: its own snapshot), and the next goes once it is ready (the
  Deployment's ``maxSurge: 1, maxUnavailable: 0`` order);
- at three quarters, two workers leave with SIGTERM (3 -> 1), one after the other as the
  ScaledObject's scale-down policy removes them (one pod per period): a graceful leave.
Each change waits for the one before to end. Every SIGTERM is timed from the signal to the
process's exit (``drain_s``); a worker still running ``GRACE_S`` after it is SIGKILLed, as the
kubelet would (``killed_after_grace``). A worker that exits unasked (its watchdog found a stuck
partition or a rebalance that never ended) is started again, as its pod would be
(``restarted_after_own_exit``).

Freshness is measured per event: from its send to the first list of that product at that version
or newer (a tombstone for a delete), as received by a reader polling between sends. Each change
opens a window that closes once the group has settled: every running worker ready (/readyz) in one
group generation for ``SETTLE_S``. The next change waits for that: the embedded Tansu broker loses
a group whose members leave while it rebalances (a SyncGroup never answered, a new member never
let in: 2 of 3 runs that changed the group as soon as /readyz said ready, and 1 of 2 that
stopped two workers at once from a settled group, where the second leave lands in the rebalance
the first started). The
report gives p50/p99 per window, for the steady state (one worker, warmed up: the first quarter
after its first ``WARM_UP_SHARE``) and between the changes (outside every window after the first,
the tail of a change's backlog included). Then, with everything quiet, the lists on the
neighbour topic are compared with the exact oracle as in the exactness proof (0 lost, 0
resurrected, 100 % equal).
"""

from __future__ import annotations

import bisect
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simstream.harness.embedded import EmbeddedBroker, MilvusServer, WorkerProcess, free_port
from simstream.harness.exactness import (Decision, Options, compare, metric_total, milvus_for, proof_env, read_catalog,
                                         workers_encoder)
from simstream.harness.synthetic import Stream, generate_stream
from simstream.settings import Settings
from simstream.streams.neighbour_reader import NeighbourReader
from simstream.streams.producer import EventProducer

__all__ = ["SETTLE_S", "WARM_UP_SHARE", "SNAPSHOT_INTERVAL_S", "STUCK_AFTER_S", "GRACE_S", "CHANGE_BOUND_S",
           "ArrivalReader", "Window", "freshness_of", "run_elastic", "passed"]

SETTLE_S = 5.0  # a change's window stays open this long after every worker is ready again
WARM_UP_SHARE = 0.25  # of the first quarter: the first worker's warm-up, not steady state
SNAPSHOT_INTERVAL_S = 5.0  # the workers' SIMSTREAM_SNAPSHOT_INTERVAL_S here: a joiner finds a recent one
STUCK_AFTER_S = 30.0  # the workers' watchdog bound (streams/watchdog.py): the session timeout here is 6 s
GRACE_S = 60.0  # deploy/k8s/base/deployment.yaml's terminationGracePeriodSeconds: SIGKILL after it, as the kubelet
CHANGE_BOUND_S = 300.0  # a change not over by then is a failure, reported with every worker's log tail


class ArrivalReader(NeighbourReader):
    """A neighbour reader that also keeps, per product, when each message came and its version
    (None: a tombstone)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.arrivals: dict[str, list[tuple[float, int | None]]] = {}

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        super()._apply(key, value)
        pid = (key or b"").decode()
        nl = self.latest[pid]
        self.arrivals.setdefault(pid, []).append((time.monotonic(), nl.version if nl is not None else None))


@dataclass
class Window:
    """One change of the group, from its start until every running worker is ready again."""

    name: str
    start: float
    end: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def freshness_of(sent: list[tuple[str, int, str, float, bool]], arrivals: dict[str, list[tuple[float, int | None]]],
                 ) -> list[tuple[float, float | None]]:
    """Per sent (product, version, op, time, deleted later) that should produce a message: (send
    time, seconds to the first message after the send that reflects it; None: none came). An
    upsert is reflected by a list at its version or newer, or (when a later delete superseded it
    before it was applied) a tombstone; a delete by a tombstone or a list of a newer version."""
    out: list[tuple[float, float | None]] = []
    for pid, version, op, at, deleted_later in sent:
        got = arrivals.get(pid, [])
        i = bisect.bisect_left(got, (at, -1))
        lag = None
        for t, v in got[i:]:
            if v is None and (op == "delete" or deleted_later) or v is not None and (v > version or v == version and op != "delete"):
                lag = t - at
                break
        out.append((at, lag))
    return out


def _stats(lags: list[float]) -> dict[str, Any]:
    if not lags:
        return {"events": 0}
    a = np.asarray(lags)
    return {"events": len(lags), "p50_s": round(float(np.percentile(a, 50)), 2),
            "p99_s": round(float(np.percentile(a, 99)), 2), "max_s": round(float(a.max()), 2)}


def _expected(stream: Stream) -> list[tuple[bool, bool]]:
    """Per event: whether it should produce a message (a version above every earlier one of its
    product: duplicates, stale and out-of-order events change nothing), and whether a delete of a
    higher version follows it."""
    best: dict[str, int] = {}
    wanted = []
    for e in stream.events:
        v = int(e["version"])
        wanted.append(v > best.get(e["product_id"], -1))
        best[e["product_id"]] = max(v, best.get(e["product_id"], -1))
    deleted_after: dict[str, int] = {}
    later = [False] * len(stream.events)
    for k in range(len(stream.events) - 1, -1, -1):
        e = stream.events[k]
        later[k] = deleted_after.get(e["product_id"], -1) > int(e["version"])
        if e["op"] == "delete":
            deleted_after[e["product_id"]] = max(int(e["version"]), deleted_after.get(e["product_id"], -1))
    return list(zip(wanted, later))


def run_elastic(opts: Options, rate: float) -> dict[str, Any]:
    """Run the proof (see the module docstring); returns the exactness report plus ``elastic``."""
    say = opts.log
    started = time.monotonic()
    deadline = started + opts.timeout_s
    stream = generate_stream(opts.products, opts.events, opts.seed)
    wanted = _expected(stream)
    data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="simstream-elastic-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app_id = f"elastic-{opts.seed}-{int(time.time())}"
    collection = f"elastic_{opts.seed}_{int(time.time())}"  # its own collections on a shared server
    rng = random.Random(opts.seed + 3)
    server: MilvusServer | None = None
    workers: list[WorkerProcess | None] = [None, None, None]
    windows: list[Window] = []
    drains: list[float] = []
    grace_kills: list[int] = []  # workers that had not left GRACE_S after SIGTERM
    restarts: list[dict[str, Any]] = []  # workers that exited unasked, started again
    try:
        with EmbeddedBroker() as broker:
            milvus_uri, server = milvus_for(opts, data_dir, shared=True)
            ports = [free_port() for _ in workers]
            base_env = {
                **proof_env(opts, broker.url, app_id, milvus_uri), "SIMSTREAM_COLLECTION": collection,
                "SIMSTREAM_SNAPSHOT_INTERVAL_S": str(SNAPSHOT_INTERVAL_S),
                "SIMSTREAM_STUCK_PARTITION_AFTER_S": str(STUCK_AFTER_S),
                # every worker may fetch from every other (a headless Service lists them all)
                "SIMSTREAM_SNAPSHOT_PEERS": ",".join(f"127.0.0.1:{p}" for p in ports),
            }
            if opts.milvus_uri:  # a Milvus server seals segments itself
                base_env["SIMSTREAM_FLUSH_EVERY_ROWS"] = "0"

            def start(i: int) -> WorkerProcess:
                (data_dir / f"worker-{i}").mkdir(parents=True, exist_ok=True)
                env = {**base_env, "SIMSTREAM_DATA_DIR": str(data_dir / f"worker-{i}"), "SIMSTREAM_WEB_PORT": str(ports[i])}
                w = workers[i] = WorkerProcess(env, log_path=data_dir / f"worker-{i}.log").start()
                return w

            start(0).wait_ready(timeout_s=min(300.0, deadline - time.monotonic()))
            say(f"worker 0 ready after {time.monotonic() - started:.0f} s (milvus: {milvus_uri})")
            settings = Settings(kafka=broker.url, topic_partitions=opts.partitions, app_id=app_id)
            reader = ArrivalReader(settings)
            n = len(stream.events)
            plan = [(n // 4, "scale_out"), ((3 * n) // 8, "sigkill"), (n // 2, "rolling"), ((3 * n) // 4, "scale_in")]
            sent: list[tuple[str, int, str, float, bool]] = []
            checked_at = 0.0
            settled: tuple[float, set[Any]] | None = None  # since when every worker is ready in one generation
            open_window: Window | None = None
            leaving: dict[int, float] = {}  # worker -> when it got SIGTERM
            rolling: list[int] = []  # a rolling restart: the workers still to restart, the first one now
            shrinking: list[int] = []  # a scale-in: the workers still to stop after the one leaving now
            t_pub = time.monotonic()

            def restart_exited() -> None:
                """A worker that exited unasked (its watchdog stopped it) starts again, as a
                Deployment's pod would (restartPolicy: Always)."""
                for i, w in enumerate(workers):
                    if w is not None and i not in leaving and w.exited:
                        why = [line for line in w.tail(200).splitlines() if '"level": "error"' in line][-1:]
                        restarts.append({"worker": i, "exit": w.proc.returncode,  # type: ignore[union-attr]
                                         "at_s": round(time.monotonic() - t_pub, 1),
                                         "last_error": why[0][:300] if why else None})
                        say(f"  worker {i} exited unasked (exit {restarts[-1]['exit']}): restarted; "
                            f"{restarts[-1]['last_error']}")
                        start(i)

            def stop_gracefully(i: int) -> None:
                workers[i].terminate()  # type: ignore[union-attr]
                leaving[i] = time.monotonic()

            with EventProducer(settings) as producer:
                k = 0  # events sent; after the last one, the changes still to come go on
                def stuck(why: str) -> TimeoutError:
                    state = (f"{why}: event {k}/{n}, changes left {[a for _, a in plan]}, window {open_window}, "
                             f"rolling {rolling}, shrinking {shrinking}, leaving {sorted(leaving)}")
                    tails = [f"--- worker {i} (running {w.running}, ready {w.ready(0.5)}), {w.log_path}:\n{w.tail(25)}"
                             for i, w in enumerate(workers) if w is not None]
                    return TimeoutError("\n".join([state, *tails]))

                while k < n or plan or rolling or shrinking or leaving or (open_window is not None and open_window.end is None):
                    if time.monotonic() > deadline:
                        raise stuck(f"publishing passed the {opts.timeout_s} s bound")
                    if open_window is not None and open_window.end is None \
                            and time.monotonic() - open_window.start > CHANGE_BOUND_S:
                        raise stuck(f"{open_window.name} not over within {CHANGE_BOUND_S} s")
                    # the next change, once its moment came and the one before has ended
                    if plan and k >= min(plan[0][0], n - 1) and (open_window is None or open_window.end is not None):
                        action = plan.pop(0)[1]
                        open_window = Window(action, time.monotonic())
                        windows.append(open_window)
                        if action == "scale_out":
                            start(1), start(2)
                        elif action == "sigkill":
                            victim = rng.choice([i for i, w in enumerate(workers) if w is not None and w.running])
                            workers[victim].kill()  # type: ignore[union-attr]
                            start(victim)
                            open_window.notes["victim"] = victim
                        elif action == "rolling":  # one at a time, as the Deployment's maxSurge 1 / maxUnavailable 0
                            rolling = [i for i, w in enumerate(workers) if w is not None]
                            stop_gracefully(rolling[0])
                        else:  # one at a time, as the ScaledObject's scale-down policy (1 pod per period)
                            shrinking = [1, 2]
                            stop_gracefully(shrinking.pop(0))
                        say(f"  {action} at event {k} ({time.monotonic() - t_pub:.0f} s)")
                    if k < n:
                        due = t_pub + k / rate
                        while (wait := due - time.monotonic()) > 0:
                            reader.poll(min(wait, 0.2))
                        doc = stream.events[k]
                        producer.send(doc)
                        if wanted[k][0]:
                            sent.append((doc["product_id"], int(doc["version"]), doc["op"], time.monotonic(),
                                         wanted[k][1]))
                        k += 1
                    else:
                        reader.poll(0.2)
                    restart_exited()
                    for i, t0 in list(leaving.items()):
                        if workers[i].running and time.monotonic() - t0 > GRACE_S:  # type: ignore[union-attr]
                            say(f"  worker {i} still running {GRACE_S} s after SIGTERM: SIGKILL\n{workers[i].tail(25)}")  # type: ignore[union-attr]
                            grace_kills.append(i)
                            workers[i].kill()  # type: ignore[union-attr]
                        if not workers[i].running:  # type: ignore[union-attr]
                            drains.append(round(time.monotonic() - t0, 2))
                            say(f"  worker {i} left after SIGTERM in {drains[-1]} s "
                                f"(exit {workers[i].proc.returncode})")  # type: ignore[union-attr]
                            del leaving[i]
                            if rolling and rolling[0] == i:
                                start(i)  # its replacement (the same data volume: its own snapshot)
                            else:
                                workers[i] = None
                    if time.monotonic() - checked_at < 1.0 or open_window is None or open_window.end is not None \
                            or leaving:
                        continue
                    checked_at = now = time.monotonic()
                    states = [w.readiness(0.5) for w in workers if w is not None]
                    generations = {st.get("generation") for st in states if st is not None}
                    if not all(st is not None and st.get("ready") for st in states) or len(generations) != 1:
                        settled = None
                        continue
                    if settled is None or settled[1] != generations:
                        settled = (now, generations)  # every member ready in one generation: from now
                    if now - settled[0] < SETTLE_S:
                        continue
                    # settled: a change made during a rebalance loses the group on the embedded broker
                    settled = None
                    if rolling:  # the restarted one serves: the next
                        rolling.pop(0)
                        if rolling:
                            stop_gracefully(rolling[0])
                            continue
                    if shrinking:  # the group settled without the last leaver: the next one goes
                        stop_gracefully(shrinking.pop(0))
                        continue
                    open_window.end = now
                    open_window.notes["ready_after_s"] = round(now - SETTLE_S - open_window.start, 1)
            say(f"published {n} events at {rate}/s and made every change in {time.monotonic() - t_pub:.0f} s; "
                "waiting until quiet")
            last_change = time.monotonic()
            last: list[float | None] | None = None
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not quiet within {opts.timeout_s} s")
                restart_exited()
                running = [w for w in workers if w is not None]
                got = reader.poll(1.0)
                totals = [metric_total(w.web_port) for w in running]
                if got or totals != last:
                    last_change, last = time.monotonic(), totals
                quiet = time.monotonic() - last_change
                have_all = all(reader.latest.get(pid) is not None for pid in stream.live)
                if quiet >= opts.quiet_s and (have_all or quiet >= max(60.0, 4 * opts.quiet_s)):
                    break
            topic, messages, arrivals = dict(reader.latest), reader.messages, reader.arrivals
            reader.close()
            for slot in workers:
                if slot is not None:
                    slot.stop()
            stored = read_catalog(milvus_uri, opts, collection=collection)
    finally:
        for slot in workers:
            if slot is not None and slot.running:
                slot.kill()
        if server is not None:
            server.stop()

    encoder = workers_encoder(opts.metric)
    result = compare(stream, topic, stored, opts.top_k, Decision.of(encoder), encoder.metric)
    lags = freshness_of(sent, arrivals)
    first_quarter_end = windows[0].start if windows else float("inf")
    warm_until = t_pub + WARM_UP_SHARE * (first_quarter_end - t_pub)
    per_window: dict[str, list[float]] = {}
    steady: list[float] = []  # one worker, warmed up, before the first change
    between: list[float] = []  # outside every window after the first change (recovery tails included)
    for at, lag in lags:
        if lag is None:
            continue
        inside = next((w for w in windows if w.start <= at <= (w.end or float("inf"))), None)
        if inside is not None:
            per_window.setdefault(inside.name, []).append(lag)
        elif warm_until <= at < first_quarter_end:
            steady.append(lag)
        elif at >= first_quarter_end:
            between.append(lag)
    steady_stats = _stats(steady)
    elastic: dict[str, Any] = {
        "rate_events_per_s": rate, "steady": steady_stats, "between_changes": _stats(between),
        "windows": {w.name: {**_stats(per_window.get(w.name, [])), **w.notes,
                             "seconds": round((w.end or w.start) - w.start, 1)} for w in windows},
        # no message at all after it, and the product ends deleted: created and deleted between
        # two batches, there was never a list to publish (nor a tombstone for it)
        "unanswered_events": sum(1 for (pid, *_), (_, lag) in zip(sent, lags) if lag is None and pid not in stream.deleted),
        "never_listed_deleted": sum(1 for (pid, *_), (_, lag) in zip(sent, lags) if lag is None and pid in stream.deleted),
        "measured_events": len(lags),
        "drain_s": drains,
        "killed_after_grace": grace_kills,
        "restarted_after_own_exit": restarts,
        "joins": _joins(data_dir),
    }
    if steady_stats.get("p99_s"):
        for w in elastic["windows"].values():
            if w.get("p99_s") is not None:
                w["p99_over_steady"] = round(w["p99_s"] / steady_stats["p99_s"], 2)
    report: dict[str, Any] = {
        "products": result.products, "equal": result.equal, "equal_share": result.equal_share,
        "lost": len(result.lost), "resurrected": len(result.resurrected), "workers": 3,
        "kills": 1, "faults": [], "backfill": 0, "side_index": True,
        "milvus": "external" if opts.milvus_uri else "milvus-lite server",
        "elastic": elastic,
        "details": {"events": n, "live": result.live, "unequal": len(result.unequal),
                    "examples": {"lost": result.lost[:10], "resurrected": result.resurrected[:10],
                                 "unequal": result.unequal[:10]},
                    "neighbour_messages": messages, "seed": opts.seed, "top_k": opts.top_k,
                    "partitions": opts.partitions, "wall_s": round(time.monotonic() - started, 1),
                    "data_dir": str(data_dir)},
    }
    if not opts.keep and passed(report) and opts.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def _joins(data_dir: Path) -> list[dict[str, Any]]:
    """What each worker start did with its copies, from the workers' logs: downloaded from a peer,
    restored (and how long), or built from Milvus."""
    import orjson

    out = []
    for log in sorted(data_dir.glob("worker-*.log")):
        for line in log.read_bytes().splitlines():
            if b"snapshot downloaded" not in line and b"copies restored" not in line and b"side index built" not in line:
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            out.append({"worker": log.stem, "event": doc.get("event"), "seconds": doc.get("seconds"),
                        **({"caught_up_writes": doc["caught_up_writes"]} if "caught_up_writes" in doc else {})})
    return out


def passed(report: dict[str, Any]) -> bool:
    """Every list exact, nothing lost or resurrected, every expected message arrived."""
    return (report["equal"] == report["products"] and not report["lost"] and not report["resurrected"]
            and report["elastic"]["unanswered_events"] == 0)
