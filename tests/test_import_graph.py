"""The project's own modules import each other without circles.

Every ``.py`` under the project's packages is parsed (nothing is imported), and every import
statement counts: module level, inside functions, under ``if TYPE_CHECKING:``. A circle, even
one Python tolerates at run time (a deferred import, a typing-only import), ties its modules
into one unit that can only be understood, tested and changed together.

Edges follow what the statement names, not what Python executes on the way: ``import a.b.c``
and ``from a.b import c`` (``c`` a module) point at ``a.b.c``; ``from a.b import name`` points
at ``a.b`` (its ``__init__``). The implicit import of parent packages is not an edge: a package's
``__init__`` re-exporting its own submodules would otherwise make every submodule that imports a
sibling look circular.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lightning_unlearn", "callbacks", "datamodules")
INSTALLED_AS = {"callbacks": "lightning_unlearn.callbacks", "datamodules": "lightning_unlearn.datamodules"}
"""Top-level source folders and the package they install as (pyproject.toml's package-dir)."""


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` as installed (a package's ``__init__.py`` is the package itself)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    parts[0] = INSTALLED_AS.get(parts[0], parts[0])
    return ".".join(parts)


def project_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``, by dotted (installed) name."""
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules that ``name`` (the file ``path``) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``from . import x`` in a.b.c (or in package a.b) means a.b
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules(root, packages)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or ``None`` if the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished (no circle through it)
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_project_has_no_import_circle():
    graph = import_graph()
    assert "lightning_unlearn.unlearning_module" in graph and "lightning_unlearn.callbacks.base" in graph, "the scan found the packages"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_methods_do_not_import_the_module_they_plug_into():
    # Methods see a MethodContext, never the LightningModule: not even for typing.
    graph = import_graph()
    methods = [name for name in graph if name.startswith("lightning_unlearn.methods")]
    assert methods
    for name in methods:
        assert "lightning_unlearn.unlearning_module" not in graph[name], name


@pytest.mark.parametrize("typing_only", [False, True])
def test_the_check_sees_deferred_and_typing_only_circles(tmp_path, typing_only):
    # A circle closed by an import inside a function or under TYPE_CHECKING still counts.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg import b\n\nclass A:\n    pass\n")
    closing = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n" if typing_only
               else "def f():\n    from .a import A\n    return A\n")
    (pkg / "b.py").write_text(closing)
    (pkg / "c.py").write_text("from pkg import A\nimport os\n")  # imports the package, not a circle
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None
