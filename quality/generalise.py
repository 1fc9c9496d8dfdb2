"""Generalisation protocol: leave one benchmark out (``python -m simstream.quality.generalise``).

A user's catalog is always one the model never saw, so every choice of weights or features is
judged here: for each benchmark in turn, the fusion weights are fitted (``fit_weights``) on the
train + valid labels of the *other* benchmarks and the left-out one is measured on its whole gold,
against a character-trigram TF-IDF over the same columns, in the same run.

Twins: in the WDC folders tableA and tableB largely hold the same records, mostly not labelled as
matches (``exact_twins.csv``). Each query's exact twins are dropped from its ranking and from its
gold, for ranking, fitting and TF-IDF alike.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from simstream.encoders.finetuned import MANIFEST
from simstream.encoders.fusion import FIELDS, ProductEncoder, text_of
from simstream.quality.adapt import AdaptRecipe, adapt_text_model
from simstream.quality.datasets import parse_field_map, read_gold, read_table
from simstream.quality.evaluate import DEFAULT_KS, bm25_scores, build_settings, retrieval_metrics, tfidf_scores, top_k
from simstream.quality.fit_weights import Dataset, fit_weights, load_dataset, unit_config
from simstream.quality.lexical import channels_of, parse_specs, with_catalog_lexicon
from simstream.quality.second_stage import best_threshold, fit_second_stage, match_scores, pr_curve
from simstream.settings import DEFAULT_WEIGHTS

__all__ = ["Benchmark", "BENCHMARKS", "EMBER_ALI", "adapted_text_model", "load_benchmark", "tfidf_metrics", "leave_one_out", "format_table", "fitted_config", "with_match", "vector_fields",
           "main"]


@dataclass(frozen=True)
class Benchmark:
    """One folder of ../shared/data as the protocol reads it."""

    name: str
    fields: str  # NAME=COLUMN,...
    gold: str  # the gold file (complete gold where the folder has one)
    twins: str | None = None


BENCHMARKS = (
    Benchmark("abt_buy", "title=name,description=description,price=price", "matches_full_1097.csv"),
    Benchmark("amazon_google", "title=title,brand=manufacturer,price=price", "matches_full_1300.csv"),
    Benchmark("wdc_computers", "title=title", "matches_all_positive.csv", "exact_twins.csv"),
    Benchmark("wdc_products", "title=title,brand=brand,description=description,price=price",
              "matches_closure.csv", "exact_twins.csv"),
)
#: Chinese (Alibaba), cluster-shaped gold (5-12 matches a query: read hit@1 and MRR); not one of the
#: protocol's default sets, named with ``--sets`` to judge a config for catalogs that mix languages
EMBER_ALI = Benchmark("ember_ali", "title=title,category=cate_level_name", "matches_full_24304.csv", "exact_twins.csv")


def load_benchmark(root: Path, bench: Benchmark, encoder: ProductEncoder, cache_dir: Path | None) -> Dataset:
    """Encode a benchmark into per-field unit vectors; gold ``full`` = its gold file minus twins."""
    ds = load_dataset(root, parse_field_map(bench.fields.split(",")), encoder, cache_dir=cache_dir)
    twins = read_gold(root / bench.twins) if bench.twins else {}
    ds.excluded = twins  # ids as in the tables (the events carry the l:/r: prefixes)
    ds.gold["full"] = read_gold(root / bench.gold)
    for split, gold in ds.gold.items():
        ds.gold[split] = {q: rs - twins.get(q, set()) for q, rs in gold.items() if rs - twins.get(q, set())}
    return ds


def adapted_text_model(root: Path, bench: Benchmark, encoder: ProductEncoder, start: str | None,
                       directory: Path, recipe: AdaptRecipe = AdaptRecipe()) -> Path:
    """The text model adapted to ``bench``'s catalog (its right table, what a worker indexes; no
    label read), kept in ``directory`` under a name of the texts, start and recipe (reused)."""
    right = read_table(root / "tableB.csv", parse_field_map(bench.fields.split(",")), "id", prefix="r:")
    texts = [text_of(e, encoder.brand_in_text) for e in right.events]
    key = hashlib.blake2b(orjson.dumps([texts, start, asdict(recipe)]), digest_size=6).hexdigest()
    out = Path(directory) / f"adapted-{bench.name}-{key}"
    if not (out / MANIFEST).is_file():
        adapt_text_model(texts, out, recipe, start=start)
    return out


def tfidf_metrics(ds: Dataset, ks: Sequence[int], *, bm25: bool = False) -> dict[str, float]:
    """Char-trigram TF-IDF (or, with ``bm25``, Okapi BM25 over words) over the same columns, twins
    masked like the fused ranking."""
    gold = ds.gold["full"]
    pos = {rid: i for i, rid in enumerate(ds.left.ids)}
    queries = [pos[q] for q in gold if q in pos]
    scores = ds.mask((bm25_scores if bm25 else tfidf_scores)(ds.left, ds.right, queries), queries)
    ranked = {ds.left.ids[i]: [ds.right.ids[j] for j in top_k(scores[n], max(ks))] for n, i in enumerate(queries)}
    return retrieval_metrics(ranked, gold, ks)


def leave_one_out(datasets: Sequence[Dataset], *, ks: Sequence[int] = DEFAULT_KS,
                  fixed: Mapping[str, Mapping[str, float]] | None = None,
                  second_stage: bool = False, match_for: str | None = None,
                  metrics: Sequence[str] = ("ip",)) -> dict[str, Any]:
    """For each dataset: weights fitted on the others' train + valid labels, measured on its full gold;
    with ``second_stage``, also a second stage fitted on the others (simstream.quality.second_stage)
    reordering the fused top-M (``lodo+stage2``: by probability; ``lodo+promote``: the pairs it
    calls matches first; ``@10``: only the top 10, a published list) and its match decision
    (``match``), each with the title's facts and (``v``) with the stream's vector features alone;
    ``fixed`` weightings (e.g. a shipped config) and TF-IDF measured on the same gold; ``match_for``:
    one of ``fixed``, whose fused score a vector stage is also fitted over (``LABEL+v...``);
    ``metrics`` other than "ip" (inner product): the fitted and fixed weightings ranked by that metric
    too (``lodo:l2``, ``LABEL:l2``)."""
    out: dict[str, Any] = {}
    for held in datasets:
        others = [d for d in datasets if d is not held]
        raw, shipped, learned = fit_weights(others, splits=("train", "valid"))
        row: dict[str, Any] = {"weights": shipped, "lodo": held.metrics(shipped, "full", ks)}
        for metric in (m for m in metrics if m != "ip"):
            row[f"lodo:{metric}"] = held.metrics(shipped, "full", ks, metric)
        if second_stage:
            row.update(_stage_rows(held, others, shipped, learned, "lodo+", "", "facts", ks))
            row.update(_stage_rows(held, others, shipped, vector_fields(shipped), "lodo+v", "v", "vector", ks))
        row["tfidf"] = tfidf_metrics(held, ks)
        row["bm25"] = tfidf_metrics(held, ks, bm25=True)
        for label, weights in (fixed or {}).items():
            row[label] = held.metrics(weights, "full", ks)
            for metric in (m for m in metrics if m != "ip"):
                row[f"{label}:{metric}"] = held.metrics(weights, "full", ks, metric)
            if label == match_for:
                row.update(_stage_rows(held, others, weights, vector_fields(weights), f"{label}+v", f"{label}:v",
                                       "vector", ks))
        out[held.name] = row
    return out


def vector_fields(weights: Mapping[str, float]) -> list[str]:
    """The fields a stream's vectors hold under ``weights``: what a vector stage reads."""
    return [f for f in FIELDS if weights.get(f, 0.0) > 0]


def _stage_rows(held: Dataset, others: Sequence[Dataset], weights: Mapping[str, float], fields: Sequence[str],
                prefix: str, match_label: str, kind: str, ks: Sequence[int]) -> dict[str, Any]:
    """A second stage of ``kind`` fitted on ``others`` over ``weights``' fused top-M, measured on ``held``."""
    stage = fit_second_stage(others, weights, fields, kind=kind)
    rows: dict[str, Any] = {}
    for label, order, head in (("stage2", "probability", None), ("promote", "promote", None),
                               ("promote@10", "promote", 10)):
        rows[prefix + label] = retrieval_metrics(stage.rerank(held, weights, "full", max(ks), order, head),
                                                 held.gold["full"], ks)
    # the match decision: the threshold chosen on the others' labelled pairs, F1 on the held set
    probs, labels, pairs = stage.decisions(held, weights, [held.gold["full"]])
    rows[match_label + "match"] = {
        **match_scores(probs, labels, pairs, stage.threshold),
        "if_chosen_on_this_set": match_scores(probs, labels, pairs, best_threshold(probs, labels, pairs)),
        "pr_curve": pr_curve(probs, labels, pairs)}
    return rows


def fitted_config(datasets: Sequence[Dataset], options: Mapping[str, Any], version: str,
                  lodo: Mapping[str, Any]) -> dict[str, Any]:
    """The method the protocol just judged, fitted on every set's train + valid labels (twins
    masked as in the protocol): a fusion config to ship, with the left-out results that chose it."""
    import datetime as dt

    raw, shipped, learned = fit_weights(datasets, splits=("train", "valid"))
    return {
        "version": version, "weights": shipped, "options": dict(options), "learned_raw": raw, "learned_fields": learned,
        "trained_on": [{"data": ds.name, "splits": ["train", "valid"], "fields": ds.fields} for ds in datasets],
        "objective": {"kind": "listwise softmax over top-K hard negatives, w >= 0 (quality.fit_weights), "
                              "fitted by quality.generalise --write-config", "exact_twins": "masked"},
        "leave_one_dataset_out": {name: {m: {k: row[m][k] for k in ("recall@1", "recall@10", "hit@1", "mrr")}
                                         for m in ("lodo", "tfidf") if m in row} for name, row in lodo.items()},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def with_match(config: Mapping[str, Any], datasets: Sequence[Dataset], version: str, lodo: Mapping[str, Any],
               label: str) -> dict[str, Any]:
    """``config`` with a match decision (``simstream.match``) fitted over its fused score on every
    set's train + valid labels, and the left-out results that judged it."""
    import datetime as dt

    weights = {f: float(w) for f, w in config["weights"].items()}
    stage = fit_second_stage(datasets, weights, vector_fields(weights), kind="vector")
    keys = ("recall@1", "recall@10", "hit@1", "mrr")
    return {**config, "version": version, "match": {
        **stage.match_model().to_config(), "candidates": stage.candidates,
        "trained_on": [{"data": ds.name, "splits": ["train", "valid"]} for ds in datasets],
        "chosen_by": "leave-one-dataset-out (quality.generalise --second-stage --match-for): fitted on the other "
                     "sets, F1 of the decision and recall of the promoted order on the left-out one",
        "leave_one_dataset_out": {name: {
            "f1": row[f"{label}:vmatch"]["f1"], "precision": row[f"{label}:vmatch"]["precision"],
            "recall": row[f"{label}:vmatch"]["recall"], "threshold": row[f"{label}:vmatch"]["threshold"],
            **{f"{m}:{k}": row[m][k] for m in (label, f"{label}+vpromote@10", "tfidf") for k in keys}}
            for name, row in lodo.items()}},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def format_table(results: Mapping[str, Any], ks: Sequence[int] = DEFAULT_KS) -> str:
    keys = [f"recall@{k}" for k in ks] + ["hit@1", "hit@10", "mrr"]
    lines = ["| left out | method | " + " | ".join(k.replace("recall", "R") for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name, row in results.items():
        for method, m in row.items():
            if method == "weights" or method.endswith("match"):  # not retrieval metrics
                continue
            lines.append(f"| {name} | {method} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--text-model", default=None, help="text model (default: the bundled base model)")
    parser.add_argument("--options", default='{"mpn_from_title": true}', help="fusion options JSON")
    parser.add_argument("--fixed", action="append", default=[], metavar="LABEL=CONFIG.json",
                        help="also measure these configs' weights unchanged")
    parser.add_argument("--lexical", default="", metavar="SOURCE:ANALYZER,...",
                        help="catalog-fitted lexical channels to add as fields, e.g. title:char3,text:word "
                             "(simstream.quality.lexical)")
    parser.add_argument("--lexicon", choices=("uniform", "catalog"), default="uniform",
                        help="the stream's lexical segments (title trigrams, text words) with every token weighing "
                             "the same, or IDF-weighted by a lexicon fitted on each set's catalog (as a migration fits)")
    parser.add_argument("--second-stage", action="store_true",
                        help="also fit a second stage on the other sets and rerank the fused top-50 (lodo+stage2)")
    parser.add_argument("--match-for", default=None, metavar="LABEL",
                        help="one of --fixed: also fit the stream's match decision over its fused score (LABEL+v rows); "
                             "with --write-config, write that config with the decision fitted on every set added")
    parser.add_argument("--write-config", type=Path, default=None, metavar="OUT.json",
                        help="also fit the judged method on every set and write it as a fusion config")
    parser.add_argument("--version", default=None, help="the version stored in --write-config's config")
    parser.add_argument("--metric", default="ip", help="ip and/or l2, comma-separated: rank the fitted and fixed "
                                                       "weightings by each (l2: the fused vectors' Euclidean distance)")
    parser.add_argument("--sets", default="", help="comma-separated benchmarks (default: the four English ones; "
                                                   "ember_ali adds the Chinese set)")
    parser.add_argument("--adapt", action="store_true",
                        help="adapt the text model to each set's catalog first (unsupervised, simstream.quality.adapt)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    known = {b.name: b for b in (*BENCHMARKS, EMBER_ALI)}
    wanted = [x.strip() for x in args.sets.split(",") if x.strip()] if args.sets else [b.name for b in BENCHMARKS]
    unknown = [x for x in wanted if x not in known]
    if unknown:
        raise SystemExit(f"--sets: unknown {unknown}; known: {', '.join(known)}")
    present = [known[x] for x in wanted if (args.data / x / "tableA.csv").exists()]
    missing = [x for x in wanted if known[x] not in present]
    if missing:
        print(f"skipping (not in {args.data}): {', '.join(missing)}")
    if len(present) < 2:
        raise SystemExit(f"leave-one-out needs at least 2 benchmarks in {args.data}; found {len(present)}")
    options: dict[str, Any] = orjson.loads(args.options)
    if args.text_model:
        options["text_model"] = args.text_model
    fixed = {"default": dict(DEFAULT_WEIGHTS), "equal": {f: 1.0 for f in FIELDS if f not in ("image", "category")}}
    for spec in args.fixed:
        label, _, path = spec.partition("=")
        fixed[label] = orjson.loads(Path(path).read_bytes())["weights"]
    with tempfile.TemporaryDirectory(prefix="simstream-lodo-") as tmp:
        settings = build_settings({"title": ""}, weights_file=unit_config(options, Path(tmp)))
        encoder = ProductEncoder(settings)
        text_models: dict[str, str] = {}
        if args.adapt:  # each set through the text model adapted to its own catalog (no labels read)
            datasets = []
            for b in present:
                adapted = adapted_text_model(args.data / b.name, b, encoder, args.text_model,
                                             args.cache_dir or Path(tmp))
                unit = unit_config({**options, "text_model": str(adapted)}, Path(tmp))
                own = ProductEncoder(build_settings({"title": ""}, weights_file=unit))
                datasets.append(load_benchmark(args.data / b.name, b, own, args.cache_dir))
                text_models[b.name] = own.text.name
        else:
            datasets = [load_benchmark(args.data / b.name, b, encoder, args.cache_dir) for b in present]
            text_models = {b.name: encoder.text.name for b in present}
    specs = parse_specs(args.lexical)
    for ds in datasets:  # IDF from each set's own right table: the catalog a worker would index
        ds.channels = channels_of(specs, ds.left, ds.right)
        if args.lexicon == "catalog":
            with_catalog_lexicon(ds.left_fv, ds.right_fv, ds.left, ds.right)
    if args.match_for and args.match_for not in [x.partition("=")[0] for x in args.fixed]:
        raise SystemExit(f"--match-for {args.match_for}: not one of the --fixed labels")
    results = leave_one_out(datasets, fixed=fixed, second_stage=args.second_stage, match_for=args.match_for,
                            metrics=[m.strip() for m in args.metric.split(",") if m.strip()])
    print(f"text model {encoder.text.name}, options {orjson.dumps(options).decode()}, lexical channels "
          f"{[s.name for s in specs] or 'none'}, lexicon {args.lexicon}, second stage {'yes' if args.second_stage else 'no'}")
    print(format_table(results))
    for name, row in results.items():
        print(name, "lodo weights", {f: round(w, 3) for f, w in row["weights"].items()})
        for label in [m for m in row if m.endswith("match")]:
            m = row[label]
            print(name, f"{label} decision at threshold {m['threshold']} (chosen on the others): precision "
                        f"{m['precision']}, recall {m['recall']}, F1 {m['f1']}")
    if args.write_config and args.match_for:
        source = next(path for label, _, path in (x.partition("=") for x in args.fixed) if label == args.match_for)
        config = with_match(orjson.loads(Path(source).read_bytes()), datasets, args.version or args.write_config.stem,
                            results, args.match_for)
        args.write_config.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {args.write_config}: {args.match_for}'s config with the match decision {config['match']['coef']}")
    elif args.write_config:
        config_options = {**options, **({"lexicon": "catalog"} if args.lexicon == "catalog" else {})}
        config = fitted_config(datasets, config_options, args.version or args.write_config.stem, results)
        args.write_config.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {args.write_config}: " + ", ".join(f"{f}={w:.3f}" for f, w in config["weights"].items() if w > 0))
    if args.json:
        args.json.write_bytes(orjson.dumps({"options": options, "model": encoder.model, "adapt": args.adapt,
                                            "text_models": text_models,
                                            "lexical": args.lexical,
                                            "lexicon": args.lexicon, "second_stage": args.second_stage, "results": results},
                                           option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
