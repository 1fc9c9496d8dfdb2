"""A migration reuses another generation's stored segments where the field's encoder is the same."""

import json

import numpy as np
import pytest

from conftest import make_event
from simstream.encoders.fusion import ProductEncoder
from simstream.encoders.fusion_config import resolve_fusion_config
from simstream.settings import Settings


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return ProductEncoder(Settings(fusion_config="v3", image_enabled=False,
                                   data_dir=tmp_path_factory.mktemp("v3")))


def _products():
    return [make_event(f"p{i}", title=title, brand=brand, price=price, mpn=mpn)
            for i, (title, brand, price, mpn) in enumerate([
                ("Sony WH-1000XM5 wireless headphones", "Sony", 399.0, "WH1000XM5"),
                ("Bose QuietComfort 45 headset", "Bose", 329.0, None),
                ("Ceramic coffee mug 350 ml", None, 9.5, None)])]


def _encoded(encoder, products, stored=None):
    batch = encoder.encode(products, stored)
    return {p.product_id: (v, h) for p, v, h in zip(batch.products, batch.vectors, batch.hashes)}, batch


def test_a_weights_only_change_reencodes_nothing_and_rescales_every_segment(v3, tmp_path):
    config = json.loads(resolve_fusion_config("v3").read_text())
    config["weights"] = {**config["weights"], "text": 0.2, "price": 0.3}
    path = tmp_path / "reweighted.json"
    path.write_text(json.dumps(config))
    new = ProductEncoder(Settings(fusion_config=str(path), image_enabled=False, data_dir=tmp_path))
    assert new.model != v3.model
    products = _products()
    old, _ = _encoded(v3, products)
    vectors, hashes = new.carried(v3.field_specs(), np.stack([old[p.product_id][0] for p in products]),
                                  [old[p.product_id][1] for p in products])
    stored = {p.product_id: (v, h) for p, v, h in zip(products, vectors, hashes)}
    carried, batch = _encoded(new, products, stored)
    assert batch.encoded_fields == {}  # every field came from the stored vectors
    fresh, _ = _encoded(new, products)
    for p in products:
        a, b = carried[p.product_id][0], fresh[p.product_id][0]
        assert np.max(np.abs(a - b)) < 0.02  # one step of a field's grid at most
    scores = lambda enc: np.array([[enc[a.product_id][0] @ enc[b.product_id][0] for b in products] for a in products])  # noqa: E731
    assert np.allclose(scores(carried), scores(fresh), atol=5e-3)


def test_a_text_model_change_reencodes_the_text_and_carries_the_rest(v3, tmp_path):
    v2 = ProductEncoder(Settings(fusion_config="v2", image_enabled=False, data_dir=tmp_path))
    specs_old, specs_new = v3.field_specs(), v2.field_specs()
    assert specs_old["text"]["encoder"] != specs_new["text"]["encoder"]
    products = _products()
    old, _ = _encoded(v3, products)
    vectors, hashes = v2.carried(specs_old, np.stack([old[p.product_id][0] for p in products]),
                                 [old[p.product_id][1] for p in products])
    assert all("text" not in h and "title_lexical" in h for h in hashes)
    assert not vectors[:, v2.layout["text"]].any()
    carried, batch = _encoded(v2, products, {p.product_id: (v, h) for p, v, h in zip(products, vectors, hashes)})
    assert set(batch.encoded_fields) == {"text"}
    fresh, _ = _encoded(v2, products)
    for p in products:
        assert np.array_equal(carried[p.product_id][0][v2.layout["text"]], fresh[p.product_id][0][v2.layout["text"]])
        assert np.max(np.abs(carried[p.product_id][0] - fresh[p.product_id][0])) < 0.02


def test_a_field_stored_at_weight_zero_has_nothing_to_carry(v3):
    specs = {f: {**s} for f, s in v3.field_specs().items()}
    specs["price"]["weight"] = 0.0
    vectors, hashes = v3.carried(specs, np.ones((1, v3.dim), np.float32), [{"price": "h", "brand": "b"}])
    assert hashes == [{"brand": "b"}] and not vectors[0, v3.layout["price"]].any()
