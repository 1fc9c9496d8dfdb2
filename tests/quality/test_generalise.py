"""Leave-one-dataset-out pieces on hand-made data: twins never ranked, never in the gold."""

from __future__ import annotations

import numpy as np
import pytest

from simstream.quality.datasets import Table
from simstream.quality.fit_weights import Dataset
from simstream.quality.generalise import leave_one_out, main, tfidf_metrics
from simstream.settings import DEFAULT_WEIGHTS


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


def _one_field_dataset(name: str, good: str, n: int, right_size: int = 8) -> Dataset:
    """Query i's match agrees with it on field ``good`` only (cosine 1 there, 0 on the other field);
    a decoy agrees on the other field only; padding rows score 0 on both. So a weighting ranks the
    match first exactly when it puts more weight on ``good``. TF-IDF reads the match's text as the
    query's text plus " x" and the decoy's as unrelated words: it always ranks the match first."""
    bad = "title_lexical" if good == "text" else "text"
    e = np.eye(8)  # rows 0-2: the queries' own directions; 3-5 and 7 are orthogonal to every query
    left = {good: e[:n], bad: e[:n]}
    match, decoy = {good: e[:n], bad: e[3:3 + n]}, {good: e[3:3 + n], bad: e[:n]}
    pad = right_size - 2 * n  # one right-table size everywhere: every query weighs the same in the fit
    right = {f: np.vstack([match[f], decoy[f], np.tile(e[7], (pad, 1))]) for f in (good, bad)}
    lids = [f"{name}-q{i}" for i in range(n)]
    rids = [f"{name}-{kind}{i}" for kind, count in (("m", n), ("d", n), ("p", pad)) for i in range(count)]
    texts = [f"widget {name} model {i}{i}{i}" for i in range(n)]
    right_texts = [t + " x" for t in texts] + [f"zz {name} other {i}" for i in range(n)] + ["qq"] * pad
    ds = Dataset(name, None, {}, Table(lids, [], texts),  # type: ignore[arg-type]
                 Table(rids, [], right_texts), left, right)
    gold = {lids[i]: {rids[i]} for i in range(n)}
    ds.gold = {"train": gold, "full": gold}
    return ds


def test_leave_one_out_fits_on_the_others_only_and_measures_the_held_one() -> None:
    """a and b (2 queries each) reward text, c (3 queries) rewards title_lexical. Held out a: the fit
    sees b's 2 text queries against c's 3 lexical ones, so lexical weighs more and every a query
    ranks its decoy first (recall@1 0; fitted on a's own labels too, text would win 4 to 3 and give 1).
    Held out c: only text queries, so text takes the whole learned share and c scores 0 as well.
    The fixed weightings and TF-IDF are measured on the same gold: exactly 1 or 0 by construction."""
    datasets = [_one_field_dataset("a", "text", 2), _one_field_dataset("b", "text", 2),
                _one_field_dataset("c", "title_lexical", 3)]
    fixed = {"text only": {"text": 1.0}, "lexical only": {"title_lexical": 1.0}}
    out = leave_one_out(datasets, ks=[1], fixed=fixed)
    assert set(out) == {"a", "b", "c"}

    def recall(name: str, method: str) -> float:
        m = out[name][method]
        assert m["queries"] == m["pairs"] == (3 if name == "c" else 2)  # the held set's whole full gold
        assert m["recall@1"] == m["hit@1"] == m["mrr"]  # one gold item per query, lists of 1
        return m["recall@1"]

    assert {n: recall(n, "lodo") for n in out} == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert {n: recall(n, "tfidf") for n in out} == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert {n: recall(n, "text only") for n in out} == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert {n: recall(n, "lexical only") for n in out} == {"a": 0.0, "b": 0.0, "c": 1.0}
    learned_share = 1.0 - sum(w for f, w in DEFAULT_WEIGHTS.items() if f not in ("text", "title_lexical"))
    for name, row in out.items():
        w = row["weights"]
        # fields no dataset has keep their default weight; the two observed ones share the rest
        assert {f: v for f, v in w.items() if f not in ("text", "title_lexical")} == \
            {f: v for f, v in DEFAULT_WEIGHTS.items() if f not in ("text", "title_lexical")}
        assert w["text"] + w["title_lexical"] == pytest.approx(learned_share, abs=1e-5)
        if name == "c":
            assert w["text"] == pytest.approx(learned_share, abs=1e-5) and w["title_lexical"] == 0.0
        else:
            assert w["title_lexical"] > w["text"] > 0


def test_missing_data_is_named(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match="at least 2 benchmarks"):
        main(["--data", str(tmp_path)])
    assert "skipping" in capsys.readouterr().out


def test_sets_name_the_benchmarks_judged(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match="unknown \\['no_such_set'\\]"):
        main(["--data", str(tmp_path), "--sets", "abt_buy,no_such_set"])
    with pytest.raises(SystemExit, match="at least 2 benchmarks"):
        main(["--data", str(tmp_path), "--sets", "abt_buy,ember_ali"])
    assert "abt_buy, ember_ali" in capsys.readouterr().out  # the sets asked for, named as missing
