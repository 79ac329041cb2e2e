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
from tests.support.files import EXAMPLE
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
    assert "t2starmap.cli.run" in import_graph(SRC_PACKAGE)


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


#: The only modules that may use nibabel: every image read and write goes through nifti.py
#: and nifti_write.py;
#: the simulator writes its phantoms through it too.
NIBABEL_MODULES = ("bids/nifti.py", "bids/nifti_write.py")


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
        "t2starmap.bids.layout",
        "t2starmap.bids.nifti",
        "t2starmap.report",
        "t2starmap.fit",
        "t2starmap.fit.limits",
        "t2starmap.fit.status",
        "t2starmap.bids.outputs",
        "t2starmap.workflows.t2smap",
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


#: The floors of the package, top down (docs/architecture.md): a module imports only from its
#: own part (the folder or module named here) or from a lower floor. Parts on one floor do not
#: import each other. The package root (``t2starmap``: its ``__version__``) is the base; its own
#: lazy re-export of ``fit_t2star`` is the public facade and not a module of any floor.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("t2starmap.cli", "t2starmap.__main__"),
    ("t2starmap.workflows",),
    ("t2starmap.config",),
    ("t2starmap.report", "t2starmap.convert", "t2starmap.sim"),
    ("t2starmap.bids",),
    ("t2starmap.b0", "t2starmap.noise"),
    ("t2starmap.fit",),
    ("t2starmap.errors", "t2starmap.resources", "t2starmap.interrupts", "t2starmap"),
)


def part_of(module: str) -> tuple[int, str]:
    """(floor index, part) of a package module; the longest matching part wins."""
    best: tuple[int, str] | None = None
    for index, parts in enumerate(FLOORS):
        for part in parts:
            inside = module == part or (part != "t2starmap" and module.startswith(part + "."))
            if inside and (best is None or len(part) > len(best[1])):
                best = (index, part)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    # ``python -m t2starmap`` is the command line; the base modules are one part
    if best[1] == "t2starmap.__main__":
        return best[0], "t2starmap.cli"
    return (best[0], "base") if best[0] == len(FLOORS) - 1 else best


def floor_offenders(graph: dict[str, set[str]]) -> list[str]:
    """Edges that go up a floor or sideways to another part of the same floor."""
    offenders = []
    for module, targets in sorted(graph.items()):
        if module == "t2starmap":
            continue
        floor, part = part_of(module)
        for target in sorted(targets):
            target_floor, target_part = part_of(target)
            if target_floor < floor or (target_floor == floor and target_part != part):
                offenders.append(f"{module} -> {target}")
    return offenders


def test_floor_rule_on_a_fake_graph() -> None:
    graph = {
        "t2starmap.fit.solver": {"t2starmap.errors"},
        "t2starmap.noise.choose": {"t2starmap.fit.solver", "t2starmap.b0.profiles"},
        "t2starmap.bids.nifti": {"t2starmap.workflows.participant", "t2starmap"},
        "t2starmap.cli.run": {"t2starmap.workflows.participant", "t2starmap.fit"},
    }
    assert floor_offenders(graph) == [
        "t2starmap.bids.nifti -> t2starmap.workflows.participant",
        "t2starmap.noise.choose -> t2starmap.b0.profiles",
    ]


def test_every_module_sits_on_a_floor_and_imports_only_downwards() -> None:
    graph = import_graph(SRC_PACKAGE)
    offenders = floor_offenders(graph)
    assert not offenders, offenders


def test_the_top_level_is_only_the_base_and_the_floors() -> None:
    """New code goes into a floor's folder: the package root holds only the base modules."""
    flat = sorted(p.stem for p in SRC_PACKAGE.glob("*.py"))
    assert flat == [
        "__init__",
        "__main__",
        "config",
        "errors",
        "interrupts",
        "resources",
    ], flat


def test_only_the_workflows_import_the_report_and_only_the_cli_the_workflows() -> None:
    """The report is drawn only by the orchestrators, and only the command lines run them."""
    graph = import_graph(SRC_PACKAGE)
    report_users = {m for m, t in graph.items() if any(x.startswith("t2starmap.report") for x in t)}
    assert {m for m in report_users if not m.startswith("t2starmap.report")} <= {
        "t2starmap.workflows.lazy_pages",  # the page module, loaded when first used
        "t2starmap.workflows.group",
        "t2starmap.workflows.methods",  # the methods paragraphs the runs write
    }
    workflow_users = {
        m
        for m, targets in graph.items()
        if not m.startswith("t2starmap.workflows")
        and any(x.startswith("t2starmap.workflows") for x in targets)
    }
    assert workflow_users <= {"t2starmap.cli.run", "t2starmap.cli.t2smap"}, workflow_users
    assert "t2starmap.cli.run" in workflow_users


def test_the_workflow_loads_the_pages_only_when_it_draws_them() -> None:
    """matplotlib, PIL and jinja2 take 0.4 s to import: the participant run loads them when
    it first draws a page, so importing the workflow must not."""
    code = (
        "import sys, t2starmap.workflows.participant\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'jinja2')"
        " or m == 't2starmap.report.participant')[:3])"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_PACKAGE.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_pages_are_not_imported_while_a_set_is_read_and_fitted(tmp_path: Path) -> None:
    """The page module's import holds the GIL nearly throughout (0.4 s): run beside a set's
    reading and fit, it slowed both at any ``--nprocs`` (section 8 of
    benchmarks/RESULTS_PARTICIPANT.md), so the run imports it when it first draws a page."""
    code = textwrap.dedent(
        f"""
        import sys
        import t2starmap.workflows.echo_set as sets
        from t2starmap.cli.run import main
        seen, fit = [], sets.fit_echo_set
        def watched(*args, **kwargs):
            result = fit(*args, **kwargs)
            seen.append(sorted(m for m in sys.modules if m.split(".")[0] in
                ("matplotlib", "jinja2") or m == "t2starmap.report.participant")[:3])
            return result
        sets.fit_echo_set = watched
        code = main([{str(EXAMPLE)!r}, {str(tmp_path / "out")!r}, "participant",
            "--skip-bids-validation", "-q", "--participant-label", "01", "--nprocs", "2"])
        print(code, seen, "t2starmap.report.participant" in sys.modules)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_PACKAGE.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 [[]] True", proc.stdout
