"""Dependencies point one way: devdiag_db <- mcp_devdiag <- orchestrator; no package imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package -> the first-party packages it may import (besides itself)
ALLOWED = {
    "devdiag_db": set(),
    "mcp_devdiag": {"devdiag_db"},
    "orchestrator": {"devdiag_db", "mcp_devdiag"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in the file, function-level and lazy ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    forbidden = set(ALLOWED) - ALLOWED[package] - {package}
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_packages(path) & forbidden
    }
    assert not offenders, f"{package} imports a layer above it: {offenders}"


def test_the_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from orchestrator import dbt\n    importlib.import_module('mcp_devdiag.x')\n")
    assert imported_packages(module) == {"orchestrator", "mcp_devdiag"}
