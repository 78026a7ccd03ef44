"""The package's layers point one way: an import cycle, or a lower layer importing a
higher one, fails here. Every import counts, at module level or inside a function
(a lazy import hides a cycle; it does not remove it)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import xmrbench

ROOT = Path(xmrbench.__file__).parent

#: Layer -> the layers it may import (besides itself). Read bottom-up: the shared
#: leaves, the cell-config types, the pure core, data, the training engine, recipes,
#: stores and provenance, the runner, then the consumers of results.
ALLOWED: dict[str, set[str]] = {
    "xmrbench": set(),  # the package root: its version only
    "errors": set(),
    "params": set(),
    "registry": {"errors"},
    "papers": {"registry", "errors"},
    "config": {"errors", "params"},
    "core": {"errors", "params", "registry"},
    "data": {"errors", "params", "registry", "config", "core"},
    "engine": {"errors", "params", "registry", "config", "core", "data"},
    "recipe": {"errors", "params", "registry", "papers", "config", "core", "data", "engine"},
    "store": {"errors", "config", "core"},
    "provenance": {"xmrbench", "errors", "config", "core", "recipe"},
    "stats": {"errors", "core"},
    "runner": {"xmrbench", "errors", "params", "registry", "papers", "config", "core", "data", "engine", "recipe",
               "store", "provenance"},
    "gate": {"errors", "params", "registry", "papers", "config", "core", "data", "engine", "recipe", "store",
             "provenance", "stats", "runner"},
    "report": {"xmrbench", "errors", "papers", "config", "core", "recipe", "store", "provenance", "stats"},
    "bench": {"errors", "params", "registry", "config", "core", "data", "engine", "recipe", "store", "runner"},
    "cli": {"xmrbench", "errors", "params", "registry", "papers", "config", "core", "data", "engine", "recipe",
            "store", "provenance", "stats", "runner", "gate", "report", "bench"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["xmrbench", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the xmrbench modules it imports (anywhere in its source)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
            for target in targets:
                if target.split(".")[0] != "xmrbench":
                    continue
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    edges[name].add(target)
    return edges


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "xmrbench"


def _cycles(edges: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def test_every_layer_is_known():
    layers = {_layer(m) for m in _modules()}
    assert layers <= set(ALLOWED), f"new top-level module(s) without a layer: {sorted(layers - set(ALLOWED))}"


def test_no_import_cycle_between_modules():
    modules = _modules()
    assert _cycles(_imports(modules), set(modules)) == []


def test_no_import_cycle_between_layers():
    edges: dict[str, set[str]] = defaultdict(set)
    for src, targets in _imports(_modules()).items():
        edges[_layer(src)].update(_layer(t) for t in targets if _layer(t) != _layer(src))
    assert _cycles(edges, set(edges) | {t for ts in edges.values() for t in ts}) == []


def test_layers_import_only_below_themselves():
    bad = sorted(
        f"{src} imports {target}"
        for src, targets in _imports(_modules()).items()
        for target in targets
        if _layer(target) != _layer(src) and _layer(target) not in ALLOWED[_layer(src)]
    )
    assert bad == []


def test_core_imports_no_higher_layer():
    """The models, losses, kernels and metrics are usable without recipes, data, the engine or the runner."""
    forbidden = {"recipe", "data", "runner", "report", "cli", "engine", "gate", "store", "stats", "bench", "config"}
    bad = sorted(f"{s} imports {t}" for s, ts in _imports(_modules()).items() if _layer(s) == "core"
                 for t in ts if _layer(t) in forbidden)
    assert bad == []


def test_the_checker_sees_cycles_and_upward_imports(tmp_path):
    """The walker itself: a planted cycle and an upward import are found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges, {"a", "b", "c", "d"}) == [["a", "b", "c"]]
    pkg = tmp_path / "xmrbench"
    (pkg / "core").mkdir(parents=True)
    (pkg / "recipe").mkdir()
    for p in (pkg / "__init__.py", pkg / "core" / "__init__.py", pkg / "recipe" / "__init__.py"):
        p.write_text("")
    (pkg / "core" / "m.py").write_text("def f():\n    from xmrbench.recipe.r import g\n")
    (pkg / "recipe" / "r.py").write_text("from xmrbench.core import m\n")
    global ROOT
    saved, ROOT = ROOT, pkg
    try:
        modules = _modules()
        edges = _imports(modules)
        assert "xmrbench.recipe.r" in edges["xmrbench.core.m"]
        assert _cycles(edges, set(modules)) == [["xmrbench.core.m", "xmrbench.recipe.r"]]
    finally:
        ROOT = saved
