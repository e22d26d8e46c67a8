"""Turning files and stored history into the player's schedule of ``(offset, position)``.

A source is an :class:`Input`: a file (the items of any reader) or a store's selection. Its
positions go out in *lanes*, each in time order: a store gives one lane per device (each
read in pages of its (device, time) index, so the merge is exact and memory is bounded by
the page size); a file gives one lane, put in order through a reordering window of
:data:`WINDOW` positions. A file in time order — or out of order by less than the window, as
most multi-track GPX and KML files are, whole — is replayed exactly in bounded memory. A
file more disordered than that (geotrack's own NDJSON or CSV export of many devices, one
device after another, larger than the window) still sends every position, but those that
came too late for their turn go out at once, and its report counts them (``late``): sort
such a file by time for a faithful paced replay; at ``--speed 0`` the order is immaterial.

:func:`schedule` merges every lane by a key in milliseconds: each device's time since its
own first position (``as_recorded=False``: devices start together, side by side, as GPX
tracks always have), or the time itself (``as_recorded=True``: devices keep the intervals
between them, as a fleet moved). Offsets count from the smallest key. ``start_ms`` rewrites
each position's time to ``start_ms + offset``, so the first is at that time and every
interval of the replay is kept; ``loop`` replays again and again, each round shifted, in
time and offset, by the replay's span plus one sampling interval, so a relay stores every
round's positions as new ones.

Within a device, a position with the same time as the one before it cannot be stored (a
relay keeps one position per device and time): it is not sent, and it is counted as
skipped in its source's report, with a reason that suggests ``--retime``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from geotrack._text import plural
from geotrack.errors import SourceError
from geotrack.schema import Position, ms_to_ts
from geotrack.sources.base import Format, Item, Notice, ReadOptions, Skipped
from geotrack.store import Store

__all__ = [
    "SAME_TIME",
    "WINDOW",
    "Input",
    "SourceReport",
    "file_input",
    "schedule",
    "store_input",
    "stored_lanes",
]

#: Positions a file's lane holds to put them in time order (about 40 MB at most).
WINDOW: Final = 100_000

#: Positions a store source reads ahead, over all its devices' pages together.
_READ_AHEAD: Final = 100_000

#: The skip reason of a position that has its device's previous time.
SAME_TIME: Final = "same time as the point before (--retime KMH gives times from distance)"

#: Skip reasons a report names; the others are counted in one "other" entry.
_SHOWN_REASONS: Final = 5

Notify = Callable[[str], None]
#: One lane entry: key in ms, a sequence number (ties, and never comparing positions),
#: the position's time in ms, the position and the report of its source.
_Entry = tuple[int, int, int, Position, "SourceReport"]


@dataclass(slots=True)
class SourceReport:
    """What one source gave: positions read, points skipped (by reason), positions sent late."""

    name: str
    #: Positions read (valid, though some may be skipped later: a time shared, out of range).
    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    #: Where each skip reason was first met (``line 12``), when the reader said.
    first_at: dict[str, str] = field(default_factory=dict)
    late: int = 0
    #: Positions read but not sent (a time their device already had, out of range).
    dropped: int = 0
    #: Why reading stopped early (a truncated or broken file), when it did.
    error: str | None = None

    def skip(self, reason: str, where: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if where and reason not in self.first_at:
            self.first_at[reason] = where

    @property
    def skips(self) -> int:
        return sum(self.skipped.values())

    @property
    def failed(self) -> bool:
        """Points were skipped or the source could not be read to its end: exit code 1."""
        return bool(self.skipped) or self.error is not None

    def lines(self, *, paced: bool = True) -> list[str]:
        """The lines a person reads about this source, as ``geotrack import`` words them.

        One line when points were skipped or reading stopped early: ``trip.csv: read 40,
        2 skipped: 2 no time (first at line 4); stopped: ...`` (read: the positions to
        send); one more when positions were sent late, unless ``paced`` is False (at
        ``--speed 0``, where lateness means nothing). None for a file that read cleanly.
        """
        lines: list[str] = []
        if self.skipped or self.error is not None:
            parts = [f"read {self.read - self.dropped:,}"]
            if self.skipped:
                ranked = sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
                reasons = [self._reason(reason, n) for reason, n in ranked[:_SHOWN_REASONS]]
                more = len(ranked) - _SHOWN_REASONS
                if more > 0:
                    reasons.append(plural(more, "other reason"))
                parts.append(f"{self.skips:,} skipped: {'; '.join(reasons)}")
            line = f"{self.name}: {', '.join(parts)}"
            if self.error is not None:
                line += f"; stopped: {self.error}"
            lines.append(line)
        if self.late and paced:
            lines.append(
                f"{self.name}: {plural(self.late, 'position')} came more than "
                f"{WINDOW:,} positions out of time order and {'was' if self.late == 1 else 'were'} "
                "sent late; sort the file by time for a faithful replay"
            )
        return lines

    def _reason(self, reason: str, n: int) -> str:
        where = self.first_at.get(reason)
        return f"{n:,} {reason}" + (f" (first at {where})" if where else "")


class Input:
    """One source of positions: a file's items, or a store's devices.

    ``open_lanes`` opens the source anew (each round of a loop reads it again) as lanes of
    items; ``ordered`` says each lane is exactly in time order (a store's), so it needs no
    reordering window. Notices are passed to ``notify`` and skips counted in ``report``
    in the first round only.
    """

    def __init__(
        self, name: str, open_lanes: Callable[[], Sequence[Iterable[Item]]], *, ordered: bool
    ) -> None:
        self.report = SourceReport(name)
        self.ordered = ordered
        self._open = open_lanes
        self._rounds = 0
        self._reading = 0  # lanes of the first round not read to their end yet
        self._primed: list[Iterator[Item]] | None = None

    def prime(self) -> None:
        """Open the source and read its first item now, so that a file that cannot be read
        at all raises its SourceError before anything is sent."""
        lanes = [iter(items) for items in self._open()]
        self._primed = []
        for lane in lanes:
            first = next(lane, None)
            self._primed.append(lane if first is None else itertools.chain([first], lane))

    @classmethod
    def file(cls, name: str, read: Callable[[], Iterable[Item]]) -> Input:
        """A file, read by ``read`` (a reader bound to the file and its options)."""
        return cls(name, lambda: [read()], ordered=False)

    def lanes(self, notify: Notify) -> list[Iterator[Position]]:
        first = self._rounds == 0
        self._rounds += 1
        opened = self._primed if first and self._primed is not None else self._open()
        self._primed = None
        if first:
            self._reading = len(opened)
        return [self._positions(items, first, notify) for items in opened]

    @property
    def read_through(self) -> bool:
        """The first round has read every lane to its end: the report's counts are final."""
        return self._rounds > 0 and self._reading == 0

    def _positions(self, items: Iterable[Item], first: bool, notify: Notify) -> Iterator[Position]:
        report = self.report
        try:
            yield from self._items(items, first, notify)
        except SourceError as exc:
            # A truncated or broken file: what was read before is played; the rest is lost
            # and said so, and the run ends with exit code 1.
            if first:
                report.error = exc.reason
        if first:
            self._reading -= 1

    def _items(self, items: Iterable[Item], first: bool, notify: Notify) -> Iterator[Position]:
        report = self.report
        for item in items:
            if isinstance(item, Position):
                if first:
                    report.read += 1
                yield item
            elif not first:
                continue
            elif isinstance(item, Skipped):
                report.skip(item.reason, item.where)
            elif isinstance(item, Notice):
                notify(f"{report.name}: {item.text}")


def file_input(path: Path, fmt: Format, options: ReadOptions) -> Input:
    """A file read by ``fmt``'s reader with ``options``, named by its path."""
    return Input.file(str(path), lambda: fmt.read(path, options))


def store_input(
    store: Store,
    devices: Collection[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> Input:
    """A store's history (of ``devices``, or all; fix times within the bounds, inclusive)."""
    return Input(
        store.display_url,
        lambda: stored_lanes(store, devices, since_ms, until_ms),
        ordered=True,
    )


def stored_lanes(
    store: Store,
    devices: Collection[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> list[Iterator[Position]]:
    """One lane per stored device (those of ``devices``, or all), each in time order.

    Each lane reads its device's positions in pages, each page a query of its own closed
    before the next, so no connection stays open between pages however many devices.
    """
    names = sorted(set(devices)) if devices else store.devices()
    page = max(10, min(1000, _READ_AHEAD // max(1, len(names))))
    return [_pages(store, name, since_ms, until_ms, page) for name in names]


def _pages(
    store: Store, device: str, since_ms: int | None, until_ms: int | None, page: int
) -> Iterator[Position]:
    while True:
        rows = store.query([device], since_ms, until_ms)
        try:
            chunk = list(itertools.islice(rows, page))
        finally:
            if isinstance(rows, Generator):
                rows.close()  # releases the backend's connection or cursor now
        yield from chunk
        if len(chunk) < page:
            return
        # (device, ms) is unique in a store, so the next page starts right after this one.
        since_ms = chunk[-1].ts_ms + 1


def schedule(
    inputs: Sequence[Input],
    *,
    as_recorded: bool = False,
    start_ms: int | None = None,
    loop: bool = False,
    notify: Notify | None = None,
    window: int = WINDOW,
) -> Iterator[tuple[float, Position]]:
    """Yield ``(offset in seconds, position)`` of every input, merged in offset order.

    See the module's docstring for the keys, ``start_ms`` and ``loop``. Lanes are read
    lazily, as the player takes positions. A position whose time ``start_ms`` or a loop
    would carry out of years 1-9999 is skipped (``time out of range``).
    """
    say = notify if notify is not None else (lambda line: None)
    seq = itertools.count()
    first_key: int | None = None
    period = 0
    for round_ in itertools.count():
        lanes: list[Iterator[_Entry]] = []
        for source in inputs:
            for lane in source.lanes(say):
                entries = _keyed(lane, as_recorded, source.report, seq)
                lanes.append(entries if source.ordered else _reorder(entries, window))
        span = _Span() if loop and round_ == 0 else None
        shift = round_ * period
        last_ms: dict[str, int] = {}
        merged = lanes[0] if len(lanes) == 1 else heapq.merge(*lanes)
        for key, _, ms, position, report in merged:
            device = position.device
            if last_ms.get(device) == ms:
                if round_ == 0:
                    report.skip(SAME_TIME, f"{device} at {position.time}")
                    report.dropped += 1
                continue
            last_ms[device] = ms
            if first_key is None:
                first_key = key
            if span is not None:
                span.add(device, key, ms)
            offset_ms = key - first_key + shift
            new_ms = ms + shift if start_ms is None else start_ms + offset_ms
            out = position
            if new_ms != ms:
                try:
                    out = msgspec.structs.replace(position, ts=ms_to_ts(new_ms))
                except (OverflowError, ValueError):
                    if round_ == 0:
                        report.skip("time out of range", f"{device} at {position.time}")
                        report.dropped += 1
                    continue
            yield offset_ms / 1000, out
        if not loop or first_key is None:
            return
        if span is not None:
            period = span.period()


class _Span:
    """The keys a round covered and each device's sampling interval: a loop's period."""

    __slots__ = ("devices", "high", "low")

    def __init__(self) -> None:
        self.low: int | None = None
        self.high = 0
        self.devices: dict[str, list[int]] = {}  # device: [count, first ms, last ms]

    @property
    def empty(self) -> bool:
        return self.low is None

    def add(self, device: str, key: int, ms: int) -> None:
        if self.low is None or key < self.low:
            self.low = key
        self.high = max(self.high, key)
        seen = self.devices.get(device)
        if seen is None:
            self.devices[device] = [1, ms, ms]
        else:
            seen[0] += 1
            seen[2] = ms

    def period(self) -> int:
        """The round's span plus its longest sampling interval (at least a second)."""
        assert self.low is not None
        interval = 1000
        for count, first, last in self.devices.values():
            if count > 1:
                interval = max(interval, math.ceil((last - first) / (count - 1)))
        return self.high - self.low + interval


def _keyed(
    lane: Iterator[Position], as_recorded: bool, report: SourceReport, seq: Iterator[int]
) -> Iterator[_Entry]:
    """The lane's entries: key is the time, or the time since the device's first position."""
    if as_recorded:
        for position in lane:
            ms = position.ts_ms
            yield ms, next(seq), ms, position, report
        return
    base: dict[str, int] = {}
    for position in lane:
        ms = position.ts_ms
        yield ms - base.setdefault(position.device, ms), next(seq), ms, position, report


def _reorder(entries: Iterator[_Entry], window: int) -> Iterator[_Entry]:
    """The entries in key order, through a heap of ``window``; late ones counted, not lost."""
    heap: list[_Entry] = []
    last: int | None = None
    push, pushpop, pop = heapq.heappush, heapq.heappushpop, heapq.heappop
    for entry in entries:
        if len(heap) < window:
            push(heap, entry)
            continue
        out = pushpop(heap, entry)
        if last is not None and out[0] < last:
            out[4].late += 1
        else:
            last = out[0]
        yield out
    while heap:
        out = pop(heap)
        if last is not None and out[0] < last:
            out[4].late += 1
        else:
            last = out[0]
        yield out
