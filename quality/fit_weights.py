"""Learn the fusion weights from labelled pairs (``simstream fit-weights``).

Every product is encoded once through ``ProductEncoder`` with all weights equal, and its fused
vector is cut back into unit per-field vectors with ``ProductEncoder.layout``; the score of any
weighting is then ``sum_f w_f * cos_f``, exactly what the stream computes.

Objective (ranking-aware, since the metric is retrieval recall): for every left product with a
labelled match in the training splits, its candidates are the top-``candidates`` right products of
the whole right table under the current weights (hard negatives) plus its labelled matches; the loss
is the listwise softmax cross-entropy ``-log sum_{gold} softmax(X w)``, with ``w >= 0`` (L-BFGS-B
bounds; the norm of ``w`` plays the softmax temperature) and a small L2 penalty. Candidates are
mined again with the fitted weights and the fit repeated (``rounds``). Only train/valid labels
are read for fitting; test and full gold are only reported.

Fields no training set has (for example image and category on Abt-Buy and Amazon-Google) carry
no signal; they keep their default share so the shipped weights still use them in production, and
the learned fields share the rest in the learned proportions.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from simstream.encoders.fusion import FIELDS, ProductEncoder
from simstream.quality.datasets import Table, parse_field_map, read_gold, read_table
from simstream.quality.evaluate import DEFAULT_KS, build_settings, encode_events, retrieval_metrics, top_k
from simstream.settings import DEFAULT_WEIGHTS

__all__ = [
    "Dataset", "unit_config", "field_vectors", "load_dataset", "Problem", "build_problem", "listwise_loss", "fit",
    "observed_fields", "fit_weights", "run", "format_summary"
]


@dataclass
class Dataset:
    """One benchmark folder, encoded into per-field unit vectors."""

    name: str
    root: Path
    fields: dict[str, str]
    left: Table
    right: Table
    left_fv: dict[str, np.ndarray]  # field -> [n_left, d] unit vectors (zero rows: field missing)
    right_fv: dict[str, np.ndarray]
    gold: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # split -> ltable_id -> {rtable_id}
    excluded: dict[str, set[str]] = field(default_factory=dict)  # left id -> right ids never ranked (twins)
    # channel -> cosines [n_left, n_right] of a channel with no per-product vector here (simstream.quality.lexical)
    channels: dict[str, np.ndarray] = field(default_factory=dict)

    def cosines(self, f: str, left: int, right: Sequence[int] | np.ndarray) -> np.ndarray:
        """Field or channel ``f``'s cosines of left item ``left`` with the right items ``right`` (0
        where this set lacks it: a feature learned on other sets)."""
        if f in self.channels:
            return np.asarray(self.channels[f][left, right], np.float64)
        if f not in self.left_fv:
            return np.zeros(len(right))
        return np.asarray(self.right_fv[f][right] @ self.left_fv[f][left], np.float64)

    def has(self, f: str) -> bool:
        """Whether field or channel ``f`` carries a value on both sides somewhere."""
        if f in self.channels:
            return bool(self.channels[f].any())
        return f in self.left_fv and bool(np.abs(self.left_fv[f]).sum() > 0 and np.abs(self.right_fv[f]).sum() > 0)

    def labelled(self, golds: Sequence[Mapping[str, set[str]]], weights: Mapping[str, float]
                 ) -> tuple[list[int], list[list[int]], np.ndarray]:
        """The left rows with a gold match in ``golds`` (merged), each one's matching right rows, and
        their fused scores under ``weights`` with the exact twins masked."""
        gold: dict[str, set[str]] = {}
        for g in golds:
            for q, rs in g.items():
                gold.setdefault(q, set()).update(rs)
        lpos = {rid: i for i, rid in enumerate(self.left.ids)}
        rpos = {rid: j for j, rid in enumerate(self.right.ids)}
        queries = [lpos[q] for q in gold if q in lpos]
        matches = [[rpos[r] for r in gold[self.left.ids[i]] if r in rpos] for i in queries]
        scores = self.mask(self.scores(weights, queries), queries) if queries else np.zeros((0, len(self.right.ids)))
        return queries, matches, scores

    def mask(self, scores: np.ndarray, queries: Sequence[int]) -> np.ndarray:
        """``scores`` with each query's excluded right items (exact twins) set to -inf, in place."""
        if self.excluded:
            rpos = {rid: j for j, rid in enumerate(self.right.ids)}
            for n, i in enumerate(queries):
                cols = [rpos[r] for r in self.excluded.get(self.left.ids[i], ()) if r in rpos]
                scores[n, cols] = -np.inf
        return scores

    def scores(self, weights: Mapping[str, float], queries: Sequence[int], metric: str = "ip") -> np.ndarray:
        """Fused scores [len(queries), n_right] for ``weights`` (any scale): inner product, or with
        ``metric`` "l2" minus half the squared Euclidean distance of the fused vectors (a field's
        segment weighs sqrt(w) times its unit vector, zero where a product lacks it; a channel has
        no per-product vector and counts as present on both sides)."""
        out = np.zeros((len(queries), len(self.right.ids)), np.float32)
        for f, w in weights.items():
            if w > 0 and f in self.channels:
                out += w * self.channels[f][queries]
            elif w > 0 and f in self.left_fv:
                out += w * (self.left_fv[f][queries] @ self.right_fv[f].T)
                if metric == "l2":
                    left, right = self.left_fv[f][queries], self.right_fv[f]
                    out -= 0.5 * w * ((left * left).sum(1)[:, None] + (right * right).sum(1)[None, :])
            elif w > 0 and metric == "l2":
                out -= w
        return out

    def metrics(self, weights: Mapping[str, float], split: str, ks: Sequence[int] = DEFAULT_KS,
                metric: str = "ip") -> dict[str, float]:
        gold = self.gold[split]
        pos = {rid: i for i, rid in enumerate(self.left.ids)}
        queries = [pos[q] for q in gold if q in pos]
        scores = self.mask(self.scores(weights, queries, metric), queries)
        limit = max(ks)
        ranked = {self.left.ids[i]: [self.right.ids[j] for j in top_k(scores[n], limit)]
                  for n, i in enumerate(queries)}
        return retrieval_metrics(ranked, gold, ks)


def unit_config(options: Mapping[str, Any], directory: Path) -> Path:
    """A fusion config with every weight 1 and the given method options."""
    path = directory / "unit-fusion.json"
    path.write_bytes(orjson.dumps({"weights": {f: 1.0 for f in FIELDS}, "options": dict(options)}))
    return path


def field_vectors(encoder: ProductEncoder, table: Table, cache_dir: Path | None) -> dict[str, np.ndarray]:
    vectors = encode_events(encoder, table.events, cache_dir)
    return {f: vectors[:, encoder.layout[f]] / encoder.scale[f] for f in FIELDS if encoder.scale[f] > 0}


def load_dataset(root: Path, fields: Mapping[str, str], encoder: ProductEncoder, *, id_column: str = "id",
                 cache_dir: Path | None = None) -> Dataset:
    left = read_table(root / "tableA.csv", fields, id_column, prefix="l:")
    right = read_table(root / "tableB.csv", fields, id_column, prefix="r:")
    ds = Dataset(root.name, root, dict(fields), left, right, field_vectors(encoder, left, cache_dir),
                 field_vectors(encoder, right, cache_dir))
    for split in ("train", "valid", "test"):
        if (root / f"{split}.csv").exists():
            ds.gold[split] = read_gold(root / f"{split}.csv")
    full = sorted(root.glob("matches_full*.csv"))
    if full:
        ds.gold["full"] = read_gold(full[0])
    return ds


# --- the objective ---------------------------------------------------------------------------
@dataclass
class Problem:
    """Per query: candidate features [c, f] and a mask of its labelled matches among them."""

    features: list[np.ndarray]
    positive: list[np.ndarray]
    _padded: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features [q, c, f], valid [q, c] and positive [q, c], candidates padded to the longest list:
        one vectorised loss per optimiser step instead of a Python loop over the queries."""
        if self._padded is None:
            n, c = len(self.features), max((len(x) for x in self.features), default=0)
            f = self.features[0].shape[1] if self.features else 0
            x, valid, pos = np.zeros((n, c, f)), np.zeros((n, c), bool), np.zeros((n, c), bool)
            for i, (xi, mi) in enumerate(zip(self.features, self.positive)):
                x[i, :len(xi)], valid[i, :len(xi)], pos[i, :len(xi)] = xi, True, mi
            self._padded = (x, valid, pos)
        return self._padded


def build_problem(datasets: Sequence[Dataset], splits: Sequence[str], fields: Sequence[str],
                  weights: Mapping[str, float], candidates: int) -> Problem:
    feats, pos = [], []
    for ds in datasets:
        queries, all_matches, scores = ds.labelled([ds.gold.get(split, {}) for split in splits], weights)
        for n, (i, matches) in enumerate(zip(queries, all_matches)):
            if not matches:
                continue
            cand = list(dict.fromkeys(list(top_k(scores[n], candidates)) + matches))
            x = np.zeros((len(cand), len(fields)), np.float64)
            for j, f in enumerate(fields):
                if f in ds.left_fv or f in ds.channels:
                    x[:, j] = ds.cosines(f, i, cand)
            feats.append(x)
            pos.append(np.isin(cand, matches))
    return Problem(feats, pos)


def listwise_loss(w: np.ndarray, problem: Problem, l2: float) -> tuple[float, np.ndarray]:
    """Mean over queries of -log(sum of softmax mass on the matches), plus ``l2 * |w|^2``."""
    x, valid, pos = problem.padded()
    n = max(len(x), 1)
    if not len(x):
        return l2 * float(w @ w), 2 * l2 * w
    s = np.where(valid, x @ w, -np.inf)
    e = np.exp(s - s.max(axis=1, keepdims=True))  # padding: exp(-inf) = 0
    total, matched = e.sum(axis=1), (e * pos).sum(axis=1)
    loss = -float(np.log(matched / total).sum())
    coef = e * pos / matched[:, None] - e / total[:, None]  # p_pos - p_all per candidate
    grad = -np.einsum("qc,qcf->f", coef, x)
    return loss / n + l2 * float(w @ w), grad / n + 2 * l2 * w


def fit(problem: Problem, n_fields: int, *, l2: float = 1e-4, start: np.ndarray | None = None) -> np.ndarray:
    from scipy.optimize import minimize

    w0 = np.full(n_fields, 5.0) if start is None else np.asarray(start, np.float64)
    res = minimize(listwise_loss, w0, args=(problem, l2), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * n_fields, options={"maxiter": 500})
    return np.asarray(res.x)


def observed_fields(datasets: Sequence[Dataset]) -> list[str]:
    """Fields (then channels) that carry a value somewhere in the training data (others cannot be learned)."""
    channels = list(dict.fromkeys(c for ds in datasets for c in ds.channels))
    return [f for f in [*FIELDS, *channels] if any(ds.has(f) for ds in datasets)]


def fit_weights(datasets: Sequence[Dataset], *, splits: Sequence[str] = ("train", "valid"), candidates: int = 50,
                rounds: int = 2, l2: float = 1e-4) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Returns (learned raw weights over the observed fields, shipped weights summing to 1, observed)."""
    learn = observed_fields(datasets)
    current = {f: 1.0 for f in learn}
    w = None
    for _ in range(rounds):
        problem = build_problem(datasets, splits, learn, current, candidates)
        w = fit(problem, len(learn), l2=l2, start=w)
        current = {f: float(v) for f, v in zip(learn, w)}
    raw = {f: round(v, 6) for f, v in current.items()}
    learned_share = 1.0 - sum(DEFAULT_WEIGHTS[f] for f in FIELDS if f not in learn)
    total = sum(raw.values()) or 1.0
    shipped = {f: round(learned_share * raw[f] / total, 6) if f in raw else DEFAULT_WEIGHTS[f] for f in FIELDS}
    shipped.update({c: round(learned_share * raw[c] / total, 6) for c in learn if c not in shipped})  # channels
    return raw, shipped, learn


def run(specs: Sequence[tuple[Path, str]], out: Path, *, splits: Sequence[str] = ("train", "valid"),
        options: Mapping[str, Any] | None = None, candidates: int = 50, rounds: int = 2, l2: float = 1e-4,
        version: str | None = None, cache_dir: Path | None = None, id_column: str = "id",
        weights_from: Path | None = None) -> dict[str, Any]:
    """Encode every dataset, fit, report (train splits, test, full gold) and write the config.

    ``weights_from`` keeps that config's weights instead of fitting: for a text encoder re-trained on the
    very pairs those weights were fitted on, whose cosines on them are inflated and would bias a new fit.
    """
    options = dict(options or {"mpn_from_title": True})
    datasets: list[Dataset] = []
    with tempfile.TemporaryDirectory(prefix="simstream-fit-") as tmp:
        all_fields = set().union(*(parse_field_map(spec.split(",")) for _, spec in specs))
        settings = build_settings({f: "" for f in all_fields}, weights_file=unit_config(options, Path(tmp)))
        encoder = ProductEncoder(settings)
        for root, spec in specs:
            datasets.append(load_dataset(Path(root), parse_field_map(spec.split(",")), encoder,
                                         id_column=id_column, cache_dir=cache_dir))
    if options.get("lexicon") == "catalog":  # each set's lexical segments as its own catalog's lexicon weighs them
        from simstream.quality.lexical import with_catalog_lexicon

        for ds in datasets:
            with_catalog_lexicon(ds.left_fv, ds.right_fv, ds.left, ds.right)
    if weights_from:
        kept = orjson.loads(weights_from.read_bytes())
        raw, shipped, learned = kept["learned_raw"], kept["weights"], kept["learned_fields"]
        trained_on = kept["trained_on"]
        objective = {"kind": "weights kept, not fitted", "from": kept["version"],
                     "their_text_model": kept.get("options", {}).get("text_model")}
    else:
        raw, shipped, learned = fit_weights(datasets, splits=splits, candidates=candidates, rounds=rounds, l2=l2)
        trained_on = [{"data": ds.name, "splits": list(splits), "fields": ds.fields} for ds in datasets]
        objective = {"kind": "listwise softmax over top-K hard negatives, w >= 0", "candidates": candidates,
                     "rounds": rounds, "l2": l2}
    equal = {f: 1.0 for f in learned}
    metrics: dict[str, Any] = {}
    for ds in datasets:
        metrics[ds.name] = {}
        for split in [s for s in ("test", "full") if s in ds.gold]:
            metrics[ds.name][split] = {"learned": ds.metrics(shipped, split), "equal": ds.metrics(equal, split),
                                       "default": ds.metrics(DEFAULT_WEIGHTS, split)}
    version = version or f"fusion-weights-{dt.date.today():%Y%m%d}"
    config = {
        "version": version,
        "weights": shipped,
        "options": options,
        "learned_raw": raw,
        "learned_fields": learned,
        "trained_on": trained_on,
        "objective": objective,
        "metrics": metrics,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config, indent=2) + "\n")
    return config


def format_summary(config: Mapping[str, Any]) -> str:
    lines = [f"{config['version']}: " + ", ".join(f"{f}={w:.3f}" for f, w in config["weights"].items() if w > 0)]
    for name, splits in config["metrics"].items():
        for split, by in splits.items():
            lines.append(f"{name:>14} {split:>5}  " + "  ".join(
                f"{label} R@1 {m['recall@1']:.4f} R@10 {m['recall@10']:.4f}" for label, m in by.items()))
    return "\n".join(lines)
