"""The migration gate's index checks on real milvus-lite collections: a complete, exact shadow passes;
a missing product, a wrong list or too much churn fails, and the report names them."""

import numpy as np
import pytest

from conftest import make_event
from simstream.index.milvus import MilvusStore
from simstream.index.rows import StoredList, product_row
from simstream.quality.gate import catalog_check, churn, format_gate, lists_check
from simstream.records import Neighbour, NeighbourList

K = 2


def _fill(store: MilvusStore, vectors: dict[str, np.ndarray], model: str, *, versions: dict[str, int] | None = None,
          wrong: str | None = None) -> None:
    rows = [product_row(make_event(pid, (versions or {}).get(pid, 1)), v, {}, model, 1) for pid, v in vectors.items()]
    store.upsert_products(rows)
    lists = []
    for pid, v in vectors.items():
        scored = sorted(((float(v @ w), other) for other, w in vectors.items() if other != pid), key=lambda t: (-t[0], t[1]))
        top = scored[:K] if pid != wrong else scored[-K:]
        nl = NeighbourList(pid, 1, [Neighbour(o, s, {}) for s, o in top], model, 1, None)
        lists.append(StoredList(pid, [o for _, o in top], -1.0, nl.to_json()))
    store.upsert_lists(lists, 1)


@pytest.fixture
def stores(tmp_path):
    live = MilvusStore.connect(str(tmp_path / "m.db"), "a", 4, flush_every_rows=0)
    shadow = MilvusStore(live.client, live.uri, "b", 4)
    yield live, shadow
    live.close()


def _vectors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {f"p{i}": rng.normal(size=4).astype(np.float32) for i in range(8)}
    return {k: v / np.linalg.norm(v) for k, v in out.items()}


def test_a_complete_exact_shadow_passes_and_churn_is_measured(stores):
    live, shadow = stores
    _fill(live, _vectors(1), "old")
    _fill(shadow, _vectors(2), "new")
    assert catalog_check(live, shadow, settle_s=0)["equal"]
    lists = lists_check(shadow, sample=8, k=K, seed=1, settle_s=0)
    assert lists == {"sampled": 8, "equal": 8, "unequal": []}
    c = churn(live, shadow, K)
    assert c["lists_compared"] == 8 and 0 < c["changed_share"] <= 1 and 0 <= c["mean_overlap_at_k"] < 1
    same = churn(live, live, K)
    assert same["changed_share"] == 0 and same["mean_overlap_at_k"] == 1 and same["mean_score_shift"] == 0


def test_missing_products_other_versions_and_wrong_lists_are_named(stores):
    live, shadow = stores
    vectors = _vectors(3)
    _fill(live, vectors, "old", versions={"p1": 2})
    _fill(shadow, {k: v for k, v in vectors.items() if k != "p0"}, "new", wrong="p5")
    c = catalog_check(live, shadow, settle_s=0, sleep=lambda s: None)
    assert not c["equal"] and c["examples"]["only_in_live"] == ["p0"] and c["examples"]["version_differs"] == ["p1"]
    lists = lists_check(shadow, sample=7, k=K, seed=1, settle_s=0, sleep=lambda s: None)
    assert lists["unequal"] == ["p5"] and lists["equal"] == 6
    report = {"passed": False, "reasons": ["x"], "catalog": c, "lists": lists, "churn": churn(live, shadow, K),
              "labelled": None}
    assert "only live 1" in format_gate(report) and "6/7 sampled lists" in format_gate(report)


def test_the_labelled_check_stops_a_worse_model(tmp_path):
    """On a slice of Abt-Buy (the eval protocol): the shipped v3 against itself passes; a model that
    ranks by price alone is worse by far more than the margin and fails, naming the metrics."""
    from pathlib import Path

    from conftest import read_csv, write_csv

    from simstream.quality.gate import labelled_check
    from simstream.settings import Settings

    abt = Path(__file__).resolve().parents[3] / "shared" / "data" / "abt_buy"
    if not (abt / "tableA.csv").exists():
        pytest.skip(f"benchmark data not found at {abt} (shared/data beside the repo)")
    import random

    left = {r["id"]: r for r in read_csv(abt / "tableA.csv")}
    right = {r["id"]: r for r in read_csv(abt / "tableB.csv")}
    pairs = random.Random(5).sample(read_csv(abt / "matches_full_1097.csv"), 60)
    rids = {p["rtable_id"] for p in pairs} | set(random.Random(6).sample(sorted(right), 60))
    header = ["id", "name", "description", "price"]
    folder = tmp_path / "abt_slice"
    folder.mkdir()
    write_csv(folder / "tableA.csv", header, [left[i] for i in sorted({p["ltable_id"] for p in pairs}, key=int)])
    write_csv(folder / "tableB.csv", header, [right[i] for i in sorted(rids, key=int)])
    write_csv(folder / "gold.csv", ["ltable_id", "rtable_id"], pairs)
    fields = "title=name,description=description,price=price"
    v3 = Settings(fusion_config="v3", image_enabled=False, data_dir=tmp_path)
    same = labelled_check(folder, fields, "gold.csv", v3, v3, 0.01)
    assert same["passed"] and same["live"] == same["shadow"]
    price_only = Settings(fusion_config="none", weights={"price": 1.0}, image_enabled=False, data_dir=tmp_path)
    worse = labelled_check(folder, fields, "gold.csv", v3, price_only, 0.01)
    assert not worse["passed"] and "recall@1" in worse["worse"] and worse["shadow"]["mrr"] < worse["live"]["mrr"] - 0.1
