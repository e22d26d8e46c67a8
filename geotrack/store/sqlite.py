"""The embedded default store: one SQLite file in WAL mode.

Rows carry a ``seq`` (``AUTOINCREMENT``, never reused), which orders the change feed and
makes its cursor (``sqlite:<seq>``). A unique index on (device, ts) makes writes
idempotent and serves track queries. Several processes may share one file: WAL lets
readers run beside the single writer, and ``busy_timeout`` makes writers queue (the
store's writer tries the lock again every millisecond, see :func:`_begin_immediate`).

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; query options
``synchronous=full|normal`` (default ``full``: an ack means the fix survives power loss;
``normal`` survives a process crash only) and ``busy_timeout`` in milliseconds.

Opened with ``create=False`` (commands that only read), a file that does not exist, or
one without geotrack's ``positions`` table (an empty file), is refused with StoreNotFound
and nothing is created; connections that read never create the file either.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import msgspec

from geotrack.errors import InvalidParameter, StoreError, StoreNotFound
from geotrack.schema import Event, FenceState, Position, ms_to_ts, ts_to_ms
from geotrack.store.base import Change, ChangeFeed, EventFeed, Pruned, Store
from geotrack.store.sqlite_checkpoint import Checkpointer
from geotrack.store.sqlite_events import (
    EVENTS_SCHEMA,
    SQLiteEventFeed,
    event_feed_start,
    insert_events,
    select_events,
    select_states,
    upsert_states,
)
from geotrack.store.sqlite_prune import Pacer, count_before, prune_batches

__all__ = ["CURSOR_PREFIX", "CommitHook", "SQLiteChangeFeed", "SQLiteStore", "parse_cursor"]

log = logging.getLogger("geotrack.store")

#: Called by :meth:`SQLiteStore.write` after each commit that stored something, in the
#: writer's thread and still holding the store's write lock (so hooks see commits in seq
#: order): ``hook(origin, after, top, stored, seqs)``. The commit's rows are all the rows
#: with a seq in ``(after, top]``: ``stored``, the new positions in the order given, with
#: the seqs ``seqs`` (None when they are ``after + 1`` … ``top``). Keep it short: every
#: writer waits for it. An exception is logged, never raised (the rows are stored).
CommitHook = Callable[[str | None, int, int, Sequence[Position], list[int] | None], None]

_T = TypeVar("_T")

_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS positions (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    device  TEXT    NOT NULL,
    ts      INTEGER NOT NULL,   -- fix time, Unix milliseconds
    lat     REAL    NOT NULL,
    lon     REAL    NOT NULL,
    speed   REAL,
    heading REAL,
    alt     REAL,
    acc     REAL,
    attrs   TEXT,               -- JSON object
    stored  INTEGER NOT NULL,   -- when it was stored, Unix milliseconds
    origin  TEXT                -- id of the writer (a relay), for scale-out dedupe
);
CREATE UNIQUE INDEX IF NOT EXISTS positions_device_ts ON positions (device, ts);
CREATE TABLE IF NOT EXISTS geotrack_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS: Final = "device, ts, lat, lon, speed, heading, alt, acc, attrs, stored, origin"
_INSERT: Final = (
    f"INSERT INTO positions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (device, ts) DO NOTHING"
)
# Large batches are inserted this many rows to a statement: one multi-row INSERT binds
# and steps in one call, half the cost per row of executemany's statement per row.
_ROWS_PER_INSERT: Final = 100
#: How long the store's writer sleeps between tries of a write lock another process holds.
_LOCK_RETRY_S: Final = 0.001


def _insert(rows: int) -> str:
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?)"] * rows)
    return f"INSERT INTO positions ({_COLUMNS}) VALUES {values} ON CONFLICT (device, ts) DO NOTHING"


_INSERT_MANY: Final = _insert(_ROWS_PER_INSERT)
_SELECT: Final = "SELECT seq, device, ts, lat, lon, speed, heading, alt, acc, attrs, origin"
# The columns of _stored_position, in its order.
_TRACK_COLUMNS: Final = "device, ts, lat, lon, speed, heading, alt, acc, attrs"
CURSOR_PREFIX: Final = "sqlite:"

_attrs_encoder: Final = msgspec.json.Encoder()
_attrs_decoder: Final = msgspec.json.Decoder(dict[str, Any])


def _path_from_url(url: str) -> tuple[Path, dict[str, list[str]]]:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidParameter(
            "store", f"{url!r}: use sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise InvalidParameter("store", f"{url!r} names no file")
    return Path(path), parse_qs(parts.query)


# Rows are validated on their way in (``write`` takes Positions), so reading one back
# skips ``Position.__post_init__``, which re-checked every field and re-parsed ``ts`` and
# took most of an export's time: a copy of this template does not run it (the constructor,
# ``structs.replace`` and decoding do), then every field is set from the row.
# tests/export/test_export.py checks that the result equals the validated Position.
_TEMPLATE: Final = Position(device="-", lat=0.0, lon=0.0, ts="1970-01-01T00:00:00.000Z")
_copy_template: Final[Callable[[], Position]] = _TEMPLATE.__copy__  # type: ignore[attr-defined]
_SECOND_TEXT: Final = tuple(f"{second:02d}." for second in range(60))
_MILLI_TEXT: Final = tuple(f"{milli:03d}Z" for milli in range(1000))


def _stored_position(
    device: str,
    ts: int,
    lat: float,
    lon: float,
    speed: float | None,
    heading: float | None,
    alt: float | None,
    acc: float | None,
    attrs: str | None,
) -> Position:
    """The Position of a stored row's columns (``_TRACK_COLUMNS``), not validated again."""
    p = _copy_template()
    p.device = device
    p.lat = lat
    p.lon = lon
    p.ts = ms_to_ts(ts)
    p.speed = speed
    p.heading = heading
    p.alt = alt
    p.acc = acc
    p.attrs = None if attrs is None else _attrs_decoder.decode(attrs)
    return p


def _stored_positions(rows: Iterable[tuple[Any, ...]]) -> Iterator[Position]:
    """``_stored_position`` of each row, for rows in time order within a device.

    Consecutive fixes share their minute, so its text is made once per minute.
    """
    new = _copy_template
    decode = _attrs_decoder.decode
    seconds, millis = _SECOND_TEXT, _MILLI_TEXT
    last_minute: int | None = None
    head = ""
    for device, ts, lat, lon, speed, heading, alt, acc, attrs in rows:
        minute, rest = divmod(ts, 60_000)
        if minute != last_minute:
            last_minute = minute
            head = ms_to_ts(minute * 60_000)[:17]  # "YYYY-MM-DDTHH:MM:"
        second, milli = divmod(rest, 1000)
        p = new()
        p.device = device
        p.lat = lat
        p.lon = lon
        p.ts = head + seconds[second] + millis[milli]
        p.speed = speed
        p.heading = heading
        p.alt = alt
        p.acc = acc
        p.attrs = None if attrs is None else decode(attrs)
        yield p


def _row_to_position(row: tuple[Any, ...]) -> Position:
    _seq, device, ts, lat, lon, speed, heading, alt, acc, attrs, _origin = row
    return _stored_position(device, ts, lat, lon, speed, heading, alt, acc, attrs)


class SQLiteStore(Store):
    """Positions in one SQLite file (the default store)."""

    def __init__(
        self,
        path: str | Path,
        synchronous: str = "full",
        busy_timeout_ms: int = 10_000,
        *,
        create: bool = True,
    ):
        self.path = Path(path)
        self.display_url = f"sqlite:///{self.path}"
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise InvalidParameter("synchronous", "use full, normal or extra")
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._closed = False
        # (origin, after, top) of this object's recent commits: every row with a seq in
        # (after, top] is one that commit inserted (seqs spent on duplicates hold none). A
        # feed that leaves an origin out skips reading ranges of that origin (a relay's
        # follower and the relay's own writes).
        self._own_writes: deque[tuple[str | None, int, int]] = deque(maxlen=1024)
        #: :data:`CommitHook` s, called after every commit that stored rows.
        self.commit_hooks: list[CommitHook] = []
        #: Copies committed pages from the WAL into the file, off the write path.
        self.checkpointer = Checkpointer(self._connect, lambda: self._lock)
        if not create:
            self._check_exists()
        self._writer = self._connect(create=create)
        try:
            # What ping compares with: the file this store opened, not whatever has that
            # name now (a deleted store file stays readable through open connections).
            self._identity = _identity(os.stat(self.path))
            self._init_schema()
            # The writer waits for the lock in _begin_immediate, not in SQLite's handler.
            self._writer.execute("PRAGMA busy_timeout=0")
            # Its commits never checkpoint (under the lock): the checkpointer does.
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            self._writer.close()
            raise StoreError(f"cannot open {self.display_url}: {exc}") from None
        except OSError as exc:
            self._writer.close()
            raise StoreError(f"cannot open {self.display_url}: {exc.strerror or exc}") from None
        except BaseException:
            self._writer.close()
            raise

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> SQLiteStore:
        """Open the store a ``sqlite://`` URL names (see the module docstring)."""
        path, query = _path_from_url(url)
        unknown = sorted(set(query) - {"synchronous", "busy_timeout"})
        if unknown:
            raise InvalidParameter("store", f"unknown SQLite option {unknown[0]!r}")
        sync = query.get("synchronous", ["full"])[-1]
        try:
            busy = int(query.get("busy_timeout", ["10000"])[-1])
        except ValueError:
            raise InvalidParameter("busy_timeout", "expected milliseconds") from None
        return cls(path, sync, busy, create=create)

    def _check_exists(self) -> None:
        """Raise StoreNotFound unless the file holds a geotrack store; create nothing."""
        where = str(self.path.absolute())
        if not self.path.exists():
            raise StoreNotFound(where, self.display_url)
        try:
            # Read-only: an empty file is not turned into a WAL database by looking at it.
            conn = sqlite3.connect(_file_uri(self.path, "ro"), uri=True, check_same_thread=False)
            try:
                found = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'positions'"
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.display_url}: {exc}") from None
        if found is None:
            if self.path.is_file() and self.path.stat().st_size > 0:
                raise StoreNotFound(
                    where,
                    self.display_url,
                    "the file is a SQLite database without geotrack's positions table",
                )
            raise StoreNotFound(where, self.display_url)

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        """A connection to the file; it creates the file only when ``create`` is true."""
        if not self.path.parent.is_dir():
            raise StoreError(
                f"cannot open {self.display_url}: directory {self.path.parent} does not exist"
            )
        try:
            conn = sqlite3.connect(
                self.path if create else _file_uri(self.path, "rw"),
                timeout=self._busy_timeout_ms / 1000,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                check_same_thread=False,
                uri=not create,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.display_url}: {exc}") from None
        return conn

    def _init_schema(self) -> None:
        try:
            with self._lock:
                self._writer.executescript(_SCHEMA)
                self._writer.executescript(EVENTS_SCHEMA)
                row = self._writer.execute(
                    "SELECT value FROM geotrack_meta WHERE key = 'schema_version'"
                ).fetchone()
                if row is None:
                    self._writer.execute(
                        "INSERT OR IGNORE INTO geotrack_meta VALUES ('schema_version', ?)",
                        (str(_SCHEMA_VERSION),),
                    )
                elif int(row[0]) > _SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.display_url} was written by a newer geotrack "
                        f"(schema {row[0]}, this one knows {_SCHEMA_VERSION})"
                    )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use {self.display_url}: {exc}") from None

    def write(self, positions: Sequence[Position], origin: str | None = None) -> list[bool]:
        if not positions:
            return []
        stored_ms = time.time_ns() // 1_000_000
        encode = _attrs_encoder.encode
        # A position's ts is canonical text (validated on construction): its Unix ms are
        # its minute's (looked up once a minute) plus its seconds and milliseconds.
        minutes: dict[str, int] = {}
        minute = minutes.get
        rows = [
            (
                p.device,
                (minute(ts[:17]) or _minute_ms(ts, minutes))
                + int(ts[17:19]) * 1000
                + int(ts[20:23])
                if type(ts := p.ts) is str and len(ts) == 24
                else ts_to_ms(p.time),
                p.lat,
                p.lon,
                p.speed,
                p.heading,
                p.alt,
                p.acc,
                None if (attrs := p.attrs) is None else encode(attrs).decode(),
                stored_ms,
                origin,
            )
            for p in positions
        ]
        with self._lock:
            self._check_open()
            try:
                _begin_immediate(self._writer, self._busy_timeout_ms)
                try:
                    before = self._writer.total_changes
                    # The highest seq so far; rows this transaction inserts have larger ones.
                    last = _last_seq(self._writer)
                    _insert_rows(self._writer, rows)
                    inserted = self._writer.total_changes - before
                    # The common case, nothing was a duplicate, needs no second look.
                    keys = (
                        None
                        if inserted == len(rows)
                        else {
                            (device, ts): seq
                            for seq, device, ts in self._writer.execute(
                                "SELECT seq, device, ts FROM positions WHERE seq > ?", (last,)
                            )
                        }
                    )
                    top = _last_seq(self._writer) if inserted else last
                    # AUTOINCREMENT spends a seq on each duplicate too, so a commit's rows
                    # are not always top - inserted + 1 ... top: the hooks get their seqs.
                    seqs = (
                        [
                            row[0]
                            for row in self._writer.execute(
                                "SELECT seq FROM positions WHERE seq > ? ORDER BY seq", (last,)
                            )
                        ]
                        if keys is None and self.commit_hooks and top - last != inserted
                        else None
                    )
                    self._writer.execute("COMMIT")
                except BaseException:
                    if self._writer.in_transaction:
                        self._writer.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"write to {self.display_url} failed: {exc}") from None
            if keys is None:
                new = [True] * len(rows)
                stored = positions
            else:
                new = []
                stored = []
                seqs = []
                for p, row in zip(positions, rows, strict=True):
                    seq = keys.pop((row[0], row[1]), None)  # a repeat later is a duplicate
                    new.append(seq is not None)
                    if seq is not None:
                        stored.append(p)
                        seqs.append(seq)
            if inserted:
                self._own_writes.append((origin, last, top))
                for hook in self.commit_hooks:
                    try:
                        hook(origin, last, top, stored, seqs)
                    except Exception:
                        log.exception("a commit hook of %s failed", self.display_url)
        # Even a commit of duplicates only wrote a page (AUTOINCREMENT's counter).
        self.checkpointer.committed()
        return new

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.display_url} is closed")

    def _reader(self) -> sqlite3.Connection:
        self._check_open()
        return self._connect()

    def query(
        self,
        devices: Collection[str] = (),
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[Position]:
        where, params = _where(devices, since_ms, until_ms)
        # Without a device filter, walking the (device, ts) index fetches every row from
        # wherever it sits in the table, and a relay stores the devices' fixes interleaved:
        # one B-tree descent per row. A table scan into SQLite's sorter (bounded memory,
        # spilled to temporary files) is about twice as fast over a whole store. One or a
        # few devices of many are a small part of the table: the index serves those.
        table = "positions" if devices else "positions NOT INDEXED"
        conn = self._reader()
        try:
            cursor = conn.execute(
                f"SELECT {_TRACK_COLUMNS} FROM {table} {where} ORDER BY device, ts", params
            )
            while rows := cursor.fetchmany(1000):
                yield from _stored_positions(rows)
        except sqlite3.Error as exc:
            raise StoreError(f"query on {self.display_url} failed: {exc}") from None
        finally:
            conn.close()

    def devices(self) -> list[str]:
        conn = self._reader()
        try:
            # The (device, ts) index makes this a skip-scan, not a table scan.
            return [
                row[0]
                for row in conn.execute("SELECT DISTINCT device FROM positions ORDER BY device")
            ]
        except sqlite3.Error as exc:
            raise StoreError(f"query on {self.display_url} failed: {exc}") from None
        finally:
            conn.close()

    def latest(self, devices: Collection[str] = ()) -> list[Position]:
        where, params = _where(devices, None, None)
        conn = self._reader()
        try:
            # Per device one step down the (device, ts) index from its end.
            rows = conn.execute(
                f"{_SELECT} FROM positions WHERE seq IN ("
                "SELECT (SELECT seq FROM positions AS p WHERE p.device = d.device "
                "ORDER BY ts DESC LIMIT 1) "
                f"FROM (SELECT DISTINCT device FROM positions {where}) AS d) ORDER BY device",
                params,
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"query on {self.display_url} failed: {exc}") from None
        finally:
            conn.close()
        return [_row_to_position(row) for row in rows]

    def write_events(
        self,
        events: Sequence[Event],
        origin: str | None = None,
        *,
        states: Sequence[FenceState] = (),
        cursor: tuple[str, str] | None = None,
    ) -> list[bool]:
        if not events and not states and cursor is None:
            return []

        def work() -> list[bool]:
            new = insert_events(self._writer, events, origin)
            upsert_states(self._writer, states)
            if cursor is not None:
                self._writer.execute(
                    "INSERT OR REPLACE INTO geotrack_meta VALUES (?, ?)",
                    (f"cursor:{cursor[0]}", cursor[1]),
                )
            return new

        return self._in_write_transaction(work)

    def saved_cursor(self, name: str) -> str | None:
        conn = self._reader()
        try:
            row = conn.execute(
                "SELECT value FROM geotrack_meta WHERE key = ?", (f"cursor:{name}",)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading a cursor of {self.display_url} failed: {exc}") from None
        finally:
            conn.close()
        return None if row is None else str(row[0])

    def save_fence_states(self, states: Sequence[FenceState]) -> None:
        if states:
            self._in_write_transaction(lambda: upsert_states(self._writer, states))

    def _in_write_transaction(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` on the writer connection in one IMMEDIATE transaction."""
        with self._lock:
            self._check_open()
            try:
                _begin_immediate(self._writer, self._busy_timeout_ms)
                try:
                    result = work()
                    self._writer.execute("COMMIT")
                except BaseException:
                    if self._writer.in_transaction:
                        self._writer.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"write to {self.display_url} failed: {exc}") from None
        self.checkpointer.committed()
        return result

    def query_events(
        self,
        devices: Collection[str] = (),
        fences: Collection[str] = (),
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[Event]:
        return select_events(self._reader(), devices, fences, since_ms, until_ms)

    def fence_states(self, devices: Collection[str] = ()) -> list[FenceState]:
        conn = self._reader()
        try:
            return select_states(conn, devices)
        except sqlite3.Error as exc:
            raise StoreError(f"reading fence states of {self.display_url} failed: {exc}") from None
        finally:
            conn.close()

    def follow_events(
        self,
        since: str | int | None = None,
        devices: Collection[str] = (),
        fences: Collection[str] = (),
    ) -> EventFeed:
        conn = self._reader()
        try:
            after = event_feed_start(conn, since)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot follow the events of {self.display_url}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return SQLiteEventFeed(conn, after, devices, fences, self.display_url)

    def follow(
        self,
        since: str | int | None = None,
        devices: Collection[str] = (),
        exclude_origin: str | None = None,
    ) -> SQLiteChangeFeed:
        conn = self._reader()
        try:
            if since is None:
                after = _last_seq(conn)
            elif isinstance(since, str):
                after = parse_cursor(since)
            else:
                row = conn.execute(
                    "SELECT MIN(seq) FROM positions WHERE stored >= ?", (since,)
                ).fetchone()
                if row[0] is None:  # nothing stored since then: start at the end
                    after = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM positions").fetchone()[
                        0
                    ]
                else:
                    after = row[0] - 1
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot follow {self.display_url}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return SQLiteChangeFeed(
            conn,
            after,
            frozenset(devices),
            exclude_origin,
            self.display_url,
            self._own_writes if exclude_origin is not None else None,
        )

    def is_cursor(self, text: str) -> bool:
        return text.startswith(CURSOR_PREFIX)

    #: Prune pacing: each batch is sized to hold the write lock about this long...
    prune_hold: float = 0.002
    #: ...and the next one waits this many times as long as the last one held it, so
    #: that a prune takes at most 1/(1 + prune_pause) of the lock's time, and about as
    #: little of the CPU (on a small machine the relay's latency suffers from the CPU a
    #: prune takes more than from the lock). A geotrack writer of another process tries
    #: the lock every millisecond (_begin_immediate); other writers wait in SQLite's busy
    #: handler (1, 2, 5, 10… ms between tries), which the long pauses let in too.
    prune_pause: float = 9.0

    def prune(
        self, before_ms: int, devices: Collection[str] = (), *, dry_run: bool = False
    ) -> Generator[Pruned, None, None]:
        # The batches are in sqlite_prune.py, on a connection of their own that
        # checkpoints outside this store's lock.
        names = sorted(set(devices)) if devices else self.devices()
        conn = self._reader()
        try:
            if dry_run:
                try:
                    yield from count_before(conn, before_ms, devices, names)
                except sqlite3.Error as exc:
                    raise StoreError(f"query on {self.display_url} failed: {exc}") from None
                return
            pacer = Pacer(self.prune_batch, self.prune_hold, self.prune_pause)
            yield from prune_batches(
                conn,
                before_ms,
                devices,
                names,
                pacer,
                self._lock,
                self._check_open,
                self.display_url,
            )
        finally:
            conn.close()

    def ping(self) -> None:
        """Raise StoreError unless the file opened is still there and can be written.

        Takes the write lock and lets it go (waiting up to ``busy_timeout``): a file
        deleted or replaced under a running store, or held locked by another process,
        fails here instead of at the next write.
        """
        with self._lock:
            self._check_open()
            try:
                identity = _identity(os.stat(self.path))
            except OSError as exc:
                raise StoreError(
                    f"{self.display_url} is not usable: {exc.strerror or exc} "
                    f"(was the file deleted or moved?)"
                ) from None
            if identity != self._identity:
                raise StoreError(
                    f"{self.display_url} is not usable: another file has replaced the one "
                    f"this store opened"
                )
            try:
                _begin_immediate(self._writer, self._busy_timeout_ms)
                self._writer.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.display_url} is not usable: {exc}") from None

    def close(self) -> None:
        # Before the lock: a checkpoint that starts the WAL over holds it.
        self.checkpointer.close()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()


def _begin_immediate(conn: sqlite3.Connection, timeout_ms: int) -> None:
    """``BEGIN IMMEDIATE``, trying again every millisecond for up to ``timeout_ms``.

    The writer's connection has no busy timeout: SQLite's busy handler sleeps 1, 2, 5,
    10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries however soon the lock is free,
    so a relay's commit that found another process's 2 ms prune batch holding the lock
    (``geotrack prune`` beside a live relay) waited tens of milliseconds. Tries are a
    few microseconds each; the last one's "database is locked" is raised at the timeout.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(_LOCK_RETRY_S)


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows (idempotently) in multi-row statements, the last few one by one."""
    n = len(rows) - len(rows) % _ROWS_PER_INSERT
    chain = itertools.chain.from_iterable
    for start in range(0, n, _ROWS_PER_INSERT):
        conn.execute(_INSERT_MANY, list(chain(rows[start : start + _ROWS_PER_INSERT])))
    if n < len(rows):
        conn.executemany(_INSERT, rows[n:])


def _minute_ms(ts: str, minutes: dict[str, int]) -> int:
    """Unix ms of the minute of a canonical ts, noted in ``minutes``."""
    ms = minutes[ts[:17]] = ts_to_ms(ts[:17] + "00.000Z")
    return ms


def _where(
    devices: Collection[str], since_ms: int | None, until_ms: int | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if devices:
        clauses.append(f"device IN ({','.join('?' * len(devices))})")
        params.extend(devices)
    if since_ms is not None:
        clauses.append("ts >= ?")
        params.append(since_ms)
    if until_ms is not None:
        clauses.append("ts <= ?")
        params.append(until_ms)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _file_uri(path: Path, mode: str) -> str:
    """An SQLite URI for ``path`` that opens it in ``mode`` (ro, rw) and never creates it."""
    return f"file:{quote(str(path), safe='/')}?mode={mode}"


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _last_seq(conn: sqlite3.Connection) -> int:
    seq: int = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM positions").fetchone()[0]
    return seq


def parse_cursor(text: str) -> int:
    """The seq a ``sqlite:<seq>`` cursor resumes after."""
    if not text.startswith(CURSOR_PREFIX) or not text[len(CURSOR_PREFIX) :].isdigit():
        raise InvalidParameter("cursor", f"{text!r} is not a SQLite cursor (sqlite:<number>)")
    return int(text[len(CURSOR_PREFIX) :])


class SQLiteChangeFeed(ChangeFeed):
    """Follows new rows by ``seq``.

    SQLite has no notifications across processes, so the feed polls; ``PRAGMA
    data_version`` tells cheaply whether any connection (of this or another process)
    committed since the last look, so an idle poll costs no table read.

    A relay's follower (a feed that leaves out its own writer's rows) backs off while it
    finds nothing to deliver: a relay alone on its store would otherwise wake 200 times
    a second to learn that only it wrote. After :attr:`idle_after` seconds without rows
    from another writer, each empty look doubles the wait up to :attr:`idle_interval`;
    the first row found brings it back to :attr:`interval`. So a peer that streams is
    followed every 5 ms, and the first fix of a peer that starts after a quiet spell
    waits at most ``idle_interval``. :meth:`wake` (any thread) ends a wait at once: a
    writer that can signal its followers (a sibling worker) need not wait for the poll.
    """

    #: How often an idle feed looks for new rows; the latency of the cross-process path.
    interval: float = 0.005
    #: The longest wait of a relay's follower that has found nothing for a while.
    idle_interval: float = 0.05
    #: Seconds without another writer's rows before the follower backs off.
    idle_after: float = 0.25
    batch: int = 5000

    def __init__(
        self,
        conn: sqlite3.Connection,
        after: int,
        devices: frozenset[str],
        exclude_origin: str | None,
        display_url: str,
        own_writes: deque[tuple[str | None, int, int]] | None = None,
    ) -> None:
        self._conn = conn
        self._own_writes = own_writes
        self._after = after
        self._devices = devices
        self._exclude_origin = exclude_origin
        self._display_url = display_url
        self._data_version: int | None = None
        self._closed = False
        self._woken = threading.Event()
        self._wait = self.interval
        self._found_at = time.monotonic()
        #: Where someone else has delivered up to (the seq), read before each look: the
        #: feed skips ahead to it. ``serve --workers`` sets it to what its siblings handed
        #: over, so the feed reads only the rows no sibling did (another relay's, or a
        #: hand-over that was lost).
        self.floor: Callable[[], int] | None = None
        self._seen = after  # the newest seq at the last look (with a floor)

    @property
    def cursor(self) -> str:
        return f"{CURSOR_PREFIX}{self._after}"

    @property
    def next_wait(self) -> float:
        """Seconds the next empty look waits (grows while a relay's follower finds nothing)."""
        return self._wait

    def wake(self) -> None:
        """End the current wait of :meth:`poll` now (thread-safe): new rows may be there."""
        self._woken.set()

    def poll(self, timeout: float) -> list[Change]:
        deadline = time.monotonic() + timeout
        while True:
            # A wake() since the last look (during it, or before this poll) counts too.
            woken = self._woken.is_set()
            if woken:
                self._woken.clear()
            changes = self._read(woken)
            now = time.monotonic()
            if changes:
                self._found_at = now
                self._wait = self.interval
                return changes
            if now >= deadline:
                return changes
            if self._own_writes is not None and now - self._found_at >= self.idle_after:
                self._wait = min(self.idle_interval, self._wait * 2)
            if self._woken.wait(min(self._wait, max(0.0, deadline - now))):
                self._wait = self.interval

    def _read(self, woken: bool = False) -> list[Change]:
        if self._closed:
            raise StoreError("the change feed is closed")
        floor = self.floor
        if floor is not None:
            self._after = max(self._after, floor())
        # Rows this feed leaves out (another device, the follower's own writes) are skipped
        # in SQL, and the cursor still moves past them: the highest seq is read in the same
        # snapshot (one read transaction), so no row committed in between is jumped over.
        where = "seq > ?"
        params: list[int | str] = [self._after]
        if self._exclude_origin is not None:
            where += " AND origin IS NOT ?"
            params.append(self._exclude_origin)
        if self._devices:
            where += f" AND device IN ({','.join('?' * len(self._devices))})"
            params.extend(self._devices)
        try:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return []
            cap: int | None = None
            if self._own_writes is not None or floor is not None:
                newest = _last_seq(self._conn)
                if self._after >= newest:  # delivered already (own rows, or handed over)
                    self._data_version = version
                    return []
                if self._own_writes is not None and self._only_left_out(newest):
                    # Everything since the last look was written through this store
                    # object with the origin left out: move past it without reading it.
                    self._data_version = version
                    self._after = max(self._after, newest)
                    return []
                if floor is not None and not woken:
                    # Rows a sibling committed a moment ago are on their way as a
                    # hand-over: a look that nobody asked for reads only the rows that were
                    # there at the last look too (another writer's, or a lost hand-over).
                    cap, self._seen = self._seen, newest
                    if cap <= self._after:
                        return []
                    where += " AND seq <= ?"
                    params.append(cap)
            self._conn.execute("BEGIN")
            try:
                rows = self._conn.execute(
                    f"{_SELECT} FROM positions WHERE {where} ORDER BY seq LIMIT ?",
                    (*params, self.batch),
                ).fetchall()
                full = len(rows) == self.batch
                top = None if full else cap if cap is not None else _last_seq(self._conn)
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"following {self._display_url} failed: {exc}") from None
        if top is not None:
            if cap is None:  # seen everything up to this version
                self._data_version = version
            self._after = max(self._after, top)
        elif rows:  # a full batch: more may be waiting
            self._after = rows[-1][0]
        return [Change(f"{CURSOR_PREFIX}{row[0]}", _row_to_position(row), row[10]) for row in rows]

    def _only_left_out(self, top: int) -> bool:
        """Whether every seq in (cursor, top] is in a recorded commit of the left-out origin."""
        assert self._own_writes is not None
        start = self._after
        for origin, after, last in list(self._own_writes):  # a copy: the writer appends
            if start >= top:
                break
            if last <= start:
                continue
            if after > start or origin != self._exclude_origin:
                return False  # a gap (another writer's rows) or another origin
            start = last
        return start >= top

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()
