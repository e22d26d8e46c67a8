"""What the workers of one ``geotrack serve --workers N`` share besides the store.

Two things, both through a directory the supervisor creates for the run:

* Hand-overs. SQLite has no notification across processes, and reading a sibling's rows
  back from the file costs every worker as much as storing them. Each worker binds a UNIX
  datagram socket ``wake-<index>`` there and, after each commit that stored something,
  sends every sibling the commit's positions (:mod:`~geotrack.relay.handoff` makes and
  reads the datagrams): the sibling delivers them at once. A datagram that cannot be sent
  (a sibling restarting, its queue full) is dropped: the sibling finds the gap and reads
  those rows from the store instead.
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
    """One worker's end of the hand-overs and metrics shared with its siblings."""

    #: Bytes asked for the socket's send buffer (the kernel caps it at ``wmem_max``): a
    #: sibling that is busy for a moment must not make a commit's datagrams be dropped.
    send_buffer: int = 4 * 1024 * 1024

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self._peers = [str(self._wake_path(i)) for i in range(count) if i != index]
        path = self._wake_path(index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this worker's previous life
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        # A datagram must fit the send buffer whole (Linux reports it doubled).
        sndbuf = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        #: The largest datagram worth sending (a commit's hand-over is split to fit).
        self.datagram_limit = max(4096, min(256 * 1024, sndbuf // 4))
        self._buffer = bytearray(self.datagram_limit + 64 * 1024)
        #: Datagrams that could not be sent (the siblings read those rows from the store).
        self.unsent = 0

    def _wake_path(self, index: int) -> Path:
        return self.directory / f"wake-{index}"

    @property
    def peers(self) -> int:
        """How many siblings there are."""
        return len(self._peers)

    def send(self, data: bytes) -> None:
        """Send one datagram to every sibling (never blocks; any thread)."""
        for peer in self._peers:
            try:
                self._socket.sendto(data, peer)
            except OSError:  # restarting (no socket yet), or its queue is full
                self.unsent += 1

    def listen(
        self, loop: asyncio.AbstractEventLoop, receive: Callable[[memoryview], None]
    ) -> None:
        """Call ``receive`` in ``loop`` with each datagram the siblings send (a view
        valid only during the call). A datagram too large for the buffer is dropped."""
        buffer = self._buffer
        view = memoryview(buffer)

        def drain() -> None:
            while True:
                try:
                    size, _, flags, _ = self._socket.recvmsg_into([buffer])
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # closed under us
                    return
                if flags & socket.MSG_TRUNC:
                    continue
                receive(view[:size])

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
