"""Leave-one-dataset-out pieces on hand-made data: twins never ranked, never in the gold."""

from __future__ import annotations

import numpy as np
import pytest

from simstream.quality.datasets import Table
from simstream.quality.fit_weights import Dataset
from simstream.quality.generalise import leave_one_out, main, tfidf_metrics


def _dataset(name: str, seed: int) -> Dataset:
    """Left i matches right i; right i+3 is left i's exact twin (identical vectors and text)."""
    rng = np.random.default_rng(seed)
    n = 3
    left_fv = {"text": rng.normal(size=(n, 4)), "title_lexical": rng.normal(size=(n, 4))}
    right_fv = {f: np.vstack([v + 0.3 * rng.normal(size=v.shape), v]) for f, v in left_fv.items()}
    for fv in (left_fv, right_fv):
        for f in fv:
            fv[f] /= np.linalg.norm(fv[f], axis=1, keepdims=True)
    texts = [f"item {name} {i} alpha{i}" for i in range(n)]
    left = Table([str(i) for i in range(n)], [], texts)
    right = Table([str(i) for i in range(2 * n)], [], [t + " x" for t in texts] + texts)
    gold = {str(i): {str(i), str(i + n)} for i in range(n)}
    ds = Dataset(name, None, {}, left, right, left_fv, right_fv)  # type: ignore[arg-type]
    ds.excluded = {str(i): {str(i + n)} for i in range(n)}
    ds.gold = {"train": {q: {q} for q in gold}, "full": {q: {q} for q in gold}}
    return ds


def test_twins_are_masked_for_the_fused_ranking_and_tfidf() -> None:
    ds = _dataset("a", 0)
    scores = ds.mask(ds.scores({"text": 1.0}, [0, 1, 2]), [0, 1, 2])
    assert np.isneginf(scores[[0, 1, 2], [3, 4, 5]]).all()
    assert ds.metrics({"text": 1.0, "title_lexical": 1.0}, "full", [1])["recall@1"] == 1.0
    assert tfidf_metrics(ds, [1])["recall@1"] == 1.0  # its identical twin would otherwise be first
    ds.excluded = {}
    assert tfidf_metrics(ds, [1])["recall@1"] == 0.0


def test_leave_one_out_reports_every_dataset_against_tfidf() -> None:
    out = leave_one_out([_dataset("a", 0), _dataset("b", 1), _dataset("c", 2)], ks=[1, 5])
    assert set(out) == {"a", "b", "c"}
    for row in out.values():
        assert {"lodo", "tfidf", "weights"} <= set(row) and 0 <= row["lodo"]["recall@1"] <= 1


def test_missing_data_is_named(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match="at least 2 benchmarks"):
        main(["--data", str(tmp_path)])
    assert "skipping" in capsys.readouterr().out
