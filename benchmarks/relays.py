"""The relays under test: geotrack serve, and the Node.js references, as real processes.

Each run starts a fresh relay on free loopback ports with a fresh SQLite file in a
temporary directory, waits until it accepts connections, and stops it with SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks import procstat

ROOT: Final = Path(__file__).resolve().parent.parent
NODE_DIR: Final = Path(__file__).resolve().parent / "node"
_STAMP: Final = ".geotrack-bench-installed"


@dataclass(frozen=True, slots=True)
class RelayKind:
    """One relay implementation: how to start it and how clients talk to it."""

    name: str
    #: "geotrack" (geotrack's wire protocol, also spoken by the Node ws relay) or "socketio".
    framing: str
    description: str
    #: The source tree whose ``geotrack`` package runs as ``python -m geotrack serve``
    #: (this checkout, or a baseline revision's: see :mod:`benchmarks.baseline`); None for
    #: the Node.js relays.
    tree: Path | None = None

    @property
    def is_node(self) -> bool:
        return self.tree is None


GEOTRACK: Final = RelayKind(
    "geotrack", "geotrack", "geotrack serve (Python, websockets)", tree=ROOT
)
NODE_WS: Final = RelayKind("node-ws", "geotrack", "Node.js ws + better-sqlite3")
SOCKETIO: Final = RelayKind("socketio", "socketio", "Node.js socket.io + better-sqlite3")
ALL: Final = (GEOTRACK, NODE_WS, SOCKETIO)


class SetupError(Exception):
    """A relay or its dependencies could not be set up; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def node_versions() -> dict[str, str]:
    """Node.js and the reference packages' versions (empty when not installed)."""
    versions: dict[str, str] = {}
    node = shutil.which("node")
    if node is None:
        return versions
    versions["node"] = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    for package in ("ws", "socket.io", "better-sqlite3"):
        manifest = NODE_DIR / "node_modules" / package / "package.json"
        if manifest.exists():
            versions[package] = json.loads(manifest.read_text())["version"]
    return versions


def ensure_node_modules(log: Callable[[str], None]) -> None:
    """Install the reference relays' packages with ``npm ci`` unless the lock file's are there."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SetupError("node and npm are not installed")
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    want = hashlib.sha256(lock + (NODE_DIR / "package.json").read_bytes()).hexdigest()
    stamp = NODE_DIR / "node_modules" / _STAMP
    if stamp.exists() and stamp.read_text() == want:
        return
    log("installing the Node.js reference relays (npm ci; builds better-sqlite3, ~1 min)")
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SetupError(f"npm ci failed: {(done.stderr or done.stdout).strip()[-800:]}")
    stamp.write_text(want)


class RelayProcess:
    """One relay process on free ports with its own store, started and stopped by us."""

    def __init__(
        self, kind: RelayKind, workdir: Path, http: bool = False, extra: tuple[str, ...] = ()
    ) -> None:
        self.kind = kind
        self.workdir = workdir
        self.db = workdir / "store.db"
        self.port = free_port()
        self.http_port = free_port() if http else None
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{kind.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if self.kind.tree is not None:
            cmd = [
                sys.executable, "-m", "geotrack", "serve",
                "--port", str(self.port),
                "--store", f"sqlite:///{self.db}",
                "--stats-interval", "0",
                "-q",
            ]  # fmt: skip
            if self.http_port is not None:
                cmd += ["--http-port", str(self.http_port)]
            return cmd + list(self.extra)
        script = "relay_ws.js" if self.kind.name == "node-ws" else "relay_socketio.js"
        node = shutil.which("node") or "node"
        return [node, str(NODE_DIR / script), "--port", str(self.port), "--db", str(self.db)]

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("wb") as log:
            # The working directory is the tree too: ``python -m`` puts it first on sys.path.
            tree = self.kind.tree or ROOT
            self.proc = subprocess.Popen(
                self.command(),
                cwd=tree,
                env=environment(tree),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.http_port) if p is not None]
        while ports:
            if self.proc.poll() is not None:
                raise SetupError(f"{self.kind.name} exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise SetupError(f"{self.kind.name} did not listen within {timeout:.0f} s")
            try:
                with socket.create_connection(("127.0.0.1", ports[0]), timeout=0.5):
                    ports.pop(0)
            except OSError:
                time.sleep(0.05)

    def url(self, role: str) -> str:
        """The WebSocket URL for ``role`` ("publish" or "subscribe")."""
        if self.kind.framing == "socketio":
            query = "&role=subscribe" if role == "subscribe" else ""
            return f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket{query}"
        return f"ws://127.0.0.1:{self.port}/{role}"

    def peak_rss_kib(self) -> int:
        return procstat.status_kib(self.pid, "VmHWM")

    def rss_kib(self) -> int:
        return procstat.status_kib(self.pid, "VmRSS")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stored_rows(self) -> int:
        """Rows in the store (after stop)."""
        if not self.db.exists():
            return 0
        with sqlite3.connect(self.db) as conn:
            count: int = conn.execute("SELECT count(*) FROM positions").fetchone()[0]
            return count


def source_addresses(count: int) -> list[str]:
    """Loopback source addresses 127.0.0.2, 127.0.0.3, ... (each has its own ephemeral ports)."""
    return [f"127.0.0.{2 + i}" for i in range(count)]


def environment(tree: Path = ROOT) -> dict[str, str]:
    """Environment for child processes: ``tree`` (the repository) importable, no proxies.

    ``tree`` comes first on PYTHONPATH, ahead of the editable install of this checkout
    (whose finder Python consults after sys.path), so a baseline tree's ``geotrack`` is
    the one imported.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)
    return env
