"""Following a store's change feed: the logic behind ``geotrack tail``."""

from __future__ import annotations

from collections.abc import Callable, Collection

from geotrack.schema import Position, encode_position
from geotrack.store import Change, Store


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

    ``on_open`` is called with the starting cursor once the feed is open (a bad ``since``
    has been refused by then). Returns the cursor to resume from. KeyboardInterrupt is
    the usual way out: it is caught here, so the cursor is returned all the same.
    """
    with store.follow(since=since, devices=devices) as feed:
        # The cursor of what was emitted, not of what was fetched: an interrupt in the
        # middle of a batch must not skip the rest of it on resume.
        cursor = feed.cursor
        try:
            if on_open is not None:
                on_open(cursor)
            while running():
                for change in feed.poll(poll):
                    emit(change)
                    cursor = change.cursor
                cursor = feed.cursor
        except KeyboardInterrupt:
            pass
        return cursor
