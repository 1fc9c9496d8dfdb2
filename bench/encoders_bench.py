"""(a) encoder ceiling, (f) change-aware updates and (g) encoder backends, in-process (no broker, no Milvus).

    python bench/encoders_bench.py [--items 256] [--json OUT] [--only backends]

(a) items/s of ``ProductEncoder.encode`` alone on fresh products (nothing reusable), in batches of
the pipeline's batch size (SIMSTREAM_BATCH_SIZE, 64), text-only (image disabled) and text+image;
also batch size 1 for the encoder-level batching gain.
(f) the same products updated three ways, each encoded with the stored (fused vector, hashes) of the
previous version: price only, brand only, and a full change (new title, description, image). The
ratio price-only / full is the change-aware saving; ``encoded_fields`` shows which encoders ran.
(g) the text and image fields of ``ProductEncoder.encode`` on today's torch path (torch fp32 on
CPU, torchvision decoding at full size) and on the path chosen now (``encoders.device.pick_backend``:
ONNX Runtime on CPU, Pillow draft decoding), same products, same run, rounds interleaved; prints
text_ms_per_item, image_ms_per_item, text_speedup_vs_torch, image_speedup_vs_torch and the lowest
cosine between the two paths' vectors.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from common import emit, encoder_settings, image_root, machine, make_doc, to_events  # type: ignore


def _rate(encoder: Any, events: list[Any], batch: int, rounds: int, stored: Any = None) -> tuple[float, dict[str, float]]:
    """Best-of-rounds items/s (the machine is shared: the best round is the least disturbed)."""
    rates = []
    fields: dict[str, float] = {}
    for _ in range(rounds):
        t0 = time.perf_counter()
        for s in range(0, len(events), batch):
            out = encoder.encode(events[s:s + batch], stored)
            for f, sec in out.seconds.items():
                fields[f] = fields.get(f, 0.0) + sec
        rates.append(len(events) / (time.perf_counter() - t0))
    return max(rates), {f: round(v / rounds / len(events) * 1000, 3) for f, v in fields.items()}


def encoder_ceiling(items: int = 256, rounds: int = 2, seed: int = 1, encoders: dict[bool, Any] | None = None) -> dict[str, Any]:
    from simstream.encoders.fusion import ProductEncoder

    root, names = image_root()
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    docs = [make_doc(rng, f"e{i:06d}", 1, now, names) for i in range(items)]
    events = to_events(docs)
    out: dict[str, Any] = {"items": items, "rounds": rounds}
    encoders = encoders if encoders is not None else {}
    for image in (False, True):
        settings = encoder_settings(image, image_root=root)
        enc = encoders.get(image) or ProductEncoder(settings)
        encoders[image] = enc
        enc.warm_up()
        name = "text_image" if image else "text_only"
        # Batched and batch-1 rounds interleaved, best of each (load on a shared machine drifts).
        few = events[: max(16, items // 8)]
        rate, rate1, ms_per_item = 0.0, 0.0, {}
        for _ in range(rounds):
            r, ms = _rate(enc, events, settings.batch_size, 1)
            if r > rate:
                rate, ms_per_item = r, ms
            rate1 = max(rate1, _rate(enc, few, 1, 1)[0])
        out[name] = {"batch_size": settings.batch_size, "items_per_s": round(rate, 2),
                     "ms_per_item_by_field": ms_per_item, "batch1_items_per_s": round(rate1, 2),
                     "encoder_batching_gain": round(rate / rate1, 2)}
    out["_image_root"] = str(root)
    return out


def change_aware(items: int = 128, rounds: int = 3, seed: int = 2, encoders: dict[bool, Any] | None = None) -> dict[str, Any]:
    """Encode cost of price-only / brand-only / full updates, each against the stored previous version."""
    from simstream.encoders.fusion import ProductEncoder

    root, names = image_root()
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out: dict[str, Any] = {"items": items}
    encoders = encoders if encoders is not None else {}
    for image in (False, True):
        settings = encoder_settings(image, image_root=root)
        enc = encoders.get(image) or ProductEncoder(settings)
        encoders[image] = enc
        docs = [make_doc(rng, f"c{i:06d}", 1, now, names) for i in range(items)]
        base = enc.encode(to_events(docs))
        stored = {p.product_id: (v, h) for p, v, h in zip(base.products, base.vectors, base.hashes)}
        variants = {
            "price_only": [{**d, "version": 2, "price": round(d["price"] * 1.07, 2)} for d in docs],
            "brand_only": [{**d, "version": 2, "brand": d["brand"] + " Inc"} for d in docs],
            "full": [make_doc(rng, d["product_id"], 2, now, names) for d in docs],
        }
        res: dict[str, Any] = {}
        for kind, vdocs in variants.items():
            evs = to_events(vdocs)
            times = []
            fields_run: dict[str, int] = {}
            for _ in range(rounds):
                t0 = time.perf_counter()
                for s in range(0, len(evs), settings.batch_size):
                    b = enc.encode(evs[s:s + settings.batch_size], stored)
                    for f, n in b.encoded_fields.items():
                        fields_run[f] = fields_run.get(f, 0) + n
                times.append(time.perf_counter() - t0)
            res[kind] = {"ms_per_item": round(min(times) / len(evs) * 1000, 3),
                         "encoded_fields": {f: n // rounds for f, n in fields_run.items()}}
        full = res["full"]["ms_per_item"]
        res["price_only_over_full"] = round(res["price_only"]["ms_per_item"] / full, 4)
        res["brand_only_over_full"] = round(res["brand_only"]["ms_per_item"] / full, 4)
        out["text_image" if image else "text_only"] = res
    return out


def _field_ms(enc: Any, events: list[Any], field: str, batch: int) -> float:
    """Milliseconds per item the ``field`` encoder takes inside ``ProductEncoder.encode``."""
    total = 0.0
    for s in range(0, len(events), batch):
        total += enc.encode(events[s:s + batch]).seconds.get(field, 0.0)
    return total / len(events) * 1000


def backend_speedup(items: int = 128, rounds: int = 3, seed: int = 3) -> dict[str, Any]:
    """(g) Today's torch path against the backend chosen now, on the same ProductEncoder and products."""
    import numpy as np
    import torch

    from simstream.encoders.fusion import ProductEncoder
    from simstream.encoders.image import ImageEncoder
    from simstream.encoders.multilingual import make_text_encoder

    root, names = image_root()
    rng = random.Random(seed)
    events = to_events([make_doc(rng, f"g{i:06d}", 1, int(time.time() * 1000), names) for i in range(items)])
    settings = encoder_settings(True, image_root=root)
    enc = ProductEncoder(settings)
    spec = settings.text_model or (str(enc.options["text_model"]) if enc.options.get("text_model") else None)
    paths = {
        "torch": (make_text_encoder(spec, device="cpu", max_tokens=settings.text_max_tokens, backend="torch"),
                  ImageEncoder(device="cpu", max_pixels=settings.image_max_pixels, backend="torch", fast_decode=False)),
        "new": (make_text_encoder(spec, device=settings.device, max_tokens=settings.text_max_tokens,
                                  threads=settings.torch_threads, backend=settings.encoder_backend,
                                  cache_dir=settings.encoder_cache_dir),
                ImageEncoder(device=settings.device, max_pixels=settings.image_max_pixels,
                             backend=settings.encoder_backend, cache_dir=settings.encoder_cache_dir)),
    }
    best: dict[str, float] = {}
    few = events[:16]
    for _ in range(rounds):  # interleaved: load on a shared machine drifts
        for path, (text, image) in paths.items():
            enc.text, enc.image = text, image
            text.encode(["warm up"])
            image.warm_up()
            for key, ms in ((f"{path}_text", _field_ms(enc, events, "text", settings.batch_size)),
                            (f"{path}_image", _field_ms(enc, events, "image", settings.batch_size)),
                            (f"{path}_text_batch1", _field_ms(enc, few, "text", 1)),
                            (f"{path}_image_batch1", _field_ms(enc, few, "image", 1))):
                best[key] = min(best.get(key, float("inf")), ms)
    texts = [t for t in {e.title + " . " + (e.description or "") for e in events}]
    pictures = [(root / n).read_bytes() for n in names]
    (t_ref, i_ref), (t_new, i_new) = paths["torch"], paths["new"]
    text_cos = np.sum(t_ref.encode(texts) * t_new.encode(texts), axis=1)
    image_cos = np.sum(i_ref.encode(pictures) * i_new.encode(pictures), axis=1)
    return {
        "items": items, "rounds": rounds, "batch_size": settings.batch_size, "pictures": len(pictures),
        "torch_threads": torch.get_num_threads(), "text_model": t_new.name,
        "backend": {"text": t_new.backend, "image": i_new.backend},
        "text_ms_per_item": round(best["new_text"], 3), "image_ms_per_item": round(best["new_image"], 3),
        "torch_text_ms_per_item": round(best["torch_text"], 3), "torch_image_ms_per_item": round(best["torch_image"], 3),
        "text_speedup_vs_torch": round(best["torch_text"] / best["new_text"], 2),
        "image_speedup_vs_torch": round(best["torch_image"] / best["new_image"], 2),
        "batch1_ms_per_item": {k[:-len("_batch1")]: round(v, 3) for k, v in best.items() if k.endswith("_batch1")},
        "text_min_cosine_vs_torch": round(float(text_cos.min()), 6),
        "image_min_cosine_vs_torch": round(float(image_cos.min()), 6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", choices=("backends",), default=None, help="run only (g)")
    a = ap.parse_args()
    encs: dict[bool, Any] = {}
    report: dict[str, Any] = {"machine": machine()}
    if a.only is None:
        report["encoder_ceiling"] = encoder_ceiling(a.items, encoders=encs)
        report["change_aware"] = change_aware(max(64, a.items // 2), encoders=encs)
    backends = backend_speedup(min(a.items, 128))
    report["encoder_backends"] = backends
    for key in ("text_ms_per_item", "image_ms_per_item", "text_speedup_vs_torch", "image_speedup_vs_torch"):
        report[key] = backends[key]
    emit(report, a.json)


if __name__ == "__main__":
    main()
