"""Geofence events and fence states in the SQLite store (the SQL behind SQLiteStore's methods).

Two tables beside ``positions``, created with it (``CREATE ... IF NOT EXISTS``, so a store
written by an older geotrack gains them on open)::

    events        seq (the feed's order and cursor, sqlite:<seq>), device, fence, ts (ms),
                  type, lat, lon, stored (ms), origin; unique (device, fence, ts, type)
    fence_states  (device, fence) -> inside, pending_ms, last_ms

The unique key makes :meth:`SQLiteStore.write_events` idempotent: two relays on one file
deciding the same transition insert one row, and only the relay whose insert was new
sees it reported new. Event cursors have the position cursors' syntax but number events.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Final

from geotrack.errors import InvalidParameter, StoreError
from geotrack.schema import Event, FenceState, ms_to_ts, ts_to_ms
from geotrack.store.base import EventChange, EventFeed

__all__ = [
    "EVENTS_SCHEMA",
    "SQLiteEventFeed",
    "event_feed_start",
    "insert_events",
    "select_events",
    "select_states",
    "upsert_states",
]

EVENTS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    device  TEXT    NOT NULL,
    fence   TEXT    NOT NULL,
    ts      INTEGER NOT NULL,   -- device time of the fix that decided it, Unix ms
    type    TEXT    NOT NULL,   -- enter | exit
    lat     REAL    NOT NULL,
    lon     REAL    NOT NULL,
    stored  INTEGER NOT NULL,
    origin  TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events (device, fence, ts, type);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS fence_states (
    device     TEXT    NOT NULL,
    fence      TEXT    NOT NULL,
    inside     INTEGER NOT NULL,
    pending_ms INTEGER,
    last_ms    INTEGER,
    PRIMARY KEY (device, fence)
);
"""
_CURSOR_PREFIX: Final = "sqlite:"
_SELECT: Final = "SELECT seq, type, device, fence, ts, lat, lon FROM events"


def _event(row: tuple[Any, ...]) -> Event:
    _seq, kind, device, fence, ts, lat, lon = row
    return Event(kind, device, fence, ms_to_ts(ts), lat, lon)


def insert_events(
    conn: sqlite3.Connection, events: Sequence[Event], origin: str | None
) -> list[bool]:
    """Insert in the caller's transaction; for each event, whether its row is new."""
    stored = time.time_ns() // 1_000_000
    new: list[bool] = []
    for event in events:
        before = conn.total_changes
        conn.execute(
            "INSERT INTO events (device, fence, ts, type, lat, lon, stored, origin) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (device, fence, ts, type) DO NOTHING",
            (
                event.device,
                event.fence,
                ts_to_ms(event.ts),
                event.type,
                event.lat,
                event.lon,
                stored,
                origin,
            ),
        )
        new.append(conn.total_changes > before)
    return new


def _narrow(column: str, values: Collection[str], where: list[str], params: list[Any]) -> None:
    if values:
        names = sorted(set(values))
        where.append(f"{column} IN ({','.join('?' * len(names))})")
        params.extend(names)


def select_events(
    conn: sqlite3.Connection,
    devices: Collection[str],
    fences: Collection[str],
    since_ms: int | None,
    until_ms: int | None,
) -> Iterator[Event]:
    """Stored events by device time, then device, fence and store order; closes ``conn``."""
    where: list[str] = []
    params: list[Any] = []
    _narrow("device", devices, where, params)
    _narrow("fence", fences, where, params)
    if since_ms is not None:
        where.append("ts >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("ts <= ?")
        params.append(until_ms)
    sql = f"{_SELECT} {'WHERE ' + ' AND '.join(where) if where else ''} "
    try:
        cursor = conn.execute(sql + "ORDER BY ts, device, fence, seq", params)
        while rows := cursor.fetchmany(1000):
            for row in rows:
                yield _event(row)
    except sqlite3.Error as exc:
        raise StoreError(f"querying events failed: {exc}") from None
    finally:
        conn.close()


def select_states(conn: sqlite3.Connection, devices: Collection[str]) -> list[FenceState]:
    """The saved fence states (of ``devices``; all when empty), by device and fence."""
    where: list[str] = []
    params: list[Any] = []
    _narrow("device", devices, where, params)
    rows = conn.execute(
        "SELECT device, fence, inside, pending_ms, last_ms FROM fence_states "
        f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY device, fence",
        params,
    ).fetchall()
    return [FenceState(d, f, bool(inside), pending, last) for d, f, inside, pending, last in rows]


def upsert_states(conn: sqlite3.Connection, states: Sequence[FenceState]) -> None:
    """Replace the saved states of these (device, fence) pairs, in the caller's transaction."""
    conn.executemany(
        "INSERT OR REPLACE INTO fence_states VALUES (?,?,?,?,?)",
        [(s.device, s.fence, int(s.inside), s.pending_ms, s.last_ms) for s in states],
    )


def _last_seq(conn: sqlite3.Connection) -> int:
    seq: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    return seq


def event_feed_start(conn: sqlite3.Connection, since: str | int | None) -> int:
    """The events seq a feed starting at ``since`` resumes after."""
    if since is None:
        return _last_seq(conn)
    if isinstance(since, str):
        body = since[len(_CURSOR_PREFIX) :]
        if not since.startswith(_CURSOR_PREFIX) or not body.isdigit():
            raise InvalidParameter("cursor", f"{since!r} is not a SQLite cursor (sqlite:<number>)")
        return int(body)
    row = conn.execute("SELECT MIN(seq) FROM events WHERE stored >= ?", (since,)).fetchone()
    return _last_seq(conn) if row[0] is None else int(row[0]) - 1


class SQLiteEventFeed(EventFeed):
    """Follows new event rows by ``seq``, polling as SQLiteChangeFeed does."""

    interval: float = 0.005
    batch: int = 1000

    def __init__(
        self,
        conn: sqlite3.Connection,
        after: int,
        devices: Collection[str],
        fences: Collection[str],
        display_url: str,
    ) -> None:
        self._conn = conn
        self._after = after
        self._where: list[str] = []
        self._params: list[Any] = []
        _narrow("device", devices, self._where, self._params)
        _narrow("fence", fences, self._where, self._params)
        self._display_url = display_url
        self._data_version: int | None = None
        self._closed = False

    @property
    def cursor(self) -> str:
        return f"{_CURSOR_PREFIX}{self._after}"

    def poll(self, timeout: float) -> list[EventChange]:
        deadline = time.monotonic() + timeout
        while True:
            changes = self._read()
            if changes or time.monotonic() >= deadline:
                return changes
            time.sleep(min(self.interval, max(0.0, deadline - time.monotonic())))

    def _read(self) -> list[EventChange]:
        if self._closed:
            raise StoreError("the event feed is closed")
        where = " AND ".join(["seq > ?", *self._where])
        try:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return []
            self._conn.execute("BEGIN")
            try:
                rows = self._conn.execute(
                    f"{_SELECT} WHERE {where} ORDER BY seq LIMIT ?",
                    (self._after, *self._params, self.batch),
                ).fetchall()
                top = None if len(rows) == self.batch else _last_seq(self._conn)
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"following the events of {self._display_url} failed: {exc}") from None
        if top is not None:
            self._data_version = version
            self._after = max(self._after, top)
        elif rows:
            self._after = rows[-1][0]
        return [EventChange(f"{_CURSOR_PREFIX}{row[0]}", _event(row)) for row in rows]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()
