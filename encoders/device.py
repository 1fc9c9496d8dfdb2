"""Device and backend choice shared by the model encoders: CUDA (torch, half-precision autocast,
pinned copies) when present, else the CPU under ONNX Runtime (torch when it is not installed)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Literal

import torch

__all__ = ["BACKENDS", "pick_device", "pick_backend", "configure_threads", "inference", "to_device"]

Backend = Literal["torch", "onnx"]
BACKENDS = ("auto", "torch", "onnx")


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible; an explicit ``cuda`` without one fails loudly."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("SIMSTREAM_DEVICE=cuda but torch sees no GPU")
    return torch.device(requested)


def pick_backend(requested: str, device: torch.device,
                 onnx_available: Callable[[], bool] | None = None) -> Backend:
    """``auto``: torch on CUDA (autocast is the fast path there), ONNX Runtime on CPU when it is
    installed (same fp32 graph; the image model runs 3-10x faster than under torch), else torch. An explicit ``onnx``
    on a GPU device or without the package fails loudly rather than run somewhere unexpected."""
    if requested not in BACKENDS:
        raise ValueError(f"encoder backend {requested!r} unknown; known: {BACKENDS}")
    if onnx_available is None:
        from simstream.encoders.onnx_runtime import onnxruntime_available

        onnx_available = onnxruntime_available
    if requested == "torch":
        return "torch"
    if requested == "onnx":
        if device.type != "cpu":
            raise ValueError(f"encoder backend onnx runs on the CPU, but the device is {device}; "
                             f"set SIMSTREAM_DEVICE=cpu or SIMSTREAM_ENCODER_BACKEND=torch")
        if not onnx_available():
            raise RuntimeError("SIMSTREAM_ENCODER_BACKEND=onnx needs the PyPI package onnxruntime")
        return "onnx"
    return "onnx" if device.type == "cpu" and onnx_available() else "torch"


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
