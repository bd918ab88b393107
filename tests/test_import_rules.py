"""Import rules of the package, checked by reading the source (nothing is imported).

1. No module imports another module's underscore-prefixed name. Every import statement counts here,
   wherever it stands (module level, ``if TYPE_CHECKING:``, inside functions), and so does reading
   ``module._name`` through an imported eat_keras module: a private name is private to its module
   however it is reached. Dunder names (``__version__``) are public by convention.
2. No import cycle among ``eat_keras`` modules. Counted here are the imports that run while a module
   is being imported: module level and class bodies, including inside top-level ``if``/``try``, but
   not inside functions (they run only once every module is initialised, so they cannot meet a
   half-initialised module; the CLI defers TensorFlow that way) and not under ``if TYPE_CHECKING:``
   (never executed). ``from package import name`` is an edge to ``package.name`` when that is a
   module, else to ``package``. Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` first, so
   that is an edge too, except where the importer lives inside ``a.b`` itself (its own package is
   already initialising by then). These package edges are what makes a cycle through an
   ``__init__`` that re-exports submodules visible.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared_data import REPO_ROOT

PACKAGE = "eat_keras"
SOURCE_ROOT = REPO_ROOT / "src"


@dataclass(frozen=True)
class ImportedName:
    """One name an import statement (or a ``module.attr`` read) takes from an eat_keras module."""

    importer: str
    module: str  # the eat_keras module the name is taken from
    name: str  # "" when a whole module is imported
    line: int
    at_import_time: bool  # runs while the importer is being imported (see the module docstring)


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    modules = {}
    for path in sorted((SOURCE_ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _absolute_module(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module a ``from X import ...`` reads, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


_DEFERRED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _nodes(parent: ast.AST, at_import_time: bool = True) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``parent``, each with whether it runs at import time."""
    for child in ast.iter_child_nodes(parent):
        runs = at_import_time and not isinstance(child, _DEFERRED)
        yield child, runs
        if _is_type_checking_guard(child):
            for node in child.body:  # never executed; its else branch is
                yield node, False
                yield from _nodes(node, False)
            for node in child.orelse:
                yield node, runs
                yield from _nodes(node, runs)
        else:
            yield from _nodes(child, runs)


def imported_names(importer: str, path: Path, modules: dict[str, Path]) -> list[ImportedName]:
    """What ``importer`` takes from other eat_keras modules, statement by statement."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[ImportedName] = []
    module_aliases: dict[str, str] = {}  # local name → eat_keras module it is bound to
    for node, now in _nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.append(ImportedName(importer, alias.name, "", node.lineno, now))
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute_module(importer, is_package, node)
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.append(ImportedName(importer, submodule, "", node.lineno, now))
                    module_aliases[alias.asname or alias.name] = submodule
                else:
                    found.append(ImportedName(importer, source, alias.name, node.lineno, now))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
        ):
            found.append(ImportedName(importer, module_aliases[node.value.id], node.attr, node.lineno, False))
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(modules: dict[str, Path]) -> list[str]:
    problems = []
    for importer, path in modules.items():
        for imported in imported_names(importer, path, modules):
            private_module = any(_is_private(part) for part in imported.module.split("."))
            if imported.module != importer and (private_module or _is_private(imported.name)):
                what = f"{imported.module}.{imported.name}" if imported.name else imported.module
                problems.append(f"{importer} (line {imported.line}) uses {what}")
    return problems


def _initialised_by_import(importer: str, module: str) -> list[str]:
    """``module`` and the packages above it whose ``__init__`` importing it may run."""
    parts = module.split(".")
    enclosing = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [m for m in enclosing if m != importer and not importer.startswith(m + ".")]


def import_time_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for importer, path in modules.items():
        for imported in imported_names(importer, path, modules):
            if imported.at_import_time:
                graph[importer].update(m for m in _initialised_by_import(importer, imported.module) if m in modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None (depth-first search)."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target in on_stack:
                return stack[stack.index(target) :] + [target]
            if target not in done and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    found = module_files()
    assert f"{PACKAGE}.weights.mapping" in found  # the walk found the package
    return found


def test_no_module_imports_another_modules_private_name(modules):
    problems = private_imports(modules)
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_no_import_cycle_among_package_modules(modules):
    cycle = find_cycle(import_time_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# --- the checks themselves catch what they are meant to catch -------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {
        ".".join([PACKAGE, *Path(rel).with_suffix("").parts]).removesuffix(".__init__"): root / PACKAGE / rel
        for rel in files
    }


def test_private_name_checks_see_every_form_of_import(tmp_path):
    modules = _write_package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'\n",
            "a.py": "_hidden = 1\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "from eat_keras import __version__\n"
                "if TYPE_CHECKING:\n    from eat_keras.a import _hidden\n"
            ),
            "c.py": "def f():\n    from . import a\n    return a._hidden\n",
            "d.py": "def g():\n    from .a import _hidden as visible\n    return visible\n",
        },
    )
    problems = private_imports(modules)
    assert [p.split(" ")[0] for p in problems] == ["eat_keras.b", "eat_keras.c", "eat_keras.d"]


def test_cycle_check_counts_import_time_edges_only(tmp_path):
    modules = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from eat_keras import b\n",
            "b.py": "def later():\n    from eat_keras import a\n",
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import eat_keras.a\n",
        },
    )
    assert find_cycle(import_time_graph(modules)) is None
    (tmp_path / PACKAGE / "b.py").write_text("try:\n    from eat_keras.a import x\nexcept ImportError:\n    pass\n")
    assert find_cycle(import_time_graph(modules)) == ["eat_keras.a", "eat_keras.b", "eat_keras.a"]


def test_cycle_check_sees_cycles_through_a_package_init(tmp_path):
    modules = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "from eat_keras.models import family\n",
            "models/family.py": "from eat_keras.models import base\nfrom eat_keras.weights.slots import Slot\n",
            "models/base.py": "",
            "weights/__init__.py": "",
            "weights/slots.py": "from eat_keras.models.base import Base\n",
        },
    )
    assert find_cycle(import_time_graph(modules)) == [
        "eat_keras.models", "eat_keras.models.family", "eat_keras.weights.slots", "eat_keras.models"
    ]
