"""The schema package stays sans-I/O and in modules small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import geotrack.schema

PACKAGE = Path(geotrack.schema.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))

#: What the schema may import: computation only, nothing that reaches a socket, a file, a
#: database, a thread or an event loop.
ALLOWED = {
    "__future__",
    "collections",
    "dataclasses",
    "datetime",
    "functools",
    "json",
    "math",
    "msgspec",
    "re",
    "typing",
    "geotrack.errors",
    "geotrack.schema",
}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            names.add(node.module or "")
    return names


def _allowed(module: str) -> bool:
    return any(module == ok or module.startswith(ok + ".") for ok in ALLOWED)


def test_the_package_has_its_modules() -> None:
    assert {p.stem for p in MODULES} >= {"__init__", "time", "position", "frames", "filters"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_schema_module_touches_no_socket_file_or_database(path: Path) -> None:
    imported = _imported(path)
    assert imported, path  # a parse that found nothing would pass anything
    assert not {m for m in imported if not _allowed(m)}, path.name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_schema_module_reads_in_one_sitting(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 300, path.name
