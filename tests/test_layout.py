"""Test files are named after the module they test, so a module's tests are found by its name.

``tests/test_<name>.py`` starts with ``test_<module>``, where ``<module>`` is a module or package of
``src/eat_keras`` written as its path below the package joined by ``_`` (``weights_pt_reader``) or
as its last part alone (``pt_reader``); what follows is free (``test_pt_reader_bounds.py``,
``test_train_fit.py``). Tests of the benchmark tools are ``test_tools_<module>`` by the same rule over
``tools/``. A test file in a subfolder of ``tests/`` may also be named after a module beside it
(``upstream_reference/test_torch_reference.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from shared_data import REPO_ROOT

TESTS_DIR = REPO_ROOT / "tests"

# Rules about the whole tree rather than one module: each reads every source file, so no module
# name fits them.
TREE_RULE_TESTS = frozenset({"test_import_rules", "test_function_length", "test_layout"})


def module_names(root: Path, files: Iterable[Path]) -> set[str]:
    """The names a test file may start with for these modules: full path joined by ``_``, last part."""
    names = set()
    for path in files:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and not parts[-1].startswith("_"):
            names.update({"_".join(parts), parts[-1]})
    return names


def allowed_names(folder: Path) -> set[str]:
    """Every name a test file in ``folder`` may be named after."""
    package = REPO_ROOT / "src" / "eat_keras"
    tools = REPO_ROOT / "tools"
    names = module_names(package, package.rglob("*.py"))
    names |= {f"tools_{name}" for name in module_names(tools, tools.rglob("*.py"))}
    if folder != TESTS_DIR:
        names |= module_names(folder, (p for p in folder.glob("*.py") if not p.name.startswith("test_")))
    return names


def is_named_after_a_module(stem: str, names: set[str]) -> bool:
    return stem in TREE_RULE_TESTS or any(stem == f"test_{n}" or stem.startswith(f"test_{n}_") for n in names)


def misnamed_test_files() -> list[str]:
    found = []
    for path in sorted(TESTS_DIR.rglob("test_*.py")):
        if not is_named_after_a_module(path.stem, allowed_names(path.parent)):
            found.append(str(path.relative_to(TESTS_DIR)))
    return found


def test_every_test_file_is_named_after_a_module() -> None:
    assert misnamed_test_files() == [], "rename after the module tested (see this file's docstring)"


@pytest.mark.parametrize(
    ("stem", "allowed"),
    [
        ("test_pt_reader_bounds", True),
        ("test_weights_pt_reader", True),
        ("test_train", True),
        ("test_tools_bench_profile", True),
        ("test_import_rules", True),
        ("test_tag_memory", False),  # "tag" is no module: tagging.py is
        ("test_pt", False),  # a prefix of a module name is not the name
        ("test_tools_no_such_tool", False),
        ("test_bench", False),  # tools' modules only with the tools_ prefix
    ],
)
def test_the_rule_tells_names_apart(stem: str, allowed: bool) -> None:
    assert is_named_after_a_module(stem, allowed_names(TESTS_DIR)) is allowed
