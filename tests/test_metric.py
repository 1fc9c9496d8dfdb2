"""The similarity rule (simstream.metric): one arithmetic for every component."""

from __future__ import annotations

import numpy as np
import pytest

from simstream.index.exact import exact_top_k
from simstream.metric import IP, Metric


def test_l2_is_minus_half_the_squared_distance() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 300)).astype(np.float32)
    l2 = Metric("l2")
    assert l2.pair(a, b) == pytest.approx(-0.5 * float(np.sum((a.astype(np.float64) - b) ** 2)), abs=1e-4)
    assert IP.pair(a, b) == float(a @ b)
    assert l2.from_milvus(4.0) == -2.0 and IP.from_milvus(0.5) == 0.5
    assert (l2.milvus_type, IP.milvus_type, l2.tag, IP.tag) == ("L2", "IP", "-l2", "")
    with pytest.raises(ValueError, match="unknown metric"):
        Metric("cosine")  # type: ignore[arg-type]


def test_an_offset_is_the_same_alone_or_in_a_batch() -> None:
    """A row's offset is kept with it and recomputed for rescoring and by the oracle: the same
    float32 number whichever way it is computed."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((257, 3232)) * rng.uniform(0.01, 3, (257, 1))).astype(np.float32)
    l2 = Metric("l2")
    batch = l2.offsets(x)
    assert batch.dtype == np.float32 and (batch < 0).all()
    assert all(l2.offsets(x[i]) == batch[i] for i in range(len(x)))
    assert all(l2.offsets(x[i:i + 3])[0] == batch[i] for i in range(0, 250, 7))
    assert not IP.offsets(x).any()
    row = l2.with_offsets(np.vecdot(x[:5], x[9]), batch[:5], batch[9])  # one dot per row, as the rescoring
    assert row.tolist() == [l2.pair(x[i], x[9]) for i in range(5)]


def test_exact_top_k_ranks_by_the_metric() -> None:
    """Shorter rows (a product missing fields) rank differently under l2: the oracle follows it."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[::3] *= np.float32(0.4)
    ids = [f"p{i:02d}" for i in range(len(x))]
    l2 = Metric("l2")
    got = exact_top_k(x, ids, 5, metric=l2)
    for i, row in enumerate(got):
        others = sorted(((-round(l2.pair(x[j], x[i]), 6), ids[j]) for j in range(len(x)) if j != i))[:5]
        assert [pid for pid, _ in row] == [pid for _, pid in others]
    assert got != exact_top_k(x, ids, 5)


def test_the_metric_is_part_of_the_model(tmp_path, settings) -> None:  # type: ignore[no-untyped-def]
    """SIMSTREAM_METRIC, else the fusion config's option, else ip; l2 tags the model and drops the
    match decision (fitted on inner-product cosines); a config naming no known metric is refused."""
    from pathlib import Path

    import orjson

    from simstream.encoders.fusion import ProductEncoder, load_match_model, load_metric

    v5 = settings.model_copy(update={"fusion_config": "v5", "image_enabled": False})
    assert load_metric(v5) == IP and load_match_model(v5) is not None
    assert load_metric(v5.model_copy(update={"metric": "l2"})) == Metric("l2")
    assert load_match_model(v5.model_copy(update={"metric": "l2"})) is None
    config = Path(tmp_path) / "l2.json"
    config.write_bytes(orjson.dumps({"weights": {"text": 0.7, "title_lexical": 0.3}, "options": {"metric": "l2"}}))
    by_config = settings.model_copy(update={"fusion_config": str(config), "image_enabled": False})
    assert load_metric(by_config) == Metric("l2")
    assert load_metric(by_config.model_copy(update={"metric": "ip"})) == IP
    plain, l2 = ProductEncoder(by_config.model_copy(update={"metric": "ip"})), ProductEncoder(by_config)
    assert l2.metric == Metric("l2") and "-l2:" in l2.model and l2.model.replace("-l2", "") == plain.model
    assert l2.field_specs() == plain.field_specs()  # the same segments: a migration carries every one
    config.write_bytes(orjson.dumps({"weights": {"text": 1.0}, "options": {"metric": "cosine"}}))
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric(by_config)
