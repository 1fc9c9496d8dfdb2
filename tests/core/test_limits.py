"""The limits live in ``simstream.limits`` only: the JSON Schema contract, the Milvus schema and the
query API agree with them."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from simstream import limits


def _schema(name: str) -> dict:
    return json.loads(resources.files("simstream.streams.schemas").joinpath(name).read_text())


def test_the_event_schema_states_the_same_limits() -> None:
    props = _schema("product_event.schema.json")["properties"]
    stated = {name: p["maxLength"] for name, p in props.items() if "maxLength" in p}
    assert stated == limits.EVENT_FIELD_CHARS


def test_the_neighbour_list_schema_states_the_same_limits() -> None:
    """The output contract bounds what a recommender must be ready for: ids, the model tag and k."""
    schema = _schema("neighbor_list.schema.json")
    props = schema["properties"]
    entry = props["neighbors"]["items"]["properties"]
    assert props["product_id"]["maxLength"] == entry["product_id"]["maxLength"] == limits.MAX_ID_BYTES
    assert props["model"]["maxLength"] == limits.MAX_MODEL_BYTES
    # lists published before entries carried a match probability could hold 33: readers stay ready for them
    assert props["neighbors"]["maxItems"] == 33 >= limits.MAX_TOP_K


def test_byte_limits_are_no_looser_than_the_character_limits() -> None:
    # a character is at least one byte: the byte check of parse_event is the binding one
    for name, max_bytes in limits.EVENT_FIELD_BYTES.items():
        assert limits.EVENT_FIELD_CHARS[name] == max_bytes, name


def test_the_milvus_collections_use_the_limits(tmp_path) -> None:
    from simstream.index.milvus import MilvusStore

    store = MilvusStore.connect(str(tmp_path / "m.db"), "u", 8)
    try:
        fields = {name: {f["name"]: f.get("params", {}) for f in store.client.describe_collection(name)["fields"]}
                  for name in (store.products, store.lists, store.tombstones)}
    finally:
        store.close()
    for collection in fields.values():
        assert int(collection["product_id"]["max_length"]) == limits.MAX_ID_BYTES
    products, lists = fields[store.products], fields[store.lists]
    assert int(products["brand"]["max_length"]) == limits.MAX_BRAND_BYTES
    assert int(products["category"]["max_length"]) == limits.MAX_CATEGORY_BYTES
    assert int(products["model"]["max_length"]) == limits.MAX_MODEL_BYTES
    assert int(products["category_key"]["max_length"]) == limits.MAX_CATEGORY_KEY_BYTES
    assert int(lists["payload"]["max_length"]) == limits.LIST_PAYLOAD_BYTES
    assert int(lists["neighbor_ids"]["max_capacity"]) == limits.LIST_CAPACITY


@pytest.mark.parametrize("field, limit", [
    ("product_id", limits.MAX_ID_BYTES), ("title", limits.MAX_TITLE_CHARS), ("brand", limits.MAX_BRAND_BYTES),
    ("category", limits.MAX_CATEGORY_BYTES), ("currency", limits.MAX_CURRENCY_CHARS), ("mpn", limits.MAX_MPN_CHARS),
    ("image_url", limits.MAX_IMAGE_URL_CHARS), ("description", limits.MAX_DESCRIPTION_CHARS),
])
def test_a_query_document_takes_what_an_event_takes(field: str, limit: int) -> None:
    from simstream.serve.queries import ProductDocument

    assert ProductDocument.model_fields[field].metadata[-1].max_length == limit


def test_the_top_k_bound_is_the_largest_list_that_fits() -> None:
    assert limits.list_payload_bytes(limits.MAX_TOP_K) <= limits.LIST_PAYLOAD_BYTES
    assert limits.list_payload_bytes(limits.MAX_TOP_K + 1) > limits.LIST_PAYLOAD_BYTES


def test_a_search_answer_stays_under_milvus_response_cap() -> None:
    """256 queries x 21 hits with their 3,232-float vectors is ~69.5 MB, over the 64 MiB a Milvus
    2.3 proxy sends: such searches go in smaller calls, each answer under the budget."""
    hit = limits.search_hit_bytes(3232, with_vector=True)
    assert 256 * 21 * hit > 64 * 1024 * 1024  # the premise
    per_call = limits.search_queries_per_call(21, hit)
    assert 1 <= per_call < 256
    assert per_call * 21 * hit <= limits.MILVUS_RESPONSE_BYTES < 64 * 1024 * 1024
    assert limits.search_queries_per_call(10**9, hit) == 1  # never zero queries
    assert limits.search_queries_per_call(64, limits.search_hit_bytes(3232, with_vector=False)) == 256


def test_milvus_searches_are_cut_by_the_response_budget(tmp_path, monkeypatch) -> None:
    """A real milvus-lite search of more queries than one answer may carry goes in several calls,
    each under the budget, with the same answer as one call."""
    import numpy as np

    from simstream.index.store import VectorStore

    rng = np.random.default_rng(0)
    store = VectorStore.connect(str(tmp_path / "s.db"), "s", 16, flush_every_rows=0)
    vecs = rng.normal(size=(40, 16)).astype(np.float32)
    store.upsert_products([{"product_id": f"p{i}", "vector": v.tolist(), "version": 1, "brand": "", "category": "",
                            "price": -1.0, "hashes": {}, "model": "m", "updated_at": 0, "event_time": 0}
                           for i, v in enumerate(vecs)])
    whole = store.milvus.search(vecs[:25], 7)
    calls: list[int] = []
    search = store.milvus.client.search
    monkeypatch.setattr(store.milvus.client, "search", lambda *a, **k: calls.append(len(k["data"])) or search(*a, **k))
    monkeypatch.setattr(limits, "MILVUS_RESPONSE_BYTES", 10 * 7 * limits.search_hit_bytes(16, with_vector=True))
    cut = store.milvus.search(vecs[:25], 7)
    assert calls == [10, 10, 5]
    assert [[pid for pid, _ in row] for row in cut] == [[pid for pid, _ in row] for row in whole]
    store.close()
