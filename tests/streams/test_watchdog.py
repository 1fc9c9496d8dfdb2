"""The stuck-partition watchdog (streams/watchdog.py): the stall clock counts only free time on a
partition whose events wait, the broker's view is read from a real broker, and a worker whose
partition is stuck (events there, nothing taken) recovers, while a merely busy or caught-up one
does not."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from confluent_kafka import Producer

from simstream.harness.embedded import EmbeddedBroker
from simstream.settings import Settings
from simstream.streams.app import Worker
from simstream.streams.dead_letter import RawRecord
from simstream.streams.watchdog import BrokerView, StallClock

A, B = ("events", 0), ("events", 1)


def test_the_clock_counts_free_time_while_events_wait_and_the_position_stands() -> None:
    clock = StallClock(stuck_after_s=60)
    assert clock.observe({A: 5, B: 9}, {A: 8, B: 9}, free_s=0) == []  # first sight: the clock starts
    assert clock.observe({A: 5, B: 9}, {A: 8, B: 20}, free_s=40) == []  # B: was caught up, starts now
    assert clock.observe({A: 5, B: 9}, {A: 8, B: 20}, free_s=30) == [A]  # A: 70 s free, standing
    assert clock.still_s(A) == 70 and clock.still_s(B) == 30
    assert clock.observe({A: 6, B: 9}, {A: 8, B: 20}, free_s=30) == [B]  # A moved: reset; B: 60 s
    assert clock.observe({A: 6}, {A: 8}, free_s=0) == [] and clock.still_s(B) == 0  # B revoked: forgotten
    assert clock.observe({A: 8}, {A: 8}, free_s=500) == []  # caught up: never stuck


def _worker(tmp_path: Path, broker: EmbeddedBroker, app: str, **kw: object) -> Worker:
    settings = Settings(data_dir=tmp_path, kafka=broker.url, milvus_uri="http://milvus.invalid:19530",
                        web_enabled=False, app_id=app, events_topic=f"{app}.products", refresh_topic=f"{app}.refresh",
                        topic_partitions=2, **kw)
    steps = SimpleNamespace(store=SimpleNamespace(ping=lambda: True), encoder=SimpleNamespace(on_accelerator=False))
    return Worker(settings, steps, SimpleNamespace())  # type: ignore[arg-type]


def test_a_free_worker_with_a_stuck_partition_recovers_and_a_caught_up_one_does_not(
        tmp_path: Path, broker: EmbeddedBroker) -> None:
    """Events really wait on partition 0 (a real broker); the worker's consumer says it holds both
    partitions but takes nothing from 0 (the #629 shape): after the free time, it recovers."""
    from faust.types import TP

    app = f"wd_{uuid.uuid4().hex[:6]}"
    worker = _worker(tmp_path, broker, app, stuck_partition_after_s=60)
    topic = worker.settings.events_topic
    producer = Producer({"bootstrap.servers": broker.url.removeprefix("kafka://")})
    for i in range(5):
        producer.produce(topic, key=b"k", value=b"v", partition=0)
        producer.produce(topic, key=b"k", value=b"v", partition=1)
    assert producer.flush(10) == 0
    stuck: list = []
    worker.on_stuck = stuck.append
    worker.app.consumer = SimpleNamespace(assignment=lambda: {TP(topic, 0), TP(topic, 1)})  # type: ignore[assignment]
    worker._took(topic, [RawRecord(b"k", b"v", 1, o) for o in range(5)])  # partition 1: all taken

    def check(free_s: float, busy_s: float = 0.0) -> None:
        """One check, ``free_s`` seconds after the last, ``busy_s`` of them spent in steps."""
        worker._watched_at = (time.monotonic() - free_s - busy_s, worker.run.busy_s - busy_s,
                              worker._watched_at[2])
        asyncio.run(worker.watchdog_timer())

    try:
        check(0.0)
        check(30.0)
        assert stuck == []  # 30 s of free time
        check(0.0, busy_s=100.0)  # a long step ran meanwhile: the worker was not free
        assert stuck == []
        worker._handlers = 1  # a batch waiting out a Milvus outage: not free either, however long
        check(500.0)
        worker._handlers = 0
        assert stuck == []
        check(20.0)
        assert stuck == []  # 50 s
        check(15.0)
        assert stuck == [[(topic, 0)]]  # 65 s: partition 1 is caught up, 0 is stuck
    finally:
        worker.broker_view.close()
        worker.run.close()


def test_a_rebalance_that_never_ends_restarts_the_worker_and_a_busy_or_ended_one_does_not(
        tmp_path: Path, broker: EmbeddedBroker) -> None:
    """A sync the coordinator never answers keeps the worker rebalancing (seen with two members
    leaving at once on the embedded broker): its free time in that rebalance is counted."""
    from simstream.streams import metrics

    worker = _worker(tmp_path, broker, f"rb_{uuid.uuid4().hex[:6]}", stuck_partition_after_s=60)
    stuck: list = []
    worker.on_stuck = stuck.append
    worker.app.consumer = SimpleNamespace(assignment=lambda: set())  # type: ignore[assignment]

    def check(free_s: float, busy_s: float = 0.0) -> None:
        worker._rebalance_watched_at = (time.monotonic() - free_s - busy_s, worker.run.busy_s - busy_s)
        worker.check_rebalance()

    try:
        worker.app.rebalancing = True
        check(40.0)
        check(0.0, busy_s=300.0)  # revoking waits for a long batch's acks: not free
        assert stuck == [] and 40 <= metrics.REBALANCE_SECONDS._value.get() < 41
        worker.app.rebalancing = False  # it ended: the clock starts again at the next
        check(15.0)
        assert metrics.REBALANCE_SECONDS._value.get() == 0.0
        worker.app.rebalancing = True
        check(40.0)
        assert stuck == []
        check(25.0)
        assert stuck == [[]]  # 65 s free in one rebalance: restart
        stop = threading.Event()  # the thread run_worker starts: it ends when told
        watch = threading.Thread(target=worker.watch_rebalances, args=(stop,), daemon=True)
        watch.start()
        stop.set()
        watch.join(5)
        assert not watch.is_alive()
    finally:
        worker.app.rebalancing = False
        worker.broker_view.close()
        worker.run.close()


def test_the_broker_view_reads_ends_committed_offsets_and_waiting_records(broker: EmbeddedBroker) -> None:
    app = f"bv_{uuid.uuid4().hex[:6]}"
    topic = f"{app}.t"
    producer = Producer({"bootstrap.servers": broker.url.removeprefix("kafka://")})
    for _ in range(3):  # one record per produce request: Tansu counts a batch's records as one end offset
        producer.produce(topic, key=b"k", value=b"v", partition=0)
        assert producer.flush(10) == 0
    view = BrokerView(Settings(kafka=broker.url, app_id=app))
    try:
        ends, committed = view.ends_and_committed([(topic, 0)])
        assert ends == {(topic, 0): 3} and committed == {(topic, 0): 0}
        assert view.record_waits((topic, 0), 2) and not view.record_waits((topic, 0), 3, timeout_s=1.0)
    finally:
        view.close()
