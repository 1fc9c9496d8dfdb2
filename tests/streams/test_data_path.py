"""The agents' data path in process: real steps (milvus-lite, real encoders), a fake transport in
place of Kafka. Acks follow the side effects, every record ends applied or dead-lettered, outages
are waited out, and the worker's dead-letter fallback (bare pointers) really runs."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import numpy as np
import orjson
import pytest

from simstream import retry
from simstream.errors import KafkaRefused, KafkaUnavailable
from simstream.index.neighbours import ListBuilder
from simstream.records import NeighbourList
from simstream.settings import Settings
from simstream.streams import messages
from simstream.streams.app import consume
from simstream.streams.dead_letter import KIND_HEADER, RawRecord
from simstream.streams.ingest import Ingest
from simstream.streams.outbox import Outbox
from simstream.streams.pipeline import DataPath, StepRunner, finished
from simstream.streams.refresh import Refresher

PARTITIONS = 3


class FakeTransport:
    """Keeps what was sent; ``down`` sends fail as an outage, ``refuse`` messages as a refusal."""

    def __init__(self) -> None:
        self.sent: list[messages.Message] = []
        self.down = 0
        self.metadata_down = 0
        self.refuse = lambda m: False
        self.calls = 0

    async def partitions(self, topic: str) -> int:
        if self.metadata_down > 0:
            self.metadata_down -= 1
            raise KafkaUnavailable("no metadata")
        return PARTITIONS

    async def send(self, batch: Sequence[messages.Message]) -> None:
        self.calls += 1
        if self.down > 0:
            self.down -= 1
            raise KafkaUnavailable("broker not answering")
        if any(self.refuse(m) for m in batch):
            raise KafkaRefused("MessageSizeTooLargeError")
        self.sent += batch

    def on(self, topic: str) -> list[messages.Message]:
        return [m for m in self.sent if m.topic == topic]


@pytest.fixture
def path(request, settings: Settings, store, encoder):  # noqa: ANN001, ANN201
    s = settings.model_copy(update={"poison_after_s": 0.5, "topic_partitions": PARTITIONS})
    steps = Ingest(store, encoder, candidate_pool=16)
    refresher = Refresher(store, ListBuilder(store, k=3, layout=encoder.layout, model=encoder.model, depth=6))
    transport = FakeTransport()
    run = StepRunner(max_retries=1, overlap_encoding=request.param if hasattr(request, "param") else False)
    yield DataPath(s, steps, refresher, Outbox(transport, s), run), transport
    run.close()


def event(pid: str, version: int = 1, **fields: Any) -> bytes:
    return orjson.dumps({"product_id": pid, "op": "upsert", "version": version, "title": f"mug {pid}",
                         "event_time": 1_000, **fields})


def records(*values: tuple[bytes | None, bytes | None]) -> list[RawRecord]:
    return [RawRecord(k, v, 0, i, 1_000) for i, (k, v) in enumerate(values)]


async def ingested(data: DataPath, batch: Sequence[RawRecord], backlog: int = 0) -> bool:
    """``data.ingest``, then the task it may return (the lists this worker owns) to its end."""
    return await finished(await data.ingest(batch, backlog))


def as_consumed(sent: Sequence[messages.Message]) -> list[RawRecord]:
    return [RawRecord(m.key, m.value, m.partition or 0, i) for i, m in enumerate(sent)]


def test_ingest_then_refresh_publishes_lists_and_dead_letters_the_bad(path) -> None:  # noqa: ANN001
    data, transport = path
    s = data.settings
    batch = records((b"a", event("a", title="Red ceramic mug")), (b"b", event("b", title="Blue ceramic mug")),
                    (b"c", event("c", title="Steel water bottle")), (b"x", b"{not json"))
    asyncio.run(data.ingest(batch))

    letters = transport.on(s.dlq_topic)
    assert [(m.key, m.value) for m in letters] == [(b"x", b"{not json")]
    assert dict(letters[0].headers)[KIND_HEADER] == b"BadEvent"
    requests = transport.on(s.refresh_topic)
    requested = {pid: m.partition for m in requests for pid in orjson.loads(m.value or b"")["ids"]}
    assert set(requested) == {"a", "b", "c"}
    assert all(p == messages.partition_for(pid.encode(), PARTITIONS) for pid, p in requested.items())

    asyncio.run(data.refresh(as_consumed(requests)))
    lists = {m.key.decode(): NeighbourList.from_json(m.value) for m in transport.on(s.neighbors_topic) if m.key and m.value}
    assert set(lists) == {"a", "b", "c"}
    assert [n.product_id for n in lists["a"].neighbours][0] == "b"  # the other mug first
    assert data.refresher.store.list_heads(["a", "b", "c"]).keys() == {"a", "b", "c"}  # recorded after publishing


def lists_on(transport: FakeTransport, topic: str) -> dict[str, NeighbourList]:
    return {m.key.decode(): NeighbourList.from_json(m.value) for m in transport.on(topic) if m.key and m.value}


def exact_lists(store, ids: Sequence[str], k: int = 3) -> dict[str, list[str]]:  # noqa: ANN001
    from simstream.index.exact import exact_top_k

    stored = store.get_products(list(ids))
    ordered = sorted(stored)
    return {pid: [nid for nid, _ in want]
            for pid, want in zip(ordered, exact_top_k(np.stack([stored[i].vector for i in ordered]), ordered, k))}


TITLES = {"a": "Red ceramic mug", "b": "Blue ceramic mug", "c": "Steel water bottle", "d": "Glass water bottle",
          "e": "Oak desk lamp", "f": "Brass desk lamp"}


def test_lists_this_worker_owns_are_refreshed_in_the_ingest(path) -> None:  # noqa: ANN001
    """No refresh-topic hop for the lists whose refresh partition this worker holds: the ingest
    publishes and records them itself; the others go out as requests, and all end exact."""
    data, transport = path
    s = data.settings
    held = {messages.partition_for(b"a", PARTITIONS)}
    data.refresh_partitions_held = lambda: held
    assert asyncio.run(ingested(data, records(*((p.encode(), event(p, title=t)) for p, t in TITLES.items()))))
    mine = {p for p in TITLES if messages.partition_for(p.encode(), PARTITIONS) in held}
    requested = {pid for m in transport.on(s.refresh_topic) for pid in orjson.loads(m.value or b"")["ids"]}
    assert mine and requested and not requested & mine
    assert set(lists_on(transport, s.neighbors_topic)) == mine
    assert data.refresher.store.list_heads(sorted(mine)).keys() == mine  # recorded after publishing
    asyncio.run(data.refresh(as_consumed(transport.on(s.refresh_topic))))
    lists = lists_on(transport, s.neighbors_topic)
    assert {pid: [n.product_id for n in nl.neighbours] for pid, nl in lists.items()} == exact_lists(data.steps.store, TITLES)


class Crash(BaseException):
    """The process dies here."""


def test_a_crash_before_the_ingest_refreshed_its_own_lists_loses_none(path, monkeypatch) -> None:  # noqa: ANN001
    """Written to Milvus, then killed before its own lists went out (offsets not committed): the
    batch comes again after the restart as duplicates, whose affected sets are computed again,
    and the restarted worker refreshes the lists."""
    data, transport = path
    s = data.settings
    every = set(range(PARTITIONS))
    data.refresh_partitions_held = lambda: every
    batch = records(*((p.encode(), event(p, title=t)) for p, t in TITLES.items()))
    sends = data.outbox.lists

    async def die(*args: Any, **kwargs: Any) -> None:
        raise Crash()

    monkeypatch.setattr(data.outbox, "lists", die)
    with pytest.raises(Crash):
        asyncio.run(ingested(data, batch))
    assert len(data.steps.store.get_products(list(TITLES))) == len(TITLES)  # written, nothing published
    assert transport.on(s.neighbors_topic) == [] and transport.on(s.refresh_topic) == []
    monkeypatch.setattr(data.outbox, "lists", sends)
    restarted = DataPath(s, data.steps, data.refresher, data.outbox, data.run, refresh_partitions_held=lambda: every)
    assert asyncio.run(ingested(restarted, batch)) is True  # the same offsets again
    lists = lists_on(transport, s.neighbors_topic)
    assert {pid: [n.product_id for n in nl.neighbours] for pid, nl in lists.items()} == exact_lists(data.steps.store, TITLES)


def test_a_list_that_fails_in_the_ingest_is_sent_as_a_request(path, monkeypatch) -> None:  # noqa: ANN001
    """A failure that is not an outage while the ingest refreshes its own lists sends them to the
    refresh agent instead (which isolates a list that fails alone); no event is dead-lettered."""
    data, transport = path
    s = data.settings
    data.refresh_partitions_held = lambda: set(range(PARTITIONS))

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("cannot refresh")

    monkeypatch.setattr(data.refresher, "plan", fail)
    assert asyncio.run(ingested(data, records(*((p.encode(), event(p, title=t)) for p, t in TITLES.items())))) is True
    requested = {pid for m in transport.on(s.refresh_topic) for pid in orjson.loads(m.value or b"")["ids"]}
    assert requested == set(TITLES) and transport.on(s.dlq_topic) == []


@pytest.mark.parametrize("failing", ["sends", "metadata"])
def test_an_outage_is_waited_out_and_nothing_is_dead_lettered(path, failing) -> None:  # noqa: ANN001
    data, transport = path
    # two sends (or two reads of the refresh topic's metadata) fail, then Kafka answers again; the
    # batch's sends go out together (``all_durable``), so one attempt may meet both failures
    setattr(transport, "down" if failing == "sends" else "metadata_down", 2)
    before = retry.RETRIES.labels("outage_ingest", "KafkaUnavailable")._value.get()
    asyncio.run(data.ingest(records((b"a", event("a")))))
    assert 1 <= retry.RETRIES.labels("outage_ingest", "KafkaUnavailable")._value.get() - before <= 2
    assert transport.down == transport.metadata_down == 0
    assert transport.on(data.settings.dlq_topic) == []
    assert {pid for m in transport.on(data.settings.refresh_topic) for pid in orjson.loads(m.value or b"")["ids"]} == {"a"}
    assert data.outbox.answering


def test_a_refused_dead_letter_goes_again_as_a_bare_pointer(path) -> None:  # noqa: ANN001
    data, transport = path
    huge_key = b"k" * 5000
    transport.refuse = lambda m: m.topic == data.settings.dlq_topic and m.value is not None
    asyncio.run(data.ingest(records((huge_key, b"{not json"), (b"a", event("a")))))
    (letter,) = transport.on(data.settings.dlq_topic)
    assert letter.value is None and letter.key == huge_key[:1024]
    assert all(k.startswith("x-simstream-") for k, _ in letter.headers)
    assert dict(letter.headers)["x-simstream-source-offset"] == b"0"


def test_a_list_that_fails_alone_is_dead_lettered_alone(path, monkeypatch) -> None:  # noqa: ANN001
    data, transport = path
    asyncio.run(data.ingest(records(*((p.encode(), event(p)) for p in "abcd"))))
    plan = data.refresher.plan

    def plan_or_fail(ids: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        if "c" in ids:
            raise ValueError("cannot refresh c")
        return plan(ids, *args, **kwargs)

    monkeypatch.setattr(data.refresher, "plan", plan_or_fail)
    asyncio.run(data.refresh(as_consumed(transport.on(data.settings.refresh_topic))))
    (letter,) = transport.on(data.settings.dlq_topic)
    assert letter.key == b"c" and orjson.loads(letter.value or b"")["ids"] == ["c"]
    assert dict(letter.headers)["x-simstream-stage"] == b"refresh"
    published = {m.key for m in transport.on(data.settings.neighbors_topic)}
    assert published == {b"a", b"b", b"d"}


class FakeEvent:
    def __init__(self, offset: int, key: bytes = b"k", value: bytes = b"v") -> None:
        self.message = type("M", (), {"key": key, "value": value, "partition": 0, "offset": offset,
                                       "timestamp": 1.0, "headers": []})()


class FakeStream:
    """A Faust stream as ``consume`` sees it: batches out, acks in."""

    def __init__(self, batches: list[list[FakeEvent]]) -> None:
        self.batches, self.log = batches, []

    async def _take(self) -> Any:
        for batch in self.batches:
            yield batch

    def noack_take(self, max_: int, within: float) -> Any:
        return self._take()

    async def ack(self, event: FakeEvent) -> bool:
        self.log.append(("ack", event.message.offset))
        return True


def test_the_agent_acks_a_batch_only_after_its_side_effects() -> None:
    stream = FakeStream([[FakeEvent(0), FakeEvent(1)], [FakeEvent(2)], [FakeEvent(3)]])

    async def handle(batch: Sequence[RawRecord]) -> None:
        await asyncio.sleep(0)
        if batch[0].offset == 3:
            raise RuntimeError("worker stops")
        stream.log.append(("durable", [r.offset for r in batch]))

    with pytest.raises(RuntimeError):
        asyncio.run(consume(stream, size=2, within_s=0.1, handle=handle))
    assert stream.log == [("durable", [0, 1]), ("ack", 0), ("ack", 1), ("durable", [2]), ("ack", 2)]


def test_a_batch_whose_task_is_still_running_is_acked_when_it_ends_and_the_next_is_taken_meanwhile() -> None:
    stream = FakeStream([[FakeEvent(0), FakeEvent(1)], [FakeEvent(2)], [FakeEvent(3)]])
    second_taken = asyncio.Event()

    async def lists_owned_here(offsets: list[int]) -> None:
        if offsets == [0, 1]:
            await asyncio.wait_for(second_taken.wait(), 5)  # ends only once the next batch was handled
        stream.log.append(("refreshed", offsets))

    async def handle(batch: Sequence[RawRecord]) -> asyncio.Task[None]:
        offsets = [r.offset for r in batch]
        stream.log.append(("written", offsets))
        second_taken.set() if offsets == [2] else None
        return asyncio.create_task(lists_owned_here(offsets))

    asyncio.run(consume(stream, size=2, within_s=0.1, handle=handle))
    at = {repr(entry): i for i, entry in enumerate(stream.log)}
    assert at["('written', [2])"] < at["('refreshed', [0, 1])"] < at["('ack', 0)"] < at["('ack', 1)"]
    assert at["('refreshed', [2])"] < at["('ack', 2)"] and at["('refreshed', [3])"] < at["('ack', 3)"]
    assert [e for e in stream.log if e[0] == "ack"] == [("ack", i) for i in range(4)]


def test_a_task_that_fails_stops_the_agent_and_acks_nothing_of_its_batch() -> None:
    stream = FakeStream([[FakeEvent(0)], [FakeEvent(1)]])

    async def fails() -> None:
        raise RuntimeError("worker stops")

    async def handle(batch: Sequence[RawRecord]) -> asyncio.Task[None]:
        stream.log.append(("written", [r.offset for r in batch]))
        return asyncio.create_task(fails())

    with pytest.raises(RuntimeError):
        asyncio.run(consume(stream, size=1, within_s=0.1, handle=handle))
    assert ("ack", 0) not in stream.log


def test_the_next_batch_encodes_while_the_lists_owned_here_are_published(path, monkeypatch) -> None:  # noqa: ANN001
    """The ingest's own lists go out in a task: the agent takes and encodes the next batch
    meanwhile (here the first batch's lists are published only once the second batch was encoded:
    without the overlap this would never happen), acks each batch after its lists, and every list
    ends exact."""
    import threading

    data, transport = path
    s = data.settings
    data.refresh_partitions_held = lambda: set(range(PARTITIONS))
    second_encoded = threading.Event()
    encode, publish = data.steps.encode, data.outbox.lists

    def encode_and_tell(check):  # noqa: ANN001, ANN202
        encoded = encode(check)
        if any(e.product_id in "def" for e in check.upserts):
            second_encoded.set()
        return encoded

    async def publish_after_the_next_encode(*args: Any, **kwargs: Any) -> None:
        for _ in range(500):
            if second_encoded.is_set():
                break
            await asyncio.sleep(0.01)
        await publish(*args, **kwargs)

    monkeypatch.setattr(data.steps, "encode", encode_and_tell)
    monkeypatch.setattr(data.outbox, "lists", publish_after_the_next_encode)
    items = list(TITLES.items())
    stream = FakeStream([[FakeEvent(i, p.encode(), event(p, title=t)) for i, (p, t) in enumerate(items[:3])],
                         [FakeEvent(i + 3, p.encode(), event(p, title=t)) for i, (p, t) in enumerate(items[3:])]])

    async def handle(batch: Sequence[RawRecord]) -> Any:
        first = [m.key for m in transport.on(s.neighbors_topic)]
        stream.log.append(("handle", [r.offset for r in batch], len(first)))
        return await data.ingest(batch)

    asyncio.run(asyncio.wait_for(consume(stream, size=3, within_s=0.1, handle=handle), 60))
    assert stream.log[:2] == [("handle", [0, 1, 2], 0), ("handle", [3, 4, 5], 0)]  # nothing published yet
    assert [e for e in stream.log if e[0] == "ack"] == [("ack", i) for i in range(6)]
    lists = lists_on(transport, s.neighbors_topic)
    assert {pid: [n.product_id for n in nl.neighbours] for pid, nl in lists.items()} == exact_lists(data.steps.store, TITLES)


@pytest.mark.parametrize("path", [True], indirect=True)
def test_a_batch_encodes_while_the_index_thread_plans_lists(path) -> None:  # noqa: ANN001
    """With encoders on their own thread (``overlap_encoding``: a GPU) and no lists lock held while
    encoding, an ingest's encoding overlaps a refresh's index work (here the encoder waits for an
    index step under the lock that starts only after encoding began: on one thread, or under the
    lock, it never would)."""
    import threading

    data, transport = path
    encoding, index_step_ran = threading.Event(), threading.Event()
    encode = data.steps.encode

    def waits_for_the_index_thread(check):  # noqa: ANN001, ANN202
        encoding.set()
        assert index_step_ran.wait(10), "no index step ran while the batch was encoding"
        return encode(check)

    data.steps.encode = waits_for_the_index_thread

    async def both() -> None:
        ingest = asyncio.create_task(data.ingest(records((b"a", event("a")))))
        while not encoding.is_set():
            await asyncio.sleep(0.01)
        async with data.run.lists_lock:
            await data.run("plan", index_step_ran.set)
        await ingest

    asyncio.run(asyncio.wait_for(both(), 30))
    assert {orjson.loads(m.value or b"")["ids"][0] for m in transport.on(data.settings.refresh_topic)} == {"a"}


def test_events_held_by_a_bulk_round_are_acked_with_the_batch_that_ends_it() -> None:
    stream = FakeStream([[FakeEvent(0), FakeEvent(1)], [FakeEvent(2)], [FakeEvent(3)]])

    async def handle(batch: Sequence[RawRecord]) -> bool:
        stream.log.append(("durable", [r.offset for r in batch]))
        return batch[0].offset != 0  # the first batch is held, the second ends the round

    asyncio.run(consume(stream, size=2, within_s=0.1, handle=handle))
    assert stream.log == [("durable", [0, 1]), ("durable", [2]), ("ack", 0), ("ack", 1), ("ack", 2),
                          ("durable", [3]), ("ack", 3)]


@pytest.fixture
def bulk_path(request, settings: Settings, store, encoder, tmp_path):  # noqa: ANN001, ANN201
    """A data path for bulk rounds; parametrized True: over a store with the side index."""
    from simstream.index.store import VectorStore

    s = settings.model_copy(update={"poison_after_s": 0.5, "topic_partitions": PARTITIONS, "bulk_min_backlog": 10,
                                    "bulk_backlog_share": 0.5, "batch_size": 4})
    own = VectorStore.connect(str(tmp_path / "side.db"), "t", encoder.dim, flush_every_rows=0, in_memory=True) \
        if getattr(request, "param", False) else None
    store = own or store
    steps = Ingest(store, encoder, candidate_pool=16)
    refresher = Refresher(store, ListBuilder(store, k=3, layout=encoder.layout, model=encoder.model, depth=6))
    transport = FakeTransport()
    run = StepRunner(max_retries=1)
    yield DataPath(s, steps, refresher, Outbox(transport, s), run), transport
    run.close()
    if own is not None:
        own.close()


def test_a_large_backlog_is_written_in_bulk_then_every_list_is_refreshed_exactly(bulk_path) -> None:  # noqa: ANN001
    """A backlog of at least max(min, share x catalog) events is written without affected sets,
    its offsets held; the round ends when the worker has caught up, with an every-list request to
    each refresh partition, and their owners refresh every list: the lists are the exact top-k."""
    from simstream.index.exact import exact_top_k

    data, transport = bulk_path
    s = data.settings
    titles = ["red ceramic mug", "blue ceramic mug", "steel water bottle", "glass water bottle", "oak desk lamp",
              "brass desk lamp", "red tea cup", "steel thermos"]
    streamed = [(p.encode(), event(p, title=t)) for p, t in zip("ab", titles)]
    assert asyncio.run(data.ingest(records(*streamed), backlog=3))  # below the minimum: streamed
    assert not data.bulk.active
    requests_before = len(transport.on(s.refresh_topic))
    first = [(p.encode(), event(p, title=t)) for p, t in zip("cdef", titles[2:6])]
    # 12 waiting >= max(10, 0.5 x 2 products): a bulk round; the batch's offsets are held
    assert asyncio.run(data.ingest(records(*first), backlog=12)) is False
    assert data.bulk.active and len(transport.on(s.refresh_topic)) == requests_before  # no affected sets
    last = [(p.encode(), event(p, title=t)) for p, t in zip("gh", titles[6:])]
    assert asyncio.run(data.ingest(records(*last), backlog=0)) is True  # caught up: the round ends
    every = [m for m in transport.on(s.refresh_topic) if orjson.loads(m.value or b"").get("every_list")]
    assert sorted(m.partition for m in every) == list(range(PARTITIONS))

    asyncio.run(data.refresh(as_consumed(every)))
    lists = {m.key.decode(): NeighbourList.from_json(m.value) for m in transport.on(s.neighbors_topic) if m.key and m.value}
    stored = data.steps.store.get_products(list("abcdefgh"))
    ids = sorted(stored)
    oracle = exact_top_k(np.stack([stored[i].vector for i in ids]), ids, 3)
    assert set(lists) == set(ids)
    for pid, want in zip(ids, oracle):
        assert [n.product_id for n in lists[pid].neighbours] == [nid for nid, _ in want]
    assert data.refresher.store.list_heads(ids).keys() == set(ids)  # recorded after publishing


@pytest.mark.parametrize("bulk_path", [True], indirect=True)
def test_every_list_requests_in_separate_batches_share_one_all_pairs_pass(bulk_path, monkeypatch) -> None:  # noqa: ANN001
    """A bulk round's every-list requests may reach the refresh agent in separate batches: the
    all-pairs pass made for the first serves the worker's other partitions, until more rows than
    ``REUSE_TOUCHED_SHARE`` were written since it began; every list ends exact either way."""
    from simstream.index.exact import exact_top_k

    data, transport = bulk_path
    s = data.settings
    data.refresh_partitions_held = lambda: set(range(PARTITIONS))
    titles = ["red ceramic mug", "blue ceramic mug", "steel water bottle", "glass water bottle", "oak desk lamp",
              "brass desk lamp", "red tea cup", "steel thermos"]
    assert asyncio.run(data.ingest(records(*((p.encode(), event(p, title=t)) for p, t in zip("abcdefgh", titles))),
                                   backlog=20)) is False
    assert asyncio.run(data.ingest([], backlog=0)) is True  # the round ends: every list requested
    every = sorted((m for m in transport.on(s.refresh_topic) if b"every_list" in (m.value or b"")),
                   key=lambda m: m.partition or 0)
    passes = []
    make_pass = data.refresher.every_list_pass
    monkeypatch.setattr(data.refresher, "every_list_pass", lambda: passes.append(1) or make_pass())
    asyncio.run(data.refresh(as_consumed(every[:1])))
    asyncio.run(data.refresh(as_consumed(every[1:2])))
    assert len(passes) == 1  # the second partition's lists from the first pass
    # a write since the pass (more than 5 % of 8 rows): the last partition gets a new pass
    assert asyncio.run(ingested(data, records((b"a", event("a", version=2, title="red ceramic mug, large"))))) is True
    asyncio.run(data.refresh(as_consumed(every[2:])))
    assert len(passes) == 2
    lists = {m.key.decode(): NeighbourList.from_json(m.value) for m in transport.on(s.neighbors_topic) if m.key and m.value}
    stored = data.steps.store.get_products(list("abcdefgh"))
    ids = sorted(stored)
    oracle = exact_top_k(np.stack([stored[i].vector for i in ids]), ids, 3)
    assert {pid: [n.product_id for n in lists[pid].neighbours] for pid in ids} == \
        {pid: [nid for nid, _ in want] for pid, want in zip(ids, oracle)}


def test_an_every_list_request_that_is_not_a_boolean_is_dead_lettered(path) -> None:  # noqa: ANN001
    data, transport = path
    bad = orjson.dumps({"ids": [], "every_list": "yes"})
    asyncio.run(data.refresh(records((None, bad))))
    (letter,) = transport.on(data.settings.dlq_topic)
    assert dict(letter.headers)["x-simstream-stage"] == b"refresh-request"


def test_a_crash_inside_a_bulk_round_loses_no_list(bulk_path, store, monkeypatch) -> None:  # noqa: ANN001
    """A worker that dies after writing a bulk batch (offsets held, nothing requested) reads the
    batch again after its restart: with a small backlog now, the events are duplicates whose
    affected sets are computed again, and their lists end exact."""
    from simstream.index.exact import exact_top_k
    from simstream.streams import bulk

    monkeypatch.setattr(bulk, "WRITE_BATCH", 4)  # a step of 4 events is written at once
    data, transport = bulk_path
    s = data.settings
    titles = ["red ceramic mug", "blue ceramic mug", "steel water bottle", "glass water bottle"]
    batch = records(*((p.encode(), event(p, title=t)) for p, t in zip("abcd", titles)))
    assert asyncio.run(data.ingest(batch, backlog=50)) is False  # written, offsets held: then the crash
    assert transport.on(s.refresh_topic) == [] and len(store.get_products(list("abcd"))) == 4
    restarted = DataPath(s, data.steps, data.refresher, data.outbox, data.run)  # a new worker's state
    assert asyncio.run(restarted.ingest(batch, backlog=0)) is True  # the same offsets again
    asyncio.run(restarted.refresh(as_consumed(transport.on(s.refresh_topic))))
    lists = {m.key.decode(): NeighbourList.from_json(m.value) for m in transport.on(s.neighbors_topic) if m.key and m.value}
    stored = store.get_products(list("abcd"))
    ids = sorted(stored)
    oracle = exact_top_k(np.stack([stored[i].vector for i in ids]), ids, 3)
    assert {pid: [n.product_id for n in lists[pid].neighbours] for pid in ids} == \
        {pid: [nid for nid, _ in want] for pid, want in zip(ids, oracle)}


def test_held_events_are_released_when_nothing_arrives_for_a_while() -> None:
    """A round holding events must end when the input stops (caught up, or a rebalance that waits
    for every taken event to be acked): ``handle([])`` after ``idle_s`` without a batch."""

    class Pausing(FakeStream):
        async def _take(self) -> Any:
            yield self.batches[0]
            await asyncio.sleep(0.5)  # nothing arrives for a while
            yield self.batches[1]

    stream = Pausing([[FakeEvent(0), FakeEvent(1)], [FakeEvent(2)]])

    async def handle(batch: Sequence[RawRecord]) -> bool:
        stream.log.append(("handled", [r.offset for r in batch]))
        return not batch or batch[0].offset != 0  # hold the first batch; an idle call ends the round

    asyncio.run(consume(stream, size=2, within_s=0.1, handle=handle, idle_s=0.1))
    assert stream.log == [("handled", [0, 1]), ("handled", []), ("ack", 0), ("ack", 1),
                          ("handled", [2]), ("ack", 2)]


def test_an_idle_call_ends_the_round_whatever_the_last_backlog(bulk_path) -> None:  # noqa: ANN001
    data, transport = bulk_path
    batch = records(*((p.encode(), event(p)) for p in "abcd"))
    assert asyncio.run(data.ingest(batch, backlog=50)) is False
    assert asyncio.run(data.ingest([], backlog=50)) is True and not data.bulk.active
    assert len([m for m in transport.on(data.settings.refresh_topic) if b"every_list" in (m.value or b"")]) == PARTITIONS
    assert asyncio.run(data.ingest([], backlog=50)) is True  # streaming: an idle call does nothing


def test_sends_in_flight_together_all_end_before_a_failure_is_raised() -> None:
    from simstream.streams.pipeline import all_durable

    ended: list[str] = []

    async def ok() -> None:
        await asyncio.sleep(0.02)
        ended.append("ok")

    async def down() -> None:
        ended.append("down")
        raise KafkaUnavailable("broker not answering")

    with pytest.raises(KafkaUnavailable):
        asyncio.run(all_durable(down(), ok()))
    assert ended == ["down", "ok"]  # the acknowledged one was not abandoned half-way
    asyncio.run(all_durable(ok(), ok()))
    assert ended[-2:] == ["ok", "ok"]
