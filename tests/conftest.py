"""Shared fixtures: stores of every backend, free ports, sample files."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

# Imported now, not lazily by hypothesis's pytest plugin at the end of the session: on
# CPython 3.11.7, ast.parse (which pytest's assertion rewriting runs on that import) can
# fail with "SystemError: AST constructor recursion depth mismatch" when garbage collection
# runs finalizers in the middle of it, and by the end of a session there is garbage from
# closed sockets and event loops. Fixed in later CPython releases.
import hypothesis.internal.observability  # noqa: F401
import pytest

from geotrack.store import Store, open_store
from tests import mongo_servers

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

StoreFactory = Callable[[], Store]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sqlite_factory(tmp_path: Path) -> StoreFactory:
    # Every call opens the same file: a second call is a second client of one store.
    url = f"sqlite:///{tmp_path / 'store.db'}"
    return lambda: open_store(url)


# Backends the store contract runs against. The MongoDB module adds its own entries
# (nx-27017 over the wire, and a live replica set when GEOTRACK_TEST_MONGO_URI is set).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], StoreFactory]] = {
    "sqlite": lambda request, tmp_path: _sqlite_factory(tmp_path),
    "nx27017": mongo_servers.nx27017_backend,
    "mongo-live": mongo_servers.live_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A function opening (another client of) one fresh store of the parametrized backend."""
    opened: list[Store] = []
    make = BACKENDS[request.param](request, tmp_path)

    def factory() -> Store:
        store = make()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """One fresh store of each backend."""
    return store_factory()
