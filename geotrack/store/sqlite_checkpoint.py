"""WAL checkpoints off the write path: the SQLite store's writer never checkpoints itself.

SQLite checkpoints automatically inside the ``COMMIT`` that takes the WAL past 1,000
pages: that one commit copies ~4 MB into the database file and fsyncs it, 7 to 10 ms
here, holding the store's write lock, so every frame waiting for an ack waits for it too,
and with ``serve --workers`` every sibling's commits queue behind it (about a third of
the time the workers' shared lock was held at 24,000 positions/s, docs/benchmarks.md).

A :class:`Checkpointer` turns that off on the writer's connection and does the copying on
a thread and a connection of its own, outside the lock: a ``PASSIVE`` checkpoint (it
never waits for readers or writers) at most every ``interval`` seconds while commits come.
The fsync of the database file happens there, beside the writer's.

One thing still needs the lock. SQLite starts the WAL over from its beginning (instead of
growing the file) only when a write begins and every frame in it has been copied; with
commits arriving during every checkpoint that moment may never come. So when a
checkpoint finds the WAL longer than ``restart_frames``, a second one follows at once,
holding the store's write lock: nothing new is appended meanwhile, it copies only what
was committed during the first, and the next commit starts the WAL over.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

__all__ = ["Checkpointer"]

log = logging.getLogger("geotrack.store")


class Checkpointer:
    """Checkpoints one SQLite file's WAL on a thread of its own, after commits.

    ``connect`` opens a connection to the file (called on the thread); ``lock`` returns
    the store's write lock (the one every write transaction holds) when it is needed.
    """

    #: Seconds between checkpoints while commits keep coming.
    interval: float = 0.1
    #: A WAL longer than this many frames (pages) is started over (see above): ~4 MiB, the
    #: length at which SQLite's own checkpoint runs. With 10,000 the single relay's p50 in
    #: scenario 15 was 1.1-1.6x what it was before (docs/benchmarks.md).
    restart_frames: int = 1000

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        lock: Callable[[], AbstractContextManager[object]],
    ) -> None:
        self._connect = connect
        self._lock = lock
        self._poked = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Checkpoints run, and those run holding the write lock to start the WAL over.
        self.runs = 0
        self.restarts = 0

    def committed(self) -> None:
        """A commit happened (any thread; cheap): checkpoint within ``interval``."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name="geotrack-sqlite-checkpoint", daemon=True
                    )
                    self._thread.start()
        self._poked.set()

    def close(self) -> None:
        """Stop the thread (after a last checkpoint of what was committed)."""
        with self._start_lock:
            self._stopping.set()
            thread = self._thread
        self._poked.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # the file is gone, say
            log.warning("WAL checkpoints stopped: %s", exc)
            return
        try:
            while True:
                self._poked.wait()
                self._poked.clear()
                if self._stopping.wait(self.interval):
                    self._checkpoint(conn)
                    return
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """A passive checkpoint; if the WAL is long, a second one holding the write lock."""
        try:
            frames = self._passive(conn)
            self.runs += 1
            if frames > self.restart_frames:
                # Only what was committed during the first one is left to copy.
                with self._lock():
                    self._passive(conn)
                self.restarts += 1
        except sqlite3.Error as exc:  # busy, say: the next poke tries again
            log.debug("a WAL checkpoint failed: %s", exc)
        except Exception:  # the lock, say: the thread must live on, or the WAL grows
            log.exception("a WAL checkpoint failed")

    @staticmethod
    def _passive(conn: sqlite3.Connection) -> int:
        """Copy what no reader still needs into the file; the WAL's length in frames."""
        _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames)
