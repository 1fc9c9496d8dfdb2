"""Shared pieces of the performance benchmarks (issue 5): machine description, a synthetic catalog,
fast pre-loading of a milvus-lite file, and a neighbour-topic tail that keeps broker timestamps.

Pre-loaded products ("random-but-realistic fused vectors"): every field except text is the *real*
encoding of the synthetic product (title/mpn character n-grams, brand, category path, price, and
the real EfficientNet vector of its picture); the text segment is the real MiniLM encoding of the
product's "brand noun" stem (a few hundred distinct stems, cached in ``bench/.cache``) plus a small
Gaussian perturbation (cosine ~0.9 to the stem), standing in for the colour/model-number details
of its title. Per-field content hashes are the real hashes of the product's fields, so a
price-only update of a pre-loaded product reuses its stored segments exactly as in production.
Neighbour lists of the pre-loaded products are computed exactly (numpy, same rank_key) and stored,
so the worker starts in steady state (every product holds its top-K list).
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = ROOT / "bench" / ".cache"
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "esspr_sample"

# The same synthetic product families as the exactness harness.
from simstream.harness.synthetic import COLORS, FAMILIES  # noqa: E402
from simstream.index.exact import exact_top_k  # noqa: E402


# --- machine --------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    from simstream.encoders.device import pick_device

    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "device": str(pick_device("auto")), "cuda_available": torch.cuda.is_available(),
        "platform": platform.platform(), "load_avg_at_start": list(os.getloadavg()),
    }


# --- synthetic catalog ----------------------------------------------------------------------
def image_root() -> tuple[Path, list[str]]:
    """A temporary image root with the bundled sample pictures and the eSSPR photos (when present)."""
    from importlib import resources

    root = Path(tempfile.mkdtemp(prefix="simstream-bench-img-"))
    sources = [Path(str(resources.files("simstream.harness.sample"))) / "images"]
    if SHARED_IMAGES.is_dir():
        sources.append(SHARED_IMAGES)
    names: list[str] = []
    for src in sources:
        for p in sorted(src.iterdir()):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
                shutil.copy(p, root / p.name)
                names.append(p.name)
    return root, names


def make_doc(rng: random.Random, pid: str, version: int, event_time: int, images: Sequence[str],
             family: int | None = None) -> dict[str, Any]:
    f = FAMILIES[rng.randrange(len(FAMILIES)) if family is None else family]
    brand = rng.choice(f["brand"])
    noun = rng.choice(f["noun"])
    adj = rng.choice(f["adj"])
    title = f"{brand} {adj} {noun} {rng.choice(COLORS)} {rng.choice('ABCDEFGHJKLMNPRSTXZ')}{rng.randint(10, 999)}"
    lo, hi = f["price"]
    doc: dict[str, Any] = {"product_id": pid, "op": "upsert", "version": version, "event_time": event_time,
                           "title": title, "brand": brand, "category": f["category"],
                           "price": round(rng.uniform(lo, hi), 2), "currency": "EUR",
                           "mpn": f"{brand[:3].upper()}-{rng.randint(1000, 99999)}"}
    if rng.random() < 0.5:
        doc["description"] = f"{adj} {noun.lower()} by {brand}, {rng.choice(COLORS).lower()} finish."
    if images:
        doc["image_url"] = f"file:{rng.choice(images)}"
    return doc


def stem_of(doc: dict[str, Any]) -> str:
    """The 'brand noun' stem whose real text encoding stands in for a pre-loaded product's text."""
    words = doc["title"].split(" ")
    return " ".join(words[:-2])  # drop colour and model number


def to_events(docs: Iterable[dict[str, Any]]) -> list[Any]:
    from simstream.streams.contracts import parse_event

    return [parse_event(d["product_id"].encode(), orjson.dumps(d)) for d in docs]


def encoder_settings(image: bool, **extra: Any) -> Any:
    from simstream.settings import Settings

    return Settings(image_enabled=image, **extra)


# --- pre-loading ------------------------------------------------------------------------------
@dataclass
class FieldVectors:
    """Unscaled per-field vectors of a synthetic catalog (n x field dim), plus the hashes."""

    ids: list[str]
    fields: dict[str, np.ndarray]
    hashes: list[dict[str, str]]
    docs: list[dict[str, Any]]


def _text_pool(encoder: Any, stems: Sequence[str]) -> dict[str, np.ndarray]:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"stems-{encoder.text.name}.npz"
    pool: dict[str, np.ndarray] = {}
    if path.exists():
        data = np.load(path, allow_pickle=False)
        pool = dict(zip(data["stems"].tolist(), data["vectors"]))
    missing = sorted(set(stems) - pool.keys())
    if missing:
        vecs = encoder.text.encode(missing, batch_size=64)
        pool.update(zip(missing, vecs))
        keys = sorted(pool)
        np.savez(path, stems=np.array(keys), vectors=np.stack([pool[k] for k in keys]))
    return pool


def field_vectors(encoder: Any, docs: list[dict[str, Any]], image_root_dir: Path | None, seed: int) -> FieldVectors:
    """Per-field vectors for pre-loading (see the module docstring for what is real)."""
    events = to_events(docs)
    rng = np.random.default_rng(seed)
    pool = _text_pool(encoder, [stem_of(d) for d in docs])
    text = np.stack([pool[stem_of(d)] for d in docs]).astype(np.float32)
    noise = rng.standard_normal(text.shape).astype(np.float32)
    noise *= 0.45 / np.linalg.norm(noise, axis=1, keepdims=True)
    text += noise
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    fields: dict[str, np.ndarray] = {"text": text}
    fields["title_lexical"] = encoder.title_lexical.encode([e.title for e in events])
    fields["mpn"] = encoder.mpn.encode([e.mpn for e in events])
    fields["brand"] = encoder.brand.encode([e.brand for e in events])
    fields["category"] = encoder.category.encode([e.category for e in events])
    fields["price"] = encoder.price.encode([e.price for e in events])
    image_dim = encoder.layout["image"].stop - encoder.layout["image"].start
    img = np.zeros((len(docs), image_dim), np.float32)
    if image_root_dir is not None and any(d.get("image_url") for d in docs):
        from simstream.encoders.image import ImageEncoder

        names = sorted({d["image_url"].split(":", 1)[1] for d in docs if d.get("image_url")})
        image_enc = encoder.image or ImageEncoder(device=encoder.settings.device)
        vecs = dict(zip(names, image_enc.encode([(image_root_dir / n).read_bytes() for n in names])))
        for i, d in enumerate(docs):
            if d.get("image_url"):
                img[i] = vecs[d["image_url"].split(":", 1)[1]]
    fields["image"] = img
    hashes = [encoder.field_hashes(e) for e in events]
    return FieldVectors([d["product_id"] for d in docs], fields, hashes, docs)


def fuse(encoder: Any, fv: FieldVectors) -> np.ndarray:
    """The fused vectors this encoder's weights give (same arithmetic as ProductEncoder.encode)."""
    out = np.zeros((len(fv.ids), encoder.dim), np.float32)
    for f, sl in encoder.layout.items():
        if encoder.weights[f] > 0:
            out[:, sl] = fv.fields[f] * encoder.scale[f]
    return out


def preload(uri: str, prefix: str, encoder: Any, fv: FieldVectors, *, k: int, depth: int | None = None,
            with_lists: bool = True, flush_every_rows: int = 20_000) -> dict[str, float]:
    """Write the catalog (and, optionally, its exact neighbour lists, top-``depth`` deep as the
    worker records them) straight into Milvus."""
    from simstream.clock import now_ms
    from simstream.index.exact import SCORE_DECIMALS
    from simstream.index.neighbours import BuiltList, ListBuilder, contributions
    from simstream.index.rows import StoredList, product_row
    from simstream.index.store import VectorStore
    from simstream.records import Neighbour, NeighbourList, ProductEvent

    timings: dict[str, float] = {}
    vectors = fuse(encoder, fv)
    store = VectorStore.connect(uri, prefix, encoder.dim, flush_every_rows=flush_every_rows)
    t0 = time.perf_counter()
    now = now_ms()
    event_fields = set(ProductEvent.__dataclass_fields__)
    store.milvus.insert_products([
        product_row(ProductEvent(**{k: v for k, v in d.items() if k in event_fields}), vectors[i], fv.hashes[i],
                    encoder.model, now - 60_000)
        for i, d in enumerate(fv.docs)])
    timings["insert_s"] = time.perf_counter() - t0
    if with_lists:
        t0 = time.perf_counter()
        builder = ListBuilder(store, k=k, layout=encoder.layout, model=encoder.model, depth=depth)
        ranked = exact_top_k(vectors, fv.ids, builder.depth, margin=8)
        position = {pid: i for i, pid in enumerate(fv.ids)}
        idx = np.array([[position[pid] for pid, _ in row] for row in ranked], np.int64)
        scores = np.array([[sc for _, sc in row] for row in ranked], np.float32)
        timings["exact_lists_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch: list[StoredList] = []
        for i, pid in enumerate(fv.ids):
            me = vectors[i]
            why = contributions(me, [vectors[j] for j in idx[i, :k]], encoder.layout)
            neigh = [Neighbour(fv.ids[idx[i, j]], round(float(scores[i, j]), SCORE_DECIMALS), why[j]) for j in range(k)]
            nl = NeighbourList(pid, fv.docs[i]["version"], neigh, encoder.model, now, fv.docs[i]["event_time"])
            boundary = float(scores[i, builder.depth - 1]) if len(fv.ids) - 1 > builder.depth else float("-inf")
            # as_of after the products' updated_at (+ the lookback), so the worker may merge at once.
            deep = [fv.ids[j] for j in idx[i, : min(builder.depth, len(fv.ids) - 1)]]
            batch.append(builder.stored_form(BuiltList(nl, deep, boundary, now - 30_000)))
            if len(batch) == 2000:
                store.upsert_lists(batch)
                batch = []
        store.upsert_lists(batch)
        timings["lists_insert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.flush()
    timings["flush_s"] = time.perf_counter() - t0
    release(store, uri)
    return timings


def release(store: Any, uri: str) -> None:
    """Close the store: for a milvus-lite file that also frees it for a worker subprocess."""
    store.close()


# --- the neighbour topic, with timestamps -----------------------------------------------------
class TopicTail:
    """Consumes the neighbour topic from the beginning; for each (product, version) remembers the
    first message's broker timestamp (ms), local receive time, computed_at and source_event_time.
    Counts messages; never uses end offsets."""

    def __init__(self, settings: Any) -> None:
        import uuid

        from simstream.streams.neighbour_reader import tail_consumer

        self.consumer = tail_consumer(settings, f"bench-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 50})
        self.consumer.subscribe([settings.neighbors_topic])
        self.first: dict[tuple[str, int], dict[str, float]] = {}
        self.latest_version: dict[str, int] = {}
        self.messages = 0
        self.last_at = 0.0

    def poll(self, seconds: float) -> int:
        from confluent_kafka import KafkaError

        got = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for m in self.consumer.consume(1000, timeout=min(left, 0.2)):
                if m.error():
                    if m.error().code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue
                    raise RuntimeError(str(m.error()))
                got += 1
                if m.value() is None:
                    continue
                doc = orjson.loads(m.value())
                pid, version = doc["product_id"], int(doc["version"])
                recv = time.time()
                key = (pid, version)
                if key not in self.first:
                    self.first[key] = {"ts": m.timestamp()[1] / 1000.0, "recv": recv,
                                       "computed_at": doc["computed_at"] / 1000.0,
                                       "source_event_time": (doc.get("source_event_time") or 0) / 1000.0}
                if version > self.latest_version.get(pid, -1):
                    self.latest_version[pid] = version
            if got:
                self.last_at = time.monotonic()
        self.messages += got
        return got

    def wait_for(self, wanted: dict[str, int], timeout_s: float, check: Any = None) -> bool:
        """Until every product in ``wanted`` has a list of at least that version."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check is not None:
                check()
            self.poll(0.3)
            if all(self.latest_version.get(p, -1) >= v for p, v in wanted.items()):
                return True
        return False

    def close(self) -> None:
        self.consumer.close()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(rows: list[tuple[str, str, str]]) -> str:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)


def emit(report: dict[str, Any], path: Path | None) -> None:
    """Print the report as JSON and, with ``--json PATH``, write the same text there."""
    import json

    text = json.dumps(report, indent=2, default=str)
    print(text)
    if path:
        path.write_text(text + "\n")
