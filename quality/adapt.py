"""Adapt the text model to a catalog without labels: unsupervised SimCSE on the catalog's own texts.

Why: a catalog no part of the model saw speaks its own dialect (WDC's web offers, a shop's model
names), and a sentence model trained on general text ranks its products by what they are about,
not by what tells two offers apart. Like the lexicon's IDF (``encoders/lexicon.py``), this reads only
the catalog being indexed, never a label: each text is embedded twice through the top layers with
dropout on and a share of its tokens cut, and the model learns to find a text's own second view
among the batch's other texts (in-batch negatives: the catalog's other products). What the catalog's
products share stops counting; what tells them apart counts more.

Cheap on a CPU, as ``simstream fine-tune`` is (``quality/finetune.py``): only the top
``train_layers`` learn, the frozen layers below run once per text. The result is a fine-tuned model
folder (``encoders/finetuned.py``: a manifest and an fp16 delta) named by the digest of its weights,
so its vectors carry their own model tag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from simstream.encoders.finetuned import BASE_NAME, base_sha256, finetuned_dir
from simstream.encoders.text import clean_text
from simstream.quality.finetune import TopLayers, mnrl_loss, save_model

__all__ = ["AdaptRecipe", "adapt_text_model", "adapted_name"]


@dataclass(frozen=True)
class AdaptRecipe:
    """How the model is adapted (measured under the leave-one-dataset-out protocol, docs/quality.md)."""

    epochs: int = 1
    train_layers: int = 2
    lr: float = 3e-5
    batch_size: int = 64
    cutoff: float = 0.1  # share of each view's tokens dropped (never the first or last)
    scale: float = 20.0  # cosine x scale in the loss (temperature 0.05)
    max_length: int = 128
    seed: int = 13


def adapted_name(start: str, trained: dict[str, torch.Tensor]) -> str:
    """``<start>-cat<digest of the trained weights>``: two catalogs' adaptations never share a tag."""
    h = hashlib.blake2b(digest_size=6)
    for name in sorted(trained):
        h.update(name.encode())
        h.update(trained[name].to(torch.float16).contiguous().numpy().tobytes())
    return f"{start}-cat{h.hexdigest()}"


def _cut(states: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    if share <= 0 or states.shape[0] <= 3:
        return states
    keep = torch.rand(states.shape[0], generator=gen) >= share
    keep[0] = keep[-1] = True  # [CLS] and [SEP]
    return states[keep]


def adapt_text_model(texts: Sequence[str], out: Path, recipe: AdaptRecipe = AdaptRecipe(), *,
                     start: str | None = None, threads: int | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Adapt ``start`` (a fine-tuned model's name or folder; default the bundled base) to ``texts``
    (the catalog's texts, as the stream's text encoder reads them) and save it in ``out``; returns
    its manifest. Deterministic for one machine and thread count (seeded order, dropout and cuts)."""
    if threads:
        torch.set_num_threads(threads)
    start_dir = finetuned_dir(start) if start else None
    if start and start_dir is None:
        raise ValueError(f"{start}: not a fine-tuned model folder or name (a delta over {BASE_NAME})")
    cleaned = list(dict.fromkeys(t for t in (clean_text(x) for x in texts) if t))
    if len(cleaned) < 2:
        raise ValueError("adapting needs at least 2 distinct texts")
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    t0 = time.monotonic()
    model = TopLayers(recipe.train_layers, recipe.max_length, start=start_dir)
    if model.start is not None:
        n_layers = len(model.model.encoder.layer)
        outside = set(model.start.get("trained_layers", [])) - set(range(model.split, n_layers))
        if outside:
            raise ValueError(f"{start} trained layers {sorted(outside)}, below the {recipe.train_layers} adapted here")
    model.build_cache(cleaned)
    cache_s = time.monotonic() - t0
    optimiser = torch.optim.AdamW(model.trainable(), lr=recipe.lr)
    for layer in model.layers:
        layer.train()  # dropout on: one half of each text's noise
    losses: list[float] = []
    for _ in range(recipe.epochs):
        order = list(range(len(cleaned)))
        rng.shuffle(order)
        for first in range(0, len(order), recipe.batch_size):
            idx = order[first:first + recipe.batch_size]
            if len(idx) < 2:
                continue
            one = model.embed_states([_cut(model.cache[i], recipe.cutoff, gen) for i in idx])
            two = model.embed_states([_cut(model.cache[i], recipe.cutoff, gen) for i in idx])
            loss = mnrl_loss(one, two, None, recipe.scale)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(round(float(loss.detach()), 4))
    for layer in model.layers:
        layer.eval()
    start_name = str(model.start["name"]) if model.start else BASE_NAME
    name = adapted_name(start_name, model.trained_state())
    cost = {"cache_s": round(cache_s, 1), "steps": len(losses), "total_s": round(time.monotonic() - t0, 1)}
    manifest: dict[str, Any] = {
        "name": name,
        "kind": "delta over the bundled base: only the listed layers were trained; load with encoders/finetuned.py",
        "base": BASE_NAME, "base_sha256": base_sha256(),
        "trained_layers": list(range(model.split, len(model.model.encoder.layer))), "dtype": "float16",
        "adapted_from": start_name, "adapted_on": {"texts": len(cleaned)},
        "recipe": {"method": "unsupervised SimCSE (dropout + token cutoff, in-batch negatives)", **asdict(recipe)},
        "cost": cost,
        "losses": losses[:: max(1, len(losses) // 50)],
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    if model.start is not None and "text_input" in model.start:
        manifest["text_input"] = model.start["text_input"]
    save_model(model, Path(out), manifest)
    log(f"adapted {start_name} to {len(cleaned)} texts in {cost['total_s']} s: {name}")
    return manifest
