"""The Faust wiring without a broker: the worker declares its topics and its two agents around one
DataPath, reports not-ready before it has partitions, and creates its data dir itself (a worker
pointed at a Milvus server has nothing else that creates it)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from simstream.settings import Settings
from simstream.streams.app import Worker


def test_the_worker_declares_its_topics_and_agents(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "there" / "yet"
    settings = Settings(data_dir=data_dir, milvus_uri="http://milvus.invalid:19530", web_enabled=False)
    steps = SimpleNamespace(store=SimpleNamespace(ping=lambda: True), encoder=SimpleNamespace(on_accelerator=False))
    worker = Worker(settings, steps, SimpleNamespace())  # type: ignore[arg-type]
    try:
        assert data_dir.is_dir()
        agents = {a.split(".")[-1] for a in worker.app.agents}
        assert {"ingest", "refresh"} <= agents
        names = {t.get_topic_name() for t in (worker.events, worker.refresh, worker.neighbours, worker.dlq)}
        assert names == {settings.events_topic, settings.refresh_topic, settings.neighbors_topic, settings.dlq_topic}
        assert worker.outbox.transport.topics.keys() == {settings.refresh_topic, settings.neighbors_topic,
                                                         settings.dlq_topic}
        ready = worker.readiness()
        assert ready["ready"] is False and ready["assigned_partitions"] == 0
    finally:
        worker.run.close()


def test_the_backlog_counts_what_waits_on_the_assigned_input_partitions(tmp_path: Path) -> None:
    """From the consumer's high-water marks and the offsets taken: a partition not read yet counts
    nothing, one given away is forgotten (it resumes at its committed offset when it comes back)."""
    from faust.types import TP

    from simstream.streams.dead_letter import RawRecord

    settings = Settings(data_dir=tmp_path, milvus_uri="http://milvus.invalid:19530", web_enabled=False)
    steps = SimpleNamespace(store=SimpleNamespace(ping=lambda: True), encoder=SimpleNamespace(on_accelerator=False))
    worker = Worker(settings, steps, SimpleNamespace())  # type: ignore[arg-type]
    topic = settings.events_topic
    assigned = {TP(topic, 0), TP(topic, 1), TP(topic, 2), TP(settings.refresh_topic, 0)}
    highwater = {TP(topic, 0): 1_000, TP(topic, 1): 50, TP(topic, 2): 7, TP(settings.refresh_topic, 0): 10**6}
    try:
        worker.app.consumer = SimpleNamespace(assignment=lambda: assigned, highwater=highwater.get)  # type: ignore[assignment]
        batch = [RawRecord(b"k", b"v", 0, 99), RawRecord(b"k", b"v", 1, 40)]
        assert worker.backlog(batch) == (1_000 - 100) + (50 - 41)  # partition 2 not read yet
        assigned.discard(TP(topic, 0))
        assert worker.backlog([]) == 9 and 0 not in worker._next_offset
        worker.app.consumer = SimpleNamespace()  # type: ignore[assignment]  # not started: unknown
        assert worker.backlog([]) == 0
    finally:
        worker.run.close()


def test_the_refresh_partitions_held_are_those_assigned_and_none_in_a_rebalance(tmp_path: Path) -> None:
    """The ingest refreshes the lists of the refresh partitions this worker holds: the assigned
    ones of the refresh topic; none while a rebalance runs or before the consumer started."""
    from faust.types import TP

    settings = Settings(data_dir=tmp_path, milvus_uri="http://milvus.invalid:19530", web_enabled=False)
    steps = SimpleNamespace(store=SimpleNamespace(ping=lambda: True), encoder=SimpleNamespace(on_accelerator=False))
    worker = Worker(settings, steps, SimpleNamespace())  # type: ignore[arg-type]
    assigned = {TP(settings.events_topic, 0), TP(settings.refresh_topic, 1), TP(settings.refresh_topic, 4)}
    try:
        assert worker.path.refresh_partitions_held == worker.refresh_partitions_held
        assert worker.refresh_partitions_held() == set()  # not started
        worker.app.consumer = SimpleNamespace(assignment=lambda: assigned)  # type: ignore[assignment]
        assert worker.refresh_partitions_held() == {1, 4}
        worker.app.rebalancing = True  # type: ignore[misc]
        assert worker.refresh_partitions_held() == set()
    finally:
        worker.run.close()
