"""The house rules of the source tree: small modules, short functions (counted as formatted).

Limits (docs/contributing.md): a module of ``src/pope`` at most 700 lines, a function at most
120 lines including its signature and docstring. ``ruff format --check`` in the test command
keeps the line counts those of the formatted code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pope

SRC = Path(pope.__file__).resolve().parent
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 120
MODULES = sorted(SRC.rglob("*.py"))


def _long_functions(tree: ast.AST, limit: int) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1 + len(node.decorator_list)
            if n > limit:
                out.append((node.name, n))
    return out


def test_the_checks_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    assert _long_functions(tree, MAX_FUNCTION_LINES) == [("f", MAX_FUNCTION_LINES + 1)]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_size(path):
    text = path.read_text()
    n = text.count("\n")
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(SRC)} has {n} lines"
    long = _long_functions(ast.parse(text), MAX_FUNCTION_LINES)
    assert not long, f"{path.relative_to(SRC)}: functions over {MAX_FUNCTION_LINES} lines: {long}"
