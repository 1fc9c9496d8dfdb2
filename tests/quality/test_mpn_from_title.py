"""Part numbers derived from titles (fusion option ``mpn_from_title``, on in the shipped config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simstream.index.neighbours import contributions

from simstream.encoders.fusion import ProductEncoder, field_contents
from simstream.encoders.lexical import MpnEncoder, model_numbers
from simstream.records import ProductEvent
from simstream.settings import Settings

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "fusion-weights-v1.json"


def test_model_numbers_are_letter_digit_tokens() -> None:
    assert model_numbers('Sony Bravia KDL-40V3000 40" LCD TV') == ["kdl40v3000"]
    assert model_numbers("bose acoustimass 5 series iii am53bk am53bk") == ["am53bk"]
    assert model_numbers("garmin mount 010-10723-02") == ["0101072302"]  # long all-digit part numbers count
    assert model_numbers("learning quickbooks 2007 for 2 users") == []  # a year is not a part number


def test_title_part_numbers_match_and_explicit_mpn_wins() -> None:
    enc = MpnEncoder(from_title=True)
    v = enc.encode([None, None, None, "ELP-LP12"], ["linksys ezxs88w switch", "Linksys EZXS88W ethernet switch", "linksys ezxs55w",
                                                    "epson lamp"])
    assert float(v[0] @ v[1]) == pytest.approx(1.0, abs=1e-6)
    assert float(v[0] @ v[2]) < 0.6
    assert enc.text_of("ELP-LP12", "epson lamp v13h010l12") == " elplp12 "
    assert not MpnEncoder().encode([None], ["linksys ezxs88w"]).any()  # fusion-v1 behaviour unchanged


def test_title_changes_invalidate_the_derived_mpn_hash() -> None:
    a = ProductEvent(product_id="a", op="upsert", version=1, title="linksys ezxs88w")
    b = ProductEvent(product_id="a", op="upsert", version=2, title="linksys ezxs55w")
    assert field_contents(a)["mpn"] != field_contents(b)["mpn"]


@pytest.mark.skipif(not SHIPPED.exists(), reason="configs/fusion-weights-v1.json not present")
def test_shipped_config_turns_the_option_on_and_keeps_exact_fusion(tmp_path: Path) -> None:
    encoder = ProductEncoder(Settings(fusion_config=SHIPPED, image_enabled=False, data_dir=tmp_path))
    assert encoder.mpn.from_title and "-mpnt" in encoder.model
    events = [ProductEvent(product_id=p, op="upsert", version=1, title=t, price=9.0) for p, t in
              [("a", "canon pg-40 black ink cartridge"), ("b", "canon black ink cartridge pg40bk")]]
    a, b = encoder.encode(events).vectors
    parts = contributions(a, [b], encoder.layout)[0]
    assert sum(parts.values()) == pytest.approx(float(a @ b), abs=1e-5)
    assert parts["mpn"] > 0
