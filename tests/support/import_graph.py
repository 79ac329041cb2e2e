"""The graph of imports between the modules of one package, read with ``ast`` (nothing is
imported), and its cycles.

An edge ``a -> b`` means module ``a`` names module ``b`` in an import statement, anywhere in
its body (function-local imports included), except under ``if TYPE_CHECKING:``, which never
runs. ``from pkg import x`` is an edge to the submodule ``pkg.x`` when one exists, else to
``pkg``; ``import pkg.a.b`` is an edge to ``pkg.a.b``. Parent packages that Python runs on
the way (``pkg/__init__.py``) are not edges of their own: they start first and do not make
cycles unless they import something back, which is then an edge of ``pkg``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path


def modules_of(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under ``package_dir`` (whose
    folder name is the top-level package)."""
    top = package_dir.name
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [top, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[ast.Import | ast.ImportFrom] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # the else branch of `if TYPE_CHECKING:` does run
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append(node)


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join([*anchor, *([node.module] if node.module else [])])


def imports_of(module: str, modules: Mapping[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports (itself excluded)."""
    path = modules[module]
    visitor = _Imports()
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in visitor.found:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = _base_of(node, module, is_package)
            names = [f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names]
        for name in names:
            owner = _owner(name, modules)
            if owner is not None and owner != module:
                targets.add(owner)
    return targets


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    modules = modules_of(package_dir)
    return {name: imports_of(name, modules) for name in modules}


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components, key=lambda c: (-len(c), c))


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The components with more than one module: each is at least one import cycle."""
    return [c for c in strongly_connected(graph) if len(c) > 1]


def describe(component: list[str], graph: Mapping[str, Iterable[str]]) -> str:
    """One line: the component's modules and the edges between them."""
    members = set(component)
    edges = sorted(f"{a} -> {b}" for a in component for b in graph.get(a, ()) if b in members)
    return f"{{{', '.join(component)}}}: " + "; ".join(edges)
