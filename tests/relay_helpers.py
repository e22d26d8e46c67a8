"""Running real relays on free loopback ports for tests, in-process or as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect

from geotrack.relay import Relay, RelayConfig
from geotrack.store import Store, open_store

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


async def publisher(relay: Relay, **kwargs: Any) -> ClientConnection:
    return await connect(relay.url + "/publish", open_timeout=5, **kwargs)


async def subscriber(relay: Relay, query: str = "", **kwargs: Any) -> ClientConnection:
    url = relay.url + "/subscribe" + (f"?{query}" if query else "")
    return await connect(url, open_timeout=5, max_size=None, **kwargs)


async def within(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


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
