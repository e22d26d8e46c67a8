"""The public surface: every module says what it exports, and nobody imports anything else.

Each module of the geotrack package has an ``__all__`` naming what other modules may import
from it. A name one geotrack module imports from another is in the other's ``__all__``, or
it is private (``_name``) and both modules are in the same package: private names are shared
between siblings only. ``geotrack.__all__`` is the documented API.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import geotrack

#: What the README and docs/architecture.md present as the library: the schema, the store
#: interface, the relay and the publishing client, and the exception tree.
DOCUMENTED_API = {
    "Ack",
    "FrameError",
    "GeotrackError",
    "InvalidParameter",
    "InvalidPosition",
    "Position",
    "Publisher",
    "Relay",
    "RelayConfig",
    "RelayError",
    "SourceError",
    "Store",
    "StoreError",
    "StoreNotFound",
    "SubscribeFilter",
    "UnsupportedStore",
    "__version__",
    "open_store",
    "subscribe",
}

#: Modules that do something when imported: the ``python -m geotrack`` entry point.
NOT_IMPORTED = {"geotrack.__main__"}


def _module_names() -> list[str]:
    names = ["geotrack"]
    for info in pkgutil.walk_packages(geotrack.__path__, "geotrack."):
        if info.name not in NOT_IMPORTED:
            names.append(info.name)
    return sorted(names)


MODULES = _module_names()


def _source(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    return Path(spec.origin)


def _package_of(name: str) -> str:
    """The package a module belongs to: itself for a package, else its parent."""
    spec = importlib.util.find_spec(name)
    assert spec is not None, name
    return name if spec.submodule_search_locations is not None else name.rpartition(".")[0]


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _imports(name: str) -> list[tuple[str, str, int]]:
    """(module, name, line) of every ``from geotrack... import name`` in a module's source,
    including the ones inside functions (lazy imports) and TYPE_CHECKING blocks."""
    found = []
    tree = ast.parse(_source(name).read_text(encoding="utf-8"))
    package = _package_of(name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        if source != "geotrack" and not source.startswith("geotrack."):
            continue
        for alias in node.names:
            if alias.name == "*":
                pytest.fail(f"{name}:{node.lineno}: star import from {source}")
            found.append((source, alias.name, node.lineno))
    return found


def test_the_walk_finds_the_package() -> None:
    # A walk that finds nothing would make every test below pass.
    assert {"geotrack.schema", "geotrack.schema.frames", "geotrack.cli", "geotrack.relay"} <= set(
        MODULES
    )
    assert len(MODULES) > 20


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_its_exports(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert isinstance(exported, list | tuple), f"{name}.__all__ is a {type(exported).__name__}"
    duplicates = sorted({n for n in exported if list(exported).count(n) > 1})
    assert not duplicates, f"{name}.__all__ lists {duplicates} more than once"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_modules_import_only_what_others_export(name: str) -> None:
    gaps = []
    for source, imported, line in _imports(name):
        if _is_module(f"{source}.{imported}"):
            continue  # `from geotrack import schema`: a module, not a name in one
        module: ModuleType = importlib.import_module(source)
        exported = getattr(module, "__all__", ())
        if imported in exported:
            continue
        if imported.startswith("_") and _package_of(source) == _package_of(name):
            continue  # a private name shared between modules of one package
        where = "private to its package" if imported.startswith("_") else "not in its __all__"
        gaps.append(f"{name}:{line} imports {imported} from {source} ({where})")
    assert not gaps, "\n".join(gaps)


def test_the_package_exports_the_documented_api() -> None:
    assert set(geotrack.__all__) == DOCUMENTED_API
    for name in geotrack.__all__:
        assert getattr(geotrack, name) is not None
    assert DOCUMENTED_API - {"__version__"} <= set(dir(geotrack))


def test_the_api_objects_are_the_ones_their_modules_define() -> None:
    from geotrack.client import Publisher, subscribe
    from geotrack.relay import Relay, RelayConfig

    assert geotrack.Relay is Relay
    assert geotrack.RelayConfig is RelayConfig
    assert geotrack.Publisher is Publisher
    assert geotrack.subscribe is subscribe
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = geotrack.no_such_name  # type: ignore[attr-defined]


def test_star_import_gives_the_documented_api() -> None:
    namespace: dict[str, object] = {}
    exec("from geotrack import *", namespace)
    assert set(namespace) - {"__builtins__"} == DOCUMENTED_API


def test_importing_geotrack_leaves_the_relay_and_client_until_used() -> None:
    # `geotrack tail`, `export` and library users reading a store pay nothing for asyncio
    # servers, websockets or aiohttp: the relay and the client load on first use.
    code = (
        "import sys, geotrack; "
        "print(sorted(m for m in ('geotrack.relay', 'geotrack.client', 'websockets', "
        "'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
