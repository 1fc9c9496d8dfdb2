"""The best shipped fusion config is the default, ships inside the package, and says where it came from."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from simstream.encoders.fusion import load_fusion_options, load_weights
from simstream.encoders.fusion_config import CONFIG_DIR, describe, resolve_fusion_config, shipped_configs
from simstream.settings import DEFAULT_FUSION_CONFIG, DEFAULT_WEIGHTS, Settings


def test_the_default_is_the_shipped_config_inside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMSTREAM_FUSION_CONFIG", raising=False)
    monkeypatch.delenv("SIMSTREAM_TEXT_MODEL", raising=False)
    settings = Settings()
    path = resolve_fusion_config(settings.fusion_config)
    assert path is not None and path.parent == CONFIG_DIR and path == shipped_configs()[DEFAULT_FUSION_CONFIG]
    shipped = orjson.loads(path.read_bytes())
    weights = load_weights(settings)
    total = sum(shipped["weights"].values())
    assert weights == pytest.approx({f: shipped["weights"].get(f, 0.0) / total for f in weights})
    assert set(weights) - set(shipped["weights"]) <= {"text_words"}  # a field added later: 0 unless weighted
    assert load_fusion_options(settings)["text_model"] == shipped["options"]["text_model"]
    info = describe(settings, load_weights(settings))
    assert info["fusion_config"]["source"].startswith("default")
    assert info["text_model"] == {"value": shipped["options"]["text_model"], "source": f"fusion config {shipped['version']}"}


def test_names_paths_and_none(tmp_path: Path) -> None:
    v2 = shipped_configs()["v2"]
    assert resolve_fusion_config("v2") == resolve_fusion_config("fusion-weights-v2") == v2
    assert resolve_fusion_config("none") is None and resolve_fusion_config(None) is None
    own = tmp_path / "mine.json"
    own.write_bytes(orjson.dumps({"weights": {"text": 1.0}, "options": {}}))
    assert resolve_fusion_config(str(own)) == own
    assert load_weights(Settings(fusion_config=own, image_enabled=False))["text"] > load_weights(
        Settings(fusion_config="none", image_enabled=False))["text"]
    with pytest.raises(ValueError, match="SIMSTREAM_FUSION_CONFIG.*v3"):
        resolve_fusion_config(str(tmp_path / "missing.json"))


def test_none_means_the_untuned_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMSTREAM_FUSION_CONFIG", "none")
    monkeypatch.delenv("SIMSTREAM_TEXT_MODEL", raising=False)
    settings = Settings()
    total = sum(DEFAULT_WEIGHTS.values())
    assert load_weights(settings) == pytest.approx({f: w / total for f, w in DEFAULT_WEIGHTS.items()})
    assert load_fusion_options(settings) == {}
    info = describe(settings, load_weights(settings))
    assert info["fusion_config"]["source"] == "SIMSTREAM_FUSION_CONFIG" and info["text_model"]["source"] == "default"


def test_config_command_prints_what_is_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    from simstream.cli import main

    monkeypatch.delenv("SIMSTREAM_FUSION_CONFIG", raising=False)
    monkeypatch.setenv("SIMSTREAM_TEXT_MODEL", "some-model")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert "fusion-weights-v5" in result.output and "some-model  [SIMSTREAM_TEXT_MODEL]" in result.output
    assert "lexicon" in result.output and "fitted by the next simstream migrate" in result.output
    assert "metric         ip  [default]" in result.output
    monkeypatch.setenv("SIMSTREAM_METRIC", "l2")
    assert "metric         l2  [SIMSTREAM_METRIC]" in CliRunner().invoke(main, ["config"]).output
    monkeypatch.setenv("SIMSTREAM_FUSION_CONFIG", "v9")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 1 and "v9" in result.output


def test_the_shipped_configs_are_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"configs/*.json"' in pyproject and CONFIG_DIR.name == "configs" and CONFIG_DIR.parent.name == "encoders"
    assert {"v1", "v2", "v3", "v4", "v5", "multilingual-v1", "multilingual-v2"} <= set(shipped_configs())


def test_v5_is_v4_plus_a_match_decision() -> None:
    """The same vectors (equal field specs: a migration from v4 carries every segment) under another
    model tag (``-m<digest>``), because the lists gain each entry's match probability."""
    from simstream.encoders.fusion import ProductEncoder, load_match_model

    v4, v5 = (ProductEncoder(Settings(fusion_config=v, image_enabled=False)) for v in ("v4", "v5"))
    assert v4.match is None and load_match_model(Settings(fusion_config="v4")) is None
    assert v5.match is not None and v5.match == load_match_model(Settings(fusion_config="v5"))
    assert v5.field_specs() == v4.field_specs() and v5.weights == v4.weights
    assert v5.model == v4.model.replace(":", f"-m{v5.match.digest}:", 1) != v4.model
    assert set(v5.match.fields) <= set(v5.fields) and 0 < v5.match.threshold < 1
    # fitted on its text model's cosines: another text model gets no decision
    assert load_match_model(Settings(fusion_config="v5", text_model="use:multilingual-v3")) is None
    assert load_match_model(Settings(fusion_config="v5", text_model="minilm-products-v2")) is not None


def test_a_match_block_over_an_unknown_field_is_refused(tmp_path: Path) -> None:
    from simstream.encoders.fusion import load_match_model

    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"weights": {"text": 1.0}, "match": {"fields": ["colour"], "coef": [1.0, 0.0],
                                                                     "intercept": 0.0, "threshold": 0.5}}))
    with pytest.raises(ValueError, match="colour"):
        load_match_model(Settings(fusion_config=bad))


def test_multilingual_v2_is_v1_plus_a_decision_on_its_own_text_models_cosines() -> None:
    from simstream.encoders.fusion import load_match_model
    from simstream.encoders.fusion_config import read_fusion_config

    v1, v2 = (read_fusion_config(Settings(fusion_config=v)) for v in ("multilingual-v1", "multilingual-v2"))
    assert v2["weights"] == v1["weights"] and v2["options"] == v1["options"]
    assert v2["options"]["text_model"] == "use:multilingual-v3"
    assert load_match_model(Settings(fusion_config="multilingual-v1")) is None
    decision = load_match_model(Settings(fusion_config="multilingual-v2"))
    assert decision is not None and 0 < decision.threshold < 1
    assert {d["data"] for d in v2["match"]["trained_on"]} >= {"abt_buy", "ember_ali"}
    # another text model than the one it was fitted with: no decision
    assert load_match_model(Settings(fusion_config="multilingual-v2", text_model="minilm-products-v2")) is None
