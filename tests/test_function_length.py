"""No function in src/ is longer than a reader can take in at once (80 lines, docstring included)."""

from __future__ import annotations

import ast

from test_import_rules import module_files

MAX_LINES = 80


def long_functions(max_lines: int = MAX_LINES) -> list[str]:
    found = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > max_lines:
                    found.append(f"{module}.{node.name} ({length} lines, line {node.lineno})")
    return found


def test_no_function_is_longer_than_80_lines():
    assert long_functions() == []


def test_the_check_sees_long_functions():
    assert long_functions(max_lines=20), "every module is short? then the walk finds no functions"
