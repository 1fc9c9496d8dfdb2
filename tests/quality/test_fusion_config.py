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
    assert "fusion-weights-v4" in result.output and "some-model  [SIMSTREAM_TEXT_MODEL]" in result.output
    assert "lexicon" in result.output and "fitted by the next simstream migrate" in result.output
    monkeypatch.setenv("SIMSTREAM_FUSION_CONFIG", "v9")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 1 and "v9" in result.output


def test_the_shipped_configs_are_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"configs/*.json"' in pyproject and CONFIG_DIR.name == "configs" and CONFIG_DIR.parent.name == "encoders"
    assert {"v1", "v2", "v3", "v4"} <= set(shipped_configs())
