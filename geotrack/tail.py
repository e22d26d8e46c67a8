"""Following a store's change feed: the logic behind ``geotrack tail``."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

from geotrack.errors import InvalidParameter
from geotrack.schema import Event, Position, encode_event, encode_position, parse_time
from geotrack.store import Change, ChangeFeed, EventChange, EventFeed, Store

__all__ = [
    "follow",
    "follow_events",
    "format_event_json",
    "format_event_line",
    "format_json",
    "format_line",
    "parse_since",
    "resume_command",
]

# The cursor prefix of each store URL scheme, and the kind of store for messages.
_CURSORS: Final = {"sqlite": ("sqlite:", "SQLite"), "mongodb": ("mongo:", "MongoDB")}
_CURSOR_LIKE: Final = re.compile(r"^(sqlite|mongo):")


def parse_since(since: str, store_url: str, now_ms: int, name: str = "--since") -> str | int:
    """Where a follow of the store ``store_url`` names starts: a cursor, or Unix ms.

    Checked without opening the store, so a malformed ``--since`` is reported as such
    whatever the store's state. A cursor of the other backend is refused by name.
    """
    match = _CURSOR_LIKE.match(since)
    if match is None:
        return parse_time(since, now_ms, name)
    scheme = store_url.partition("://")[0]
    prefix, kind = _CURSORS["mongodb" if scheme.startswith("mongodb") else scheme]
    if not since.startswith(prefix):
        other = "MongoDB" if match.group(1) == "mongo" else "SQLite"
        raise InvalidParameter(
            name, f"{since[:40]!r} is a cursor of a {other} store, and the store is {kind}"
        )
    try:
        if kind == "SQLite":
            from geotrack.store.sqlite import parse_cursor

            parse_cursor(since)
        else:
            from geotrack.store.mongo import decode_cursor

            decode_cursor(since)
    except InvalidParameter as exc:
        raise InvalidParameter(name, exc.reason) from None
    return since


def resume_command(
    cursor: str,
    devices: Sequence[str] = (),
    json: bool = False,
    store: str | None = None,
    *,
    events: bool = False,
    fences: Sequence[str] = (),
) -> str:
    """The ``geotrack tail`` command line that resumes at ``cursor`` with the same filters.

    Shell-quoted, ready to paste. ``store`` is left out when it is the default (or comes
    from GEOTRACK_STORE), which the resumed command finds the same way. With ``events``,
    the command follows events (``--events``, and ``fences`` as ``--fence``).
    """
    args = ["geotrack", "tail"]
    if events:
        args.append("--events")
    if store is not None:
        args += ["--store", store]
    for device in devices:
        args += ["--device", device]
    for fence in fences:
        args += ["--fence", fence]
    if json:
        args.append("--json")
    args += ["--since", cursor]
    return shlex.join(args)


def format_line(position: Position) -> str:
    """One readable line for a person: time, device, place, then what else the fix has."""
    parts = [
        position.time,
        f"{position.device:<16}",
        f"{position.lat:11.7f} {position.lon:12.7f}",
    ]
    if position.speed is not None:
        parts.append(f"{position.speed:6.1f} m/s ({position.speed * 3.6:.0f} km/h)")
    if position.heading is not None:
        parts.append(f"{position.heading:5.1f}°")
    if position.alt is not None:
        parts.append(f"alt {position.alt:.1f} m")
    if position.acc is not None:
        parts.append(f"±{position.acc:.0f} m")
    if position.attrs:
        parts.append(" ".join(f"{k}={v}" for k, v in position.attrs.items()))
    return "  ".join(parts)


def format_json(position: Position) -> str:
    """The wire form of a position as one NDJSON line (without the newline)."""
    return encode_position(position).decode()


def format_event_line(event: Event) -> str:
    """One readable line for a person: time, device, enter/exit, fence, place."""
    return "  ".join(
        [
            event.ts,
            f"{event.device:<16}",
            f"{event.type:<5}",
            f"{event.fence:<16}",
            f"{event.lat:11.7f} {event.lon:12.7f}",
        ]
    )


def format_event_json(event: Event) -> str:
    """The event as ``/events`` sends it, as one NDJSON line (without the newline)."""
    return encode_event(event).decode()


def follow(
    store: Store,
    emit: Callable[[Change], None],
    *,
    since: str | int | None = None,
    devices: Collection[str] = (),
    running: Callable[[], bool] = lambda: True,
    poll: float = 0.5,
    on_open: Callable[[str], None] | None = None,
) -> str:
    """Call ``emit`` for each newly stored position until ``running()`` is false.

    ``running`` is asked after every emitted change, so a stop requested while a change
    is being emitted takes effect right after it, with the cursor exactly past it, and
    at least every ``poll`` seconds while idle. ``on_open`` is called with the starting
    cursor once the feed is open (a bad ``since`` has been refused by then). Returns the
    cursor to resume from. KeyboardInterrupt is caught too, and the cursor returned, but
    it can land between an emit and its cursor: a change emitted then may be repeated on
    resume. ``geotrack tail`` therefore turns its first Ctrl-C or SIGTERM into
    ``running()`` becoming false.
    """
    with store.follow(since=since, devices=devices) as feed:
        return _drain(feed, emit, running, poll, on_open)


def follow_events(
    store: Store,
    emit: Callable[[EventChange], None],
    *,
    since: str | int | None = None,
    devices: Collection[str] = (),
    fences: Collection[str] = (),
    running: Callable[[], bool] = lambda: True,
    poll: float = 0.5,
    on_open: Callable[[str], None] | None = None,
) -> str:
    """As :func:`follow`, for the store's geofence events (``geotrack tail --events``).

    ``since`` is an event cursor or Unix ms of store time; ``devices`` and ``fences``
    narrow what is emitted.
    """
    with store.follow_events(since=since, devices=devices, fences=fences) as feed:
        return _drain(feed, emit, running, poll, on_open)


def _drain(
    feed: ChangeFeed | EventFeed,
    emit: Callable[[Any], None],
    running: Callable[[], bool],
    poll: float,
    on_open: Callable[[str], None] | None,
) -> str:
    """Emit what ``feed`` gives until ``running()`` is false; the cursor to resume from."""
    # The cursor of what was emitted, not of what was fetched: a stop in the middle of a
    # batch must not skip the rest of it on resume.
    cursor = feed.cursor
    try:
        if on_open is not None:
            on_open(cursor)
        while running():
            for change in feed.poll(poll):
                emit(change)
                cursor = change.cursor
                if not running():
                    return cursor
            cursor = feed.cursor
    except KeyboardInterrupt:
        pass
    return cursor
