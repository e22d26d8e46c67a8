"""Times for the points of a track: fill the missing ones, retime, refuse shared ones.

Shared by every reader of track files (GPX, KML, TCX). A reader gathers one track's points
as :class:`RawPoint` (coordinates, the time the file gives if any, the other fields) and
:func:`place_track` turns them into items:

- **Untimed tracks** are walked at a speed (5 km/h unless ``--retime`` says) along their
  great-circle distance from an *anchor*: the file's own metadata time, else its earliest
  point time, else the file's modification time (then the walk *ends* there, since a file
  is written after the walk it holds). The same file gives the same times every time it
  is read, so importing or publishing it twice stores it once. A walk that would end in
  the future is moved back to end now (only for a file whose own times are that recent).
- **Partly timed tracks**: points between two timed ones are interpolated by distance;
  before or after them, placed at the timed part's average speed.
- **Shared or backward times**: counted per track in a :class:`Notice` that suggests
  ``--retime KMH``; a point that has the time of an earlier point of its track at another
  place cannot be stored (a store keeps one position per device and time), so it becomes
  a :class:`Skipped` — the import then exits 1. A point repeated exactly (same time and
  place) is left to the store's deduplication.
- **Retiming** (``--retime KMH``): every point's time from the distance along the track at
  that speed, from the track's first time in file order (or the anchor).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from geotrack.errors import InvalidParameter, InvalidPosition
from geotrack.schema import DEVICE_PATTERN, ms_to_ts, validate
from geotrack.sources.base import Item, Notice, Skipped

__all__ = [
    "DEFAULT_KMH",
    "SHARED_TIME",
    "Anchor",
    "RawPoint",
    "datetime_ms",
    "device_ids",
    "file_anchor",
    "haversine_m",
    "place_track",
]

#: The walking speed of untimed points when nothing else is said.
DEFAULT_KMH: Final = 5.0
#: The skip reason of a point whose time another point of its track already has.
SHARED_TIME: Final = "time shared with another point of the track"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_EARTH_RADIUS_M: Final = 6_371_008.8
_NOT_IN_DEVICE_ID: Final = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass(frozen=True, slots=True)
class RawPoint:
    """One point as a file gives it: ``ms`` None when it has no time.

    ``fields`` holds the position's other fields (lat, lon, alt, attrs...; no device or
    ts), or, as a string, the reason the point cannot be read (a bad extension value).
    """

    lat: float
    lon: float
    ms: int | None
    fields: dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where untimed walks start (or, with ``is_end``, end), and what that time is."""

    ms: int
    what: str
    is_end: bool = False


def datetime_ms(dt: datetime) -> int:
    """Unix ms of a datetime (UTC when naive), in integer arithmetic (no float rounding)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def file_anchor(path: Path, metadata_ms: int | None, earliest_ms: int | None) -> Anchor:
    """The anchor of a file's invented times: metadata time, earliest time, or mtime."""
    if metadata_ms is not None:
        return Anchor(metadata_ms, "the file's metadata time")
    if earliest_ms is not None:
        return Anchor(earliest_ms, "the file's earliest time")
    try:
        mtime_ms = path.stat().st_mtime_ns // 1_000_000
    except OSError:
        mtime_ms = time.time_ns() // 1_000_000
    return Anchor(mtime_ms, "the file's modification time", is_end=True)


def device_ids(stem: str, device: str | None, n: int, fallback: str = "track") -> list[str]:
    """Device ids of ``n`` tracks: ``device`` (numbered ``-1``, ``-2``... for several) or
    the file's stem made a valid id (characters an id cannot hold become ``-``, cut to 64).

    Raises InvalidParameter for a ``device`` that is no valid id or too long to number.
    """
    if device is not None:
        if not re.fullmatch(DEVICE_PATTERN, device):
            raise InvalidParameter(
                "device", f"{device!r} is not 1-64 characters of A-Z a-z 0-9 . _ : -"
            )
        if n == 1:
            return [device]
        ids = [f"{device}-{i}" for i in range(1, n + 1)]
        if len(ids[-1]) > 64:
            raise InvalidParameter(
                "device", f"{device!r} is too long to number {n} tracks as {device}-<n> (64 max)"
            )
        return ids
    base = _NOT_IN_DEVICE_ID.sub("-", stem) or fallback
    if n == 1:
        return [base[:64]]
    base = base[: 64 - len(f"-{n}")]
    return [f"{base}-{i}" for i in range(1, n + 1)]


def place_track(
    points: Sequence[RawPoint],
    device: str,
    label: str,
    anchor: Anchor,
    *,
    kmh: float = DEFAULT_KMH,
    retime_kmh: float | None = None,
    now_ms: int | None = None,
) -> Iterator[Item]:
    """One track's items: notices, then its positions sorted by time and its skips.

    ``label`` names the track in notices and skips (``track 'Morning run'``); ``kmh`` is
    the walking speed of untimed points, ``retime_kmh`` retimes every point (module doc).
    """
    if not points:
        return
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    items: list[Item] = []
    known = [p.ms for p in points]
    cum = _cumulative_metres([(p.lat, p.lon) for p in points])
    n = len(points)
    if retime_kmh is not None:
        first = next((t for t in known if t is not None), None)
        start = first if first is not None else anchor.ms
        times = _walk(cum, retime_kmh, start, None if first is not None else anchor, now_ms)
        items.append(
            Notice(f"{label}: {n} points retimed at {retime_kmh:g} km/h from {ms_to_ts(times[0])}")
        )
    elif all(t is None for t in known):
        times = _walk(cum, kmh, anchor.ms, anchor, now_ms)
        items.append(
            Notice(
                f"{label}: no point has a time: walked at {kmh:g} km/h from "
                f"{ms_to_ts(times[0])} ({anchor.what})"
            )
        )
    else:
        times, note = _fill(cum, known, kmh)
        if note:
            items.append(Notice(f"{label}: {note}"))
        items.extend(_order_notice(known, label))

    yield from items
    # Sorted by time (file order among equal times), each position made only as it is
    # yielded: the importer stores it before the next is built.
    seen: dict[int, tuple[float, float]] = {}
    for index in sorted(range(n), key=lambda i: (times[i], i)):
        point, ms = points[index], times[index]
        where = f"{label} point {index + 1}"
        if isinstance(point.fields, str):
            yield Skipped(point.fields, where)
            continue
        try:
            position = validate(point.fields | {"device": device, "ts": ms_to_ts(ms)})
        except InvalidPosition as exc:
            yield Skipped(str(exc), where)
            continue
        except (OverflowError, ValueError):
            yield Skipped("ts: out of range (years 1-9999)", where)
            continue
        place = seen.setdefault(ms, (position.lat, position.lon))
        if place != (position.lat, position.lon):
            yield Skipped(SHARED_TIME, where)
            continue
        yield position


def _order_notice(known: list[int | None], label: str) -> list[Notice]:
    """A notice counting points at the time of, or before, the timed point before them."""
    timed = [t for t in known if t is not None]
    same = sum(1 for a, b in itertools.pairwise(timed) if b == a)
    back = sum(1 for a, b in itertools.pairwise(timed) if b < a)
    if not (same or back):
        return []
    n = len(known)
    parts = []
    if same:
        parts.append(f"{same} of {n} points have the same time as the point before")
    if back:
        parts.append(f"{back} of {n} points go back in time")
    why = (
        "; points at one time in different places cannot all be stored "
        "(one position per device and time)"
        if same
        else ""
    )
    return [
        Notice(
            f"{label}: {' and '.join(parts)}{why}: "
            "--retime KMH gives every point a time from the distance at KMH km/h"
        )
    ]


def _walk(
    cum: list[float], kmh: float, start_ms: int, anchor: Anchor | None, now_ms: int
) -> list[int]:
    """Times at ``kmh`` along ``cum``, strictly increasing; kept out of the future.

    With an anchor that is an end (the file's mtime), the walk ends at ``start_ms``.
    """
    if not (math.isfinite(kmh) and kmh > 0):
        raise InvalidParameter("kmh", f"must be a positive number of km/h, got {kmh!r}")
    ms_per_m = 3600.0 / kmh
    offsets: list[int] = []
    for d in cum:
        # Repeated points would otherwise share a time, and a store keeps only one.
        offsets.append(max(round(d * ms_per_m), offsets[-1] + 1 if offsets else 0))
    if anchor is not None and anchor.is_end:
        start_ms -= offsets[-1]
    elif anchor is not None and start_ms + offsets[-1] > now_ms:
        start_ms = now_ms - offsets[-1]
    return [start_ms + o for o in offsets]


def _fill(cum: list[float], known: list[int | None], kmh: float) -> tuple[list[int], str | None]:
    """Every point's time in ms, and what was invented (None if nothing)."""
    timed = [i for i, t in enumerate(known) if t is not None]
    if len(timed) == len(known):
        return [t for t in known if t is not None], None
    filled: list[int | None] = list(known)
    for a, b in itertools.pairwise(timed):
        ta, tb = known[a], known[b]
        assert ta is not None
        assert tb is not None
        span = cum[b] - cum[a]
        for i in range(a + 1, b):
            frac = (cum[i] - cum[a]) / span if span > 0 else (i - a) / (b - a)
            filled[i] = ta + math.floor((tb - ta) * frac)
    first, last = timed[0], timed[-1]
    t_first, t_last = known[first], known[last]
    assert t_first is not None
    assert t_last is not None
    metres, duration = cum[last] - cum[first], t_last - t_first
    ms_per_m = duration / metres if metres > 0 and duration > 0 else 3600.0 / kmh
    for i in range(first - 1, -1, -1):
        previous = filled[i + 1]
        assert previous is not None
        filled[i] = min(t_first - round((cum[first] - cum[i]) * ms_per_m), previous - 1)
    for i in range(last + 1, len(known)):
        previous = filled[i - 1]
        assert previous is not None
        filled[i] = max(t_last + round((cum[i] - cum[last]) * ms_per_m), previous + 1)
    missing = len(known) - len(timed)
    note = f"{missing} of {len(known)} points have no time: interpolated by distance"
    if first > 0 or last < len(known) - 1:
        note += f", and at {3600.0 / ms_per_m:.1f} km/h before or after the timed points"
    return [t for t in filled if t is not None], note


def _cumulative_metres(coords: list[tuple[float, float]]) -> list[float]:
    cum = [0.0]
    for (lat1, lon1), (lat2, lon2) in itertools.pairwise(coords):
        cum.append(cum[-1] + haversine_m(lat1, lon1, lat2, lon2))
    return cum


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle metres; 0 for coordinates that are not finite (validation drops them)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    d = 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, max(0.0, h))))
    return d if math.isfinite(d) else 0.0
