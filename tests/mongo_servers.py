"""MongoDB servers for the tests: nx-27017 in a subprocess, and a live replica set.

nx-27017 is a MongoDB wire-protocol server backed by SQLite. One runs per test session on
a free 127.0.0.1 port (``--data-dir``: one SQLite file per database, so each test gets a
fresh, isolated database); the live suite uses the server ``GEOTRACK_TEST_MONGO_URI`` names.

Where nx-27017 or MongoDB itself differs from the store contract, the difference is listed
below with the reason, and the backend marks the affected contract test xfail, so the
contract file stays the same for every backend.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from geotrack.errors import StoreError
from geotrack.store import Store, open_store

StoreFactory = Callable[[], Store]

LIVE_URI_VARIABLE = "GEOTRACK_TEST_MONGO_URI"
LIVE_SKIP_REASON = (
    f"{LIVE_URI_VARIABLE} is not set (point it at a MongoDB replica set to run the live suite)"
)

# Contract tests that cannot pass on nx-27017, and why (marked xfail, strict: a fixed
# nx-27017 makes them pass, and the mark must then go).
NX27017_DIFFERENCES: dict[str, str] = {
    "test_follow_since_time_replays_then_goes_live": (
        "nx-27017 limitation: it ignores startAtOperationTime (nx_27017/changestream.py: "
        "'no operation-time concept in NeoSQLite; starting from now'), so following from a "
        "time replays nothing; MongoDB replays from its oplog"
    ),
    "test_follow_events_since_time_replays": (
        "nx-27017 ignores startAtOperationTime (as above), for the events' stream too"
    ),
}

# Contract tests a real MongoDB may fail by design (not strict: depends on the server).
LIVE_DIFFERENCES: dict[str, str] = {
    "test_follow_since_time_replays_then_goes_live": (
        "MongoDB replays from its oplog only: since=0 predates it, and the server answers "
        "ChangeStreamHistoryLost (286), which the store reports as a StoreError"
    ),
}

_STARTUP_TIMEOUT = 20.0

# Runs nx-27017 in a child that, on Linux, gets SIGTERM when the test process dies, even by
# SIGKILL (prctl PR_SET_PDEATHSIG), so no server outlives a crashed test run.
_LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != parent:
    sys.exit("nx-27017 launcher: the test process is gone")
sys.argv[0] = "nx-27017"
from nx_27017.nx_27017 import main
main()
"""


class Nx27017:
    """One nx-27017 server process on 127.0.0.1; ``start()`` then ``stop()``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: MongoClient[dict[str, Any]] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, database: str, options: str = "serverSelectionTimeoutMS=5000") -> str:
        return f"mongodb://{self.address}/{database}" + (f"?{options}" if options else "")

    def start(self) -> None:
        from tests.conftest import free_port

        for _attempt in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            if self._launch():
                return
        raise RuntimeError(f"nx-27017 did not start: {self._output_tail()}")

    def _launch(self) -> bool:
        data = self.workdir / f"data-{self.port}"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-c",
            _LAUNCHER,
            str(os.getpid()),
            "--data-dir", str(data),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            # Its own pid and log files: the defaults in /tmp are shared by every nx-27017.
            "--pid-file", str(self.workdir / f"nx-{self.port}.pid"),
            "--log-file", str(self.workdir / f"nx-{self.port}.log"),
        ]  # fmt: skip
        with (self.workdir / "output.txt").open("wb") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client: MongoClient[dict[str, Any]] = MongoClient(
            self.url("admin", "serverSelectionTimeoutMS=250&connectTimeoutMS=250")
        )
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                client.admin.command("hello")
            except PyMongoError:
                time.sleep(0.05)
                continue
            self._client = client
            return True
        client.close()
        self._terminate()
        return False

    def _output_tail(self) -> str:
        try:
            return (self.workdir / "output.txt").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no output)"

    @property
    def client(self) -> MongoClient[dict[str, Any]]:
        assert self._client is not None, "the server is not running"
        return self._client

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(PyMongoError):
            self.client.drop_database(name)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._terminate()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


_NX_KEY = pytest.StashKey[Nx27017]()
_LIVE_KEY = pytest.StashKey[MongoClient[dict[str, Any]]]()


def nx27017_server(request: pytest.FixtureRequest) -> Nx27017:
    """The session's nx-27017 server, started on first use and stopped at session end."""
    config = request.config
    server = config.stash.get(_NX_KEY, None)
    if server is None or not server.running:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        server = Nx27017(factory.mktemp("nx27017"))
        # Registered before start() so that a failed start still cleans up.
        config.add_cleanup(server.stop)
        server.start()
        config.stash[_NX_KEY] = server
    return server


def fresh_database() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def with_database(uri: str, database: str) -> str:
    """``uri`` with its path (the database) replaced, options kept."""
    scheme, _, rest = uri.partition("://")
    query_at = rest.find("?")
    base, query = (rest[:query_at], rest[query_at:]) if query_at != -1 else (rest, "")
    at = base.rfind("@")
    slash = base.find("/", at + 1)
    hosts = base[:slash] if slash != -1 else base
    return f"{scheme}://{hosts}/{database}{query}"


def _mark_differences(
    request: pytest.FixtureRequest, differences: dict[str, str], **xfail: Any
) -> None:
    name = getattr(request.node, "originalname", request.node.name)
    if name in differences:
        request.node.add_marker(pytest.mark.xfail(reason=differences[name], **xfail))


def nx27017_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Store contract backend: a fresh database on the session's nx-27017."""
    server = nx27017_server(request)
    if request.node.module.__name__.endswith("store.test_contract"):
        # run=False: the failure is a 10-second wait for changes that never come.
        _mark_differences(request, NX27017_DIFFERENCES, strict=True, run=False)
    database = fresh_database()
    url = server.url(database)
    request.addfinalizer(lambda: server.drop_database(database))
    return lambda: open_store(url)


def live_uri() -> str | None:
    return os.environ.get(LIVE_URI_VARIABLE) or None


def live_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Store contract backend: a fresh database on GEOTRACK_TEST_MONGO_URI, dropped after."""
    uri = live_uri()
    if uri is None:
        pytest.skip(LIVE_SKIP_REASON)
    config = request.config
    admin = config.stash.get(_LIVE_KEY, None)
    if admin is None:
        admin = MongoClient(uri, serverSelectionTimeoutMS=10_000)
        config.stash[_LIVE_KEY] = admin
        config.add_cleanup(admin.close)
    if request.node.module.__name__.endswith("store.test_contract"):
        _mark_differences(request, LIVE_DIFFERENCES, strict=False, raises=StoreError)
    database = fresh_database()
    url = with_database(uri, database)

    def drop() -> None:
        with contextlib.suppress(PyMongoError):
            admin.drop_database(database)

    request.addfinalizer(drop)
    return lambda: open_store(url)
