"""What serve reads: a product row read back as a ``ServedProduct`` (index.rows.served_product),
directly and through Milvus (``MilvusStore.read_served`` / ``search_served``)."""

from __future__ import annotations

import numpy as np

from simstream.index.rows import Display, ServedProduct, product_row, served_product
from simstream.records import ProductEvent

FULL = ProductEvent("p1", "upsert", 7, title="Red mug", brand="Acme", category="Home > Kitchen", price=9.5,
                    currency="EUR", image_url="file:mug.png", attributes={"colour": "red", "size": None},
                    event_time=1234)
BARE = ProductEvent("p2", "upsert", 3)


def vector(seed: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_a_row_reads_back_as_written() -> None:
    row = product_row(FULL, vector(1), {}, "m1", written_at=99)
    got = served_product("p1", row)
    assert got == ServedProduct("p1", 7, "Acme", "Home > Kitchen", 9.5, "m1", 1234, 99,
                                Display("Red mug", "file:mug.png", "EUR", {"colour": "red", "size": None}))
    assert got.vector.dtype == np.float32 and np.array_equal(got.vector, vector(1))


def test_unknowns_read_as_none_not_as_the_rows_sentinels() -> None:
    got = served_product("p2", product_row(BARE, vector(2), {}, "m", 0))
    assert (got.brand, got.category, got.price, got.event_time, got.updated_at) == (None, None, None, None, None)
    assert got.display.title == "" and got.display.currency is None and got.display.attributes == {}


def test_a_row_without_display_fields_reads_as_an_empty_display() -> None:
    row = {k: v for k, v in product_row(FULL, vector(3), {}, "m", 1).items() if k not in ("display", "vector")}
    got = served_product("p1", row)
    assert got.display == Display() and got.vector.size == 0 and got.brand == "Acme"


def test_milvus_reads_and_searches_return_served_products(small_store) -> None:
    milvus = small_store.milvus
    milvus.upsert_products([product_row(FULL, vector(1), {}, "m", 5), product_row(BARE, vector(2), {}, "m", 5)])
    got = milvus.read_served(["p1", "p2", "gone"])
    assert set(got) == {"p1", "p2"} and got["p1"].display.title == "Red mug" and got["p1"].vector.size == 0
    assert got["p2"].price is None and got["p1"].price == 9.5
    with_vectors = milvus.read_served(["p1"], with_vectors=True)["p1"]
    assert np.allclose(with_vectors.vector, vector(1))
    hits = milvus.search_served(vector(1), 2)
    assert [h.product_id for h in hits][0] == "p1" and all(h.vector.shape == (16,) for h in hits)
    assert hits[0] == served_product("p1", product_row(FULL, vector(1), {}, "m", 5))


def test_reads_with_vectors_page_every_row_by_key(small_store, monkeypatch) -> None:
    """Reads with vectors (on a milvus-lite file: the keys in large pages, then ``batch_size`` rows
    at a time by key; on a server: iterator pages) give every row once, in pages of at most
    ``batch_size``."""
    from simstream.index import milvus as milvus_module

    monkeypatch.setattr(milvus_module, "MILVUS_KEY_PAGE_ROWS", 7)  # several key pages, a short last one
    milvus = small_store.milvus
    events = [ProductEvent(f"p{i:02d}", "upsert", i + 1, title=f"t{i}", brand="Acme") for i in range(23)]
    milvus.upsert_products([product_row(e, vector(i), {}, "m", 5) for i, e in enumerate(events)])
    served = [p for page in milvus.iter_served(5, with_vectors=True) for p in page]
    assert sorted(p.product_id for p in served) == [e.product_id for e in events]
    assert all(np.array_equal(p.vector, vector(int(p.product_id[1:]))) for p in served)
    assert all(len(page) <= 5 for page in milvus.iter_served(5, with_vectors=True))
    stored = {p.product_id: p for page in milvus.iter_products(4, with_vectors=True) for p in page}
    assert len(stored) == 23 and stored["p03"].version == 4 and np.array_equal(stored["p03"].vector, vector(3))
    assert milvus.all_product_ids() == set(stored) and set(milvus.all_write_stamps()) == set(stored)
