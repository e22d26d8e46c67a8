"""WAL checkpoints off the write path (geotrack/store/sqlite_checkpoint.py), on real files."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from geotrack.schema import Position, ms_to_ts
from geotrack.store.sqlite import SQLiteStore
from geotrack.store.sqlite_checkpoint import Checkpointer

PAGE = 4096


def _commit(store: SQLiteStore, tag: str, n: int, rows: int = 100) -> None:
    """One commit of ``rows`` fixes spread over 500 devices (as a fleet's are)."""
    store.write(
        [
            Position(device=f"{tag}-{i % 500}", lat=1.0, lon=2.0, ts=ms_to_ts(n * 1000 + i))
            for i in range(rows)
        ],
        origin=tag,
    )


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "geotrack-sqlite-checkpoint"]


def test_commits_leave_the_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    wal = tmp_path / "store.db-wal"
    store = SQLiteStore(db)
    store.checkpointer.interval = 3600.0  # it would only run at close
    for n in range(120):
        _commit(store, "a", n)
    # SQLite's own checkpoint in a commit would have started the WAL over at ~1,000 pages.
    assert wal.stat().st_size > 1500 * PAGE
    assert store.checkpointer.runs == 0
    store.close()
    assert store.checkpointer.runs == 1  # the last one, at close
    assert not _checkpoint_threads()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM positions").fetchone() == (12_000,)


def test_the_wal_stays_short_while_commits_never_stop(tmp_path: Path) -> None:
    # Two threads commit back to back, so a passive checkpoint almost never finds the WAL
    # all copied when a write begins: without the restart under the lock the WAL grows
    # by every page written (about 12,000 here; checked by hand).
    db = tmp_path / "store.db"
    wal = tmp_path / "store.db-wal"
    store = SQLiteStore(db)
    store.checkpointer.interval = 0.001
    store.checkpointer.restart_frames = 300
    biggest = 0

    def commit_many(tag: str) -> None:
        nonlocal biggest
        for n in range(150):
            _commit(store, tag, n)
            biggest = max(biggest, wal.stat().st_size)

    threads = [threading.Thread(target=commit_many, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert store.checkpointer.restarts > 0
    assert biggest < 4000 * PAGE, f"the WAL grew to {biggest // PAGE} pages"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM positions").fetchone() == (30_000,)


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_restart_holds_the_write_lock(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    checkpointer = store.checkpointer
    checkpointer.interval = 0.001
    checkpointer.restart_frames = 0  # every checkpoint starts the WAL over
    try:
        _commit(store, "a", 0)
        assert _until(lambda: checkpointer.restarts == 1)
        with store._lock:  # a write transaction under way
            checkpointer.committed()
            assert _until(lambda: checkpointer.runs == 2)  # the passive one runs beside it
            time.sleep(0.2)
            assert checkpointer.restarts == 1  # the one that starts the WAL over waits
        assert _until(lambda: checkpointer.restarts == 2)
    finally:
        store.close()


def test_commits_of_duplicates_only_are_checkpointed_too(tmp_path: Path) -> None:
    # Each still writes a page (AUTOINCREMENT's counter): a client resending the same fixes
    # forever must not grow the WAL forever.
    store = SQLiteStore(tmp_path / "store.db")
    checkpointer = store.checkpointer
    checkpointer.interval = 0.001
    try:
        _commit(store, "a", 0, rows=10)
        assert _until(lambda: checkpointer.runs == 1)
        for _ in range(3):
            _commit(store, "a", 0, rows=10)
            assert _until(lambda: checkpointer.runs >= 2)
    finally:
        store.close()


def test_a_failing_lock_does_not_end_the_checkpoints(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    SQLiteStore(db).close()
    failures = [OSError("the lock file is gone")]

    def lock() -> AbstractContextManager[object]:
        if failures:
            raise failures.pop()
        return threading.Lock()

    checkpointer = Checkpointer(lambda: sqlite3.connect(db), lock)
    checkpointer.interval = 0.001
    checkpointer.restart_frames = -1  # every checkpoint takes the lock
    try:
        checkpointer.committed()
        assert _until(lambda: checkpointer.runs == 1)
        checkpointer.committed()
        assert _until(lambda: checkpointer.restarts == 1)  # the thread lived on
    finally:
        checkpointer.close()


def test_a_store_that_only_reads_starts_no_thread(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    SQLiteStore(db).close()
    store = SQLiteStore(db, create=False)
    try:
        list(store.query())
        assert not _checkpoint_threads()
    finally:
        store.close()
