import orjson
import pytest

from simstream.streams.contracts import neighbour_list_validator, parse_event

from simstream.records import Neighbour, NeighbourList
from simstream.errors import BadEvent


def raw(**doc):
    return orjson.dumps(doc)


def test_valid_upsert_parses_with_defaults():
    e = parse_event(b"p1", raw(product_id="p1", op="upsert", version=3, title="Mug", price=4.5), partition=2, offset=9)
    assert (e.product_id, e.version, e.title, e.price, e.attributes, e.partition, e.offset) == ("p1", 3, "Mug", 4.5, {}, 2, 9)
    assert not e.is_delete


def test_delete_needs_no_title():
    assert parse_event(b"p1", raw(product_id="p1", op="delete", version=4)).is_delete


@pytest.mark.parametrize("value, reason", [
    (b"\xff not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (raw(product_id="p1", op="upsert", version=1), "title"),
    (raw(product_id="p1", op="upsert", version=1, title=""), "title"),
    (raw(product_id="p1", op="merge", version=1, title="x"), "op"),
    (raw(product_id="p1", op="upsert", version=-1, title="x"), "version"),
    (raw(product_id="p1", op="upsert", version=1, title="x", price="cheap"), "price"),
    (None, "null value"),
])
def test_bad_events_say_why(value, reason):
    with pytest.raises(BadEvent, match=reason):
        parse_event(b"p1", value)


def test_key_must_match_product_id():
    with pytest.raises(BadEvent, match="does not match"):
        parse_event(b"other", raw(product_id="p1", op="delete", version=1))


def test_neighbor_list_round_trips_and_matches_schema():
    nl = NeighbourList("a", 3, [Neighbour("b", 0.5, {"text": 0.3, "price": 0.2})], "m", 1, 2)
    doc = orjson.loads(nl.to_json())
    assert not list(neighbour_list_validator().iter_errors(doc))
    assert NeighbourList.from_json(nl.to_json()) == nl
    assert nl.same_content(NeighbourList("a", 3, [Neighbour("b", 0.5 + 1e-9, {})], "m", 99, None))
    assert not nl.same_content(NeighbourList("a", 3, [Neighbour("c", 0.5, {})], "m", 1, 2))
    assert not nl.same_content(NeighbourList("a", 4, [Neighbour("b", 0.5, {})], "m", 1, 2))
