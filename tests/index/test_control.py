"""The control record in Milvus and the live aliases (milvus-lite, and Milvus 2.3.5 in its CI phase)."""

import pytest

from simstream.generations import ControlRecord
from simstream.index.control import ControlConflict, ControlStore, live_alias
from simstream.index.milvus import MilvusStore


def test_record_written_read_and_guarded_by_its_epoch(small_store):
    base = small_store.milvus.products.removesuffix("_products")
    control = ControlStore(small_store.milvus.client, base, timeout_s=10)
    assert control.read() is None
    first = ControlRecord().changed(standby="g1")
    control.write(first, expect_epoch=None)
    assert control.read() == first
    with pytest.raises(ControlConflict, match="epoch 1, expected None"):
        control.write(first.changed(), expect_epoch=None)
    control.write(first.changed(publishing=None), expect_epoch=1)
    assert control.read().publishing is None
    with pytest.raises(ValueError, match="drop old generations"):
        control.write(first.changed(live="x" * 70_000), expect_epoch=2)
    small_store.milvus.client.drop_collection(control.name)


def test_aliases_follow_the_live_generation_and_old_collections_are_dropped(small_store):
    m = small_store.milvus
    base = m.products.removesuffix("_products")
    shadow = MilvusStore(m.client, m.uri, f"{base}__g1", 16)
    shadow.upsert_products([])  # nothing: the collections exist
    control = ControlStore(m.client, base, timeout_s=10)
    control.point_aliases(base)
    assert m.client.describe_alias(live_alias(base, "products"))["collection_name"] == f"{base}_products"
    control.point_aliases(f"{base}__g1")
    control.point_aliases(f"{base}__g1")  # again: nothing to do
    for kind in ("products", "lists", "tombstones"):
        assert m.client.describe_alias(live_alias(base, kind))["collection_name"] == f"{base}__g1_{kind}"
    control.point_aliases(base)
    assert control.drop_collections(f"{base}__g1") == [f"{base}__g1_products", f"{base}__g1_lists",
                                                       f"{base}__g1_tombstones"]
    for kind in ("products", "lists", "tombstones"):
        m.client.drop_alias(live_alias(base, kind))
