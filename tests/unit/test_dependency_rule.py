"""The dependency rule (architecture: layout): ``domain`` imports only the standard
library, pydantic, ``eventsourcing.domain`` and ``scipy.stats`` (distributions for the
dose-finding designs and stopping rules: pure computation, no I/O). import-linter
checks the layers; this checks what import-linter cannot express (a subpackage of an
external package)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "domain"
ALLOWED_EXTERNAL = ("pydantic", "pydantic_core", "eventsourcing.domain", "scipy.stats")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_domain_imports_only_stdlib_pydantic_eventsourcing_domain_and_scipy_stats():
    offending = []
    for path in sorted(DOMAIN.rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "domain" or top == "__future__":
                continue
            if any(name == a or name.startswith(a + ".") for a in ALLOWED_EXTERNAL):
                continue
            offending.append(f"{path.name}: {name}")
    assert offending == []
