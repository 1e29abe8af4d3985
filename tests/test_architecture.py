"""The house rules for the core that a reviewer would otherwise have to check by eye."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import cloudproxy_cli.core

CORE = Path(cloudproxy_cli.core.__file__).parent
MAX_FUNCTION_LINES = 60


def core_modules() -> list[tuple[Path, ast.Module]]:
    paths = sorted(CORE.glob("*.py"))
    assert paths, f"no modules found in {CORE}"
    return [(path, ast.parse(path.read_text(), str(path))) for path in paths]


def function_lengths(tree: ast.Module) -> list[tuple[str, int, int]]:
    """(name, first line, number of lines) of every function, methods and nested ones included."""
    return [
        (node.name, node.lineno, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_core_function_is_longer_than_60_lines() -> None:
    too_long = [
        f"{path.name}:{line} {name} has {length} lines"
        for path, tree in core_modules()
        for name, line, length in function_lengths(tree)
        if length > MAX_FUNCTION_LINES
    ]
    assert not too_long, too_long


def test_the_length_check_sees_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def long() -> None:\n{body}\n")
    assert function_lengths(tree) == [("long", 1, MAX_FUNCTION_LINES + 1)]


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    foreign: list[str] = []
    for path, tree in core_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if (
                    top != "__future__"
                    and top not in sys.stdlib_module_names
                    and not (
                        name == "cloudproxy_cli.core" or name.startswith("cloudproxy_cli.core.")
                    )
                ):
                    foreign.append(f"{path.name}:{node.lineno} imports {name}")
    assert not foreign, foreign
