"""Labelled product-matching benchmarks as the quality tools read them: two CSV tables of products,
gold pairs, and the ``--field NAME=COLUMN`` mapping from CSV columns to event fields
(``../shared/data/README.md`` describes the layout)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from simstream.records import ProductEvent

__all__ = ["MAPPABLE", "parse_field_map", "read_rows", "row_to_event", "Table", "read_table", "read_gold"]

#: ProductEvent fields a CSV column may be mapped to (``--field NAME=COLUMN``).
MAPPABLE = ("title", "description", "brand", "category", "price", "mpn", "image")


def parse_field_map(specs: Iterable[str]) -> dict[str, str]:
    """['title=name', 'price=price'] -> {'title': 'name', 'price': 'price'}; title is required."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, column = spec.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column:
            raise ValueError(f"--field expects NAME=COLUMN, got {spec!r}")
        if name not in MAPPABLE:
            raise ValueError(f"--field {name!r} is not one of {', '.join(MAPPABLE)}")
        out[name] = column
    if "title" not in out:
        raise ValueError("--field title=COLUMN is required")
    return out


def _price(raw: str | None) -> float | None:
    if raw is None:
        return None
    text = raw.strip().lower().replace(",", "").replace("$", "")
    for token in text.split():
        try:
            value = float(token)
        except ValueError:
            continue
        return value if math.isfinite(value) and value > 0 else None
    return None


def _text(raw: str | None) -> str | None:
    text = (raw or "").strip()
    return text or None


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in reader]


def row_to_event(row: Mapping[str, str], fields: Mapping[str, str], product_id: str) -> ProductEvent:
    """One CSV row as an upsert event, mapped column by column."""
    def col(name: str) -> str | None:
        column = fields.get(name)
        if column is None:
            return None
        if column not in row:
            raise KeyError(f"column {column!r} (for --field {name}) not in the CSV; has {sorted(row)}")
        return row[column]

    image = _text(col("image"))
    if image and "://" not in image and not image.startswith("file:"):
        image = f"file:{image}"  # relative to the CSV's folder (the image root)
    return ProductEvent(
        product_id=product_id, op="upsert", version=1, title=_text(col("title")) or "",
        description=_text(col("description")), brand=_text(col("brand")), category=_text(col("category")),
        price=_price(col("price")), mpn=_text(col("mpn")), image_url=image,
    )


@dataclass
class Table:
    ids: list[str]
    events: list[ProductEvent]
    texts: list[str]  # what the TF-IDF baseline reads: the mapped columns, concatenated


def read_table(path: Path, fields: Mapping[str, str], id_column: str = "id", prefix: str = "") -> Table:
    rows = read_rows(path)
    if rows and id_column not in rows[0]:
        raise KeyError(f"{path}: no id column {id_column!r}; has {sorted(rows[0])}")
    # Each distinct column once (``--field mpn=name`` must not count the title twice); no images.
    columns = list(dict.fromkeys(c for f, c in fields.items() if f != "image"))
    ids, events, texts = [], [], []
    for row in rows:
        rid = row[id_column].strip()
        ids.append(rid)
        events.append(row_to_event(row, fields, f"{prefix}{rid}"))
        texts.append(" ".join(row.get(c, "").strip() for c in columns if row.get(c, "").strip()))
    return Table(ids, events, texts)


def read_gold(path: Path) -> dict[str, set[str]]:
    """ltable_id -> {rtable_id}; when there is a ``label`` column only label 1 rows count."""
    gold: dict[str, set[str]] = {}
    for row in read_rows(path):
        if "label" in row and row["label"].strip() not in ("1", "1.0", "true", "True"):
            continue
        gold.setdefault(row["ltable_id"].strip(), set()).add(row["rtable_id"].strip())
    return gold
