"""Every public module says what it exports (``__all__``), as httpx does: each name listed exists,
and each public class, function and constant the module defines is listed (so a reader can trust
``__all__`` as the module's interface)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import simstream

# Every package's modules: the library surface, and the offline tools (quality/) and harness
# (demo, embedded servers, exactness proof) that commands and benches import.
PACKAGES = ("simstream", "simstream.streams", "simstream.encoders", "simstream.index", "simstream.serve",
            "simstream.quality", "simstream.harness")


def _modules() -> list[str]:
    out = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and not info.ispkg:
                out.append(f"{name}.{info.name}")
    return sorted(out)


def _defined(module: object) -> set[str]:
    """Public classes, functions and UPPER_CASE constants defined (not imported) in the module."""
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper() and len(t.id) > 1}
    return {n for n in names if not n.startswith("_")}


def test_the_modules_are_found() -> None:
    assert {"simstream.limits", "simstream.streams.outbox", "simstream.streams.pipeline", "simstream.cli",
            "simstream.quality.evaluate", "simstream.harness.exactness"} <= set(_modules())


@pytest.mark.parametrize("name", _modules())
def test_the_export_list_is_the_interface(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}: duplicates in __all__"
    assert not [n for n in exported if not hasattr(module, n)], f"{name}: __all__ names what it does not have"
    missing = _defined(module) - set(exported)
    assert not missing, f"{name}: public names missing from __all__: {sorted(missing)}"


def test_the_top_level_package_exports_its_version() -> None:
    assert simstream.__all__ == ["__version__"] and simstream.__version__
