"""Filters compiled to Milvus expressions: hostile strings are quoted, never interpreted.

Unit checks on the compiled text, then a round trip through a real milvus-lite file: every
hostile value, stored as a category and an attribute, is found exactly (itself and nothing else)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simstream.index.milvus import MilvusStore
from simstream.index.rows import brand_key, category_key, display_of, product_row
from simstream.records import ProductEvent
from simstream.serve.filters import FilterError, Filters, quote

HOSTILE = ['a"b', "a\\b", "x%y", "x_y", "new\nline", "tab\tz", "cr\rx", "ünï ✓ 🎧", '" or 1==1 or "', "it's", '\\"',
           "') or ('1'=='1", "a\\\\\"]) or true or ([\"", "${x}", "%", "_", "*", "  padded  "]


def test_quote_is_a_json_literal_and_refuses_control_characters() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    for bad in ("\x00", "a\x01", "\x1b[31m", "x\x7f"):
        with pytest.raises(FilterError, match="control"):
            quote(bad)
    with pytest.raises(FilterError, match="longer"):
        quote("x" * 5000)


def test_expression_is_built_from_the_structured_parts_only() -> None:
    f = Filters.build(brand="Sony Corp.", category="Electronics > Audio", price_min="10", price_max=20,
                      attributes={"colour": 'red" or "1"=="1'})
    expr = f.expression(exclude=['p"1'])
    assert expr == ('product_id != "p\\"1" and brand_key in ["sony"] and ((category_key == "electronics>audio" or '
                    '(category_key >= "electronics>audio>" and category_key < "electronics>audio?"))) and '
                    'price >= 10.0 and price >= 0.0 and price <= 20.0 and '
                    'display["attributes"]["colour"] == "red\\" or \\"1\\"==\\"1"')
    assert Filters().expression() == "" and Filters().empty


@pytest.mark.parametrize("items, message", [
    ([("expr", "1==1")], "unknown query parameter 'expr'"),
    ([("k", "1"), ("k", "2")], "more than once"),
    ([("brand", "a")] * 51, "at most 50"),
    ([("price_within_pct", "100")], "below 100"),
    ([("same_brand", "maybe")], "true or false"),
    ([("price_min", "inf")], "finite"),
    ([("price_max", "1e400")], "finite"),
    ([("price_min", "3"), ("price_max", "2")], "greater"),
    ([("category", " > / ")], "empty"),
    ([("attr.", "x")], "without a name"),
    ([(f"attr.a{i}", "x") for i in range(9)], "at most 8"),
])
def test_bad_filters_name_the_problem(items: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        Filters.from_query(items, {"k"})


def test_keys_agree_with_the_encoders_normalisation() -> None:
    """rows.brand_key / category_keys repeat the encoders' normalisation (index may not import encoders)."""
    from simstream.encoders.structured import category_prefixes, normalize_brand

    for brand in ["Sony Corp.", "SONY", "Bang & Olufsen", "H&M Inc", "", "Ünïcode GmbH", "co-op"]:
        assert brand_key(brand) == normalize_brand(brand)
    for path in ["Electronics > Audio > Headphones", "a/b|c", " A >  B ", "", "x>>y"]:
        assert category_key(path) == (category_prefixes(path) or [""])[-1]


def test_display_is_bounded() -> None:
    import orjson

    from simstream.index.rows import MAX_DISPLAY_BYTES

    huge = ProductEvent("p", "upsert", 1, title="\x01" * 2000, category=">".join(["\x02" * 120] * 8),
                        image_url="http://x/" + "a" * 3000, attributes={f"k{i}\x03": "\x04" * 256 for i in range(100)})
    assert len(orjson.dumps(display_of(huge))) <= MAX_DISPLAY_BYTES


PATHS = ["x", "x>y", "x>y>z", "xy", "x?", "x>yz", "x>", "X / Y", "x>y?", "y>x"]


@pytest.fixture
def hostile_store(tmp_path: Path):
    store = MilvusStore.connect(str(tmp_path / "f.db"), "f", 4, flush_every_rows=0)
    rng = np.random.default_rng(5)
    rows = [product_row(ProductEvent(f"p{i}", "upsert", 1, title=f"t{i}", brand=f"brand {h}", category=h,
                                     price=float(i), attributes={h: h, "note": h}),
                        rng.normal(size=4).astype(np.float32), {}, "m", 1) for i, h in enumerate(HOSTILE)]
    rows += [product_row(ProductEvent(f"c{i}", "upsert", 1, title="t", category=path), rng.normal(size=4).astype(np.float32),
                         {}, "m", 1) for i, path in enumerate(PATHS)]
    store.upsert_products(rows)
    yield store
    store.close()


def test_hostile_values_round_trip_through_milvus(hostile_store: MilvusStore) -> None:
    q = np.ones(4, np.float32)
    everyone = {r.product_id for r in hostile_store.search_served(q, 100, "")}
    assert len(everyone) == len(HOSTILE) + len(PATHS)
    for i, h in enumerate(HOSTILE):
        for f in (Filters.build(category=h), Filters.build(attributes={"note": h}), Filters.build(attributes={h: h})):
            got = [r.product_id for r in hostile_store.search_served(q, 100, f.expression())]
            assert got == [f"p{i}"], (h, f.expression())
        excluded = {r.product_id for r in hostile_store.search_served(q, 100, Filters().expression([f"p{i}"]))}
        assert excluded == everyone - {f"p{i}"}
    # a category prefix finds its path and the paths below it, nothing that merely starts alike
    expected = {"x": {"c0", "c1", "c2", "c5", "c6", "c7", "c8"}, "x > y": {"c1", "c2", "c7"}, "x>y>z": {"c2"},
                "x?": {"c4"}, "y": {"c9"}}
    for prefix, ids in expected.items():
        got = {r.product_id for r in hostile_store.search_served(q, 100, Filters.build(category=prefix).expression())}
        assert got == ids, prefix
    # a filter that is itself an injection attempt matches nothing
    for attempt in ['" or product_id != "', "x\" || true || \"", "1==1"]:
        assert hostile_store.search_served(q, 100, Filters.build(attributes={"note": attempt}).expression()) == []


def test_milvus_expression_copy_mask_and_predicate_select_the_same_products(hostile_store: MilvusStore) -> None:
    """One ``Filters``, answered three ways (Milvus' expression, serve's copy, the predicate used on
    published entries), selects the same products, hostile values and IN / NOT lists included."""
    from simstream.serve.copy import FEW_CODES, LiveQuery, ServedCopy

    assert FEW_CODES < 12  # the cases below take both ways of matching codes
    copy = ServedCopy.build(hostile_store, None)
    q = np.ones(4, np.float32)
    everyone = {p.product_id: p for p in hostile_store.search_served(q, 100, "")}
    cases = [Filters.build(brand=[f"brand {HOSTILE[0]}", f"brand {HOSTILE[5]}"]),
             Filters.build(brand_not=[f"brand {h}" for h in HOSTILE[:6]]),
             # more codes than FEW_CODES: looked up in a table, not compared one by one
             Filters.build(brand=[f"brand {h}" for h in HOSTILE[2:14]]),
             Filters.build(brand_not=[f"brand {h}" for h in HOSTILE[:12]]),
             Filters.build(category=["x > y", "x?"], category_not=["x>y>z"]),
             Filters.build(category_not=["x", "y"], price_max=10),
             Filters.build(exclude=["p1", "c3", 'a"b'], price_min=2),
             Filters.build(attributes={"note": HOSTILE[3]}, brand=f"brand {HOSTILE[3]}"),
             Filters.build(brand="nobody", brand_not="nobody")]
    for f in cases:
        by_milvus = {r.product_id for r in hostile_store.search_served(q, 100, f.expression())}
        by_copy = {pid for pid, *_ in copy.top([LiveQuery(q, f, 100)])[0]}
        by_predicate = {pid for pid, p in everyone.items() if f.matches(p)}
        assert by_milvus == by_copy == by_predicate, f
        assert by_milvus or f.brand == ("nobody",), f  # every case but the last selects something


def test_a_category_filter_sees_categories_that_appear_after_it_was_first_asked() -> None:
    """The copy remembers which category codes a filter passes; a category key held later is
    tested too (and a brand code held later is compared)."""
    from simstream.index.rows import Display, ServedProduct
    from simstream.serve.copy import LiveQuery, ServedCopy

    def product(pid: str, brand: str, category: str) -> ServedProduct:
        return ServedProduct(pid, 1, brand, category, 5.0, "m", 0, 0, Display(), vector=np.ones(4, np.float32))

    copy = ServedCopy(4, None, 8)
    copy.apply([product("a", "Acme", "Home > Kitchen"), product("b", "Other", "Garden")], ())
    q = np.ones(4, np.float32)
    kitchen, acme = Filters.build(category="home"), Filters.build(brand="acme")
    not_home = Filters.build(category_not="home")
    assert [pid for pid, *_ in copy.top([LiveQuery(q, kitchen, 10)])[0]] == ["a"]
    assert [pid for pid, *_ in copy.top([LiveQuery(q, not_home, 10)])[0]] == ["b"]
    copy.apply([product("c", "ACME", "Home > Bath"), product("d", "New", "Toys")], ())
    assert sorted(pid for pid, *_ in copy.top([LiveQuery(q, kitchen, 10)])[0]) == ["a", "c"]
    assert sorted(pid for pid, *_ in copy.top([LiveQuery(q, not_home, 10)])[0]) == ["b", "d"]
    assert sorted(pid for pid, *_ in copy.top([LiveQuery(q, acme, 10)])[0]) == ["a", "c"]


def test_a_row_mask_computed_before_a_write_is_computed_again_in_the_pass() -> None:
    """A caller computes its query's row mask before it waits for a pass; a sync applied in
    between (here: b's brand changes to Acme) makes the pass compute it again, so b is found."""
    from simstream.index.rows import Display, ServedProduct
    from simstream.serve.copy import LiveQuery, ServedCopy

    def product(pid: str, brand: str) -> ServedProduct:
        return ServedProduct(pid, 1, brand, "Home", 5.0, "m", 0, 0, Display(), vector=np.ones(4, np.float32))

    copy = ServedCopy(4, None, 8)
    copy.apply([product("a", "Acme"), product("b", "Other")], ())
    acme = LiveQuery(np.ones(4, np.float32), Filters.build(brand="acme"), 10)
    assert [pid for pid, *_ in copy.top_one(acme)] == ["a"]
    batcher = copy.batcher

    def written_meanwhile(item):  # type: ignore[no-untyped-def]
        copy.apply([product("b", "Acme")], ())
        return batcher(item)

    copy.batcher = written_meanwhile  # type: ignore[assignment]
    assert sorted(pid for pid, *_ in copy.top_one(acme)) == ["a", "b"]


def test_passes_at_once_answer_each_query_as_one_pass_alone_would() -> None:
    """SIMSTREAM_SERVE_PASSES 3: concurrent live queries, ranked in up to three passes at once,
    each get the same (id, score) list as the query ranked alone: exact, ties by id."""
    from concurrent.futures import ThreadPoolExecutor

    from simstream.index.rows import Display, ServedProduct
    from simstream.serve.copy import LiveQuery, ServedCopy

    rng = np.random.default_rng(3)
    vectors = rng.integers(-3, 4, (400, 16)).astype(np.float32)  # many exact ties
    brands = ["acme", "other", "third"]
    copy = ServedCopy(16, None, 512, passes=3)
    copy.apply([ServedProduct(f"p{i:03d}", 1, brands[i % 3], "Home", float(i), "m", 0, 0, Display(), vector=v)
                for i, v in enumerate(vectors)], ())
    queries = [LiveQuery(vectors[rng.integers(0, 400)] + rng.normal(0, 0.1, 16).astype(np.float32),
                         Filters.build(brand=brands[j % 3]) if j % 2 else Filters.build(), 7) for j in range(96)]
    alone = [copy.top([q])[0] for q in queries]
    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(copy.top_one, queries))
    assert together == alone
    assert copy.batcher.batches < len(queries)  # batched


@pytest.mark.parametrize("pairs_at_once", [1_024, 3])
def test_a_pass_gives_each_hit_its_contributions_when_its_query_asks(pairs_at_once: int, monkeypatch) -> None:
    """Hits of a query carrying a field layout have each one's per-field contributions (its
    stored vector with the query vector, summing to the score), computed in the pass; hits of a
    query without one have none. Two queries in one pass: each gets its own (also when the pairs
    are computed a few at a time, ``FIELDS_PAIRS``)."""
    from simstream.index.neighbours import FieldShares, contributions
    from simstream.index.rows import Display, ServedProduct
    from simstream.serve import copy as copy_module
    from simstream.serve.copy import LiveQuery, ServedCopy

    monkeypatch.setattr(copy_module, "FIELDS_PAIRS", pairs_at_once)

    layout = {"text": slice(0, 4), "brand": slice(4, 6)}
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(30, 6)).astype(np.float32)
    vectors[::5, 4:6] = 0  # some products without a brand segment
    copy = ServedCopy(6, None, 32)
    copy.apply([ServedProduct(f"p{i:02d}", 1, "acme", "Home", 1.0, "m", 0, 0, Display(), vector=v)
                for i, v in enumerate(vectors)], ())
    stored = dict(zip((f"p{i:02d}" for i in range(30)), vectors))
    shares = FieldShares(layout)
    qa, qb = rng.normal(size=(2, 6)).astype(np.float32)
    got_a, got_b, plain = copy.top([LiveQuery(qa, Filters.build(), 8, shares=shares),
                                    LiveQuery(qb, Filters.build(), 5, shares=shares),
                                    LiveQuery(qa, Filters.build(), 8)])
    assert [h.product_id for h in got_a] == [h.product_id for h in plain] and len(got_b) == 5
    assert all(h.fields is None for h in plain)
    for q, hits in ((qa, got_a), (qb, got_b)):
        for h in hits:
            alone = contributions(q, [stored[h.product_id]], layout)[0]
            assert h.fields is not None and h.fields.keys() == alone.keys()
            assert all(abs(h.fields[f] - alone[f]) <= 2e-6 for f in alone)
            assert abs(sum(h.fields.values()) - h.score) < 1e-5
    assert any("brand" not in h.fields for h in got_a + got_b if h.fields is not None)  # a row without one
    # contributions for the first fields_for hits only (a page's), the rest without
    first3 = copy.top([LiveQuery(qa, Filters.build(), 8, shares=shares, fields_for=3)])[0]
    assert [h.fields for h in first3[:3]] == [h.fields for h in got_a[:3]]
    assert all(h.fields is None for h in first3[3:]) and len(first3) == 8


def test_a_pass_decides_the_match_of_each_hit_whose_query_asks() -> None:
    """Queries naming a match decision get each hit's probability from the pass, in one call per
    decision for all of them, equal to deciding each hit alone from its contributions; a query
    without a decision, or hits without contributions, get none."""
    from functools import partial

    from simstream.index.neighbours import FieldShares
    from simstream.index.rows import Display, ServedProduct
    from simstream.match import MatchModel
    from simstream.serve.copy import LiveQuery, ServedCopy

    layout = {"text": slice(0, 4), "brand": slice(4, 6)}
    rng = np.random.default_rng(8)
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    vectors[::4, 4:6] = 0  # some products without a brand segment: "missing" reads in the decision
    copy = ServedCopy(6, None, 64)
    copy.apply([ServedProduct(f"p{i:02d}", 1, "acme", "Home", 1.0, "m", 0, 0, Display(), vector=v)
                for i, v in enumerate(vectors)], ())
    weights = {"text": 0.7, "brand": 0.3}
    calls: list[int] = []

    def counted(model: MatchModel):  # type: ignore[no-untyped-def]
        def decide(shares):  # type: ignore[no-untyped-def]
            calls.append(len(shares))
            return model.of_entries(shares, weights)
        return decide

    first = MatchModel(("text", "brand"), (3.0, 1.5, -0.5, -2.0), -0.4, 0.5)
    second = MatchModel(("text", "brand"), (1.0, 4.0, 0.0, -1.0), 0.2, 0.5)
    one, other = counted(first), counted(second)
    shares = FieldShares(layout)
    qs = rng.normal(size=(4, 6)).astype(np.float32)
    got = copy.top([LiveQuery(qs[0], Filters.build(), 6, shares=shares, decide=one),
                    LiveQuery(qs[1], Filters.build(), 5, shares=shares, decide=one),
                    LiveQuery(qs[2], Filters.build(), 4, shares=shares, decide=other),
                    LiveQuery(qs[3], Filters.build(), 4, shares=shares),
                    LiveQuery(qs[0], Filters.build(), 6, shares=shares, fields_for=2, decide=one)])
    assert sorted(calls) == [4, 6 + 5 + 2]  # one call per decision, every asking hit in it
    for hits, model in ((got[0], first), (got[1], first), (got[2], second)):
        alone = [model.of_entries([h.fields], weights)[0] for h in hits if h.fields is not None]
        assert [h.match_probability for h in hits] == alone and len(alone) == len(hits)
    assert all(h.match_probability is None for h in got[3])
    assert [h.match_probability for h in got[4][:2]] == [h.match_probability for h in got[0][:2]]
    assert all(h.match_probability is None and h.fields is None for h in got[4][2:])
    assert partial(first.of_entries, weights=weights)([got[0][0].fields]) == [got[0][0].match_probability]
