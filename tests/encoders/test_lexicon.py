"""The catalog's lexicon and the IDF-weighted lexical segments (issue 25): document frequencies
counted by hand, cosines equal to scikit-learn's TF-IDF fitted on the same catalog, a frozen file
that refuses tampering, and indexes built before it keeping their layout and model tag."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from simstream.encoders.fusion import ProductEncoder, layout_of
from simstream.encoders.lexical import TextWordsEncoder, TitleLexicalEncoder
from simstream.encoders.hashing import token_keys
from simstream.encoders.lexicon import Lexicon, text_words, words_text
from simstream.generations import Generation, generation_settings, lexicon_path
from simstream.records import ProductEvent
from simstream.settings import Settings


def event(pid: str, title: str, brand: str | None = None, description: str | None = None) -> ProductEvent:
    return ProductEvent(product_id=pid, op="upsert", version=1, title=title, brand=brand, description=description)


CATALOG = [
    event("a", "Sony Bravia KDL-40V3000 40in LCD TV", "Sony", "A television. Full HD television."),
    event("b", "Sony Bravia KDL-46V3000 46in LCD TV", "Sony", "A larger television."),
    event("c", "Samsung LN40A550 40in LCD HDTV", "Samsung", "Television with HDMI."),
    event("d", "Canon PowerShot SD1100 digital camera", "Canon", None),
    ProductEvent(product_id="gone", op="delete", version=2),
]


def test_document_frequency_counts_each_product_once_and_skips_deletes() -> None:
    lex = Lexicon.fit(CATALOG)
    assert lex.catalog_size == 4
    words = ["sony", "television", "lcd", "canon", "kdl40v3000", "never-seen"]
    df = lex.document_frequency("text_word", token_keys(words))
    # "television" twice in product a's description counts once; "never-seen" is not a word token
    assert list(df) == [2, 3, 3, 1, 0, 0]
    trigrams = lex.document_frequency("title_char3", token_keys([" lc", " 40", "zzz"]))
    assert list(trigrams) == [3, 2, 0]


def test_idf_is_smooth_and_a_token_the_catalog_lacks_weighs_like_the_rarest() -> None:
    lex = Lexicon.fit(CATALOG)
    idf = lex.idf("text_word", token_keys(["lcd", "canon", "unheardof"]))
    assert idf[0] == pytest.approx(math.log(5 / 4) + 1)
    assert idf[1] == pytest.approx(math.log(5 / 2) + 1)
    assert idf[2] == pytest.approx(math.log(5) + 1)
    assert idf[0] < idf[1] < idf[2]


@pytest.mark.parametrize("analyzer", ["title_char3", "text_word"])
def test_weighted_segments_give_scikit_learns_tfidf_cosines(analyzer: str) -> None:
    """With buckets enough for no collision, the hashed segment's cosines are TF-IDF's (sublinear
    tf, smooth IDF fitted on the catalog only, L2), queries that are not in the catalog included."""
    lex = Lexicon.fit(CATALOG)
    queries = [event("q1", "Sony KDL40V3000 LCD television", "Sony"), event("q2", "canon sd1100 camera kit")]
    dim = 2**22
    if analyzer == "title_char3":
        texts = lambda ps: [p.title for p in ps]  # noqa: E731
        encoder = TitleLexicalEncoder(dim, lexicon=lex)
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True)
    else:
        texts = lambda ps: [words_text(p) for p in ps]  # noqa: E731
        encoder = TextWordsEncoder(dim, lexicon=lex)
        vectorizer = TfidfVectorizer(analyzer=text_words, sublinear_tf=True)
    catalog = [p for p in CATALOG if not p.is_delete]
    vectorizer.fit(texts(catalog))
    # scikit-learn drops tokens it did not fit; weigh them as the stream does (df 0) by fitting
    # its vocabulary on everything and its IDF on the catalog's counts only
    vectorizer_all = TfidfVectorizer(analyzer=vectorizer.analyzer, ngram_range=vectorizer.ngram_range,
                                     sublinear_tf=True).fit(texts(catalog) + texts(queries))
    counts = (vectorizer_all.transform(texts(catalog)) > 0).sum(axis=0).A1
    idf = np.log((1 + len(catalog)) / (1 + counts)) + 1
    vectorizer_all.idf_ = idf
    expected = (vectorizer_all.transform(texts(queries)) @ vectorizer_all.transform(texts(catalog)).T).toarray()
    got = encoder.encode(texts(queries)).astype(np.float64) @ encoder.encode(texts(catalog)).astype(np.float64).T
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0, 0] > got[0, 1] > got[0, 3]  # its own part number wins, the other Sony next


def test_without_a_lexicon_the_title_segment_is_what_it_always_was() -> None:
    titles = ["Sony Bravia KDL-40V3000", "aaa aaa aaa"]
    weighted = TitleLexicalEncoder(lexicon=None).encode(titles)
    from simstream.encoders.hashing import char_wb_ngrams, hashed_counts
    from simstream.encoders.lexical import _sublinear_l2

    legacy = _sublinear_l2(hashed_counts((char_wb_ngrams(t.lower(), 3, 3) for t in titles), 1024, alternate_sign=True))
    np.testing.assert_array_equal(weighted, legacy)


def test_the_file_keeps_its_content_and_refuses_tampering(tmp_path: Path) -> None:
    lex = Lexicon.fit(CATALOG)
    again = Lexicon.load(lex.save(tmp_path / "lex.npz"))
    assert again.digest == lex.digest and again.catalog_size == 4
    for a in lex.tables:
        np.testing.assert_array_equal(again.tables[a][0], lex.tables[a][0])
        np.testing.assert_array_equal(again.tables[a][1], lex.tables[a][1])
    assert Lexicon.fit(CATALOG[:3]).digest != lex.digest
    keys, df = lex.tables["text_word"]
    forged = Lexicon(lex.catalog_size, {**lex.tables, "text_word": (keys, df + 1)}).to_bytes()
    # a file whose arrays were changed after it was written: digest recorded vs content
    import io
    import zipfile

    original = io.BytesIO(lex.to_bytes())
    mixed = io.BytesIO()
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(io.BytesIO(forged)) as other, \
            zipfile.ZipFile(mixed, "w") as out:
        for name in src.namelist():
            out.writestr(name, (other if name.startswith("text_word.df") else src).read(name))
    with pytest.raises(ValueError, match="does not match"):
        Lexicon.from_bytes(mixed.getvalue())


def test_indexes_built_before_the_word_segment_keep_their_layout_and_model_tag() -> None:
    """Tags recorded from the code before the lexicon existed: an upgrade re-encodes nothing."""
    expected = {"none": "all-MiniLM-L6-v2+efficientnet_lite0+fusion-v1-q:c99bf670",
                "v3": "minilm-products-v2+efficientnet_lite0+fusion-v1-mpnt-q:842f52f9"}
    for config, model in expected.items():
        enc = ProductEncoder(Settings(fusion_config=config, image_enabled=config != "none"))
        assert enc.model == model and enc.dim == 3232
        assert "text_words" not in enc.fields and "text_words" not in enc.field_specs()
        assert enc.layout["text_words"].start == enc.layout["text_words"].stop == enc.dim
        assert "text_words" not in enc.field_hashes(CATALOG[0])


def test_a_lexicon_and_a_weighted_word_segment_change_the_model_and_keep_fusion_exact(tmp_path: Path) -> None:
    lex = Lexicon.fit(CATALOG)
    weights = {"text": 0.4, "title_lexical": 0.2, "mpn": 0.1, "image": 0.0, "brand": 0.05, "category": 0.05,
               "price": 0.05, "text_words": 0.15}
    settings = Settings(fusion_config="none", weights=weights, image_enabled=False, vector_codec="float32")
    plain, fitted = ProductEncoder(settings), ProductEncoder(settings, lexicon=lex)
    assert plain.model != fitted.model and lex.digest in fitted.model
    assert fitted.field_specs()["text_words"]["encoder"].endswith(f"idf={lex.digest}")
    assert fitted.layout["text_words"].stop - fitted.layout["text_words"].start == 1024
    assert layout_of(fitted.field_specs()) == fitted.layout
    products = [p for p in CATALOG if not p.is_delete]
    out = fitted.encode(products)
    vectors = out.vectors.astype(np.float64)
    for f in ("title_lexical", "text_words"):
        seg = vectors[:, fitted.layout[f]] / fitted.scale[f]
        assert np.allclose(np.linalg.norm(seg, axis=1), 1.0, atol=1e-6)
    # the file named by the setting gives the same model as the fitted object
    path = lex.save(tmp_path / "lex.npz")
    assert ProductEncoder(settings.model_copy(update={"lexicon": str(path)})).model == fitted.model
    with pytest.raises(ValueError, match="simstream migrate"):
        ProductEncoder(settings.model_copy(update={"lexicon": "catalog"}))


def test_a_generation_runs_with_its_own_lexicon_copy_and_older_records_with_none(tmp_path: Path) -> None:
    base = Settings(data_dir=tmp_path, lexicon="catalog")
    old = Generation("g1", {"fusion_config": "none"}, None, "m")  # recorded before the setting existed
    assert generation_settings(base, old).lexicon == ""
    new = Generation("g2", {"fusion_config": "none", "lexicon": "catalog"}, None, "m", lexicon="0123456789abcdef")
    assert generation_settings(base, new).lexicon == str(lexicon_path(tmp_path, "0123456789abcdef"))


def test_lexicon_fit_command_counts_the_latest_version_of_each_product(tmp_path: Path) -> None:
    """``simstream lexicon fit``: the latest accepted version of each product counts once, deleted
    products and invalid records not at all; the file it writes is what SIMSTREAM_LEXICON reads."""
    import orjson
    from click.testing import CliRunner

    from simstream.cli import main

    lines = [
        {"product_id": "a", "op": "upsert", "version": 1, "title": "Old zebra lamp"},
        {"product_id": "a", "op": "upsert", "version": 2, "title": "Desk lamp"},
        {"product_id": "b", "op": "upsert", "version": 1, "title": "Floor lamp"},
        {"product_id": "c", "op": "upsert", "version": 1, "title": "Gone lamp"},
        {"product_id": "c", "op": "delete", "version": 2},
        {"product_id": "", "op": "upsert", "version": 1, "title": "no id"},
    ]
    source = tmp_path / "catalog.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\nnot json\n")
    out = tmp_path / "lexicon.npz"
    result = CliRunner().invoke(main, ["lexicon", "fit", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lex = Lexicon.load(out)
    assert lex.digest in result.output and "2 invalid records skipped" in result.output
    assert lex.catalog_size == 2  # a's latest and b; c deleted
    assert list(lex.document_frequency("text_word", token_keys(["lamp", "zebra", "desk", "gone"]))) == [2, 0, 1, 0]
    settings = Settings(fusion_config="none", image_enabled=False, lexicon=str(out))
    assert ProductEncoder(settings).lexicon.digest == lex.digest
