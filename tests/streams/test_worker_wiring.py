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
                                                         settings.dlq_topic, settings.changelog_topic}
        # both compacted: the latest list, and the latest accepted source fields, per product
        assert worker.neighbours.config == worker.changelog.config == {"cleanup.policy": "compact"}
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


class _Event:
    def __init__(self, partition: int, offset: int) -> None:
        self.message = SimpleNamespace(key=b"k", value=b"v", partition=partition, offset=offset, headers=[],
                                       timestamp=0.0, topic="t")


class _Stream:
    """A Faust stream as the agents see it: batches out (with the size asked for), acks in."""

    def __init__(self, batches: list[list[_Event]]) -> None:
        self.batches, self.sizes, self.acked = batches, [], []

    def noack_take(self, max_: int, within: float):  # noqa: ANN201
        self.sizes.append(max_)

        async def take():  # noqa: ANN202
            for batch in self.batches:
                yield batch
        return take()

    async def ack(self, event: _Event) -> bool:
        self.acked.append(event.message.offset)
        return True


def test_the_agents_hand_batches_to_the_data_path_and_ack_after_it(tmp_path: Path) -> None:
    """The ingest agent passes each batch with the backlog behind it and acks it once the data path
    returned; the refresh agent takes batches of at least REFRESH_BATCH_MIN requests."""
    import asyncio

    from faust.types import TP

    from simstream.streams.app import REFRESH_BATCH_MIN

    settings = Settings(data_dir=tmp_path, milvus_uri="http://milvus.invalid:19530", web_enabled=False, batch_size=8)
    steps = SimpleNamespace(store=SimpleNamespace(ping=lambda: True), encoder=SimpleNamespace(on_accelerator=False))
    worker = Worker(settings, steps, SimpleNamespace())  # type: ignore[arg-type]
    seen: list[tuple[str, list[int], int | None, list[int]]] = []

    async def ingest(records, backlog: int = 0):  # noqa: ANN001, ANN202
        seen.append(("ingest", [r.offset for r in records], backlog, list(stream.acked)))
        return True

    async def refresh(records):  # noqa: ANN001, ANN202
        seen.append(("refresh", [r.offset for r in records], None, list(requests.acked)))

    worker.path = SimpleNamespace(ingest=ingest, refresh=refresh)  # type: ignore[assignment]
    topic = settings.events_topic
    worker.app.consumer = SimpleNamespace(assignment=lambda: {TP(topic, 0)},  # type: ignore[assignment]
                                          highwater=lambda tp: 10)
    try:
        stream = _Stream([[_Event(0, 0), _Event(0, 1)], [_Event(0, 2)]])
        asyncio.run(worker.ingest_agent(stream))
        # 10 waiting, less what was taken; a batch is acked only after the data path returned for it
        assert seen == [("ingest", [0, 1], 8, []), ("ingest", [2], 7, [0, 1])]
        assert stream.acked == [0, 1, 2] and stream.sizes == [8]
        requests = _Stream([[_Event(1, 5)]])
        asyncio.run(worker.refresh_agent(requests))
        assert seen[-1] == ("refresh", [5], None, []) and requests.acked == [5]
        assert requests.sizes == [REFRESH_BATCH_MIN]
    finally:
        worker.run.close()


def test_an_ack_never_runs_ahead_of_the_data_path(tmp_path: Path) -> None:
    """A batch whose data path fails is not acked (it is taken again after the restart)."""
    import asyncio

    import pytest

    settings = Settings(data_dir=tmp_path, milvus_uri="http://milvus.invalid:19530", web_enabled=False)
    steps = SimpleNamespace(store=SimpleNamespace(ping=lambda: True), encoder=SimpleNamespace(on_accelerator=False))
    worker = Worker(settings, steps, SimpleNamespace())  # type: ignore[arg-type]

    async def ingest(records, backlog: int = 0):  # noqa: ANN001, ANN202
        if records[0].offset == 1:
            raise RuntimeError("Milvus refused the write")
        return True

    worker.path = SimpleNamespace(ingest=ingest)  # type: ignore[assignment]
    try:
        stream = _Stream([[_Event(0, 0)], [_Event(0, 1)], [_Event(0, 2)]])
        with pytest.raises(RuntimeError):
            asyncio.run(worker.ingest_agent(stream))
        assert stream.acked == [0]
    finally:
        worker.run.close()


def test_an_idle_standby_worker_is_alive_but_not_ready():
    import urllib.error
    import urllib.request

    from simstream.harness.embedded import free_port
    from simstream.settings import Settings
    from simstream.streams.runtime import idle_health

    port = free_port()
    with idle_health(Settings(web_port=port)):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
            raise AssertionError("an idle standby worker must not be ready")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and b"standby" in exc.read()
    with idle_health(Settings(web_port=port)):  # the port is free again once it closed
        pass
