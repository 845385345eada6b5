"""The import graph's layering: generic code never imports a world; worlds never import recipes.

Parsed with ``ast`` (no module is imported), so an import hidden inside a function counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The installed code: the package and the card's top-level folders.
SOURCE_ROOTS = ("lightning_unlearn", "callbacks", "datamodules")

TINYWORLD = "lightning_unlearn.tinyworld"
PRETRAINING = "lightning_unlearn.pretraining"

# Where importing the tiny world is allowed: the world itself, the recipes that train it, and the
# composition roots that choose a world (named one by one, so a new importer is a conscious choice).
MAY_IMPORT_TINYWORLD = (
    "lightning_unlearn/tinyworld/",
    "lightning_unlearn/pretraining/",
    "lightning_unlearn/unlearning_module.py",  # builds TinyWorldBackbone when no --model.pretrained
    "lightning_unlearn/stream_evaluation.py",  # the stream's evaluation: the tiny classifier for a tiny backbone
    "lightning_unlearn/export.py",  # exports the tiny UNet (and how to sample it) when the run had no --model.pretrained
    "lightning_unlearn/cli.py",
    "datamodules/",  # a stream's data meets its world here (default requests and vocabulary)
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth (functions too).

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); relative
    imports are resolved against the file's package; ``importlib.import_module("x")`` with a
    literal name counts as an import of ``x``.
    """
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _sources() -> list[Path]:
    return sorted(p for root in SOURCE_ROOTS for p in (REPO / root).rglob("*.py"))


def _importers(package: str, allowed: tuple[str, ...]) -> list[str]:
    offenders = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        if any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in allowed):
            continue
        offenders += [f"{rel}:{line} imports {m}" for line, m in imported_modules(path) if _is_under(m, package)]
    return sorted(set(offenders))


def test_the_allowed_importers_of_the_tiny_world_exist():
    # A renamed composition root must not leave a stale entry that silently allows nothing.
    assert [a for a in MAY_IMPORT_TINYWORLD if not (REPO / a).exists()] == []


def test_generic_code_does_not_import_the_tiny_world():
    """Backbone, prompts, requests, methods, callbacks, evaluation, report...: no import of
    ``lightning_unlearn.tinyworld``, not even one deferred inside a function."""
    assert _importers(TINYWORLD, MAY_IMPORT_TINYWORLD) == []


def test_only_the_recipes_import_the_pretraining_recipes():
    """The recipes sit apart from the world they train: the tiny world (and everything else in
    the package) never imports them; configs name them by class path. The one exception is the
    root command line, which dispatches ``train.py score`` (the recipes' grid, other seeds)."""
    assert _importers(PRETRAINING, ("lightning_unlearn/pretraining/", "lightning_unlearn/cli.py")) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from lightning_unlearn.tinyworld.concepts import STYLES", True),
        ("def f():\n    from lightning_unlearn.tinyworld.unet import build_tiny_unet", True),
        ("from lightning_unlearn import tinyworld", True),
        ("import lightning_unlearn.tinyworld.renderer as r", True),
        ("from .tinyworld import concepts", True),
        ("import importlib\nimportlib.import_module('lightning_unlearn.tinyworld.classifier')", True),
        ("from lightning_unlearn.prompts import PromptTemplates", False),
        ("from lightning_unlearn import tinyworldly", False),
    ],
)
def test_the_scanner_sees_every_form_of_import(tmp_path, source, expected):
    # The check is only as good as its parser: each spelling of the import must be caught.
    package = tmp_path / "lightning_unlearn"
    package.mkdir()
    (package / "generic.py").write_text(source + "\n")
    found = [m for _, m in imported_modules(package / "generic.py", tmp_path) if _is_under(m, TINYWORLD)]
    assert bool(found) is expected
