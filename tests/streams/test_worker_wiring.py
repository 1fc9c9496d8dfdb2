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
