"""Field encoders on real weights: shapes, normalisation, and the similarities they promise."""

import base64

import numpy as np
import pytest

from simstream.index.neighbours import contributions

from conftest import SAMPLE_IMAGES, make_event
from simstream.encoders.image_source import ImageSource
from simstream.encoders.lexical import MpnEncoder, TitleLexicalEncoder, normalize_mpn
from simstream.encoders.structured import BrandEncoder, CategoryEncoder, PriceEncoder, normalize_brand
from simstream.encoders.text import clean_text
from simstream.errors import EncodeError


def cos(a, b):
    return float(a @ b)


def test_text_encoder_batches_normalises_and_ranks(encoder):
    v = encoder.text.encode(["wireless noise cancelling headphones", "bluetooth over-ear headset", "ceramic coffee mug", ""])
    assert v.shape == (4, 384) and np.allclose(np.linalg.norm(v[:3], axis=1), 1, atol=1e-5)
    assert not v[3].any()  # empty text -> zero vector, contributes nothing
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2
    assert encoder.text.encode("one").shape == (384,)


def test_html_is_stripped():
    assert clean_text("<p>Big&nbsp;<b>mug</b></p>\n\n 350ml") == "Big mug 350ml"


def test_image_encoder_groups_shapes(encoder):
    imgs = [(SAMPLE_IMAGES / f).read_bytes() for f in ("mug-red-350.png", "mug-white-350.png", "laptop-pro-15.png")]
    v = encoder.image.encode(imgs)
    assert v.shape == (3, 1280) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert cos(v[0], v[1]) > cos(v[0], v[2])


def test_undecodable_image_is_an_encode_error(encoder):
    with pytest.raises(EncodeError, match="decode"):
        encoder.image.encode(b"definitely not a png")


def test_image_source_reads_b64_and_files_under_root_only(tmp_path):
    src = ImageSource(SAMPLE_IMAGES, max_bytes=50_000)
    png = (SAMPLE_IMAGES / "mug-red-350.png").read_bytes()
    assert src.fetch(None, base64.b64encode(png).decode()) == png
    assert src.fetch("file:mug-red-350.png", None) == png
    assert src.fetch(f"file://{SAMPLE_IMAGES / 'mug-red-350.png'}", None) == png
    assert src.fetch(None, None) is None
    with pytest.raises(EncodeError, match="outside"):
        src.fetch("file:../catalog.jsonl", None)
    with pytest.raises(EncodeError, match="scheme"):
        src.fetch("ftp://x/y.png", None)
    with pytest.raises(EncodeError, match="cap"):
        ImageSource(SAMPLE_IMAGES, max_bytes=10).fetch(None, base64.b64encode(png).decode())


def test_price_similarity_falls_with_the_ratio():
    v = PriceEncoder().encode([100.0, 110.0, 200.0, 1000.0, None, 0.0])
    assert cos(v[0], v[1]) > 0.95 > cos(v[0], v[2]) > cos(v[0], v[3]) and cos(v[0], v[3]) < 0.01
    assert not v[4].any() and not v[5].any()


def test_extreme_prices_are_finite_and_ordinary_ones_unchanged():
    enc = PriceEncoder()
    extreme = enc.encode([1e308, 1e12, 1e-300, 1e-9])
    assert np.isfinite(extreme).all() and np.allclose(np.linalg.norm(extreme, axis=1), 1.0)
    assert [int(row.argmax()) for row in extreme] == [enc.dim - 1, enc.dim - 1, 0, 0]  # the nearest edge
    prices = [0.01, 0.5, 3.0, 99.99, 2_500.0, 1e6, 1e9]
    formula = np.stack([b / np.linalg.norm(b) for b in (np.exp(-((np.log10(p) - enc.centers) ** 2)
                                                               / (2 * enc.sigma**2)) for p in prices)])
    assert np.array_equal(enc.encode(prices), formula.astype(np.float32))


def test_brand_normalisation_and_hash():
    assert normalize_brand("Sony Corp.") == normalize_brand("SONY") == "sony"
    v = BrandEncoder().encode(["Sony Corp.", "SONY", "Bose", None])
    assert cos(v[0], v[1]) == pytest.approx(1.0) and cos(v[0], v[2]) == 0.0 and not v[3].any()


def test_category_siblings_share_their_parent():
    v = CategoryEncoder().encode(["Electronics > Audio > Headphones", "Electronics > Audio > Speakers",
                                  "Electronics > Audio", "Home > Kitchen > Mugs"])
    assert cos(v[0], v[1]) == pytest.approx(2 / 3, abs=1e-6)
    assert cos(v[0], v[2]) == pytest.approx(2 / 6**0.5, abs=1e-6)
    assert cos(v[0], v[3]) == pytest.approx(0.0, abs=1e-6)


def test_model_numbers_match_across_punctuation():
    assert normalize_mpn("ELP-LP12") == "elplp12"
    v = MpnEncoder().encode(["ELP-LP12", "elplp12", "ELPLP13", "KX-TG6511"])
    assert cos(v[0], v[1]) == pytest.approx(1.0) and cos(v[0], v[2]) > 0.5 > cos(v[0], v[3])


def test_title_trigrams_find_near_duplicates():
    v = TitleLexicalEncoder().encode(["Sony WH-1000XM5 headphones", "Sony WH1000XM5 headphone", "ceramic coffee mug"])
    assert cos(v[0], v[1]) > 0.5 > cos(v[0], v[2])


def test_fused_score_is_the_weighted_sum_of_field_cosines(encoder):
    events = [make_event("a", title="Sony WH-1000XM5 headphones", brand="Sony", price=399.0,
                         category="Electronics > Audio > Headphones", mpn="WH1000XM5", image_url="file:hp-sony-xm5-blk.png"),
              make_event("b", title="Sony WH1000XM5 headphone silver", brand="SONY", price=389.0,
                         category="Electronics > Audio > Headphones", image_url="file:hp-sony-xm5-slv.png")]
    batch = encoder.encode(events)
    a, b = batch.vectors
    parts = contributions(a, [b], encoder.layout)[0]
    assert sum(parts.values()) == pytest.approx(float(a @ b), abs=1e-5)
    assert "mpn" not in parts  # b has no mpn: a missing field contributes nothing
    # Each field's segment has norm sqrt(weight), up to the compact storage grid (int8 steps of
    # 1/64..1/127 of a row's peak, simstream.vector_codec), which moves a norm by well under 1 %.
    assert float(a @ a) == pytest.approx(1.0, abs=5e-3)
    assert float(b @ b) == pytest.approx(1.0 - encoder.weights["mpn"], abs=5e-3)


def test_a_bad_image_fails_only_its_product(encoder):
    batch = encoder.encode([make_event("ok", title="mug", image_url="file:mug-red-350.png"),
                            make_event("bad", title="mug", image_b64=base64.b64encode(b"junk").decode())])
    assert [p.product_id for p in batch.products] == ["ok"]
    assert [(p.product_id, e.field) for p, e in batch.failures] == [("bad", "image")]


@pytest.fixture
def image_server():
    """A loopback HTTP server over the sample images, for the http(s) image path."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SAMPLE_IMAGES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_images_are_fetched_with_a_size_cap(image_server):
    """A loopback server, so the test opts in to private networks."""
    png = (SAMPLE_IMAGES / "mug-red-350.png").read_bytes()
    assert ImageSource(None, timeout_s=5, allow_private_networks=True).fetch(f"{image_server}/mug-red-350.png", None) == png
    with pytest.raises(EncodeError, match="404"):
        ImageSource(None, timeout_s=5, allow_private_networks=True).fetch(f"{image_server}/missing.png", None)
    with pytest.raises(EncodeError, match="exceeds"):
        ImageSource(None, timeout_s=5, max_bytes=100, allow_private_networks=True).fetch(f"{image_server}/mug-red-350.png", None)


def test_a_text_model_without_brand_skips_the_text_encoder_on_brand_only_updates(encoder, monkeypatch):
    """A text model trained on ``title . description`` (manifest text_input.brand = false)."""
    old = make_event("p", title="Sony WH-1000XM5 headphones", brand="Sony", price=399.0, description="noise cancelling")
    new = make_event("p", title="Sony WH-1000XM5 headphones", brand="Sony Corp", price=399.0,
                     description="noise cancelling")
    # With the brand in the text (the default models), a brand change is a text change.
    assert encoder.brand_in_text
    assert encoder.field_hashes(old)["text"] != encoder.field_hashes(new)["text"]

    monkeypatch.setattr(encoder, "brand_in_text", False)
    before, after = encoder.field_hashes(old), encoder.field_hashes(new)
    assert [f for f in before if before[f] != after[f]] == ["brand"]
    first = encoder.encode([old])
    calls: list[list[str]] = []
    real = encoder.text.encode
    monkeypatch.setattr(encoder.text, "encode", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
    second = encoder.encode([new], stored={"p": (first.vectors[0], first.hashes[0])})
    assert all(not texts for texts in calls)  # the text encoder did not run for this product
    text = encoder.layout["text"]
    assert np.array_equal(second.vectors[0][text], first.vectors[0][text])
    fresh = encoder.encode([new]).vectors[0]
    assert np.allclose(second.vectors[0], fresh, atol=1e-6)  # reuse gives what a full encode gives
