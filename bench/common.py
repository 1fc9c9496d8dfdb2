"""Shared pieces of the performance benchmarks (issue 5): machine description, a synthetic catalog,
fast pre-loading of a milvus-lite file, and a neighbour-topic tail that keeps broker timestamps.

Streamed events carry catalog-length text: a title of ~8 words and a description of ~90 words
(``harness.synthetic.long_description``), ~135 tokens together before the text encoder's cut at
128, so encoder ceilings and the ratios to them mean what they would on a real catalog.

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
from simstream.harness.synthetic import COLORS, FAMILIES, long_description  # noqa: E402
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
    lead = f"{adj} {noun.lower()} by {brand}, {rng.choice(COLORS).lower()} finish. " if rng.random() < 0.5 else ""
    # A catalog-length description (~100 tokens with the title), drawn from its own generator: the
    # catalog's titles, prices and images stay what they were before descriptions were added.
    doc["description"] = lead + long_description(f"{pid}|{title}", doc)
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
    from simstream.vector_codec import canonical

    out = np.zeros((len(fv.ids), encoder.dim), np.float32)
    for f, sl in encoder.layout.items():
        if encoder.weights[f] > 0:  # rounded onto the field's storage grid, as the encoder does
            out[:, sl] = canonical(fv.fields[f] * encoder.scale[f], encoder.codecs[f])
    return out


def _compressed(rows: np.ndarray, max_distinct: int = 1024) -> np.ndarray:
    """Rows with the same inner products among themselves in fewer columns, when few distinct rows
    exist (a segment with a handful of pictures): their coordinates in an orthonormal basis of the
    span of the distinct rows. Otherwise the rows unchanged."""
    probe = rows @ np.random.default_rng(0).standard_normal(rows.shape[1]).astype(np.float32)
    if len(np.unique(probe)) > max_distinct:  # cheap: distinct rows project apart (almost surely)
        return rows
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    if len(distinct) > max_distinct or len(distinct) >= rows.shape[1]:
        return rows
    basis, _ = np.linalg.qr(distinct.T.astype(np.float64))
    return (distinct @ basis).astype(np.float32)[inverse.reshape(-1)]


def exact_lists_by_mode(encoders: Sequence[Any], fv: FieldVectors, depth: int, *, block: int = 1024, margin: int = 8,
                        deadline: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every product's exact top-``depth`` (self excluded; row indices and scores, best first) for
    several fusion weightings of the same catalog, in one pass over the all-pairs matrix.

    What ``exact_top_k`` (index/exact.py) gives for ``fuse(encoder, fv)``, computed cheaper: the
    fields every encoder weighs are one shared matrix product (each encoder's scale of them differs
    by one factor, e.g. the renormalised weights when images are off); a field only some weigh is
    added per encoder, in compressed form when it has few distinct rows (``_compressed``). These
    pre-select ``depth + margin`` candidates, widened by everything within 1e-5 of the last; the
    candidates are then scored on the full fused vectors and ranked by ``rank_key``, as
    ``exact_top_k`` does. ``deadline`` (time.monotonic) bounds the pass: TimeoutError past it.
    """
    fused = [fuse(e, fv) for e in encoders]
    ref = encoders[0]
    common = [f for f in ref.layout if all(e.weights[f] > 0 for e in encoders)]
    factors = []
    for e in encoders:
        ratios = {round(e.scale[f] / ref.scale[f], 6) for f in common}
        if len(ratios) != 1 or any(e.layout[f] != ref.layout[f] for f in common):
            raise ValueError("the encoders do not share their common fields up to one factor")
        factors.append(ratios.pop() ** 2)
    base = np.concatenate([_compressed(fv.fields[f] * ref.scale[f]) for f in common], axis=1).astype(np.float32)
    own = []
    for e in encoders:
        extra = [f for f in e.layout if e.weights[f] > 0 and f not in common]
        own.append(np.concatenate([_compressed(fv.fields[f] * e.scale[f]) for f in extra], axis=1)
                   if extra else None)
    n = len(fv.ids)
    pre = min(n - 1, depth + margin)
    idx = [np.zeros((n, depth), np.int64) for _ in encoders]
    scores = [np.zeros((n, depth), np.float32) for _ in encoders]
    for start in range(0, n, block):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"exact lists: {start} of {n} rows done when the time bound passed")
        shared = base[start:start + block] @ base.T
        rows = np.arange(len(shared))
        for m, mat in enumerate(fused):
            sims = shared * np.float32(factors[m])
            if own[m] is not None:
                sims += own[m][start:start + block] @ own[m].T
            sims[rows, start + rows] = -np.inf
            # The pre-scores use the fields before rounding onto the storage grid (vector_codec):
            # they differ from the fused vectors' scores by < 5e-3, so widen the pool by 1e-2.
            for r, best in enumerate(rank_rows(mat, fv.ids, sims, start + rows, depth, pre, slack=1e-2)):
                idx[m][start + r, :len(best)] = [j for j, _ in best]
                scores[m][start + r, :len(best)] = [sc for _, sc in best]
    return list(zip(idx, scores))


def rank_rows(mat: np.ndarray, ids: Sequence[str], sims: np.ndarray, owners: np.ndarray, k: int,
              pre: int, slack: float = 1e-5) -> list[list[tuple[int, float]]]:
    """Exact top-``k`` (row index, score) of each owner, from ``sims`` (owner r's pre-scores against
    every row, its own already -inf): the ``pre`` best widened by everything within 1e-5 of the
    last, scored on the full vectors and ranked by ``rank_key``, as index/exact.py ``exact_top_k``."""
    import torch

    from simstream.index.exact import rank_key

    # Pre-selection only (the ranking below is exact): torch's top-k is several times faster than
    # an argpartition of the whole block.
    vals, cand_t = torch.topk(torch.from_numpy(sims), pre, dim=1, sorted=False)
    cand, kths = cand_t.numpy(), vals.min(dim=1).values.numpy()
    out = []
    for r in range(len(sims)):
        kth = kths[r]
        pool = set(cand[r].tolist()) | set(np.flatnonzero(sims[r] >= kth - slack).tolist())
        pool.discard(int(owners[r]))
        me = mat[owners[r]]
        best = sorted(((float(mat[j] @ me), ids[j], j) for j in pool), key=lambda t: rank_key(t[0], t[1]))[:k]
        out.append([(j, sc) for sc, _, j in best])
    return out


def exact_rows(mat: np.ndarray, ids: Sequence[str], owners: Sequence[int], k: int, *, margin: int = 8,
               block: int = 1024) -> list[list[tuple[int, float]]]:
    """Exact top-``k`` of some rows only (self excluded), against all of ``mat``."""
    out: list[list[tuple[int, float]]] = []
    pre = min(len(ids) - 1, k + margin)
    for start in range(0, len(owners), block):
        own = np.asarray(owners[start:start + block], np.int64)
        sims = mat[own] @ mat.T
        sims[np.arange(len(own)), own] = -np.inf
        out.extend(rank_rows(mat, ids, sims, own, k, pre))
    return out


CHURN_WRITES_PER_S = 50  # the write rate the churned state is built as if streamed at
CHURN_PASSES = 3  # writes streamed, in catalog sizes


def churned_times(n: int, deep: np.ndarray, now: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(written at, list as_of) per product of a catalog that has churned, as a stream leaves it:
    ``CHURN_PASSES`` x n writes of products drawn at random, at ``CHURN_WRITES_PER_S``, ending a
    minute ago; each product last written at its last draw (before the stream if never drawn);
    each list last refreshed after the last write of its owner (+ the race lookback, when the owner
    may merge again) or of one of its deep members (+ 1 s: a write refreshes the lists holding it).
    Head ages then spread as in a steady state (about exponential, a mean of ~n / depth writes).
    The vectors are the fresh catalog's, so every list stays exact; only the times, which decide
    merge or search, are those of a churned catalog."""
    from simstream.clock import RACE_LOOKBACK_MS

    writes = CHURN_PASSES * n
    step = 1000 / CHURN_WRITES_PER_S
    start = now - 60_000 - int(writes * step)
    drawn = np.random.default_rng(seed).integers(0, n, writes)
    written = np.full(n, start - 1_000, np.int64)
    written[drawn] = start + (np.arange(writes) * step).astype(np.int64)  # the last draw of each wins
    own = written + RACE_LOOKBACK_MS + 1
    by_member = written[deep].max(axis=1) + 1_000 if deep.shape[1] else own
    return written, np.minimum(np.maximum(own, by_member), now - 30_000)


def synthetic_fused(encoder: Any, count: int, rng: np.random.Generator) -> np.ndarray:
    """Clearly synthetic rows shaped like fused ones, on the storage grid: each weighted segment a
    random unit vector scaled by sqrt(weight), then canonicalised as the encoder writes them."""
    from simstream.vector_codec import canonical_rows

    out = np.zeros((count, encoder.dim), np.float32)
    for f, sl in encoder.layout.items():
        if encoder.weights[f] > 0:
            seg = rng.standard_normal((count, sl.stop - sl.start)).astype(np.float32)
            seg /= np.linalg.norm(seg, axis=1, keepdims=True)
            out[:, sl] = seg * encoder.scale[f]
    canonical_rows(out, encoder.segments)
    return out


MILVUS_SERVER_ENV = "SIMSTREAM_BENCH_MILVUS_URI"  # set: runs write to that Milvus server, not a milvus-lite file


def milvus_target(data: Path) -> tuple[str, str, dict[str, str]]:
    """Where a run keeps its catalog: (URI, collection prefix, the worker's extra settings). A
    milvus-lite file in the run's data dir, or, when ``SIMSTREAM_BENCH_MILVUS_URI`` names a
    Milvus server (scripts/with-milvus-server.sh), collections of the run's own there; a server
    seals segments itself, so the worker does not flush."""
    server = os.environ.get(MILVUS_SERVER_ENV)
    if not server:
        return str((data / "simstream.db").resolve()), "simstream", {}
    prefix = "bench_" + "".join(c if c.isalnum() else "_" for c in data.name)[-12:]
    return server, prefix, {"SIMSTREAM_MILVUS_URI": server, "SIMSTREAM_COLLECTION": prefix,
                            "SIMSTREAM_FLUSH_EVERY_ROWS": "0"}


def preload(uri: str, prefix: str, encoder: Any, fv: FieldVectors, *, k: int, depth: int | None = None,
            with_lists: bool = True, flush_every_rows: int = 20_000,
            top: tuple[np.ndarray, np.ndarray] | None = None, timeout_s: float = 10.0,
            churned: bool = False, seed: int = 0) -> dict[str, float]:
    """Write the catalog (and, optionally, its exact neighbour lists, top-``depth`` deep as the
    worker records them) straight into Milvus. ``top``: those lists already computed (row indices
    and scores, best first, at least ``depth`` wide: ``exact_lists_by_mode``), else computed here.
    ``churned``: write and list times of a catalog that has churned (``churned_times``), else of a
    fresh load (every list younger than every product)."""
    from simstream.clock import now_ms
    from simstream.index.exact import SCORE_DECIMALS
    from simstream.index.neighbours import BuiltList, ListBuilder, contributions
    from simstream.index.rows import HeadFacts, StoredList, product_row
    from simstream.index.store import VectorStore
    from simstream.records import Neighbour, NeighbourList, ProductEvent

    timings: dict[str, float] = {}
    vectors = fuse(encoder, fv)
    store = VectorStore.connect(uri, prefix, encoder.dim, flush_every_rows=flush_every_rows, timeout_s=timeout_s)
    now = now_ms()
    builder = ListBuilder(store, k=k, layout=encoder.layout, model=encoder.model, depth=depth)
    match = getattr(encoder, "match", None)
    t0 = time.perf_counter()
    if top is None and with_lists:
        ranked = exact_top_k(vectors, fv.ids, builder.depth, margin=8)
        position = {pid: i for i, pid in enumerate(fv.ids)}
        top = (np.array([[position[pid] for pid, _ in row] for row in ranked], np.int64),
               np.array([[sc for _, sc in row] for row in ranked], np.float32))
    timings["exact_lists_s"] = time.perf_counter() - t0
    n = len(fv.docs)
    if churned and top is not None:
        written, as_of = churned_times(n, top[0][:, : min(builder.depth, n - 1)], now, seed)
    else:  # lists after the products (+ the lookback), so the worker may merge at once
        written, as_of = np.full(n, now - 60_000), np.full(n, now - 30_000)
    t0 = time.perf_counter()
    event_fields = set(ProductEvent.__dataclass_fields__)
    page = 2_000  # rows hold their vectors as Python lists (~100 KB a row): a page at a time
    for start in range(0, len(fv.docs), page):
        store.milvus.insert_products([
            product_row(ProductEvent(**{k: v for k, v in d.items() if k in event_fields}), vectors[i], fv.hashes[i],
                        encoder.model, int(written[i]))
            for i, d in enumerate(fv.docs[start:start + page], start)])
    timings["insert_s"] = time.perf_counter() - t0
    if with_lists and top is not None:
        idx, scores = top
        t0 = time.perf_counter()
        batch: list[StoredList] = []
        facts: dict[str, HeadFacts] = {}
        for i, pid in enumerate(fv.ids):
            me = vectors[i]
            why = contributions(me, [vectors[j] for j in idx[i, :k]], encoder.layout)
            # each entry's match decision, as the worker's list builder adds it (none without one)
            decided = match.of_entries(why, encoder.weights) if match is not None else [None] * k
            neigh = [Neighbour(fv.ids[idx[i, j]], round(float(scores[i, j]), SCORE_DECIMALS), why[j], decided[j])
                     for j in range(k)]
            nl = NeighbourList(pid, fv.docs[i]["version"], neigh, encoder.model, now, fv.docs[i]["event_time"])
            boundary = float(scores[i, builder.depth - 1]) if len(fv.ids) - 1 > builder.depth else float("-inf")
            deep = [fv.ids[j] for j in idx[i, : min(builder.depth, len(fv.ids) - 1)]]
            batch.append(builder.stored_form(BuiltList(nl, deep, boundary, int(as_of[i]))))
            # what the worker records beside a list (rows.HeadFacts); the members' scores as it
            # computes them (vecdot: bit for bit ``float(row @ owner)``, not the GEMM's)
            member_scores = np.vecdot(vectors[idx[i, : len(deep)]], me).astype(np.float32).tobytes()
            facts[pid] = HeadFacts(nl.content_digest(), (int(fv.docs[i]["version"]), int(written[i])), member_scores)
            if len(batch) == 2000:
                store.upsert_lists(batch, facts)
                batch, facts = [], {}
        store.upsert_lists(batch, facts)
        timings["lists_insert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.flush()
    timings["flush_s"] = time.perf_counter() - t0
    release(store, uri)
    return timings


def release(store: Any, uri: str) -> None:
    """Close the store: for a milvus-lite file that also frees it for a worker subprocess."""
    store.close()


# --- worker processes ------------------------------------------------------------------------
def _status_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_rss(pid: int) -> dict[str, int]:
    """Resident bytes of a process (``self``) and of it with all its descendants (``tree``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    tree, todo = 0, [pid]
    while todo:
        p = todo.pop()
        tree += _status_rss(p)
        todo.extend(children.get(p, []))
    return {"self": _status_rss(pid), "tree": tree}


def worker_log_events(path: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The worker's JSON log records whose ``event`` is one of ``names`` (SIMSTREAM_LOG_FORMAT=json)."""
    out = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if doc.get("event") in names:
            out.append(doc)
    return out


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
        self.latest: dict[str, bytes] = {}  # product_id -> the newest list's raw payload
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
                if version >= self.latest_version.get(pid, -1):
                    self.latest_version[pid] = version
                    self.latest[pid] = m.value()
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
