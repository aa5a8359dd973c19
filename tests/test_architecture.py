"""The house plan, checked on the import graph of ``src/hmoe`` (parsed with ``ast``, not run).

Arrows run one way: ``jobs -> platform -> models, search_spaces -> config, schema``. Inside the
platform each room (``core``, ``data``, ``tracking``, ``training``, ``search``, ``analysis``;
the top-level modules ``experiment`` and ``api`` count as rooms of their own) imports others
without a cycle, and training and analysis never import each other: the loop reaches the
analysis monitor through its epoch-end hook. No module takes part in an import cycle, lazy
(function-level) and ``TYPE_CHECKING`` imports included, and every ``hmoe`` import names a
module that exists.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "hmoe"
PLATFORM = "hmoe.platform"
# the layer of each top-level part; a module imports only its own part and lower layers
LAYERS = {
    "jobs": 3,
    "platform": 2,
    "models": 1,
    "search_spaces": 1,
    "config": 0,
    "schema": 0,
    "": 0,  # the package itself (its version)
}
APART = {("training", "analysis"), ("analysis", "training")}


def discover(src: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under ``src/hmoe``: dotted name -> (file, is a package)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _targets(node: ast.AST, package: str) -> Iterator[tuple[str, str | None]]:
    """(imported module, imported name or None) of one import statement."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, None
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        for alias in node.names:
            yield base, alias.name


def import_graph(modules: Mapping[str, tuple[Path, bool]]) -> tuple[dict, list[str]]:
    """module -> the hmoe modules it imports (anywhere in its file), and the unresolved ones."""
    graph: dict[str, set[str]] = {}
    missing = []
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for module, attr in _targets(node, package):
                if module != PACKAGE and not module.startswith(PACKAGE + "."):
                    continue
                if attr is not None and f"{module}.{attr}" in modules:
                    target = f"{module}.{attr}"  # ``from pkg import submodule``
                elif module in modules:
                    target = module
                else:
                    missing.append(f"{name}: {module}")
                    continue
                if target != name:
                    edges.add(target)
    return graph, missing


def part(module: str) -> str:
    """``hmoe.platform.training.trainer`` -> ``platform``; ``hmoe`` -> ``""``."""
    return module.split(".")[1] if "." in module else ""


def room(module: str) -> str:
    """The room of a platform module: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else "__init__"


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = itertools.count()

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(src: Path) -> list[str]:
    """Every way ``src/hmoe`` breaks the plan, one line each (empty: it keeps it)."""
    modules = discover(src)
    graph, missing = import_graph(modules)
    out = [f"imports a module that does not exist: {m}" for m in missing]
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            pa, pb = part(a), part(b)
            sideways = LAYERS[pb] == LAYERS[pa] > 0 and pa != pb
            if LAYERS[pb] > LAYERS[pa] or sideways:
                out.append(f"arrow against the plan: {a} -> {b} ({pa or PACKAGE} -> {pb})")
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    rooms: dict[str, set[str]] = {}
    for a, targets in graph.items():
        if not a.startswith(PLATFORM + "."):
            continue
        for b in targets:
            ra, rb = room(a), room(b) if b.startswith(PLATFORM + ".") else None
            if rb is None or ra == rb:
                continue
            rooms.setdefault(ra, set()).add(rb)
            if (ra, rb) in APART:
                out.append(f"{ra} must not import {rb}: {a} -> {b}")
    out += [f"cycle between platform rooms: {' <-> '.join(c)}" for c in cycles(rooms)]
    return out


def test_the_imports_follow_the_house_plan():
    assert violations(SRC) == []


def test_the_rooms_exist():
    modules = discover(SRC)
    for name in ("core", "data", "training", "search", "tracking", "analysis"):
        assert modules[f"{PLATFORM}.{name}"][1], name
    assert f"{PACKAGE}.jobs.services.cluster" in modules and f"{PACKAGE}.jobs.demo" in modules


def _write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / "hmoe" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


BASE = {
    "__init__.py": "",
    "config.py": "",
    "models/__init__.py": "",
    "models/zoo.py": "from hmoe import config\n",
    "jobs/__init__.py": "",
    "jobs/cli.py": "import hmoe.platform.api\n",
    "platform/__init__.py": "",
    # the run composes training with the analysis monitor
    "platform/api.py": (
        "from hmoe.platform.training import loop\nfrom hmoe.platform.analysis import monitor\n"
    ),
    "platform/training/__init__.py": "",
    "platform/training/loop.py": "from hmoe.models import zoo\n",
    "platform/analysis/__init__.py": "",
    "platform/analysis/monitor.py": "from hmoe.models.zoo import build\n",
}


def test_a_tree_that_keeps_the_plan_passes(tmp_path):
    assert violations(_write(tmp_path, BASE)) == []


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        # training importing analysis, even lazily inside a function
        (
            "platform/training/loop.py",
            "def f():\n    from hmoe.platform.analysis.monitor import m\n",
            "training must not import analysis",
        ),
        ("models/zoo.py", "import hmoe.platform.api\n", "arrow against the plan"),
        ("platform/training/loop.py", "from hmoe.jobs import cli\n", "arrow against the plan"),
        ("platform/training/loop.py", "import hmoe.platform.gone\n", "does not exist"),
        # a relative import that closes a cycle, only under TYPE_CHECKING
        (
            "models/zoo.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import extra\n",
            "import cycle",
        ),
    ],
)
def test_each_kind_of_breach_is_caught(tmp_path, name, text, expected):
    files = dict(BASE) | {name: text}
    if "extra" in text:
        files["models/extra.py"] = "from hmoe.models import zoo\n"
    found = violations(_write(tmp_path, files))
    assert any(expected in line for line in found), found


def test_a_cycle_between_rooms_is_caught_where_no_module_cycle_is(tmp_path):
    files = dict(BASE) | {
        "platform/data/__init__.py": "",
        "platform/data/reader.py": "from hmoe.platform.training import loop\n",
        "platform/training/read.py": "from hmoe.platform.data import reader\n",
    }
    found = violations(_write(tmp_path, files))
    assert any("cycle between platform rooms" in line for line in found), found
    assert not any(line.startswith("import cycle") for line in found), found


@pytest.mark.parametrize(
    ("stored", "now"),
    [
        # a pyfunc flavor's loader_module, in the MLmodel file of a model logged before
        ("hmoe.platform.serving\n_load_pyfunc", "hmoe.platform.tracking.serving"),  # old path
        # the wrapper class of a model logged in the pickle format
        (
            "hmoe.platform.model_registry\nPositionalModel",  # old path
            "hmoe.platform.tracking.registry",
        ),
        # a search's Tune state names its trial function
        ("hmoe.platform.tune\ntrial_driver", "hmoe.platform.search.tune"),  # old path
    ],
)
def test_module_paths_in_stored_artifacts_still_load(stored, now):
    import importlib
    import pickle

    module, name = stored.split("\n")
    # protocol 0's GLOBAL opcode: what an unpickler does with a class or function reference
    loaded = pickle.loads(f"c{module}\n{name}\n.".encode())
    assert loaded is getattr(importlib.import_module(now), name)
    assert importlib.import_module(module) is importlib.import_module(now)
