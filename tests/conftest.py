"""Shared fixtures: real encoders loaded once per session, milvus-lite stores in temp dirs,
and the real Tansu broker for integration tests."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from simstream.encoders.fusion import ProductEncoder
from simstream.index.store import VectorStore
from simstream.streams.contracts import parse_event
from simstream.records import ProductEvent
from simstream.harness.embedded import EmbeddedBroker
from simstream.settings import Settings

# milvus-lite's in-process gRPC server logs each unimplemented call (AllocTimestamp) as an error.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "harness" / "sample" / "images"
SHARED_DATA = REPO.parent / "shared" / "data"


def make_event(product_id: str, version: int = 1, op: str = "upsert", **fields: Any) -> ProductEvent:
    doc: dict[str, Any] = {"product_id": product_id, "op": op, "version": version,
                           "event_time": int(time.time() * 1000)}
    if op == "upsert":
        doc["title"] = fields.pop("title", f"product {product_id}")
    doc.update(fields)
    return parse_event(product_id.encode(), orjson.dumps(doc))


@pytest.fixture(scope="session")
def settings() -> Settings:
    # Untuned fusion (default weights, base text model): what these tests were written against; the
    # shipped default config (v3) is tested in tests/quality/test_fusion_config.py.
    return Settings(image_root=SAMPLE_IMAGES, data_dir=Path("/tmp/simstream-tests-unused"), fusion_config="none")


@pytest.fixture(scope="session")
def encoder(settings: Settings) -> ProductEncoder:
    """Real pretrained weights (MiniLM text, EfficientNet-Lite0 image), loaded once."""
    return ProductEncoder(settings)


@pytest.fixture
def store(tmp_path: Path, encoder: ProductEncoder) -> Iterator[VectorStore]:
    """A fresh milvus-lite file per test."""
    st = VectorStore.connect(str(tmp_path / "milvus.db"), "t", encoder.dim, flush_every_rows=0)
    yield st
    st.close()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def read_csv(path: Path) -> list[dict[str, str]]:
    """A benchmark CSV's rows as dicts (the quality tests cut small slices out of them)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def zh_en_pairs() -> list[tuple[str, str]]:
    """(English, Chinese) titles of one product each: the multilingual encoders' and the mixed-catalog tests'."""
    return [
        ("Sony WH-1000XM5 wireless noise cancelling headphones", "索尼 WH-1000XM5 无线降噪耳机"),
        ("32oz stainless steel insulated water bottle", "32盎司不锈钢保温水瓶"),
        ("women's leather shoulder handbag", "女士真皮单肩手提包"),
        ("kids wooden building blocks toy set", "儿童木制积木玩具套装"),
        ("USB-C fast charging cable 1m", "USB-C 快充数据线 1米"),
        ("ceramic coffee mug 350ml", "陶瓷咖啡杯 350毫升"),
        ("cotton crew neck t-shirt, white", "白色纯棉圆领T恤"),
        ("stainless steel kitchen knife set", "不锈钢厨房刀具套装"),
    ]
