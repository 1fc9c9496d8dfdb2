"""Catalog-fitted lexical channels and the second stage (simstream.quality.lexical / second_stage)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simstream.quality.datasets import Table
from simstream.quality.fit_weights import Dataset, fit_weights
from simstream.quality.generalise import format_table, leave_one_out
from simstream.encoders.lexicon import catalog_idf
from simstream.quality.lexical import LexicalSpec, channel_cosines, parse_specs
from simstream.quality.second_stage import best_threshold, facts_of, fit_second_stage, match_scores, pair_features
from simstream.records import ProductEvent


def _table(titles: list[str], prefix: str, **extra: list) -> Table:  # type: ignore[type-arg]
    events = [ProductEvent(f"{prefix}{i}", "upsert", 1, title=t, **{k: v[i] for k, v in extra.items()})
              for i, t in enumerate(titles)]
    return Table([f"{prefix}{i}" for i in range(len(titles))], events, titles)


def test_specs_are_parsed_and_a_wrong_one_says_what_is_allowed() -> None:
    assert [s.name for s in parse_specs("title:char3, text:word")] == ["lex_title_char3", "lex_text_word"]
    assert parse_specs("") == []
    with pytest.raises(ValueError, match="SOURCE:ANALYZER"):
        parse_specs("title:bigrams")


def test_idf_is_counted_in_the_catalog_only_and_an_unseen_token_weighs_most() -> None:
    idf = catalog_idf(np.array([0, 1, 4]), 4)
    assert idf[0] == pytest.approx(math.log(5) + 1) and idf[2] == pytest.approx(1.0)
    assert idf[0] > idf[1] > idf[2]


def test_a_rare_shared_word_outweighs_common_ones_because_the_catalog_says_so() -> None:
    """The query shares two words found in 8 of the 9 catalog titles with one product and one word
    found once with another: counts alone rank the first higher (cosine 0.82 against 0.41), IDF
    fitted on this catalog ranks the rare word's product first."""
    spec = LexicalSpec("title", "word")
    others = ["toaster", "chair", "desk", "fork", "spoon", "plate", "bowl"]
    catalog = _table(["acme steel", "x100 lamp"] + [f"acme steel {w}" for w in others], "r")
    query = _table(["acme steel x100"], "l")
    cos = channel_cosines(spec, query, catalog)
    assert cos.shape == (1, 9) and int(np.argmax(cos[0])) == 1
    # by hand: sublinear tf 1, smooth idf from the 9 catalog titles, cosine
    common, rare = math.log(10 / 9) + 1, math.log(10 / 2) + 1
    q = np.array([common, common, rare])
    assert cos[0, 1] == pytest.approx(rare ** 2 / (np.linalg.norm(q) * rare * math.sqrt(2)), rel=1e-6)
    assert cos[0, 0] == pytest.approx(2 * common ** 2 / (np.linalg.norm(q) * common * math.sqrt(2)), rel=1e-6)


def test_the_numbers_channel_reads_only_words_with_a_digit() -> None:
    """``title:num``: two offers of one drive agree on their numbers whatever their words; a title
    without a number has none to agree on."""
    catalog = _table(["Samsung 860 EVO 500GB SSD", "Samsung 860 EVO 1TB SSD", "Samsung portable SSD"], "r")
    query = _table(["SSD 860 evo 500gb samsung internal drive"], "l")
    cos = channel_cosines(parse_specs("title:num")[0], query, catalog)
    assert cos[0, 0] == pytest.approx(1.0) and 0 < cos[0, 1] < 1 and cos[0, 2] == 0


def test_empty_titles_give_zero_cosines_not_an_error() -> None:
    assert not channel_cosines(LexicalSpec("title", "char3"), _table([""], "l"), _table(["", ""], "r")).any()


def test_pair_facts_and_features() -> None:
    a = facts_of(ProductEvent("a", "upsert", 1, title="Sony Bravia KDL-40V3000 40 inch", price=500.0))
    b = facts_of(ProductEvent("b", "upsert", 1, title="KDL40V3000 LCD 40", mpn=None, price=250.0))
    c = facts_of(ProductEvent("c", "upsert", 1, title="Sony KDL-46V3000 46 inch", mpn="KDL-46V3000"))
    assert a.models == {"kdl40v3000"} and c.models == {"kdl46v3000"} and "40" in a.numbers
    ab, ac = pair_features([0.5], 0.4, a, b), pair_features([0.5], 0.4, a, c)
    assert ab[:5] == [0.5, 0.4, 1.0, 0.0, 0.0]  # cosines, fused, shared model number
    assert ac[2:5] == [0.0, 1.0, 0.0]  # conflicting model numbers
    assert ab[-2:] == [pytest.approx(math.log(2)), 0.0] and ac[-1] == 1.0  # price ratio; a price missing


def _model_number_dataset(name: str, n: int, seed: int) -> Dataset:
    """Query i's match and its decoy have the same cosine on the one field; only the model number
    in the title tells them apart (the match shares it, the decoy has another)."""
    rng = np.random.default_rng(seed)
    left_titles = [f"gadget {name} ab{100 + i}x" for i in range(n)]
    right_titles = [f"gadget {name} ab{100 + i}x" for i in range(n)] + [f"gadget {name} zq{500 + i}y" for i in range(n)]
    order = rng.permutation(2 * n)  # matches and decoys interleaved, so the fused order is no hint
    right_titles = [right_titles[j] for j in order]
    left = _table(left_titles, f"{name}l")
    right = _table(right_titles, f"{name}r")
    v = np.eye(4)[:1]
    left_fv = {"text": np.repeat(v, n, axis=0)}
    right_fv = {"text": np.repeat(v, 2 * n, axis=0)}
    ds = Dataset(name, None, {}, left, right, left_fv, right_fv)  # type: ignore[arg-type]
    where = {int(o): j for j, o in enumerate(order)}
    gold = {f"{name}l{i}": {f"{name}r{where[i]}"} for i in range(n)}
    ds.gold = {"train": gold, "full": gold}
    return ds


def test_the_second_stage_learns_model_numbers_on_other_sets_and_reorders_the_held_one() -> None:
    sets = [_model_number_dataset(x, 6, seed) for seed, x in enumerate("abc")]
    out = leave_one_out(sets, ks=[1, 10], second_stage=True)
    for name, row in out.items():
        assert row["lodo+stage2"]["recall@1"] == 1.0, name  # the fused ranking alone cannot tell them apart
        assert row["lodo+promote"]["recall@1"] == 1.0, name
        assert row["lodo"]["recall@1"] < 1.0
        # the decision: every match found and nothing else, at a threshold chosen on the other sets
        assert row["match"]["precision"] == row["match"]["recall"] == row["match"]["f1"] == 1.0, row["match"]
        assert len(row["match"]["pr_curve"]) == 20
    assert "match" not in format_table(out, [1, 10]) and "lodo+stage2" in format_table(out, [1, 10])
    _, weights, learned = fit_weights(sets[1:])
    stage = fit_second_stage(sets[1:], weights, learned)
    assert 0 < stage.threshold < 1
    ranked = stage.rerank(sets[0], weights, "full", 3)
    assert all(len(r) == 3 for r in ranked.values())
    # promote: only the pairs at or above the threshold move; the rest keep the fused order
    stage.threshold = 1.01
    fused = {q: [sets[0].right.ids[j] for j in np.argsort(-sets[0].scores(weights, [i])[0], kind="stable")[:3]]
             for i, q in enumerate(sets[0].left.ids)}
    assert stage.rerank(sets[0], weights, "full", 3, "promote") == fused


def test_a_channel_is_learned_as_a_field() -> None:
    """Channels join the fit beside the fields and appear in the shipped weights."""
    sets = [_model_number_dataset(x, 4, seed) for seed, x in enumerate("ab")]
    for ds in sets:
        ds.channels = {"lex_title_word": channel_cosines(LexicalSpec("title", "word"), ds.left, ds.right)}
    raw, shipped, learned = fit_weights(sets)
    assert "lex_title_word" in learned and shipped["lex_title_word"] > 0
    assert sets[0].metrics(shipped, "full", [1])["recall@1"] == 1.0  # the model number is a rare word


def test_match_scores_count_every_gold_pair_and_the_best_threshold_maximises_f1() -> None:
    probs = np.array([0.9, 0.8, 0.4, 0.2])
    labels = np.array([True, False, True, False])
    m = match_scores(probs, labels, gold_pairs=3, threshold=0.5)  # one gold pair outside the candidates
    assert (m["precision"], m["recall"]) == (0.5, round(1 / 3, 4))
    # F1: 0.57 with all four, 0.67 with the top three (t in (0.2, 0.4]), 0.4 with two, 0.5 with one
    assert best_threshold(probs, labels, 3) == 0.21


def test_bm25_baseline_weighs_words_by_the_catalog_and_scores_wordless_queries_zero() -> None:
    from types import SimpleNamespace

    from simstream.quality.evaluate import bm25_scores

    catalog = SimpleNamespace(texts=["camera bag", "camera strap", "camera x100 lens", "tripod"])
    queries = SimpleNamespace(texts=["x100 camera", "camera", "the", ""])
    scores = bm25_scores(queries, catalog, [0, 1, 2, 3])
    assert scores.shape == (4, 4)
    assert int(scores[0].argmax()) == 2  # the rare word decides
    assert scores[1, 3] == 0 and scores[1, 0] > 0  # a common word still scores, a missing one not
    assert not scores[2:].any()  # stop words only, or nothing: 0 everywhere


def test_a_vector_stage_folds_into_the_match_model_the_stream_applies() -> None:
    """``SecondStage.match_model``: the standardisation folded into raw coefficients gives the fitted
    pipeline's probabilities (to the 4 decimals the stream keeps); only a vector stage can run there."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from simstream.match import pair_features as vector_features
    from simstream.quality.second_stage import SecondStage

    rng = np.random.default_rng(0)
    fields = ["text", "mpn", "price"]
    x = vector_features(rng.uniform(-1, 1, (400, 3)), np.ones(3, bool), rng.random((400, 3)) > 0.2)
    y = (x[:, 0] + 2 * x[:, 1] - x[:, 4] + rng.normal(0, 0.3, 400)) > 0.5
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    model = SecondStage(fields, pipeline, threshold=0.4, kind="vector").match_model()
    assert model.fields == tuple(fields) and model.threshold == 0.4
    np.testing.assert_allclose(model.probabilities(x), pipeline.predict_proba(x)[:, 1], atol=1e-4)
    with pytest.raises(ValueError, match="vector"):
        SecondStage(fields, pipeline).match_model()
