"""Adapting the text model to a catalog without labels (``simstream.quality.adapt``): a tiny run
saves a delta that reloads offline, changes the vectors, is named by its weights, and the same
texts and recipe give the same model; a fine-tuned start is adapted on top of its own delta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simstream.encoders.finetuned import DELTA, MANIFEST, read_manifest
from simstream.encoders.multilingual import make_text_encoder
from simstream.quality.adapt import AdaptRecipe, adapt_text_model

CATALOG = [
    "Sony Bravia KDL-40V5100 40in LCD HDTV", "Sony Bravia KDL-46V5100 46in LCD HDTV",
    "Samsung LN40B530 40in LCD HDTV black", "Samsung LN46B630 46in LCD HDTV",
    "Panasonic TC-P42S1 42in plasma HDTV", "Panasonic TC-P50S1 50in plasma HDTV",
    "Canon PowerShot SD1200 IS 10MP digital camera blue", "Canon PowerShot SD780 IS 12MP digital camera",
    "Nikon Coolpix S230 10MP digital camera", "Garmin nuvi 260W 4.3in portable GPS navigator",
    "Garmin nuvi 255W 4.3in GPS", "TomTom ONE 130 3.5in GPS navigator",
]
TINY = AdaptRecipe(epochs=2, batch_size=6, lr=1e-4)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "model"
    adapt_text_model(CATALOG, out, TINY, threads=1, log=lambda _: None)
    return out


def test_an_adapted_model_reloads_and_changes_the_vectors(adapted: Path) -> None:
    manifest = read_manifest(adapted)
    assert (adapted / DELTA).stat().st_size < 10_000_000  # two layers in fp16, not the whole model
    assert manifest["name"].startswith("all-MiniLM-L6-v2-cat") and manifest["trained_layers"] == [4, 5]
    assert manifest["adapted_on"] == {"texts": len(CATALOG)} and manifest["recipe"]["epochs"] == 2
    base = make_text_encoder(None, backend="torch")
    mine = make_text_encoder(str(adapted), backend="torch")
    assert mine.name == manifest["name"]
    a, b = base.encode(CATALOG), mine.encode(CATALOG)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() > 1e-3  # the top layers moved


def test_the_same_texts_give_the_same_model_and_others_another(adapted: Path, tmp_path: Path) -> None:
    again = adapt_text_model(CATALOG, tmp_path / "again", TINY, threads=1, log=lambda _: None)
    assert again["name"] == read_manifest(adapted)["name"]
    other = adapt_text_model(CATALOG[:8], tmp_path / "other", TINY, threads=1, log=lambda _: None)
    assert other["name"] != again["name"]


def test_a_fine_tuned_start_is_adapted_on_top_of_its_delta(tmp_path: Path) -> None:
    manifest = adapt_text_model(CATALOG, tmp_path / "m", AdaptRecipe(epochs=1, batch_size=6), start="minilm-products-v2",
                                threads=1, log=lambda _: None)
    assert manifest["name"].startswith("minilm-products-v2-cat") and manifest["adapted_from"] == "minilm-products-v2"
    assert (tmp_path / "m" / MANIFEST).is_file()
    with pytest.raises(ValueError, match="not a fine-tuned model"):
        adapt_text_model(CATALOG, tmp_path / "x", start="no-such-model", log=lambda _: None)
    with pytest.raises(ValueError, match="at least 2"):
        adapt_text_model(["one text", "one text", ""], tmp_path / "y", log=lambda _: None)


def test_the_protocol_adapts_each_catalog_once_from_its_right_table(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from simstream.quality.generalise import Benchmark, adapted_text_model

    root = tmp_path / "tiny"
    root.mkdir()
    (root / "tableB.csv").write_text("id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(CATALOG)))
    bench = Benchmark("tiny", "title=title", "gold.csv")
    encoder = SimpleNamespace(brand_in_text=True)
    first = adapted_text_model(root, bench, encoder, None, tmp_path / "models", TINY)  # type: ignore[arg-type]
    stamp = (first / DELTA).stat().st_mtime_ns
    assert read_manifest(first)["adapted_on"] == {"texts": len(CATALOG)}
    assert adapted_text_model(root, bench, encoder, None, tmp_path / "models", TINY) == first  # type: ignore[arg-type]
    assert (first / DELTA).stat().st_mtime_ns == stamp  # kept, not adapted again
