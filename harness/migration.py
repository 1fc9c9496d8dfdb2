"""The migration proof: a random stream with ``simstream migrate`` in its middle, crashes included.

``run_migration`` publishes the stream of ``harness/exactness.py`` in four chunks to live workers
(``--role live``) and one standby worker (``--role standby``) on a Milvus server (the embedded
``milvus-lite server``, or the one given). After the second chunk it starts ``simstream migrate
--to CONFIG``; while the shadow is being filled it SIGKILLs the migrate process (and resumes it
with ``--resume``) and a live worker; while the switch runs (fencing or republishing) it SIGKILLs
another worker. A supervisor restarts every worker that exits, as Kubernetes would: a worker whose
role moved to another generation stops by itself. The last chunks are published during the fill
and the catch-up, so the shadow has to catch up from the cut.

Then, with everything quiet: every list on the neighbour topic must equal the exact top-K over the
*new* generation's stored vectors, carry the new model, 0 lost, 0 resurrected, and no message with
the old model may arrive after the record said the new generation publishes. ``migrate
--rollback`` then must bring back the old model's exact lists the same way.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from simstream.encoders.fusion import load_metric
from simstream.generations import ControlRecord, generation_settings
from simstream.harness.embedded import EmbeddedBroker, MilvusServer, WorkerProcess, free_port
from simstream.harness.exactness import Options, compare, metric_total, milvus_for, proof_env, read_catalog
from simstream.harness.synthetic import Stream, generate_stream
from simstream.index.control import ControlStore
from simstream.index.milvus import close_client, open_client
from simstream.records import NeighbourList
from simstream.settings import Settings
from simstream.streams.neighbour_reader import NeighbourReader
from simstream.streams.producer import EventProducer

__all__ = ["SWITCH_PHASES", "ModelReader", "Fleet", "run_migration", "passed"]

SWITCH_PHASES = ("fencing", "republishing")


class ModelReader(NeighbourReader):
    """A neighbour reader that also remembers when each message came and which model made it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.seen: list[tuple[float, str | None]] = []

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        super()._apply(key, value)
        nl = self.latest[(key or b"").decode()]
        self.seen.append((time.monotonic(), nl.model if nl is not None else None))


class Fleet:
    """Live and standby worker processes, restarted whenever one exits (a Kubernetes Deployment)."""

    def __init__(self, env: dict[str, str], data_dir: Path, *, live: int, say: Callable[[str], None]) -> None:
        self.env, self.data_dir, self.say = env, data_dir, say
        self.slots = [("live", i) for i in range(live)] + [("standby", 0)]
        self.procs: dict[tuple[str, int], WorkerProcess] = {}
        self.restarts = 0

    def _start(self, slot: tuple[str, int]) -> WorkerProcess:
        role, i = slot
        folder = self.data_dir / f"worker-{role}-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "SIMSTREAM_DATA_DIR": str(folder), "SIMSTREAM_WORKER_ROLE": role,
               "SIMSTREAM_WEB_PORT": str(free_port())}
        proc = WorkerProcess(env, log_path=self.data_dir / f"worker-{role}-{i}.log").start()
        self.procs[slot] = proc
        return proc

    def start(self, timeout_s: float) -> None:
        for slot in self.slots:
            self._start(slot)
        for slot, proc in self.procs.items():
            if slot[0] == "live":
                proc.wait_ready(timeout_s)

    def supervise(self) -> None:
        """Start again every worker that exited (a role moved on, or a kill)."""
        for slot, proc in list(self.procs.items()):
            if not proc.running:
                self.restarts += 1
                self.say(f"  worker {slot[0]}-{slot[1]} exited ({proc.proc.returncode if proc.proc else '?'}); "
                         "starting it again")
                self._start(slot)

    def kill_one(self, rng: random.Random, role: str | None = None) -> str:
        slots = [s for s in self.procs if role is None or s[0] == role]
        slot = rng.choice(slots)
        self.procs[slot].kill()
        return f"{slot[0]}-{slot[1]}"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.running:
                proc.stop()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.running:
                proc.kill()

    def metric_totals(self) -> list[float | None]:
        return [metric_total(p.web_port) for p in self.procs.values()]


def _record(uri: str, collection: str) -> ControlRecord | None:
    client = open_client(uri, timeout_s=10)
    try:
        return ControlStore(client, collection, timeout_s=10).read()
    finally:
        close_client(client, uri)


def run_migration(opts: Options, to: str, *, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole proof; returns the report (exactness' keys, plus ``migration`` and ``rollback``)."""
    say = opts.log
    started = time.monotonic()
    deadline = started + opts.timeout_s
    rng = random.Random(opts.seed + 2)
    stream = generate_stream(opts.products, opts.events, opts.seed)
    data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="simstream-migration-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app_id = f"migrate-{opts.seed}-{os.getpid()}"
    collection = f"m{opts.seed}_{os.getpid()}"
    server: MilvusServer | None = None
    fleet: Fleet | None = None
    report: dict[str, Any] = {}
    try:
        with EmbeddedBroker() as broker:
            uri, server = milvus_for(opts, data_dir, shared=True)
            env = {**proof_env(opts, broker.url, app_id, uri), "SIMSTREAM_COLLECTION": collection,
                   "SIMSTREAM_FLUSH_EVERY_ROWS": "0", "SIMSTREAM_KAFKA_TIMEOUT_S": "10"}
            fleet = Fleet(env, data_dir, live=opts.workers, say=say)
            fleet.start(timeout_s=min(240.0, deadline - time.monotonic()))
            settings = Settings(kafka=broker.url, topic_partitions=opts.partitions, app_id=app_id)
            reader = ModelReader(settings)
            say(f"{opts.workers} live worker(s) and 1 standby ready after {time.monotonic() - started:.0f} s")
            cli_env = {**os.environ, **env, "SIMSTREAM_DATA_DIR": str(data_dir / "migrate")}
            size = -(-len(stream.events) // 4)
            chunks = [stream.events[c * size:(c + 1) * size] for c in range(4)]

            def publish(docs: list[dict[str, Any]]) -> None:
                with EventProducer(settings) as producer:
                    for doc in docs:
                        producer.send(doc)

            def migrate(*args: str) -> subprocess.Popen[bytes]:
                log = open(data_dir / "migrate.log", "ab")
                try:
                    return subprocess.Popen([sys.executable, "-m", "simstream", "migrate", *args], env=cli_env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                finally:
                    log.close()

            def phase() -> str | None:
                r = _record(uri, collection)
                return r.migration.phase if r is not None and r.migration is not None else None

            def tick(seconds: float = 0.5) -> None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the migration proof did not end within {opts.timeout_s} s")
                fleet.supervise()  # type: ignore[union-attr]
                reader.poll(seconds)

            publish(chunks[0])
            publish(chunks[1])
            for _ in range(10):
                tick()
            say(f"published 2 chunks ({len(chunks[0]) + len(chunks[1])} events); migrating to {to}")
            sets_args = [a for s in sets for a in ("--set", s)]
            proc = migrate("--to", to, *sets_args, "--timeout", str(int(opts.timeout_s)))
            kills: dict[str, Any] = {"migrate_in": None, "worker_in_fill": None, "worker_in_switch": None}
            while phase() != "filling" and proc.poll() is None:
                tick(0.2)
            if proc.poll() is None:
                publish(chunks[2])
                time.sleep(rng.uniform(0.0, 1.0))
                kills["worker_in_fill"] = f"{fleet.kill_one(rng, 'live')} ({phase()})"
                if proc.poll() is None:
                    kills["migrate_in"] = phase()
                    proc.kill()
                    proc.wait(10)
                    say(f"  SIGKILLed migrate in phase {kills['migrate_in']} and worker {kills['worker_in_fill']}; "
                        "resuming")
                    proc = migrate("--resume", "--timeout", str(int(opts.timeout_s)))
            else:
                publish(chunks[2])
            published_last = False
            switched_at: float | None = None
            while proc.poll() is None:
                tick()
                now = phase()
                if not published_last and now in ("catching_up", "ready") + SWITCH_PHASES:
                    publish(chunks[3])
                    published_last = True
                if now in SWITCH_PHASES and kills["worker_in_switch"] is None:
                    kills["worker_in_switch"] = f"{fleet.kill_one(rng)} ({now})"
                    say(f"  SIGKILLed worker {kills['worker_in_switch']}")
                if now == "republishing" and switched_at is None:
                    switched_at = time.monotonic()
            if proc.returncode != 0:
                raise RuntimeError(f"simstream migrate failed ({proc.returncode}): "
                                   f"{(data_dir / 'migrate.log').read_text(errors='replace')[-3000:]}")
            if not published_last:
                publish(chunks[3])
            record = _record(uri, collection)
            assert record is not None and record.migration is not None
            switched_at = switched_at or time.monotonic()
            target, source = record.migration.target, record.migration.source
            new_model, old_model = record.generations[target].model, record.generations[source].model
            say(f"migrated {source or 'first'} -> {target} ({new_model}); waiting until quiet")
            all_new_at = _quiet(fleet, reader, stream, opts, tick, new_model)
            fleet.stop()
            base = Settings(collection=collection, **({"metric": opts.metric} if opts.metric else {}))  # type: ignore[arg-type]
            new_settings = generation_settings(base, record.generations[target])
            stored = read_catalog(uri, opts, collection=new_settings.collection)
            topic = dict(reader.latest)
            result = compare(stream, topic, stored, opts.top_k, metric=load_metric(new_settings))
            old_after = sum(1 for t, m in reader.seen if t > switched_at and m == old_model)
            new_times = [t for t, m in reader.seen if t > switched_at and m == new_model]
            report = _section(result, topic, new_model) | {
                "workers": opts.workers, "milvus": "external" if opts.milvus_uri else "milvus-lite server",
                "migration": {"to": to, "sets": list(sets), "source": source, "target": target, "old_model": old_model,
                              "new_model": new_model, "lexicon": record.generations[target].lexicon, "kills": kills, "worker_restarts": fleet.restarts,
                              "old_model_messages_after_switch": old_after,
                              # the handover: from the record saying the new generation publishes to its
                              # first list on the topic, and to the last list of the republish wave
                              "first_new_list_after_switch_s": round(new_times[0] - switched_at, 1) if new_times else None,
                              "all_new_lists_after_switch_s": round(all_new_at - switched_at, 1),
                              "progress": record.migration.progress}}
            say(f"after the switch: {result.equal}/{result.products} equal, {len(result.lost)} lost, "
                f"{len(result.resurrected)} resurrected, {old_after} old-model messages after it")

            # --- rollback ------------------------------------------------------------------------------
            fleet.start(timeout_s=min(240.0, deadline - time.monotonic()))
            rolled_at = time.monotonic()
            proc = migrate("--rollback")
            while proc.poll() is None:
                tick()
            if proc.returncode != 0:
                raise RuntimeError(f"simstream migrate --rollback failed: "
                                   f"{(data_dir / 'migrate.log').read_text(errors='replace')[-3000:]}")
            back_at = time.monotonic()
            all_old_at = _quiet(fleet, reader, stream, opts, tick, old_model)
            fleet.stop()
            stored = read_catalog(uri, opts, collection=collection)
            topic = dict(reader.latest)
            old_settings = generation_settings(base, record.generations.get(source) if source else None)
            result = compare(stream, topic, stored, opts.top_k, metric=load_metric(old_settings))
            new_after = sum(1 for t, m in reader.seen if t > back_at and m == new_model)
            report["rollback"] = _section(result, topic, old_model) | {
                "new_model_messages_after_switch": new_after, "seconds": round(back_at - rolled_at, 1),
                "all_old_lists_after_command_s": round(all_old_at - rolled_at, 1)}
            say(f"after the rollback: {result.equal}/{result.products} equal, {new_after} new-model messages after it")
            reader.close()
    finally:
        if fleet is not None:
            fleet.kill_all()
        if server is not None:
            server.stop()
    report["details"] = {"events": len(stream.events), "seed": opts.seed, "top_k": opts.top_k,
                         "partitions": opts.partitions, "wall_s": round(time.monotonic() - started, 1),
                         "data_dir": str(data_dir)}
    ok = passed(report)
    if ok and not opts.keep and opts.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def _section(result: Any, topic: dict[str, NeighbourList | None], model: str) -> dict[str, Any]:
    models: dict[str, int] = {}
    for nl in topic.values():
        if nl is not None:
            models[nl.model] = models.get(nl.model, 0) + 1
    return {"products": result.products, "equal": result.equal, "equal_share": result.equal_share,
            "lost": len(result.lost), "resurrected": len(result.resurrected),
            "other_model_lists": sum(n for m, n in models.items() if m != model),
            "examples": {"lost": result.lost[:5], "resurrected": result.resurrected[:5], "unequal": result.unequal[:5]}}


def passed(report: dict[str, Any]) -> bool:
    """Every list exact under the new model and, after the rollback, under the old one; nothing
    lost or resurrected; no list of the other model after either switch."""
    def ok(section: dict[str, Any]) -> bool:
        return (section["equal"] == section["products"] and section["lost"] == 0 and section["resurrected"] == 0
                and section["other_model_lists"] == 0)
    back = report.get("rollback")
    return (ok(report) and back is not None and ok(back)
            and report["migration"]["old_model_messages_after_switch"] == 0
            and back["new_model_messages_after_switch"] == 0)


def _quiet(fleet: Fleet, reader: ModelReader, stream: Stream, opts: Options, tick: Callable[[float], None],
           model: str) -> float:
    """Until every live product has a list of ``model`` on the topic (the new live generation's
    workers take a restart to start publishing) and no neighbour message came and no worker counter
    moved for ``opts.quiet_s``; at most a minute longer when some list never comes. Returns when
    every live product first had a list of ``model``."""
    last_change, last_metrics = time.monotonic(), fleet.metric_totals()
    all_at: float | None = None
    while True:
        before = reader.messages
        tick(1.0)
        now = fleet.metric_totals()
        if reader.messages != before or now != last_metrics:
            last_change, last_metrics = time.monotonic(), now
        have_all = all((nl := reader.latest.get(pid)) is not None and nl.model == model for pid in stream.live)
        if have_all and all_at is None:
            all_at = reader.last_message_at or time.monotonic()
        quiet_for = time.monotonic() - last_change
        if quiet_for >= opts.quiet_s and (have_all or quiet_for >= max(60.0, 4 * opts.quiet_s)):
            return all_at if all_at is not None else time.monotonic()
