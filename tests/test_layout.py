"""The package layout holds: one import name, layers that only point down, no import cycles,
pymilvus only in ``simstream.index``, Kafka and Faust only in ``simstream.streams``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOTTOM = "bottom"  # the modules directly in simstream (core/): settings, errors, logs, records, clock
# Which layers each layer may import (besides itself and the bottom layer).
MAY_IMPORT = {
    BOTTOM: set(),
    "encoders": set(),
    "index": set(),
    "streams": {"encoders", "index"},
    "quality": {"encoders", "index", "streams"},
    "harness": {"encoders", "index", "streams", "serve"},  # serve: `simstream demo --serve`
    "serve": {"encoders", "index"},  # the read-only query API: never the stream
    "entry": {"encoders", "index", "streams", "quality", "harness", "serve"},  # simstream.cli, simstream.__main__
}
ENTRY_POINTS = {"simstream.cli", "simstream.__main__"}
MILVUS = ("pymilvus", "milvus_lite")
KAFKA = ("faust", "aiokafka", "confluent_kafka", "mode")


def package_dirs() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in config["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name, from the folders pyproject maps."""
    out: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            if package == "simstream" and len(rel.parts) > 1:
                continue  # only the bottom modules live directly in core/
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def layer(module: str) -> str:
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else BOTTOM


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def own(name: str, known: set[str]) -> str | None:
    """The module of ours that an imported name refers to (a module, or a name in one)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def upward_imports(mods: dict[str, Path]) -> list[str]:
    """Each import of one of our modules that the importer's layer may not make."""
    wrong = set()
    for name, path in mods.items():
        mine = layer(name)
        for target in {own(i, set(mods)) for i in imports(path)} - {None}:
            theirs = layer(target)  # type: ignore[arg-type]
            if theirs not in {mine, BOTTOM} | MAY_IMPORT[mine]:
                wrong.add(f"{name} ({mine}) imports {target} ({theirs})")
    return sorted(wrong)


def import_cycles(mods: dict[str, Path]) -> list[str]:
    """The modules that reach themselves through imports (a package importing its parent aside)."""
    graph = {name: {t for i in imports(path) if (t := own(i, set(mods))) and t != name and not
                    name.startswith(t + ".")} for name, path in mods.items()}
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node == start:
                cycles.append(start)
                break
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
    return sorted(cycles)


def client_imports(mods: dict[str, Path], libraries: tuple[str, ...], allowed: str) -> list[str]:
    """Imports of ``libraries`` from modules outside the package ``allowed``."""
    return sorted({f"{name} imports {lib}" for name, path in mods.items() if not name.startswith(allowed)
                   for i in imports(path) for lib in libraries if i == lib or i.startswith(lib + ".")})


def test_every_module_imports_only_its_layer_and_those_below() -> None:
    mods = modules()
    assert {"simstream.settings", "simstream.streams.app", "simstream.index.store"} <= set(mods)
    wrong = upward_imports(mods)
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    cycles = import_cycles(modules())
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("libraries, allowed", [(MILVUS, "simstream.index"), (KAFKA, "simstream.streams")])
def test_third_party_clients_stay_in_their_layer(libraries: tuple[str, ...], allowed: str) -> None:
    offenders = client_imports(modules(), libraries, allowed)
    # bench/ and the quality tools go through simstream.index as well
    offenders += sorted(f"bench/{p.name} imports {lib}" for p in (REPO / "bench").glob("*.py") for i in imports(p)
                        for lib in MILVUS if libraries == MILVUS and (i == lib or i.startswith(lib + ".")))
    assert not offenders, "\n".join(offenders)


def test_the_detectors_catch_mistakes_in_probe_modules(tmp_path: Path) -> None:
    """The three detectors above, run on the real modules plus probe files with known mistakes,
    report exactly those mistakes: an upward import (a lazy one, inside a function), a bottom
    module importing a layer, a cycle, and Milvus and Kafka clients outside their layers."""
    probes = {
        "simstream.encoders.probe": "import pymilvus\nfrom confluent_kafka.admin import AdminClient\n\n\n"
                                    "def later():\n    from simstream.streams.app import Worker\n",
        "simstream.probe_bottom": "from simstream.serve.app import create_app\n",
        "simstream.index.probe_a": "import simstream.index.probe_b\n",
        "simstream.index.probe_b": "from simstream.index import probe_a\n",
        # allowed: streams may import encoders and index, and Kafka
        "simstream.streams.probe_ok": "import aiokafka\nfrom simstream.encoders.fusion import ProductEncoder\n",
    }
    mods = modules()
    assert {"simstream.streams.app", "simstream.serve.app", "simstream.encoders.fusion"} <= set(mods)
    for name, text in probes.items():
        mods[name] = tmp_path / f"{name}.py"
        mods[name].write_text(text)
    assert upward_imports(mods) == [
        "simstream.encoders.probe (encoders) imports simstream.streams.app (streams)",
        "simstream.probe_bottom (bottom) imports simstream.serve.app (serve)",
    ]
    assert import_cycles(mods) == ["simstream.index.probe_a", "simstream.index.probe_b"]
    assert client_imports(mods, MILVUS, "simstream.index") == ["simstream.encoders.probe imports pymilvus"]
    assert client_imports(mods, KAFKA, "simstream.streams") == ["simstream.encoders.probe imports confluent_kafka"]


def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: an in-place build would leave build/lib/ in the
    # repository, a second copy of every module (pymilvus outside index/, to any scanner).
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True, timeout=600)
    (wheel,) = tmp_path.glob("simstream-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert zf.read(top_level).decode().split() == ["simstream"]
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"simstream"}
    assert "simstream = simstream.cli:main" in entry_points
    for needed in ("simstream/streams/app.py", "simstream/streams/schemas/product_event.schema.json",
                   "simstream/harness/sample/catalog.jsonl", "simstream/py.typed", "simstream/serve/static/index.html"):
        assert needed in names


def test_a_text_only_worker_imports_no_image_model_library() -> None:
    """timm and torchvision (and through them torch's compiler) cost ~1 s of every worker start;
    only a worker that encodes images imports them (encoders/image.py imports them where used)."""
    code = ("import sys, simstream.cli; from simstream.streams.runtime import run_worker; "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
