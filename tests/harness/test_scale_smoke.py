"""bench/scale.py's own parts at a small size: the one-pass exact lists of both encoder modes equal
index/exact.py's ``exact_top_k``, the side-index-only measurement reports, and the run_all keys come
out as null with a reason when a size was not measured. The worker runs are bench/scale.py --quick."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simstream.encoders.fusion import ProductEncoder
from simstream.index.exact import exact_top_k
from simstream.settings import Settings

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import common  # type: ignore  # noqa: E402
import scale  # type: ignore  # noqa: E402


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Any]:
    root = tmp_path_factory.mktemp("img")
    return {image: ProductEncoder(Settings(image_enabled=image, image_root=root)) for image in (False, True)}


def test_one_pass_lists_equal_exact_top_k_in_both_modes(encoders: dict[bool, Any]) -> None:
    root, names = common.image_root()
    rng = random.Random(4)
    docs = [common.make_doc(rng, f"p{i:07d}", 1, 0, names) for i in range(400)]
    # clones: exact score ties, which must be ordered by product id as exact_top_k does
    docs += [{**docs[i], "product_id": f"q{i:07d}"} for i in range(0, 40, 4)]
    fv = common.field_vectors(encoders[True], docs, root, seed=4)
    got = common.exact_lists_by_mode([encoders[False], encoders[True]], fv, 15)
    for enc, (idx, scores) in zip((encoders[False], encoders[True]), got):
        want = exact_top_k(common.fuse(enc, fv), fv.ids, 15, margin=8)
        assert [[fv.ids[j] for j in row] for row in idx] == [[pid for pid, _ in row] for row in want]
        assert np.allclose(scores, np.array([[s for _, s in row] for row in want], np.float32), atol=1e-6)


def test_exact_rows_agree_with_the_all_pairs_lists(encoders: dict[bool, Any]) -> None:
    vectors = np.random.default_rng(2).standard_normal((300, 24)).astype(np.float32)
    ids = [f"x{i:04d}" for i in range(300)]
    owners = [5, 77, 299]
    want = exact_top_k(vectors, ids, 10)
    got = common.exact_rows(vectors, ids, owners, 10)
    assert [[ids[j] for j, _ in row] for row in got] == [[pid for pid, _ in want[o]] for o in owners]


def test_side_only_measures_memory_and_search(encoders: dict[bool, Any]) -> None:
    res = scale.side_only(4_000, encoders[True], seed=1, queries=8)
    assert res["products"] == 4_000 and res["search_ms_per_query"] > 0
    # the arrays hold at least the packed matrix; the RSS delta is process-wide (heap pages freed by
    # earlier work in this process are reused), so it is reported, not compared
    assert res["allocated_bytes_per_product"] >= res["matrix_bytes_per_product"] > 0
    assert isinstance(res["rss_bytes_per_product"], int)


def test_summary_reports_null_with_a_reason_when_not_measured() -> None:
    out = scale.summary({"skipped": ["side index at 1000000: needs more memory"],
                         "10000": {"text_only": {"rss_bytes_per_product": 100, "saturation": {"events_per_s": 3.0},
                                                 "exactness": {"equal_share": 1.0}}}})
    assert out["scale"]["10000"]["events_per_s_text"] == 3.0 and out["scale"]["10000"]["events_per_s_image"] is None
    assert out["price_only_events_per_s_100k"] is None
    assert any("price_only_events_per_s_100k" in why for why in out["scale_not_measured"])
    assert any("1000000" in why for why in out["scale_not_measured"])
    assert out["milvus_search_mode_events_per_s_100k"] is None
    big = scale.summary({"100000": {"text_only": {"saturation": {"events_per_s": 60.0}},
                                    "milvus_search": {"saturation": {"events_per_s": 2.5}}}})
    assert big["milvus_search_mode_events_per_s_100k"] == 2.5
    assert big["scale"]["100000"]["milvus_search"]["events_per_s_text"] == 2.5


def test_refresh_work_is_per_event_from_two_scrapes() -> None:
    before = {'simstream_refresh_lists_total{method="merged"}': 10.0, 'simstream_milvus_seconds_sum{op="plan"}': 1.0}
    after = {'simstream_refresh_lists_total{method="merged"}': 34.0, 'simstream_refresh_lists_total{method="searched"}': 2.0,
             'simstream_milvus_seconds_sum{op="plan"}': 1.5, 'simstream_milvus_seconds_sum{op="record"}': 0.25}
    assert scale.refresh_work(after, before, 4) == {"merged_per_event": 6.0, "searched_per_event": 0.5,
                                                   "step_seconds": {"plan": 0.5, "record": 0.25}}


def test_churned_times_age_the_lists_as_a_stream_would() -> None:
    from common import CHURN_PASSES, CHURN_WRITES_PER_S, churned_times  # type: ignore

    from simstream.clock import RACE_LOOKBACK_MS

    n, now, depth = 2_000, 10_000_000_000, 15
    deep = np.random.default_rng(2).integers(0, n, (n, depth))
    written, as_of = churned_times(n, deep, now, seed=3)
    assert (as_of >= written + RACE_LOOKBACK_MS).all()  # each owner unchanged since its list
    assert (as_of >= written[deep].max(axis=1)).all()  # refreshed after its members' writes
    assert (as_of <= now - 30_000).all()
    start = written.min() + 1_000  # some products were never drawn: written just before the stream
    times = start + (np.arange(CHURN_PASSES * n) * (1000 / CHURN_WRITES_PER_S)).astype(np.int64)
    behind = len(times) - np.searchsorted(times, as_of)  # writes since each head
    assert np.median(behind) < n // 4  # most heads are young ...
    # ... and the oldest have a large share of the catalog written since: ~(n / (depth + 1)) ln n
    assert behind.max() > n // 3


def test_summary_reports_the_churned_state_beside_the_fresh_one() -> None:
    fresh = {"saturation": {"events_per_s": 40.0}, "exactness": {"equal_share": 1.0}}
    churned = {"saturation": {"events_per_s": 34.0}, "exactness": {"equal_share": 1.0}}
    out = scale.summary({"100000": {"text_only": fresh, "text_only_churned": churned}})
    assert out["scale"]["100000"]["churned"]["events_per_s_text"] == 34.0
    assert out["churned_over_fresh_100k"] == 0.85


def test_the_floor_of_an_event_is_measured_in_the_same_run() -> None:
    import scan_bench  # type: ignore

    out = scan_bench.floors(3_000, 5.0)
    assert out["floor_ms_per_event"] > 0
    assert out["non_encoder_over_floor"] == round(5.0 / out["floor_ms_per_event"], 1)
    assert out["scan"]["exact_sample"].startswith("4 queries: equal")
    assert scan_bench.floors(3_000, None)["non_encoder_over_floor"] is None
