"""Unit tests of the sync steps, on a real milvus-lite file and real encoders (no broker)."""

from dataclasses import dataclass, field

import orjson
import pytest

from conftest import make_event
from simstream.errors import BadEvent
from simstream.index.neighbours import ListBuilder
from simstream.streams.dead_letter import RawRecord
from simstream.streams.ingest import Ingest, coalesce, outcome_counts, validate
from simstream.streams.refresh import Refresher


def records(*docs):
    return [RawRecord(d["product_id"].encode() if isinstance(d, dict) else b"k",
                      orjson.dumps(d) if isinstance(d, dict) else d, 0, i) for i, d in enumerate(docs)]


def test_validate_splits_good_from_bad_with_reasons():
    good = {"product_id": "a", "op": "upsert", "version": 1, "title": "Mug"}
    events, rejects = validate(records(good, b"{oops", {"product_id": "b", "op": "upsert", "version": 1}))
    assert [e.product_id for e in events] == ["a"]
    assert [(r.kind, r.record.offset) for r in rejects] == [("BadEvent", 1), ("BadEvent", 2)]
    assert all(isinstance(r.error, BadEvent) for r in rejects)  # the exception itself, not a string
    headers = dict(rejects[1].headers("simstream.products"))
    assert headers["x-simstream-source-offset"] == b"2" and b"title" in headers["x-simstream-error"]


def test_coalesce_keeps_highest_version_then_latest_offset():
    evs = [make_event("a", 2), make_event("a", 5), make_event("a", 3), make_event("b", 1)]
    kept, dropped = coalesce(evs)
    assert sorted((e.product_id, e.version) for e in kept) == [("a", 5), ("b", 1)] and dropped == 2


@pytest.fixture
def steps(store, encoder):
    ingest = Ingest(store, encoder, candidate_pool=16)
    refresher = Refresher(store, ListBuilder(store, k=3, layout=encoder.layout, model=encoder.model, depth=6))
    return ingest, refresher


@dataclass
class Applied:
    outcomes: dict = field(default_factory=dict)
    affected: set = field(default_factory=set)
    event_times: dict = field(default_factory=dict)


def apply(ingest, *events):
    """The ingest agent's own sequence (streams/pipeline.py ``ingest_steps``), without Kafka; the
    events go in as the records they were parsed from, at offsets 0, 1, ..."""
    import asyncio
    from dataclasses import asdict

    from simstream.records import CONTRACT_FIELDS
    from simstream.streams.pipeline import StepRunner, ingest_steps

    docs = [{k: v for k, v in asdict(e).items() if k in CONTRACT_FIELDS and v is not None} for e in events]
    run = StepRunner(max_retries=0)
    try:
        out = asyncio.run(ingest_steps(records(*docs), ingest, run))
    finally:
        run.close()
    assert not out.rejects, [r.reason for r in out.rejects]
    return Applied(outcome_counts(out.check, out.dropped), out.affected, out.causes)


def test_stale_and_duplicate_events_change_nothing(steps, store):
    ingestor, refresher = steps
    first = apply(ingestor, make_event("a", 5, title="Red mug"), make_event("b", 1, title="Blue mug"))
    assert first.outcomes["applied"] == 2
    refresher.record(refresher.plan(sorted(first.affected), first.event_times))
    again = apply(ingestor, make_event("a", 5, title="Red mug"), make_event("a", 4, title="Blue mug"))
    # the two coalesce to v5, which equals the stored version: nothing is written, and the replayed
    # refresh (a duplicate may be the redelivery of a crashed batch) publishes nothing new
    assert again.outcomes["applied"] == 0 and again.outcomes["duplicate"] == 2
    assert refresher.plan(sorted(again.affected), again.event_times).publish == {}
    older = apply(ingestor, make_event("a", 3, title="Green mug"))
    assert older.outcomes["stale"] == 1 and store.get_products(["a"])["a"].version == 5


def test_delete_marker_blocks_a_late_older_upsert(steps, store):
    ingestor, _ = steps
    apply(ingestor, make_event("a", 1, title="Lamp"))
    apply(ingestor, make_event("a", 3, op="delete"))
    assert store.get_products(["a"]) == {} and store.get_tombstones(["a"]) == {"a": 3}
    late = apply(ingestor, make_event("a", 2, title="Lamp"))
    assert late.outcomes["stale"] == 1 and store.get_products(["a"]) == {}
    back = apply(ingestor, make_event("a", 4, title="Lamp again"))
    assert back.outcomes["applied"] == 1 and store.get_tombstones(["a"]) == {}


def test_price_only_update_reuses_text_and_image_vectors(steps, store, encoder):
    ingestor, _ = steps
    apply(ingestor, make_event("a", 1, title="Steel bottle", price=10.0, image_url="file:bottle-steel-750.png"))
    first = store.get_products(["a"])["a"]
    encoded = encoder.encode([make_event("a", 2, title="Steel bottle", price=12.0, image_url="file:bottle-steel-750.png")],
                             {"a": (first.vector, first.hashes)})
    assert set(encoded.encoded_fields) == {"price"}
    text = encoder.layout["text"]
    assert (encoded.vectors[0][text] == first.vector[text]).all()


def test_refresh_publishes_changes_only_and_tombstones_deleted(steps, store):
    ingestor, refresher = steps
    res = apply(ingestor, *[make_event(p, 1, title=t) for p, t in
                            [("a", "red mug"), ("b", "blue mug"), ("c", "green mug"), ("d", "laptop 15 inch")]])
    assert res.affected == {"a", "b", "c", "d"}
    plan = refresher.plan(sorted(res.affected), res.event_times)
    assert set(plan.publish) == {"a", "b", "c", "d"} and all(len(nl.neighbours) == 3 for nl in plan.publish.values())
    refresher.record(plan)
    assert refresher.plan(["a", "b"], {}).publish == {}  # nothing changed: nothing to publish
    res = apply(ingestor, make_event("b", 2, op="delete"))
    assert "b" in res.affected and {"a", "c", "d"} <= res.affected  # everyone listed b
    plan = refresher.plan(sorted(res.affected), res.event_times)
    assert plan.publish["b"] is None
    assert all("b" not in [n.product_id for n in nl.neighbours] for p, nl in plan.publish.items() if nl)
