"""Encoder backends on real weights and real images: ONNX Runtime (the CPU path) gives the fp32
torch vectors within cosine 0.999, JPEG draft decoding keeps images valid and vectors close, and
the backend is chosen by device and availability."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from conftest import REPO, SAMPLE_IMAGES
from simstream.encoders import image as image_mod
from simstream.encoders.device import pick_backend
from simstream.encoders.finetuned import MODELS_DIR
from simstream.encoders.fusion import text_of
from simstream.encoders.image import DRAFT_SIDE, ImageEncoder, decode_rgb
from simstream.encoders.multilingual import make_text_encoder
from simstream.encoders.text import TextEncoder
from simstream.streams.contracts import parse_event

COSINE = 0.999


def sample_texts() -> list[str]:
    """What the text encoder reads for every product of the bundled sample catalog, plus an empty one."""
    lines = (REPO / "harness" / "sample" / "catalog.jsonl").read_bytes().splitlines()
    events = [parse_event(orjson.loads(line)["product_id"].encode(), line) for line in lines if line.strip()]
    texts = [text_of(e) for e in events if e.op == "upsert"]
    assert len(texts) >= 20
    return texts + [""]


def jpeg_of(png: Path, side: int, quality: int = 90) -> bytes:
    """A real sample picture as a photo-sized JPEG (short side ``side``), as catalogs send them."""
    with Image.open(png) as im:
        img = im.convert("RGB")
    w, h = img.size
    img = img.resize((round(w * side / min(w, h)), round(h * side / min(w, h))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    pngs = sorted(SAMPLE_IMAGES.glob("*.png"))
    assert len(pngs) >= 20
    # The PNGs as drawn, and as large JPEG photos (over 2 x DRAFT_SIDE: decoded in draft mode).
    return [p.read_bytes() for p in pngs] + [jpeg_of(p, 1700 + 150 * i) for i, p in enumerate(pngs[:8])]


# --- backend choice -----------------------------------------------------------------------------

@pytest.mark.parametrize("requested, device, available, expected", [
    ("auto", "cpu", True, "onnx"),
    ("auto", "cpu", False, "torch"),   # onnxruntime not installed: torch still works
    ("auto", "cuda", True, "torch"),   # autocast on the GPU is the fast path there
    ("torch", "cpu", True, "torch"),
    ("onnx", "cpu", True, "onnx"),
])
def test_backend_choice(requested: str, device: str, available: bool, expected: str) -> None:
    assert pick_backend(requested, torch.device(device), lambda: available) == expected


def test_backend_refusals() -> None:
    with pytest.raises(ValueError, match="runs on the CPU"):
        pick_backend("onnx", torch.device("cuda"), lambda: True)
    with pytest.raises(RuntimeError, match="onnxruntime"):
        pick_backend("onnx", torch.device("cpu"), lambda: False)
    with pytest.raises(ValueError, match="unknown"):
        pick_backend("tensorrt", torch.device("cpu"), lambda: True)


def test_auto_picks_onnx_on_this_cpu_only_machine() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: auto picks torch")
    assert pick_backend("auto", torch.device("cpu")) == "onnx"


# --- text ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [None, "minilm-products-v2"])
def test_onnx_text_vectors_match_torch(spec: str | None, cache_dir: Path) -> None:
    if spec and not (MODELS_DIR / spec).is_dir():
        pytest.skip(f"{spec} not shipped")
    texts = sample_texts()
    ref = make_text_encoder(spec, device="cpu", backend="torch")
    fast = make_text_encoder(spec, device="cpu", backend="onnx", cache_dir=cache_dir)
    assert ref.model is not None and fast.onnx is not None and fast.model is None
    assert fast.name == ref.name and fast.reads_brand == ref.reads_brand  # the model tag cannot change
    a, b = ref.encode(texts), fast.encode(texts)
    assert a.shape == b.shape == (len(texts), 384)
    assert not b[-1].any()  # empty text stays a zero row
    cosines = np.sum(a[:-1] * b[:-1], axis=1)
    assert cosines.min() >= COSINE, cosines.min()
    # batching does not change the vectors: one at a time equals the batch
    assert np.sum(fast.encode(texts[0]) * b[0]) >= 1 - 1e-5


def test_text_exports_are_cached_per_weights(cache_dir: Path) -> None:
    """The same weights reuse one file; a fine-tuned delta gets its own (never the base's)."""
    TextEncoder(device="cpu", backend="onnx", cache_dir=cache_dir)
    before = {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("text-*.onnx")}
    again = TextEncoder(device="cpu", backend="onnx", cache_dir=cache_dir)
    assert again.onnx is not None and again.onnx.path.name in before
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("text-*.onnx")} == before
    if (MODELS_DIR / "minilm-products-v2").is_dir():
        tuned = make_text_encoder("minilm-products-v2", device="cpu", backend="onnx", cache_dir=cache_dir)
        assert tuned.onnx.path != again.onnx.path
    assert not list(cache_dir.glob("*.part"))


# --- images -------------------------------------------------------------------------------------

def test_onnx_image_vectors_match_the_torch_reference(images: list[bytes], cache_dir: Path) -> None:
    """Reference: today's path (torchvision decoding at full size, torch fp32). New: Pillow draft
    decoding and ONNX Runtime, in its CPU batches."""
    ref = ImageEncoder(device="cpu", backend="torch", fast_decode=False)
    fast = ImageEncoder(device="cpu", backend="onnx", cache_dir=cache_dir)
    assert fast.name == ref.name
    a = ref.encode(images, batch_size=64)
    b = fast.encode(images, batch_size=64)
    assert a.shape == b.shape == (len(images), 1280)
    cosines = np.sum(a * b, axis=1)
    assert cosines.min() >= COSINE, (cosines.min(), int(cosines.argmin()))
    # the same model on the same pixels: ONNX Runtime is torch to float rounding
    same = ref.encode_tensors([fast.preprocess(x) for x in images[:4]])
    assert np.sum(same * b[:4], axis=1).min() >= 1 - 1e-5


def test_draft_decoding_keeps_the_image_valid(images: list[bytes]) -> None:
    big = images[-1]
    with Image.open(io.BytesIO(big)) as im:
        full_size = im.size
    assert min(full_size) > 2 * DRAFT_SIDE
    drafted = decode_rgb(big, 16_000_000)
    full = decode_rgb(big, 16_000_000, draft=False)
    assert drafted.mode == "RGB" and full.size == full_size
    assert DRAFT_SIDE <= min(drafted.size) < min(full_size)  # decoded smaller, never below the floor
    assert abs(drafted.size[0] / drafted.size[1] - full_size[0] / full_size[1]) < 0.01  # same shape
    small = np.asarray(drafted.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    ref = np.asarray(full.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(small - ref).mean() < 3.0  # the same picture, to a few grey levels
    # a small JPEG and a PNG decode at full size
    small_jpeg = jpeg_of(SAMPLE_IMAGES / "mug-red-350.png", 400)
    assert decode_rgb(small_jpeg, 16_000_000).size == Image.open(io.BytesIO(small_jpeg)).size


def test_draft_is_what_makes_large_jpegs_cheaper(images: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_rgb asks libjpeg for a reduced scale only for large JPEGs (the draft call is spied)."""
    from PIL.JpegImagePlugin import JpegImageFile

    calls: list[tuple[int, int]] = []
    real = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        calls.append(tuple(size or (0, 0)))  # type: ignore[arg-type]
        return real(self, mode, size)

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    for data in images:
        decode_rgb(data, 16_000_000)
    assert len(calls) == len(images) - 20  # the 8 large JPEGs, not the 20 PNGs
    assert all(min(size) >= DRAFT_SIDE for size in calls)


def test_onnx_cpu_batches_are_small(cache_dir: Path) -> None:
    fast = ImageEncoder(device="cpu", backend="onnx", cache_dir=cache_dir)
    ref = ImageEncoder(device="cpu", backend="torch")
    assert fast.step(64) == image_mod.ONNX_CPU_BATCH < 64 and ref.step(64) == 64


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_backend_settings_reach_the_encoders(backend: str, cache_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SIMSTREAM_ENCODER_BACKEND picks what the text and image models of the stream's ProductEncoder
    run on (torch module or ONNX Runtime session, never both), and SIMSTREAM_IMAGE_FETCH_THREADS
    sizes its image-fetch pool; both are read from the environment, as the worker reads them."""
    from simstream.encoders.fusion import ProductEncoder
    from simstream.settings import Settings

    monkeypatch.setenv("SIMSTREAM_ENCODER_BACKEND", backend)
    monkeypatch.setenv("SIMSTREAM_IMAGE_FETCH_THREADS", "3")
    monkeypatch.setenv("SIMSTREAM_DEVICE", "cpu")
    monkeypatch.setenv("SIMSTREAM_ENCODER_CACHE_DIR", str(cache_dir))
    enc = ProductEncoder(Settings())
    assert enc.image is not None  # the shipped weights give images a share
    for model in (enc.text, enc.image):
        assert model.backend == backend
        assert (model.onnx is not None, model.model is not None) == (backend == "onnx", backend == "torch")
    if backend == "onnx":  # the exports went to the configured cache, not ~/.cache
        assert enc.text.onnx is not None and enc.image.onnx is not None
        assert enc.text.onnx.path.parent == enc.image.onnx.path.parent == cache_dir
    assert enc._fetch_pool._max_workers == 3
    enc._fetch_pool.shutdown()
    monkeypatch.delenv("SIMSTREAM_ENCODER_BACKEND")
    monkeypatch.delenv("SIMSTREAM_IMAGE_FETCH_THREADS")
    assert Settings().encoder_backend == "auto" and Settings().image_fetch_threads == 8  # the defaults
