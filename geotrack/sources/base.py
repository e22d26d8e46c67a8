"""What every file reader gives: positions, skips with reasons, and notices.

A reader turns one file into a stream of :data:`Item`: a :class:`~geotrack.schema.Position`
for each point it could read, a :class:`Skipped` for each point it could not (with the
reason and where), and a :class:`Notice` for what the user should know about the file as a
whole (times invented, points sharing a time, a track without times). Readers stream: a
reader of a line- or record-based format holds one record at a time, so memory stays flat
in the file's size. ``geotrack import`` stores the positions and counts the rest; ``geotrack
publish`` replays the positions; both print the notices and the skip reasons.

Readers are registered in :mod:`geotrack.sources.formats`, which recognises a file's
format by its content (and its suffix as a tie-breaker).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import IO, Any, cast

import msgspec

from geotrack.schema import Position, ms_to_ts, parse_time, ts_to_ms

__all__ = [
    "GZIP_MAGIC",
    "Format",
    "Item",
    "Notice",
    "ReadMeter",
    "ReadOptions",
    "Skipped",
    "blocks",
    "haversine_m",
    "metered",
    "open_binary",
    "parse_start",
    "retime",
    "shift_to_start",
]

#: The first two bytes of a gzip stream.
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """What the user said about the files, the same for every reader.

    ``device`` replaces every device id the file names (or would be derived from the file
    name). ``tz`` is the zone of local times that carry no offset (CSV exports of other
    tools); None means such times are an error. ``retime_kmh`` gives every point of a
    track a time computed from the distance along it at that speed, from the track's first
    time (or the file's own metadata time) on — for untimed files and for files whose times
    are meaningless (all equal, or going backwards).
    """

    device: str | None = None
    tz: tzinfo | None = None
    retime_kmh: float | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A point the reader found but could not turn into a valid position.

    ``reason`` is short and lower-case, the same text for the same cause (the importer
    counts by it: ``no time``, ``latitude out of range``); ``where`` locates it for the
    user (``line 12``, ``track 'Morning run' point 5``).
    """

    reason: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """One line about the file the user should read (not about a single point)."""

    text: str


Item = Position | Skipped | Notice


@dataclass(frozen=True, slots=True)
class Format:
    """One file format: its name (``--format`` value), how to spot it, how to read it.

    ``sniff`` gets the first bytes of the file (up to 64 KiB, decompressed for gzip) and
    answers whether the content is of this format; it must not raise. ``read`` streams the
    file's items and raises :class:`~geotrack.errors.SourceError` (one line, naming the
    file and what was wrong) when the file cannot be read at all; a truncated file yields
    what it could read before raising, so nothing valid is lost.

    ``gzip`` says the reader opens its file with :func:`open_binary`, which unpacks gzip
    as it reads; for a reader that does not, :mod:`geotrack.sources.formats` unpacks a
    gzip file to a temporary file first.
    """

    name: str
    description: str
    suffixes: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    read: Callable[[Path, ReadOptions], Iterator[Item]]
    gzip: bool = False


def parse_start(text: str, now_ms: int, name: str = "--start") -> int:
    """Unix ms of a ``--start`` value: ``now``, an RFC 3339 time, Unix seconds or an age (2h).

    Raises InvalidParameter naming ``name`` for anything else.
    """
    if text.strip().lower() == "now":
        return now_ms
    return parse_time(text, now_ms, name)


def shift_to_start(items: Iterable[Item], start_ms: int) -> Iterator[Item]:
    """Pass ``items`` through with every position's time moved so the first is ``start_ms``.

    The offset is fixed by the first position met, so the intervals between positions are
    kept exactly (to the millisecond) and the items stream. A position the shift would
    carry outside years 0001-9999 becomes a Skipped (``time out of range after --start``).
    Skips and notices pass unchanged.
    """
    offset: int | None = None
    replace = msgspec.structs.replace
    for item in items:
        if isinstance(item, Position):
            ms = ts_to_ms(item.time)
            if offset is None:
                offset = start_ms - ms
            if not _MIN_MS <= ms + offset <= _MAX_MS:
                yield Skipped("time out of range after --start", item.time)
                continue
            # The canonical text is set directly: the rest of the position was validated.
            yield replace(item, ts=ms_to_ts(ms + offset))
        else:
            yield item


# The range of a canonical timestamp (years 0001-9999), in Unix ms.
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_999


class ReadMeter:
    """How far a reader has got through its file, in bytes of the file on disk.

    A reader that opens its file with :func:`open_binary` inside :func:`metered` is seen
    here (for a gzip file, the compressed bytes read of the compressed size), so a
    progress bar can show an ETA without knowing the format.
    """

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self.size = 0

    def watch(self, raw: IO[bytes]) -> None:
        self._file = raw
        self.size = os.fstat(raw.fileno()).st_size

    @property
    def done(self) -> int | None:
        """Bytes read so far, or None when no file opened with open_binary is watched."""
        if self._file is None:
            return None
        try:
            return self._file.tell()
        except (OSError, ValueError):  # closed: read to the end
            return self.size


_meter: ContextVar[ReadMeter | None] = ContextVar("geotrack_read_meter", default=None)


@contextlib.contextmanager
def metered() -> Iterator[ReadMeter]:
    """Watch the files readers open with :func:`open_binary` in this context."""
    meter = ReadMeter()
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading, decompressing it when it is gzip (by content, not name).

    Readers open their file with this: a ``.gz`` of any format then reads like the plain
    file, and :func:`metered` sees how far the reading has got.
    """
    raw = open(path, "rb")  # noqa: SIM115 - returned open, or wrapped and closed with it
    try:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
    except BaseException:
        raw.close()
        raise
    meter = _meter.get()
    if not gzipped:
        if meter is not None:
            meter.watch(raw)
        return raw
    raw.close()
    unpacked = gzip.GzipFile(path, "rb")
    inner: Any = unpacked.fileobj  # the compressed file, which the meter follows
    if meter is not None and inner is not None:
        meter.watch(inner)
    return cast(IO[bytes], unpacked)


def blocks(f: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of ``f`` in blocks of about ``size``, for readers that split lines.

    Reads with ``read1`` where the file has it, so that when reading fails part-way (a
    damaged or cut gzip stream, a failing disk) the bytes read before the failure are
    given first and the error (OSError or EOFError) is raised after them.
    """
    read1 = getattr(f, "read1", None) or f.read
    while True:
        parts: list[bytes] = []
        got = 0
        try:
            while got < size:
                part = read1(size - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        except (OSError, EOFError):
            if parts:
                yield b"".join(parts)
            raise
        if not parts:
            return
        yield b"".join(parts)


_EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points (mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def retime(items: Iterable[Item], kmh: float) -> Iterator[Item]:
    """Pass ``items`` through with times made from distance at ``kmh`` (``--retime``).

    Each device's first position keeps its time; each next one is later by the distance
    from the one before at that speed. For line-based files whose times are all equal or
    go backwards; streams, holding one position per device.
    """
    mps = kmh / 3.6
    last: dict[str, tuple[float, float, float]] = {}
    replace = msgspec.structs.replace
    for item in items:
        if isinstance(item, Position):
            before = last.get(item.device)
            if before is None:
                t = float(ts_to_ms(item.time))
            else:
                t = before[2] + haversine_m(before[0], before[1], item.lat, item.lon) / mps * 1000
            last[item.device] = (item.lat, item.lon, t)
            ms = round(t)
            if not _MIN_MS <= ms <= _MAX_MS:
                yield Skipped("time out of range after --retime", item.time)
                continue
            yield replace(item, ts=ms_to_ts(ms))
        else:
            yield item
