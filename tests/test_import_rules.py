"""The core imports the standard library only (import-linter can list only known packages)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "src" / "cloudproxy_cli" / "core"


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_core_imports_only_the_standard_library_and_itself() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert files, CORE
    outside = {
        f"{path.name}: {module}"
        for path in files
        for module in imported_modules(path)
        if module.split(".")[0] not in sys.stdlib_module_names
        and module != "cloudproxy_cli.core"
        and not module.startswith("cloudproxy_cli.core.")
    }
    assert outside == set()


def test_the_check_sees_a_third_party_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom pydantic import BaseModel\nfrom . import x\n")
    assert imported_modules(sample) == {"os", "pydantic"}
