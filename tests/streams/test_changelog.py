"""The catalog changelog: every accepted event's source fields, the latest per product, keyed by
its id, in the input contract's form; deletes as explicit records; nothing for what the index does
not hold (stale, refused)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from simstream.records import ProductEvent
from simstream.streams import messages
from simstream.streams.contracts import event_document, parse_event

from tests.streams.test_data_path import event, ingested, path, records  # noqa: F401  (the fixture)

FULL = ProductEvent("p1", "upsert", 7, title="Red mug", description="Stoneware, 350 ml", brand="Acme",
                    category="Kitchen > Mugs", price=9.5, currency="EUR", mpn="RM-350",
                    image_url="https://img.example/p1.jpg", attributes={"colour": "red", "size": None},
                    event_time=1_700_000_000_000)


@pytest.mark.parametrize("e", [
    FULL,
    ProductEvent("p2", "upsert", 1, title="Plain"),
    ProductEvent("p3", "delete", 4, event_time=5),
], ids=["every-field", "title-only", "delete"])
def test_a_record_reads_back_as_the_event_it_was_made_from(e: ProductEvent) -> None:
    m = messages.catalog_record(e, topic="cat", max_message_bytes=1_000_000)
    assert (m.topic, m.key, m.headers) == ("cat", e.product_id.encode(), ())
    assert m.value is not None  # a delete is a record, never a tombstone: compaction keeps it
    assert parse_event(m.key, m.value) == e


def test_a_delete_record_carries_only_id_version_and_time() -> None:
    deleted = ProductEvent("p3", "delete", 4, title="ignored", price=3.0, event_time=5)
    assert event_document(deleted) == {"product_id": "p3", "op": "delete", "version": 4, "event_time": 5}


def test_an_inline_image_that_would_not_fit_is_left_out_and_named() -> None:
    big = ProductEvent("p4", "upsert", 2, title="Photo", image_b64="A" * 40_000, description="d" * 100)
    m = messages.catalog_record(big, topic="cat", max_message_bytes=30_000)
    assert len(m.value or b"") < 30_000
    assert dict(m.headers) == {messages.OMITTED_HEADER: b"image_b64"}
    back = parse_event(m.key, m.value)
    assert back.image_b64 is None and back.description == "d" * 100 and back.title == "Photo"
    fits = messages.catalog_record(big, topic="cat", max_message_bytes=100_000)
    assert fits.headers == () and parse_event(fits.key, fits.value) == big


def test_the_ingest_writes_what_the_index_holds_and_only_that(path) -> None:  # noqa: F811, ANN001
    """Upserts and deletes that were applied, and replays of applied ones (a crash between the
    Milvus write and this send still ends with the record), go out before the batch may commit;
    a stale event and an invalid one do not (nor one the encoders refuse: ``IngestOutcome.accepted``)."""
    data, transport = path
    topic = data.settings.changelog_topic
    assert asyncio.run(ingested(data, records((b"a", event("a", 2, title="Red mug", brand="Acme")),
                                              (b"b", event("b", 1, title="Blue mug")),
                                              (b"x", b"{not json"))))
    first = {m.key: parse_event(m.key, m.value) for m in transport.on(topic)}
    assert set(first) == {b"a", b"b"} and first[b"a"].brand == "Acme" and first[b"a"].version == 2
    transport.sent.clear()
    delete = orjson.dumps({"product_id": "b", "op": "delete", "version": 2, "event_time": 9})
    assert asyncio.run(ingested(data, records((b"a", event("a", 1, title="older")),  # stale: below version 2
                                              (b"a", event("a", 2, title="Red mug", brand="Acme")),  # a replay
                                              (b"b", delete),
                                              (b"c", event("c", 1, title="", price=1.0)))))  # invalid: empty title
    got = [(m.key, parse_event(m.key, m.value)) for m in transport.on(topic)]
    assert sorted((k, e.op, e.version) for k, e in got) == [(b"a", "upsert", 2), (b"b", "delete", 2)]


def test_no_topic_no_records(path) -> None:  # noqa: F811, ANN001
    data, transport = path
    data.outbox.settings = data.settings = data.settings.model_copy(update={"changelog_topic": ""})
    assert asyncio.run(ingested(data, records((b"a", event("a")),)))
    assert not [m for m in transport.sent if m.topic == "simstream.catalog"]


def test_bootstrap_writes_what_the_index_holds_and_names_what_has_no_source(broker, settings, store, encoder,
                                                                            tmp_path) -> None:  # noqa: ANN001
    """A catalog loaded before the changelog: its products' events, from a file, become records
    only where they match the index exactly; the rest is counted, and a stored product without any
    event is named. Read back through Kafka, highest version wins."""
    import uuid

    from simstream.streams.backfill import read_records
    from simstream.streams.changelog import bootstrap
    from simstream.streams.ingest import Ingest
    from simstream.streams.neighbour_reader import CatalogReader
    from simstream.streams.outbox import Outbox
    from simstream.streams.transports import ConfluentTransport

    s = settings.model_copy(update={"kafka": broker.url, "changelog_topic": f"cat-{uuid.uuid4().hex[:6]}"})
    steps = Ingest(store, encoder, candidate_pool=8)

    def apply(*events: ProductEvent) -> None:
        check = steps.check_versions(list(events))
        steps.write(check, steps.encode(check))

    apply(ProductEvent("a", "upsert", 3, title="Red mug", brand="Acme"), ProductEvent("b", "upsert", 2, title="Blue mug"),
          ProductEvent("c", "upsert", 5, title="Green mug"), ProductEvent("gone", "upsert", 1, title="Old mug"),
          ProductEvent("orphan", "upsert", 1, title="No source"))
    apply(ProductEvent("gone", "delete", 2))
    lines = [{"product_id": "a", "version": 2, "title": "Red mug, older"},  # superseded in the file by version 3
             {"product_id": "a", "version": 3, "title": "Red mug", "brand": "Acme"},  # matches
             {"product_id": "b", "version": 1, "title": "Blue mug, older"},  # the index holds 2
             {"product_id": "c", "version": 6, "title": "Green mug, next"},  # not applied yet
             {"product_id": "gone", "op": "delete", "version": 2},  # matches the marker
             {"product_id": "never", "version": 1, "title": "Never seen"}]
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n{not json\n")
    with ConfluentTransport(s) as transport:
        report = bootstrap(read_records(path), store.milvus, Outbox(transport, s))
    assert (report.records, report.unreadable, report.written, report.deletes_written) == (7, 1, 1, 1)
    assert (report.older, report.newer, report.not_in_index) == (1, 1, 1)
    assert (report.without_source, report.without_source_sample) == (3, ["b", "c", "orphan"])
    with CatalogReader(s) as reader:
        got = reader.wait_until(lambda g: len(g) == 2, timeout_s=60, quiet_s=2)
    assert (got["a"].version, got["a"].brand) == (3, "Acme") and (got["gone"].op, got["gone"].version) == ("delete", 2)


@pytest.mark.parametrize("args", [[], ["--from", "{f}", "--from-events"]], ids=["neither", "both"])
def test_bootstrap_takes_exactly_one_source(tmp_path, args) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from simstream import cli

    (tmp_path / "f.jsonl").write_text("")
    result = CliRunner().invoke(cli.main, ["changelog", "bootstrap", *[a.format(f=tmp_path / "f.jsonl") for a in args]])
    assert result.exit_code == 2 and "exactly one of --from FILE and --from-events" in result.output
