import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simstream.encoders.text import clean_text
from simstream.streams import contracts
from simstream.streams.contracts import neighbour_list_validator, parse_event

from simstream.records import Neighbour, NeighbourList
from simstream.errors import BadEvent
from simstream.limits import EVENT_FIELD_BYTES


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


def test_the_match_probability_is_additive_on_the_wire():
    """An entry's match probability validates against the schema, and against the schema of the
    lists published before it (entries never refused unknown keys), and reads back."""
    import copy
    from importlib import resources

    import jsonschema

    nl = NeighbourList("a", 3, [Neighbour("b", 0.5, {"text": 0.3, "price": 0.2}, 0.8731)], "m", 1, 2)
    doc = orjson.loads(nl.to_json())
    assert doc["neighbors"][0]["match_probability"] == 0.8731
    assert not list(neighbour_list_validator().iter_errors(doc))
    schema = orjson.loads(resources.files("simstream.streams.schemas").joinpath("neighbor_list.schema.json").read_text())
    before = copy.deepcopy(schema)  # the schema as it was: the same, less the new property
    del before["properties"]["neighbors"]["items"]["properties"]["match_probability"]
    assert "additionalProperties" not in before["properties"]["neighbors"]["items"]
    assert not list(jsonschema.Draft202012Validator(before).iter_errors(doc))
    assert NeighbourList.from_json(nl.to_json()) == nl
    bad = {**doc, "neighbors": [{**doc["neighbors"][0], "match_probability": 1.5}]}
    assert list(neighbour_list_validator().iter_errors(bad))


# --- The contract accepts nothing Milvus rejects (INT64, VARCHAR bytes) and only ever raises BadEvent.

def event_bytes(**fields: str) -> bytes:
    """A delete event with fields spliced in verbatim, so 3.0 and 1e19 reach the parser as written."""
    body = ",".join(f'"{k}":{v}' for k, v in {"product_id": '"p1"', "op": '"delete"', "version": "1", **fields}.items())
    return ("{" + body + "}").encode()


@pytest.mark.parametrize("field", ["version", "event_time"])
@pytest.mark.parametrize("value", ["3.0", "1e19", str(2**63), "18446744073709551615", "-1", "true", '"3"'])
def test_integer_fields_are_int64_json_integers(field, value):
    with pytest.raises(BadEvent, match=field):
        parse_event(b"p1", event_bytes(**{field: value}))


@pytest.mark.parametrize("field", ["version", "event_time"])
def test_integer_fields_accept_the_int64_range(field):
    for value in (0, 2**63 - 1):
        assert getattr(parse_event(b"p1", event_bytes(**{field: str(value)})), field) == value


@pytest.mark.parametrize("field, limit", [("product_id", 256), ("brand", 256), ("category", 1000)])
def test_stored_strings_are_limited_in_utf8_bytes(field, limit):
    fits, over = "字" * (limit // 3), "字" * (limit // 3 + 1)  # 3 bytes each: under the character limit
    doc = {"product_id": "p1", "op": "upsert", "version": 1, "title": "Mug"}
    assert getattr(parse_event(None, raw(**{**doc, field: fits})), field) == fits
    with pytest.raises(BadEvent, match=rf"{field}: {len(over.encode())} bytes .* {limit}-byte"):
        parse_event(None, raw(**{**doc, field: over}))


@pytest.mark.parametrize("where", ['"attributes":{"a":%s}', '"title":%s', '"extension":%s'])
def test_deep_nesting_is_a_bad_event_not_a_recursion_error(where):
    deep = "[" * 1000 + "]" * 1000  # orjson parses up to 1024 levels; jsonschema's message recursed
    with pytest.raises(BadEvent, match="nested"):
        parse_event(b"p1", b'{"product_id":"p1","op":"delete","version":1,' + (where % deep).encode() + b"}")


def test_a_failing_validator_becomes_a_bad_event(monkeypatch):
    class Broken:
        def iter_errors(self, doc):
            raise RecursionError("boom")

    monkeypatch.setattr(contracts, "product_event_validator", Broken)
    with pytest.raises(BadEvent, match="nested"):
        parse_event(b"p1", raw(product_id="p1", op="delete", version=1))


def test_a_huge_description_is_rejected_quickly_with_a_short_reason():
    t0 = time.perf_counter()
    with pytest.raises(BadEvent, match="description") as info:
        parse_event(b"p1", raw(product_id="p1", op="upsert", version=1, title="x", description="<" * 1_000_000))
    assert time.perf_counter() - t0 < 1.0 and len(str(info.value)) < 600


def test_clean_text_is_linear_in_unclosed_tags():
    # Descriptions reach clean_text unchanged; ``<[^>]+>`` took seconds on 100,000 "<".
    t0 = time.perf_counter()
    assert clean_text("<" * 200_000) == "<" * 200_000
    assert time.perf_counter() - t0 < 0.25
    assert clean_text("<p>Big&nbsp;<b>mug</b></p>\n<br/> a &lt; b") == "Big mug a < b"


_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_TEXT = st.text(st.sampled_from('a字é"\\\x01 <>'), max_size=400)
_INTS = st.integers(min_value=-1, max_value=2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
_EVENTS = st.fixed_dictionaries({}, optional={
    "product_id": _TEXT | _JSON, "op": st.sampled_from(["upsert", "delete", "merge"]) | _JSON,
    "version": _INTS | _JSON, "event_time": _INTS | _JSON, "title": _TEXT | _JSON, "brand": _TEXT | _JSON,
    "category": _TEXT | _JSON, "price": _JSON, "attributes": st.dictionaries(st.text(max_size=5), _JSON) | _JSON,
    "extra": _JSON,
})


def check_outcome(value: bytes) -> None:
    """parse_event returns an event that Milvus would store, or raises BadEvent: nothing else."""
    try:
        event = parse_event(None, value)
    except BadEvent:
        return
    for name in ("version", "event_time"):
        v = getattr(event, name)
        assert v is None or (type(v) is int and 0 <= v < 2**63)
    for name, limit in EVENT_FIELD_BYTES.items():
        assert len((getattr(event, name) or "").encode()) <= limit


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_an_event_or_bad_event(value):
    check_outcome(value)


@settings(max_examples=200, deadline=None)
@given(_EVENTS | _JSON)
def test_random_documents_give_an_event_or_bad_event(doc):
    check_outcome(orjson.dumps(doc))
