"""Refresh requests on the wire: ids, event times and, since issue 21, the causes of each list."""

from __future__ import annotations

import orjson

from simstream.streams.dead_letter import RawRecord
from simstream.streams.messages import MAX_CAUSES, encode_refresh_request, refresh_requests
from simstream.streams.refresh_requests import decode_requests, merge


def record(value: bytes, offset: int = 0) -> RawRecord:
    return RawRecord(key=None, value=value, partition=0, offset=offset)


def test_causes_travel_and_merge_only_when_every_request_names_them() -> None:
    first = encode_refresh_request(["a", "b", "c"], {"a": 5, "b": None, "c": 1}, {"a": {"x"}, "b": {"y", "z"}})
    second = encode_refresh_request(["a", "c"], {"a": 7}, {"a": ["w"]})
    items, rejects = decode_requests([record(first), record(second, 1)])
    assert not rejects
    assert [(i.product_id, i.causes) for i in items] == [("a", ("x",)), ("b", ("y", "z")), ("c", None),
                                                        ("a", ("w",)), ("c", None)]
    got = merge(items)
    assert got.ids == ["a", "b", "c"] and got.event_times == {"a": 7, "b": None, "c": 1}
    assert got.causes == {"a": {"x", "w"}, "b": {"y", "z"}}  # c was requested without causes
    # a list split out alone (its dead letter) keeps its causes
    assert orjson.loads(items[0].as_record().value)["causes"] == {"a": ["x"]}


def test_too_many_or_malformed_causes_mean_none() -> None:
    many = {f"p{i}" for i in range(MAX_CAUSES + 1)}
    assert "causes" not in orjson.loads(encode_refresh_request(["a"], {}, {"a": many}))
    odd = orjson.dumps({"ids": ["a", "b"], "event_times": {}, "causes": {"a": [1, 2], "b": "x"}})
    items, rejects = decode_requests([record(odd)])
    assert not rejects and [i.causes for i in items] == [None, None]
    items, rejects = decode_requests([record(orjson.dumps({"ids": ["a"], "causes": ["x"]}))])
    assert not rejects and items[0].causes is None


def test_requests_stay_under_the_size_cap_with_causes() -> None:
    ids = [f"product-{i:05d}" for i in range(3_000)]
    causes = {pid: {f"cause-{j:05d}" for j in range(40)} for pid in ids}
    msgs = refresh_requests(ids, {}, topic="t", partitions=4, max_bytes=64_000, causes=causes)
    assert all(len(m.value or b"") <= 64_000 for m in msgs)
    back = [pid for m in msgs for pid in orjson.loads(m.value or b"")["ids"]]
    assert sorted(back) == ids
