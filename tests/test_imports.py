"""No import circles in ``src/netsift``, counting the imports inside functions too.

The graph is read from the source (an AST walk, nothing is imported): an edge A -> B for every ``import`` or
``from ... import`` in A, wherever it stands (module level, inside a function, under ``if TYPE_CHECKING``),
``from P import x`` pointing at the submodule ``P.x`` when that is a file of the package and at ``P`` (its
``__init__``) otherwise. A package's lazy re-exports (``lazy_exports`` tables: string constants naming a
submodule, as ``".bundle"`` or ``"netsift.pipelines"``) count as imports of its ``__init__``. A circle is a
strongly connected component of more than one module (or a module importing itself).
"""

from __future__ import annotations

import pytest
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "netsift"


def module_files(root: Path = SRC / PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package's name -> its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _base(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a relative ``from`` import names."""
    if level == 0:
        return name or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def _target(name: str, modules: dict) -> str | None:
    """``name`` or its closest enclosing module of the package (``netsift.x.attr`` -> ``netsift.x``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (t := _target(alias.name, modules)) is not None:
                    out.add(t)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                t = sub if sub in modules else _target(base, modules)
                if t is not None:
                    out.add(t)
        elif is_package and isinstance(node, ast.Constant) and isinstance(node.value, str):
            # lazy re-exports: {"name": ".submodule"} tables of the package's __init__
            value = node.value
            if value.startswith(".") and value[1:].isidentifier() and f"{module}{value}" in modules:
                out.add(f"{module}{value}")
            elif value.startswith(f"{PACKAGE}.") and value in modules:
                out.add(value)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    arrows = [f"  {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return f"circle of {len(component)} modules:\n" + "\n".join(arrows)


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert len(graph) >= 50
    # a function-level import, a relative ``from . import x`` of a submodule, a lazy re-export
    assert "netsift.measure" in graph["netsift.selection.budget"] or any(
        "netsift.measure" in deps for deps in graph.values())
    assert "netsift.selection.methods" in graph["netsift.selection"]
    assert "netsift.pipelines" in graph["netsift"]


def test_the_cycle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "e2"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.slow
def test_no_import_circles():
    graph = import_graph()  # ~0.6 s for 84 modules on a busy core
    found = cycles(graph)
    assert not found, "import circles in src/netsift:\n" + "\n".join(_describe(c, graph) for c in found)
