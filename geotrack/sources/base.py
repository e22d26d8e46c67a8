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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from geotrack.schema import Position

__all__ = ["Format", "Item", "Notice", "ReadOptions", "Skipped"]


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
    """

    name: str
    description: str
    suffixes: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    read: Callable[[Path, ReadOptions], Iterator[Item]]
