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


def test_files_beside_the_record_come_back_whole_are_checked_and_forgotten(small_store, tmp_path):
    """A lexicon's file in chunks beside the record: several chunks round-trip, a lost chunk is
    refused rather than read short, the copy a worker reads is written once, deletion leaves nothing."""
    import os

    from simstream.errors import IndexRejected
    from simstream.generations import Generation, lexicon_path
    from simstream.index.control import FILE_CHUNK_BYTES, lexicon_file

    base = small_store.milvus.products.removesuffix("_products")
    control = ControlStore(small_store.milvus.client, base, timeout_s=10)
    data = os.urandom(FILE_CHUNK_BYTES * 2 + 123)  # three chunks
    assert control.get_file("lexicon-x") is None
    control.put_file("lexicon-x", data)
    assert control.get_file("lexicon-x") == data
    control.put_file("lexicon-x", data)  # again: the same rows
    assert control.get_file("lexicon-x") == data
    assert control.read() is None  # the record is its own row

    record = ControlRecord(generations={"g1": Generation("g1", {}, None, "m", lexicon="x")})
    control.put_file(lexicon_file("x"), data)
    control.fetch_lexicons(record, tmp_path)
    path = lexicon_path(tmp_path, "x")
    assert path.read_bytes() == data
    path.write_bytes(b"kept")  # a copy already there is not fetched again
    control.fetch_lexicons(record, tmp_path)
    assert path.read_bytes() == b"kept"

    small_store.milvus.client.delete(control.name, filter='key == "lexicon-x:1"')
    with pytest.raises(IndexRejected, match="incomplete"):
        control.get_file("lexicon-x")
    control.delete_file("lexicon-x")
    control.delete_file(lexicon_file("x"))
    assert control.get_file("lexicon-x") is None
    assert small_store.milvus.client.query(control.name, filter='key != ""', output_fields=["key"]) == []
    with pytest.raises(IndexRejected, match="holds no file"):
        control.fetch_file("lexicon-y", tmp_path / "y.npz")
    small_store.milvus.client.drop_collection(control.name)
