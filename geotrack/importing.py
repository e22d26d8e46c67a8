"""Import files of positions straight into a store (``geotrack import``).

Each file is read by its format's reader (:mod:`geotrack.sources.formats`, recognised by
content unless a format is given), optionally shifted so its first position is at a
given time, and written through :meth:`Store.write` in large batches: memory stays flat
in the file's size, and a file imports as fast as the store takes batches. Writes are
idempotent, so importing a file twice stores nothing new, and a position repeated within
a file counts as a duplicate; a position at the same time as its device's point before
but elsewhere is skipped (``--retime`` gives such files times). A file that fails
part-way keeps what was stored before the failure (the positions read before it are
written first) and its report carries the error; the other files still import.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Final

from geotrack._text import plural
from geotrack.errors import InvalidParameter, SourceError, StoreError
from geotrack.schema import DEVICE_PATTERN, Position
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped, metered, shift_to_start
from geotrack.sources.formats import format_names, resolve
from geotrack.store import Store

__all__ = [
    "DEFAULT_BATCH",
    "SHARED_TIME",
    "FileReport",
    "ImportConfig",
    "ImportProgress",
    "import_files",
]

#: Positions written to the store in one call: one transaction each in SQLite.
DEFAULT_BATCH: Final = 20_000
#: The skip reason of a position at the same time as its device's point before, elsewhere.
SHARED_TIME: Final = "same time as the point before, elsewhere (try --retime KMH)"
# Reasons a summary line names; the rest are counted.
_REASONS_SHOWN: Final = 3


@dataclass(frozen=True, slots=True)
class ImportConfig:
    """What ``geotrack import`` was asked to do, checked on construction.

    ``format`` is a reader's name or ``auto`` (by content); ``device`` replaces every
    device id the files name; ``tz`` is the zone of local times without an offset;
    ``retime_kmh`` makes times from distances at that speed; ``start_ms`` shifts each
    file so its first position is at that time (Unix ms), keeping the intervals.
    """

    format: str = "auto"
    device: str | None = None
    tz: tzinfo | None = None
    retime_kmh: float | None = None
    start_ms: int | None = None
    batch: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        if self.format not in format_names():
            raise InvalidParameter(
                "--format",
                f"unknown format {self.format!r} (use one of: {', '.join(format_names())})",
            )
        if self.device is not None and not re.match(DEVICE_PATTERN, self.device):
            raise InvalidParameter(
                "--device",
                f"{self.device!r} is not a device id (1-64 of A-Z a-z 0-9 . _ : -)",
            )
        if self.retime_kmh is not None and not (
            math.isfinite(self.retime_kmh) and self.retime_kmh > 0
        ):
            raise InvalidParameter("--retime", "must be a speed above 0 km/h")
        if self.batch < 1:
            raise InvalidParameter("batch", "must be at least 1")

    @property
    def read_options(self) -> ReadOptions:
        return ReadOptions(device=self.device, tz=self.tz, retime_kmh=self.retime_kmh)


@dataclass(slots=True)
class FileReport:
    """What importing one file did.

    ``read`` counts the positions the reader gave; ``stored`` those that were new;
    ``duplicates`` those already stored (or repeated in the file); ``skipped`` the points
    the reader could not use, by reason, with where the first of each was in
    ``first_skip``. ``error`` is set when the file could not be read to its end (or at
    all) or the store refused a batch: what was stored before it stays stored.
    """

    path: str
    format: str | None = None
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_skip: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when every point of the file was read and none refused."""
        return self.error is None and not self.skipped

    def summary(self) -> str:
        """One line: ``walk.csv (csv): read 1,000, stored 990, 10 duplicates, ...``."""
        if self.format is None:
            return f"{self.path}: not imported: {self.error}"
        name = f"{self.path} ({self.format})"
        parts = [
            f"read {self.read:,}",
            f"stored {self.stored:,}",
            f"{self.duplicates:,} duplicate{'' if self.duplicates == 1 else 's'}",
        ]
        total = sum(self.skipped.values())
        if total:
            reasons = []
            for reason, n in self.skipped.most_common(_REASONS_SHOWN):
                where = self.first_skip.get(reason)
                reasons.append(f"{n:,} {reason}" + (f" (first at {where})" if where else ""))
            more = len(self.skipped) - _REASONS_SHOWN
            if more > 0:
                reasons.append(f"{plural(more, 'other reason')}")
            parts.append(f"{total:,} skipped: {'; '.join(reasons)}")
        line = f"{name}: {', '.join(parts)}"
        if self.error:
            line += f"; stopped: {self.error}"
        return line


class ImportProgress:
    """Where :func:`import_files` reports its progress; this base class ignores it all."""

    def file_started(self, path: Path, size: int) -> None:
        """A file is about to be read; ``size`` is its size on disk in bytes."""

    def advanced(self, done_bytes: int | None, positions: int) -> None:
        """``positions`` read so far from the current file, ``done_bytes`` of it read
        (None when its reader does not say)."""

    def file_done(self, report: FileReport) -> None:
        """A file is finished, for better or worse."""


def import_files(
    store: Store,
    paths: Sequence[Path],
    config: ImportConfig | None = None,
    progress: ImportProgress | None = None,
) -> list[FileReport]:
    """Import each file into ``store``; one report per file, in order.

    Errors of a file (unreadable, unrecognised, damaged part-way, a batch the store
    refused) end up in its report, and the next file is imported.
    """
    config = config or ImportConfig()
    progress = progress or ImportProgress()
    reports: list[FileReport] = []
    for path in paths:
        report = FileReport(str(path))
        reports.append(report)
        try:
            size = path.stat().st_size
        except OSError as exc:
            report.error = f"cannot read: {exc.strerror or exc}"
            progress.file_done(report)
            continue
        progress.file_started(path, size)
        _import_file(store, path, config, report, progress)
        progress.file_done(report)
    return reports


def _import_file(
    store: Store, path: Path, config: ImportConfig, report: FileReport, progress: ImportProgress
) -> None:
    try:
        fmt = resolve(path, config.format)
    except SourceError as exc:
        report.error = exc.reason
        return
    report.format = fmt.name
    batch: list[Position] = []
    size = config.batch
    # Each device's last position: one at the same time elsewhere is not a duplicate but
    # a file whose times are meaningless (all equal, or cut to the second).
    lasts: dict[str, Position] = {}
    with metered() as meter:
        items: Iterator[Item] = fmt.read(path, config.read_options)
        if config.start_ms is not None:
            items = shift_to_start(items, config.start_ms)
        try:
            try:
                for item in items:
                    if type(item) is Position:
                        before = lasts.get(item.device)
                        if (
                            before is not None
                            and before.ts == item.ts
                            and (before.lat != item.lat or before.lon != item.lon)
                        ):
                            report.skipped[SHARED_TIME] += 1
                            report.first_skip.setdefault(SHARED_TIME, f"{item.device} {item.ts}")
                            continue
                        lasts[item.device] = item
                        batch.append(item)
                        if len(batch) >= size:
                            _write(store, batch, report)
                            progress.advanced(meter.done, report.read)
                    elif isinstance(item, Skipped):
                        report.skipped[item.reason] += 1
                        report.first_skip.setdefault(item.reason, item.where)
                    elif isinstance(item, Notice):
                        report.notices.append(item.text)
                    else:  # a Position subclass
                        batch.append(item)
            except SourceError as exc:
                report.error = exc.reason
            except OSError as exc:
                report.error = f"cannot read: {exc.strerror or exc}"
            finally:
                # What was read before a failure is stored all the same.
                _write(store, batch, report)
        except StoreError as exc:
            report.error = str(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        progress.advanced(meter.done, report.read)


def _write(store: Store, batch: list[Position], report: FileReport) -> None:
    if not batch:
        return
    report.read += len(batch)
    try:
        new = store.write(batch)
    finally:
        # A batch the store refused is not tried again (the error ends the file).
        n = len(batch)
        batch.clear()
    stored = sum(new)
    report.stored += stored
    report.duplicates += n - stored
