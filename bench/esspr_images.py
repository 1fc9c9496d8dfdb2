"""Image vs text vs fused retrieval on the eSSPR sample (issue 4, item 5).

``../shared/data/esspr_sample/pairs.csv`` holds 10 trigger/recall pairs (20 Alibaba.com items, a
title and a 300x300 image each). Every item queries the other 19 through the stream's own
``ProductEncoder``; hit@1 is the share of queries whose top neighbour is its pair. Reported for the
image segment only, the text segments only (text + title_lexical + mpn, in their fused
proportions), and the fused vector (the weights of ``--weights`` or the defaults).

    .venv/bin/python bench/esspr_images.py [--data ../shared/data/esspr_sample] [--weights FILE] [--json OUT]

Twenty items are far too few for a quality figure: this exercises the image path end to end.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simstream.encoders.fusion import FIELDS, ProductEncoder, load_weights  # noqa: E402
from simstream.records import ProductEvent  # noqa: E402
from simstream.quality.fit_weights import unit_config  # noqa: E402
from simstream.settings import load_settings  # noqa: E402

TEXT_FIELDS = ("text", "title_lexical", "mpn")


def read_items(root: Path) -> tuple[list[ProductEvent], dict[str, str]]:
    items: dict[str, ProductEvent] = {}
    pair: dict[str, str] = {}
    with open(root / "pairs.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, skipinitialspace=True):
            row = {k.strip(): v.strip() for k, v in row.items()}
            for side in ("trigger", "recall"):
                pid = row[f"{side}_id"]
                items[pid] = ProductEvent(product_id=pid, op="upsert", version=1, title=row[f"{side}_title"],
                                          image_url=f"file:{row[f'{side}_image_name']}")
            pair[row["trigger_id"]], pair[row["recall_id"]] = row["recall_id"], row["trigger_id"]
    return list(items.values()), pair


def hit_at_1(vectors: dict[str, np.ndarray], weights: dict[str, float], ids: list[str], pair: dict[str, str]) -> float:
    scores = sum(w * (vectors[f] @ vectors[f].T) for f, w in weights.items() if w > 0 and f in vectors)
    scores = np.asarray(scores, dtype=np.float64)
    np.fill_diagonal(scores, -np.inf)
    top = scores.argmax(1)
    return float(np.mean([ids[top[i]] == pair[ids[i]] for i in range(len(ids))]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "esspr_sample")
    ap.add_argument("--weights", type=Path, default=None, help="fusion config JSON (default: settings)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    events, pair = read_items(args.data)
    fused_weights = load_weights(load_settings(**({"fusion_config": args.weights} if args.weights else {})))
    options = orjson.loads(args.weights.read_bytes()).get("options", {}) if args.weights else {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(fusion_config=unit_config(options, Path(tmp)), image_root=args.data,
                                 image_enabled=True)
        encoder = ProductEncoder(settings)
        batch = encoder.encode(events)
    if batch.failures:
        raise SystemExit(f"failed: {batch.failures}")
    ids = [p.product_id for p in batch.products]
    vectors = {f: batch.vectors[:, encoder.layout[f]] / encoder.scale[f] for f in FIELDS if encoder.scale[f] > 0}
    text_weights = {f: fused_weights[f] for f in TEXT_FIELDS}
    report = {
        "items": len(ids),
        "image": hit_at_1(vectors, {"image": 1.0}, ids, pair),
        "text": hit_at_1(vectors, text_weights, ids, pair),
        "text_model_only": hit_at_1(vectors, {"text": 1.0}, ids, pair),
        "fused": hit_at_1(vectors, fused_weights, ids, pair),
        "weights": {f: round(w, 4) for f, w in fused_weights.items()},
        "model": encoder.text.name,
    }
    for key in ("image", "text", "text_model_only", "fused"):
        print(f"hit@1 {key:<16} {report[key]:.2f}")
    print("weights", ", ".join(f"{f}={w:.3f}" for f, w in report["weights"].items() if w > 0))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
