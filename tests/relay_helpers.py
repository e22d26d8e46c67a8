"""Running real relays on free loopback ports for tests, in-process or as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

from geotrack.auth import Tokens
from geotrack.relay import Relay, RelayConfig
from geotrack.relay.http import HttpListener
from geotrack.store import Store, open_store
from tests.factories import T0_S

T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine to completion with a hard time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def running_relay(
    db: Path | str, store: Store | None = None, **config: Any
) -> AsyncIterator[Relay]:
    """A started relay on 127.0.0.1 and a free port, stopped afterwards."""
    own = store is None
    if store is None:
        store = open_store(f"sqlite:///{db}")
    relay = Relay(store, RelayConfig(**{"port": 0, "stats_interval": 0, **config}))
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
        if own:
            store.close()


@contextlib.asynccontextmanager
async def running_http(
    db: Path | str,
    store: Store | None = None,
    *,
    http_tokens: Tokens | Literal["relay"] | None = "relay",
    **config: Any,
) -> AsyncIterator[tuple[Relay, HttpListener, aiohttp.ClientSession]]:
    """A relay, its HTTP listener on a free port, and a client session for the listener.

    The listener checks ``http_tokens``: by default the relay's own (``tokens=`` in
    ``config``); given apart, the WebSocket side can stay open while HTTP is guarded.
    """
    async with running_relay(db, store, **config) as relay:
        tokens = relay.config.tokens if http_tokens == "relay" else http_tokens
        listener = HttpListener(relay, "127.0.0.1", 0, tokens, shutdown_timeout=5)
        await listener.start()
        try:
            timeout = aiohttp.ClientTimeout(total=20)
            async with aiohttp.ClientSession(listener.url, timeout=timeout) as http:
                yield relay, listener, http
        finally:
            await listener.stop()


async def publisher(relay: Relay, **kwargs: Any) -> ClientConnection:
    return await connect(relay.url + "/publish", open_timeout=5, **kwargs)


async def subscriber(relay: Relay, query: str = "", **kwargs: Any) -> ClientConnection:
    url = relay.url + "/subscribe" + (f"?{query}" if query else "")
    return await connect(url, open_timeout=5, max_size=None, **kwargs)


async def within(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def fix(device: str = "car-1", i: int = 0, **extra: Any) -> dict[str, Any]:
    """The ``i``-th fix of ``device`` as a publisher sends it (``ts`` in Unix seconds)."""
    return {
        "device": device,
        "lat": 52.5 + i * 1e-4,
        "lon": 13.4 + i * 1e-4,
        "ts": T0_S + i,
        **extra,
    }


async def roundtrip(ws: Any, frame: Any) -> dict[str, Any]:
    """Send ``frame`` (JSON-encoded unless text or bytes already) and read the one reply."""
    await ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    reply: dict[str, Any] = json.loads(await within(ws.recv()))
    return reply


async def collect(ws: Any, n: int, seconds: float = 10.0) -> list[dict[str, Any]]:
    """At least ``n`` positions a subscriber receives, each frame a non-empty array."""
    got: list[dict[str, Any]] = []
    while len(got) < n:
        frame = json.loads(await within(ws.recv(), seconds))
        assert isinstance(frame, list) and frame, "subscribers get non-empty arrays"
        got.extend(frame)
    return got


@contextlib.contextmanager
def relay_process(
    store_url: str, port: int, *extra: str, cwd: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``geotrack serve`` as a real process, waited for until it listens; killed after."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geotrack",
            "serve",
            "--port",
            str(port),
            "--store",
            store_url,
            "--stats-interval",
            "0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=env,
    )
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def wait_listening(
    port: int, proc: subprocess.Popen[str] | None = None, timeout: float = 20
) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"relay exited with {proc.returncode}: {out}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Lines:
    """The lines a child writes to a pipe, read by a thread so that the child never blocks."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        except (OSError, ValueError):  # the pipe was closed under us: the child is gone
            pass
        finally:
            with self._changed:
                self.closed = True
                self._changed.notify_all()

    def wait(self, until: Callable[[list[str]], bool], timeout: float = 20) -> list[str]:
        """The lines so far, once ``until(lines)`` holds; fails the test after ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: until(self.lines) or self.closed, timeout)
            lines = list(self.lines)
        assert until(lines), f"gave up waiting after {timeout} s; got {len(lines)} lines:\n" + (
            "\n".join(lines[-20:])
        )
        return lines

    def join(self, timeout: float = 10) -> list[str]:
        self._thread.join(timeout)
        with self._changed:
            return list(self.lines)

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)
