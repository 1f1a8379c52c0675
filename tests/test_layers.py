"""The layers of the code base, checked on its import graph: no import runs upward, none in a circle.

Bottom to top: the base (errors, settings), the model (and the parsers beside it), the weights,
the request, the runtime, the service, and the front doors (the command line, server.py,
gunicorn.conf.py). A module may import its own layer and the ones below; every import counts,
also those inside functions (they run too, only later). docs/architecture.md draws the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (layer, module prefixes), bottom first; the longest matching prefix wins
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("fastfit_engine.errors", "fastfit_engine.settings")),
    ("model", ("fastfit_engine.model", "parse_utils")),
    ("weights", ("fastfit_engine.weights", "fastfit_engine.synthetic")),
    ("request", ("fastfit_engine.request",)),
    ("runtime", ("fastfit_engine.runtime", "fastfit_engine")),  # the package facade exports the runtime
    ("service", ("fastfit_service",)),
    ("front", ("inference", "server", "gunicorn.conf")),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
SOURCES = ["fastfit_engine", "fastfit_service", "parse_utils", "inference.py", "server.py", "gunicorn.conf.py"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for source in SOURCES:
        path = ROOT / source
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            found[_module_name(file)] = file
    return found


MODULES = _modules()


def layer_of(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name)
    return None if best is None else best[1]


def imports_of(module: str, path: Path) -> set[str]:
    """Our modules that ``module`` imports (absolute names), wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert len(MODULES) > 60, sorted(MODULES)  # the scan found the code base
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_the_engine_package_shows_its_layers_as_folders():
    engine = ROOT / "fastfit_engine"
    assert {p.name for p in engine.iterdir() if (p / "__init__.py").is_file()} >= {"model", "weights", "request", "runtime"}


def test_no_import_runs_upward():
    upward = sorted(
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if RANK[layer_of(target)] > RANK[layer_of(module)]
    )
    assert upward == []


def test_the_parsers_know_nothing_of_the_engine():
    assert sorted((m, t) for m, ts in GRAPH.items() if m.startswith("parse_utils") for t in ts
                  if not t.startswith("parse_utils")) == []


def test_the_model_knows_nothing_of_requests():
    assert sorted((m, t) for m, ts in GRAPH.items() if layer_of(m) == "model" for t in ts
                  if layer_of(t) != "model" and layer_of(t) != "base") == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    # a package's __init__ that re-exports its submodules is no circle of its own: leave out
    # the edges from a submodule up to the package it belongs to
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in GRAPH.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder_finds_circles(graph, expected):
    assert _cycles(graph) == expected


def test_layer_rule_catches_an_upward_import():
    assert RANK[layer_of("fastfit_engine.runtime.engine")] > RANK[layer_of("fastfit_engine.model.pipeline")]
    assert layer_of("fastfit_engine.settings") == "base" and layer_of("fastfit_engine") == "runtime"
