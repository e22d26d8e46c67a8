"""What the workers of one ``geotrack serve --workers N`` share besides the store.

Two things, both through a directory the supervisor creates for the run:

* A wake-up. SQLite has no notification across processes, so a worker's change-feed
  follower would only see a sibling's rows at its next poll. Each worker binds a UNIX
  datagram socket ``wake-<index>`` there and, after each commit that stored something,
  sends one byte to every sibling's socket; a sibling that reads it ends its follower's
  wait at once (:meth:`~geotrack.relay.server.Relay.wake_follower`). A datagram that
  cannot be sent (a sibling restarting, its buffer full of unread wake-ups) is dropped:
  the poll still finds the rows, only later, and a full buffer means a wake-up is pending.
* Metrics. Each worker writes its /metrics families to ``metrics-<index>.json`` once a
  second; whichever worker answers a scrape sends every worker's samples, labelled
  ``worker="<index>"`` (:func:`merged_families`), and the supervisor's restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from geotrack.relay.metrics import Family

__all__ = [
    "RESTARTS_FILE",
    "SharedWriteLock",
    "Siblings",
    "merged_families",
    "share_write_lock",
    "write_restarts",
]

#: The supervisor's count of restarted workers, in the shared directory.
RESTARTS_FILE = "restarts.json"
#: A sibling's metrics older than this (seconds) are left out: the worker is gone.
STALE_AFTER = 10.0


class SharedWriteLock:
    """A store's write lock held across sibling processes too: an ``flock`` on a shared file.

    SQLite makes a writer that finds the file locked by another process sleep in its busy
    handler, 1 to 25 ms a try, however soon the lock is free; workers that commit hundreds
    of times a second each would wait out those sleeps on every collision. Taking this
    lock around every write transaction queues them in the kernel instead, which wakes the
    next one as soon as the lock is let go; SQLite then finds the file unlocked.
    """

    def __init__(self, inner: AbstractContextManager[object], path: Path) -> None:
        self._inner = inner
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> SharedWriteLock:
        self._inner.__enter__()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._inner.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._inner.__exit__(None, None, None)

    def close(self) -> None:
        """Release the lock file (when no write can be under way any more)."""
        os.close(self._fd)


def share_write_lock(store: object, path: Path) -> SharedWriteLock | None:
    """Queue this SQLite store's writes on the kernel lock at ``path`` (:class:`SharedWriteLock`).

    Every process that does this for one file (the workers of ``serve --workers``) takes
    turns writing without SQLite's busy-handler sleeps. None for another kind of store.

    The SQLite store has no public hook for this, so its write lock (the one every write
    transaction, prune batch and ping takes) is wrapped in place. The benchmark (scenario
    17, docs/benchmarks.md) shows what it buys: without it, colliding commits wait out
    SQLite's busy-handler sleeps.
    """
    from geotrack.store.sqlite import SQLiteStore

    if not isinstance(store, SQLiteStore):
        return None
    lock = SharedWriteLock(store._lock, path)
    store._lock = lock  # type: ignore[assignment]
    return lock


class Siblings:
    """One worker's end of the wake-ups and metrics shared with its siblings."""

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self._peers = [str(self._wake_path(i)) for i in range(count) if i != index]
        path = self._wake_path(index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this worker's previous life
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)

    def _wake_path(self, index: int) -> Path:
        return self.directory / f"wake-{index}"

    def notify(self, *_: object) -> None:
        """Tell every sibling that rows were committed (never blocks; a stored hook)."""
        for peer in self._peers:
            try:
                self._socket.sendto(b"!", peer)
            except OSError:  # restarting (no socket yet) or a wake-up already pending
                continue

    def listen(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        """Call ``wake`` in ``loop`` whenever siblings' wake-ups arrive."""

        def drain() -> None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    self._socket.recv(64)
            wake()

        loop.add_reader(self._socket.fileno(), drain)

    def close(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Stop listening and release the socket."""
        if loop is not None:
            loop.remove_reader(self._socket.fileno())
        self._socket.close()

    # -- metrics ------------------------------------------------------------------------

    def save(self, families: list[Family]) -> None:
        """Write this worker's families for the siblings to read (atomically)."""
        data = [[f.name, f.type, f.help, f.samples] for f in families]
        path = self.directory / f"metrics-{self.index}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)

    def load(self) -> dict[int, list[Family]]:
        """The siblings' families by worker index, leaving out stale or unreadable ones."""
        out: dict[int, list[Family]] = {}
        now = time.time()
        for i in range(self.count):
            if i == self.index:
                continue
            path = self.directory / f"metrics-{i}.json"
            try:
                if now - path.stat().st_mtime > STALE_AFTER:
                    continue
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out[i] = [
                Family(name, kind, text, [(s, tuple(map(tuple, lbl)), v) for s, lbl, v in samples])
                for name, kind, text, samples in data
            ]
        return out

    def restarts(self) -> int:
        """Workers the supervisor has restarted so far."""
        try:
            value = json.loads((self.directory / RESTARTS_FILE).read_text())["restarts"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return int(value)

    def view(self, own: list[Family]) -> list[Family]:
        """/metrics for a scrape of this worker: every worker's families (a metrics view)."""
        return merged_families({self.index: own, **self.load()}, self.count, self.restarts())


def merged_families(
    by_worker: dict[int, list[Family]], workers: int, restarts: int
) -> list[Family]:
    """Families with every worker's samples, each labelled ``worker``, in first-seen order."""
    merged: dict[str, Family] = {}
    for index in sorted(by_worker):
        for family in by_worker[index]:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Family(family.name, family.type, family.help)
            label = ("worker", str(index))
            into.samples.extend((s, (label, *labels), v) for s, labels, v in family.samples)
    count = Family("geotrack_workers", "gauge", "Worker processes of this relay (serve --workers).")
    count.add(workers)
    restarted = Family(
        "geotrack_worker_restarts_total",
        "counter",
        "Workers that died and were started again by the supervisor.",
    )
    restarted.add(restarts)
    return [*merged.values(), count, restarted]


def write_restarts(directory: Path, restarts: int) -> None:
    """The supervisor's side of :meth:`Siblings.restarts`."""
    temporary = directory / (RESTARTS_FILE + ".tmp")
    temporary.write_text(json.dumps({"restarts": restarts}))
    os.replace(temporary, directory / RESTARTS_FILE)
