"""Retention in the SQLite store: the batches behind :meth:`SQLiteStore.prune`.

A ``DELETE … WHERE ts < ?`` of a million rows would hold the write lock for seconds, and
every relay writing to the file would stop acking meanwhile. A prune here is many short
``BEGIN IMMEDIATE … COMMIT`` transactions on a connection of its own, which checkpoints
the WAL after each batch, outside the store's lock (see ``_Batches``). A store's writer
in another process that finds a batch holding the lock tries again every millisecond
(``_begin_immediate`` in sqlite.py); the store's own writer (a relay with ``--retain``)
waits on the store's lock. The prune's connection keeps SQLite's busy handler, whose
growing sleeps let the relays' commits go first.

1. **seq ranges first.** Old fixes were almost always stored long ago, so they fill the
   table's first pages in ``seq`` order. Deleting ranges of ``seq`` frees whole pages at
   a time; deleting one device's rows instead rewrites a page per row, since a relay
   stores the devices' fixes interleaved. It stops at the first range that has rows but
   none old.
2. **Then per device**, down the ``(device, ts)`` index: old fixes stored after the cut
   (an imported file). A prune of some devices only does just this.
3. **Then the geofence events**, oldest first down their ``ts`` index.

:class:`Pacer` sizes the batches and spaces them out (docs/storage.md, "Retention").
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from functools import partial
from typing import TypeVar

from geotrack.errors import StoreError
from geotrack.store.base import Pruned

__all__ = ["Pacer", "count_before", "prune_batches"]

_T = TypeVar("_T")


class Pacer:
    """Sizes prune batches to hold the write lock ``hold`` seconds, and spaces them out.

    After a batch the next one waits ``pause`` times as long as the batch held the lock,
    so a prune takes at most ``1 / (1 + pause)`` of the lock's time. The size follows the
    time held slowly: a commit now and then is slow whatever its size (a busy disk, a
    loaded machine), and must not shrink every batch after it.
    """

    def __init__(self, batch: int, hold: float, pause: float) -> None:
        self.batch = batch
        self._hold = hold
        self._pause = pause
        self._next = 0.0

    def wait(self) -> None:
        time.sleep(self._next)

    def took(self, held: float) -> None:
        self._next = self._pause * held
        scale = min(1.25, max(0.8, self._hold / max(held, 1e-4)))
        # Not below a few hundred rows: a batch has a fixed cost (a page of the (device,
        # ts) index per device it touches), and a loaded machine's noise would shrink it.
        self.batch = min(50_000, max(min(self.batch, 500), round(self.batch * scale)))


class _Batches:
    """One prune's transactions on ``conn``, each under ``lock`` (the store's write lock).

    The store's own writer waits on ``lock`` and goes as soon as a batch ends, instead of
    polling in SQLite's busy handler (1, 2, 5, 10 ms… between tries). The connection does
    not checkpoint when it commits, which would be under the lock too: a passive
    checkpoint after each batch, outside it, copies the batch's pages into the database.
    ``check`` raises once the store is closed; ``where`` names it in errors.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.Lock,
        check: Callable[[], None],
        where: str,
    ) -> None:
        self.conn = conn
        self.lock = lock
        self.check = check
        self.where = where
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            # No fsync in the batch's commit (a shorter hold): a delete lost to a power
            # cut is only done again by the next prune. The WAL stays in order: the next
            # fsync of a relay's commit, or the checkpoint, covers the prune's pages too.
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"prune of {where} failed: {exc}") from None

    def run(self, work: Callable[[sqlite3.Connection], _T]) -> tuple[_T, float]:
        """``work`` in one write transaction; its result and how long the lock was held."""
        conn = self.conn
        try:
            with self.lock:
                self.check()
                conn.execute("BEGIN IMMEDIATE")
                locked = time.monotonic()
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                held = time.monotonic() - locked
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise StoreError(f"prune of {self.where} failed: {exc}") from None
        return result, held


def prune_batches(
    conn: sqlite3.Connection,
    before_ms: int,
    devices: Collection[str],
    names: list[str],
    pacer: Pacer,
    lock: threading.Lock,
    check: Callable[[], None],
    where: str,
) -> Iterator[Pruned]:
    """Delete what is older than ``before_ms``, a committed batch per step.

    ``devices`` is what the caller narrowed to (empty: all), ``names`` the devices to go
    through one by one; ``lock`` is the store's write lock, ``check`` raises once the
    store is closed, ``where`` names it in errors.
    """
    batches = _Batches(conn, lock, check, where)
    if not devices:
        yield from _by_seq(batches, before_ms, pacer)
    for device in names:
        # A read first, outside any transaction: most devices have no old fix left by
        # now, and those cost an index probe, not a write transaction and a pause.
        if not _has_before(conn, device, before_ms, where):
            continue
        while True:
            pacer.wait()
            limit = pacer.batch
            deleted, held = batches.run(
                partial(_device_batch, device=device, before_ms=before_ms, limit=limit)
            )
            if deleted:
                yield Pruned(device, deleted)
            pacer.took(held)
            if deleted < limit:
                break
    yield from _events(batches, before_ms, devices, pacer)


def _by_seq(batches: _Batches, before_ms: int, pacer: Pacer) -> Iterator[Pruned]:
    after = 0
    while True:
        pacer.wait()
        (counts, had_rows, following), held = batches.run(
            partial(_range_batch, before_ms=before_ms, low=after, high=after + pacer.batch)
        )
        for device, count in counts:
            yield Pruned(device, count)
        pacer.took(held)
        if following is None or (had_rows and not counts):
            return
        after = following - 1  # over a gap of deleted seqs at once


def _events(
    batches: _Batches, before_ms: int, devices: Collection[str], pacer: Pacer
) -> Iterator[Pruned]:
    while True:
        pacer.wait()
        limit = pacer.batch
        found, held = batches.run(
            partial(_events_batch, before_ms=before_ms, devices=devices, limit=limit)
        )
        counts: dict[str, int] = {}
        for _, device in found:
            counts[device] = counts.get(device, 0) + 1
        for device, count in counts.items():
            yield Pruned(device, count, events=True)
        pacer.took(held)
        if len(found) < limit:
            return


def _has_before(conn: sqlite3.Connection, device: str, before_ms: int, where: str) -> bool:
    try:
        return (
            conn.execute(
                "SELECT 1 FROM positions WHERE device = ? AND ts < ? LIMIT 1", (device, before_ms)
            ).fetchone()
            is not None
        )
    except sqlite3.Error as exc:
        raise StoreError(f"prune of {where} failed: {exc}") from None


def _device_batch(c: sqlite3.Connection, device: str, before_ms: int, limit: int) -> int:
    deleted: int = c.execute(
        "DELETE FROM positions WHERE seq IN (SELECT seq FROM positions "
        "WHERE device = ? AND ts < ? ORDER BY ts LIMIT ?)",
        (device, before_ms, limit),
    ).rowcount
    return deleted


def _range_batch(
    c: sqlite3.Connection, before_ms: int, low: int, high: int
) -> tuple[list[tuple[str, int]], bool, int | None]:
    """Delete the old rows with a seq in (low, high].

    Returns the counts per device, whether the range had rows at all, and the first
    seq after it.
    """
    # Per device: the rows of the range, and how many of them are old.
    rows = c.execute(
        "SELECT device, COUNT(*), SUM(ts < ?) FROM positions "
        "WHERE seq > ? AND seq <= ? GROUP BY device",
        (before_ms, low, high),
    ).fetchall()
    counts = [(device, old) for device, _, old in rows if old]
    if counts:
        c.execute(
            "DELETE FROM positions WHERE seq > ? AND seq <= ? AND ts < ?", (low, high, before_ms)
        )
    following = c.execute(
        "SELECT seq FROM positions WHERE seq > ? ORDER BY seq LIMIT 1", (high,)
    ).fetchone()
    return counts, bool(rows), None if following is None else following[0]


def _events_batch(
    c: sqlite3.Connection, before_ms: int, devices: Collection[str], limit: int
) -> list[tuple[int, str]]:
    narrow = f" AND device IN ({','.join('?' * len(devices))})" if devices else ""
    found: list[tuple[int, str]] = c.execute(
        f"SELECT seq, device FROM events WHERE ts < ?{narrow} ORDER BY ts LIMIT ?",
        (before_ms, *devices, limit),
    ).fetchall()
    c.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq, _ in found])
    return found


def count_before(
    conn: sqlite3.Connection, before_ms: int, devices: Collection[str], names: list[str]
) -> Iterator[Pruned]:
    """What a prune would delete: positions per device, then events per device."""
    for device in names:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM positions WHERE device = ? AND ts < ?", (device, before_ms)
        ).fetchone()
        if count:
            yield Pruned(device, count)
    narrow = f" AND device IN ({','.join('?' * len(devices))})" if devices else ""
    for device, count in conn.execute(
        f"SELECT device, COUNT(*) FROM events WHERE ts < ?{narrow} GROUP BY device ORDER BY device",
        (before_ms, *devices),
    ).fetchall():
        yield Pruned(device, count, events=True)
