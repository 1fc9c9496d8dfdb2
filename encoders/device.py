"""Device choice shared by every torch encoder: CUDA when present, else CPU."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible; an explicit ``cuda`` without one fails loudly."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("SIMSTREAM_DEVICE=cuda but torch sees no GPU")
    return torch.device(requested)


def configure_threads(threads: int | None) -> None:
    """Bound intra-op threads on CPU so the event loop and the consumer keep a core."""
    if threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def inference(device: torch.device) -> Iterator[None]:
    """No grad everywhere; half-precision autocast on CUDA (bf16 where supported, else fp16)."""
    with torch.inference_mode():
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                yield
        else:
            yield


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-device copy through pinned memory, asynchronously, when the target is a GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor
