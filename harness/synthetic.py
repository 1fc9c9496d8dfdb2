"""A synthetic product stream with every kind of event a worker must get right.

Products from ten families (a "far" update moves a product to another family), and the events:
creates, near and far updates, deletes, re-creates, exact duplicates, out-of-order older versions,
and stale upserts after a delete. The exactness proof (harness/exactness.py) and the benchmarks
(bench/) generate their catalogs here.
"""

from __future__ import annotations

import json
import random
import time
from importlib import resources
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAMILIES", "COLORS", "Stream", "long_description", "random_content", "generate_stream"]

# Product families (harness/sample/families.json): a "far" update moves a product to another family
# (title, brand, category, price range).
FAMILIES: list[dict[str, Any]] = json.loads(
    resources.files("simstream.harness.sample").joinpath("families.json").read_text(encoding="utf-8"))
COLORS = ["Black", "White", "Silver", "Blue", "Red", "Green", "Grey", "Navy"]


@dataclass
class Stream:
    """The generated events (in publish order) and what the final catalog must be."""

    events: list[dict[str, Any]]
    final: dict[str, dict[str, Any]]  # product_id -> the highest-version event
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> dict[str, dict[str, Any]]:
        return {pid: e for pid, e in self.final.items() if e["op"] == "upsert"}

    @property
    def deleted(self) -> set[str]:
        return {pid for pid, e in self.final.items() if e["op"] == "delete"}


_MATERIALS = ["recycled aluminium", "brushed steel", "soft-touch plastic", "tempered glass", "woven fabric",
              "carbon fibre", "anodised alloy", "silicone", "natural oak", "reinforced nylon"]
_FEATURES = ["a long-lasting rechargeable battery", "fast USB-C charging", "a splash-resistant design",
             "an intuitive companion app", "energy-saving standby", "a compact foldable body", "tool-free assembly",
             "a two-year firmware update promise", "automatic software updates", "a low-noise motor",
             "a scratch-resistant coating", "multi-device pairing", "an adjustable fit", "a removable washable cover",
             "overheat protection", "a child lock", "a travel pouch", "precise digital controls"]
_EXTRAS = ["a charging cable", "a power adapter", "a cleaning cloth", "two spare tips", "a wall mount kit",
           "a carry case", "a user manual", "mounting screws", "a remote control", "an extension lead"]
_USES = ["at home", "in the office", "on the go", "for travel", "for students", "for families",
         "for professionals", "in small flats", "outdoors", "for gamers"]


def long_description(seed: str, doc: dict[str, Any]) -> str:
    """A catalog-length description (~90 words, ~550 characters: what the text encoder reads of a
    real listing) for ``doc``, from its own random stream seeded by ``seed``, so adding it draws
    nothing from the caller's generator."""
    rng = random.Random(seed)
    words = doc["title"].split(" ")
    noun, brand = " ".join(words[1:-2]).lower(), doc.get("brand") or words[0]
    feats = rng.sample(_FEATURES, 4)
    extras = rng.sample(_EXTRAS, 2)
    return (f"The {brand} {noun} is made {rng.choice(_USES)} and {rng.choice(_USES)}, built from "
            f"{rng.choice(_MATERIALS)} with a {rng.choice(COLORS).lower()} finish. It measures "
            f"{rng.randint(5, 60)} x {rng.randint(5, 60)} x {rng.randint(2, 30)} cm and weighs "
            f"{rng.randint(1, 90) / 10} kg. Key features include {feats[0]}, {feats[1]}, {feats[2]} and {feats[3]}. "
            f"In the box: the {noun}, {extras[0]}, {extras[1]} and a quick start guide. Model "
            f"{doc.get('mpn') or words[-1]}. Covered by a {rng.randint(1, 5)}-year manufacturer warranty, "
            f"with free returns within {rng.choice([14, 30, 60])} days and support from {brand} service centres.")


def random_content(rng: random.Random, family: int | None = None) -> dict[str, Any]:
    f = FAMILIES[rng.randrange(len(FAMILIES)) if family is None else family]
    brand = rng.choice(f["brand"])
    noun = rng.choice(f["noun"])
    title = f"{brand} {rng.choice(f['adj'])} {noun} {rng.choice(COLORS)} {rng.choice('ABCDEFGHJKLMNPRSTXZ')}{rng.randint(10, 999)}"
    lo, hi = f["price"]
    doc: dict[str, Any] = {"title": title, "brand": brand, "category": f["category"],
                           "price": round(rng.uniform(lo, hi), 2), "currency": "EUR",
                           "mpn": f"{brand[:3].upper()}-{rng.randint(1000, 99999)}",
                           "_family": FAMILIES.index(f)}
    if rng.random() < 0.5:
        doc["description"] = f"{rng.choice(f['adj'])} {noun.lower()} by {brand}, {rng.choice(COLORS).lower()} finish."
    return doc


def generate_stream(n_products: int, n_events: int, seed: int) -> Stream:
    """A random stream with every kind of event the worker must get right.

    Versions are per product and unique per content: a re-sent event is byte-identical (an exact
    duplicate) and an out-of-order event carries an older version than one already sent.
    """
    rng = random.Random(seed)
    ids = [f"p{i:05d}" for i in range(n_products)]
    version: dict[str, int] = {}  # highest version generated so far
    history: dict[str, list[dict[str, Any]]] = {}  # every distinct event generated, per product
    current: dict[str, dict[str, Any]] = {}  # content of the live product
    events: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    held_back: list[tuple[int, dict[str, Any]]] = []  # (release at len(events), event): out of order
    base_time = int(time.time() * 1000)

    def emit(doc: dict[str, Any], kind: str) -> None:
        kinds[kind] = kinds.get(kind, 0) + 1
        events.append(doc)

    def new_event(pid: str, op: str, content: dict[str, Any] | None) -> dict[str, Any]:
        version[pid] = version.get(pid, 0) + rng.randint(1, 3)
        doc = {"product_id": pid, "op": op, "version": version[pid], "event_time": base_time + len(events)}
        if content is not None:
            doc.update({k: v for k, v in content.items() if not k.startswith("_")})
        history.setdefault(pid, []).append(doc)
        return doc

    # First a creation wave over every product (so the catalog has >= n_products), then the mix.
    order = ids[:]
    rng.shuffle(order)
    clones = 0
    for pid in order:
        if current and rng.random() < 0.03 and clones < n_products // 30:
            # Identical content to another product: exact score ties, broken by product_id.
            content = dict(rng.choice(list(current.values())))
            clones += 1
        else:
            content = random_content(rng)
        current[pid] = content
        emit(new_event(pid, "upsert", content), "create")
    while len(events) < n_events:
        while held_back and held_back[0][0] <= len(events):
            emit(held_back.pop(0)[1], "out_of_order_late")
        pid = rng.choice(ids)
        r = rng.random()
        if pid in current:
            if r < 0.25:  # near update: same family, new details
                content = dict(current[pid])
                content["price"] = round(content["price"] * rng.uniform(0.7, 1.3), 2)
                content["title"] = content["title"].rsplit(" ", 1)[0] + f" {rng.choice('ABCDEFGH')}{rng.randint(10, 999)}"
                current[pid] = content
                emit(new_event(pid, "upsert", content), "update_near")
            elif r < 0.50:  # far update: another family entirely
                fam = current[pid].get("_family", 0)
                content = random_content(rng, (fam + rng.randrange(1, len(FAMILIES))) % len(FAMILIES))
                current[pid] = content
                emit(new_event(pid, "upsert", content), "update_far")
            elif r < 0.62:
                del current[pid]
                emit(new_event(pid, "delete", None), "delete")
            elif r < 0.75:  # exact duplicate of the last event of this product
                emit(dict(history[pid][-1]), "duplicate")
            elif r < 0.85 and len(history[pid]) > 1:  # an older version arriving late
                emit(dict(rng.choice(history[pid][:-1])), "stale")
            else:  # out of order: v+2 goes out now, v+1 (older) some events later
                first = new_event(pid, "upsert", random_content(rng))
                second_content = random_content(rng) if rng.random() < 0.7 else None
                second = new_event(pid, "upsert" if second_content else "delete", second_content)
                if second_content is None:
                    current.pop(pid, None)
                else:
                    current[pid] = second_content
                emit(second, "out_of_order_new")
                held_back.append((len(events) + rng.randint(1, 200), first))
        else:
            if r < 0.55 and pid in history:  # re-create after a delete
                content = random_content(rng)
                current[pid] = content
                emit(new_event(pid, "upsert", content), "recreate")
            elif r < 0.85 and any(e["op"] == "upsert" for e in history.get(pid, [])):
                # An old upsert after the delete: must not resurrect the product.
                emit(dict(rng.choice([e for e in history[pid] if e["op"] == "upsert"])), "stale_after_delete")
            elif pid in history:
                emit(dict(history[pid][-1]), "duplicate_delete")
    for _, doc in held_back:
        emit(doc, "out_of_order_late")
    final: dict[str, dict[str, Any]] = {}
    for doc in events:
        cur = final.get(doc["product_id"])
        if cur is None or doc["version"] > cur["version"]:
            final[doc["product_id"]] = doc
    return Stream(events, final, kinds)
