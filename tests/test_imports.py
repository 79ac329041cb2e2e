"""The package's import graph has no cycles, and the modules that need no torch do not load it.

The graph is read from the sources with ``ast`` (see tests.support.import_graph); the finder
itself is tested first on a small fake package.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import t2starmap
from tests.support.import_graph import cycles, describe, import_graph, modules_of

SRC_PACKAGE = Path(t2starmap.__file__).resolve().parent


def write_package(root: Path, files: dict[str, str]) -> Path:
    """Files (relative path -> source) of a fake package ``pkg`` under root; returns pkg/."""
    for name, source in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / "pkg"


# --- the cycle finder on a fake package -------------------------------------------------------


def test_fake_package_cycle_found_and_type_checking_ignored(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": """
                from typing import TYPE_CHECKING
                import pkg.sub.c
                if TYPE_CHECKING:
                    from pkg.d import Thing
                """,
            "sub/__init__.py": "",
            "sub/c.py": "from .. import a\n",
            "d.py": "from pkg.b import something\n",
            "e.py": """
                import typing
                if typing.TYPE_CHECKING:
                    from . import d
                else:
                    import os
                """,
        },
    )
    graph = import_graph(package)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a"},
        "pkg.d": {"pkg.b"},
        "pkg.e": set(),
    }
    # d -> b is one way only (b's import of d is for type checkers): no cycle through d.
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert describe(cycles(graph)[0], graph) == (
        "{pkg.a, pkg.b, pkg.sub.c}: pkg.a -> pkg.b; pkg.b -> pkg.sub.c; pkg.sub.c -> pkg.a"
    )


def test_fake_package_function_local_import_counted(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "from pkg.x import run\n",
            "x.py": """
                def run():
                    from pkg import y
                    return y
                """,
            "y.py": """
                class Later:
                    def method(self):
                        import pkg.x as again
                        return again
                """,
        },
    )
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.x"}, "pkg.x": {"pkg.y"}, "pkg.y": {"pkg.x"}}
    assert cycles(graph) == [["pkg.x", "pkg.y"]]


def test_fake_package_names_that_are_not_modules_point_at_the_package(tmp_path: Path) -> None:
    """``from pkg import __version__`` is an edge to pkg itself; ``from .sub import name``
    inside a package's __init__ resolves against that package; other packages do not count."""
    package = write_package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'\n",
            "m.py": "from pkg import __version__\nimport numpy\nfrom os import path\n",
            "sub/__init__.py": "from .leaf import value\nfrom . import *\n",
            "sub/leaf.py": "value = 1\n",
        },
    )
    assert import_graph(package) == {
        "pkg": set(),
        "pkg.m": {"pkg"},
        "pkg.sub": {"pkg.sub.leaf"},
        "pkg.sub.leaf": set(),
    }
    assert cycles(import_graph(package)) == []


def test_modules_of_names_packages_by_their_folder(tmp_path: Path) -> None:
    package = write_package(tmp_path, {"__init__.py": "", "sub/__init__.py": "", "sub/z.py": ""})
    assert sorted(modules_of(package)) == ["pkg", "pkg.sub", "pkg.sub.z"]


# --- the real package ------------------------------------------------------------------------


def test_source_tree_is_the_one_under_test() -> None:
    assert (SRC_PACKAGE / "fit" / "solver.py").is_file(), SRC_PACKAGE
    assert "t2starmap.cli" in import_graph(SRC_PACKAGE)


def test_no_import_cycles() -> None:
    graph = import_graph(SRC_PACKAGE)
    found = cycles(graph)
    shown = "\n".join(describe(c, graph) for c in found)
    print(shown or "no import cycles")
    assert not found, f"import cycles between t2starmap modules:\n{shown}"


def absolute_imports(path: Path) -> list[str]:
    """The modules a source file imports by absolute name, wherever the import stands."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


def test_no_module_imports_the_tests() -> None:
    """Test support (the synthetic DICOM writers) is not shipped: src must not need it."""
    offenders = []
    for path in sorted(SRC_PACKAGE.rglob("*.py")):
        names = absolute_imports(path)
        offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert not offenders, offenders


#: The only modules that may use nibabel: every image read and write goes through nifti.py;
#: the simulator writes its phantoms itself.
NIBABEL_MODULES = ("nifti.py", "simulate.py")


def test_every_image_goes_through_nifti_py() -> None:
    offenders = []
    for path in sorted(SRC_PACKAGE.rglob("*.py")):
        if path.relative_to(SRC_PACKAGE).as_posix() in NIBABEL_MODULES:
            continue
        names = absolute_imports(path)
        offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "nibabel"]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "module",
    [
        "t2starmap.layout",
        "t2starmap.nifti",
        "t2starmap.report",
        "t2starmap.fit",
        "t2starmap.fit.limits",
        "t2starmap.fit.status",
        "t2starmap.derivatives",
    ],
)
def test_module_loads_without_torch(module: str) -> None:
    """Finding echo sets, reading NIfTI and building reports never fit: importing them in a
    fresh interpreter must leave torch unloaded (it takes seconds and much memory)."""
    code = (
        f"import sys, {module}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_PACKAGE.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"import {module} loaded torch: {proc.stdout.strip()}"


#: What each part of the package may import from the package (docs/architecture.md): a module
#: matching a prefix on the left may only import modules matching a prefix on the right
#: ("t2starmap" alone: the package root, for its __version__).
ALLOWED = {
    "t2starmap.fit": ("t2starmap.fit", "t2starmap.errors", "t2starmap.resources"),
    "t2starmap.b0": ("t2starmap.fit", "t2starmap.profiles"),
    "t2starmap.profiles": ("t2starmap.fit",),
    "t2starmap.noise": ("t2starmap.noise", "t2starmap.fit"),
    "t2starmap.report": (
        "t2starmap.report",
        "t2starmap.fit.status",
        "t2starmap.fit.limits",
        "t2starmap.derivatives",
        "t2starmap.summary",
        "t2starmap.profiles",
        "t2starmap.nifti",
        "t2starmap.atomic",
        "t2starmap.conventions",
        "t2starmap.resources",
        "t2starmap.errors",
        "t2starmap",
    ),
    "t2starmap.estimate": (
        "t2starmap.fit",
        "t2starmap.b0",
        "t2starmap.profiles",
        "t2starmap.noise",
        "t2starmap.parts",
        "t2starmap.nifti",
        "t2starmap.layout",
        "t2starmap.derivatives",
        "t2starmap.errors",
        "t2starmap",
    ),
}


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_the_architecture_allows(part: str) -> None:
    graph = import_graph(SRC_PACKAGE)
    allowed = ALLOWED[part]

    def matches(module: str, prefixes: tuple[str, ...]) -> bool:
        # the package root (its __version__) only itself, every other prefix its submodules
        return any(
            module == p or (p != "t2starmap" and module.startswith(p + ".")) for p in prefixes
        )

    offenders = [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        if matches(module, (part,))
        for target in sorted(targets)
        if not matches(target, allowed)
    ]
    assert not offenders, offenders


def test_only_the_workflow_imports_the_report_and_only_the_cli_the_workflow() -> None:
    graph = import_graph(SRC_PACKAGE)
    report_users = {m for m, t in graph.items() if any(x.startswith("t2starmap.report") for x in t)}
    assert {m for m in report_users if not m.startswith("t2starmap.report")} == {
        "t2starmap.workflow"
    }
    assert {m for m, t in graph.items() if "t2starmap.workflow" in t} == {"t2starmap.cli"}


def test_the_workflow_loads_the_pages_only_when_it_draws_them() -> None:
    """matplotlib, PIL and jinja2 take most of a second to import: the participant run loads
    them in a thread while its first set is fitted, so importing the workflow must not."""
    code = (
        "import sys, t2starmap.workflow\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'jinja2')"
        " or m == 't2starmap.report.participant')[:3])"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_PACKAGE.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
