"""`geotrack import`: files of positions straight into a store."""

from __future__ import annotations

import time
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any

import typer

from geotrack.cli._common import StoreOption, app, err, errors, now_ms
from geotrack.errors import InvalidParameter
from geotrack.importing import FileReport, ImportConfig, ImportProgress, import_files
from geotrack.store import DEFAULT_STORE, open_store

__all__ = ["import_"]

# Where stderr is not a terminal, a progress line this often during a long file.
_PLAIN_EVERY_S = 5.0


@app.command("import")
def import_(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Files to import: NDJSON, CSV, GPX, KML/KMZ, TCX, GeoJSON, Google location "
            "history, Overland, OwnTracks .rec, FIT; gzip of any of them (.gz).",
            show_default=False,
        ),
    ],
    store: StoreOption = DEFAULT_STORE,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            "-d",
            help="Store every position as this device, whatever the files say "
            "(default: the ids the files name, else the file name).",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="The files' format: auto recognises each file by its content; or a name "
            "such as ndjson, csv, gpx, kml, tcx, geojson, google, overland, owntracks, fit "
            "(the table in docs/import.md), for a file auto cannot tell.",
        ),
    ] = "auto",
    start: Annotated[
        str | None,
        typer.Option(
            help="Shift each file's times so its first position is at this time, keeping "
            "the intervals: now, an RFC 3339 time (2026-11-25T09:00:00Z), Unix seconds, "
            "or an age like 2h (ago).",
            show_default=False,
        ),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option(
            help="Time zone of times written without an offset (CSV from other tools), "
            "e.g. Europe/Berlin; without it such rows are skipped.",
            show_default=False,
        ),
    ] = None,
    retime: Annotated[
        float | None,
        typer.Option(
            metavar="KMH",
            help="Make times from the distance between points at this speed (km/h): for "
            "files without times, or whose times are all equal or go backwards.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress; only the summary lines.")
    ] = False,
) -> None:
    """Import files of positions into a store, deduplicated.

    Each file's format is recognised by its content (the suffix only breaks ties), and
    its positions are written in large batches; a position already stored (same device
    and time) is counted as a duplicate, so importing a file twice stores nothing new.
    One summary line per file says how many positions were read, stored, duplicates and
    skipped, with the reasons. The exit code is 1 when any point was skipped or a file
    could not be read to its end (what was stored stays stored), else 0. The store is
    created if it does not exist. See docs/import.md for every format.

    Examples:

      `geotrack import track.ndjson export.csv.gz`

      `geotrack import Records.json --store sqlite:///history.db --device phone`

      `geotrack import walk.csv --tz Europe/Berlin --start now`
    """
    with errors():
        # Everything given is checked before the store is opened.
        config = ImportConfig(
            format=format,
            device=device,
            tz=_zone(tz) if tz else None,
            retime_kmh=retime,
            start_ms=_start(start) if start is not None else None,
        )
        missing = [str(f) for f in files if not f.exists()]
        if len(missing) == len(files):
            raise InvalidParameter("FILE", f"no such file: {', '.join(missing)}")
        with open_store(store) as db:
            reporter = _Reporter(quiet)
            try:
                reports = import_files(db, files, config, reporter)
            finally:
                reporter.stop()
    failed = not all(report.ok for report in reports)
    if len(reports) > 1:
        stored = sum(r.stored for r in reports)
        read = sum(r.read for r in reports)
        err.print(
            f"total: {len(reports)} files, read {read:,}, stored {stored:,}",
            highlight=False,
            markup=False,
        )
    if failed:
        raise typer.Exit(1)


def _start(text: str) -> int:
    from geotrack.sources.base import parse_start

    return parse_start(text, now_ms())


def _zone(name: str) -> tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidParameter(
            "--tz", f"unknown time zone {name!r} (e.g. Europe/Berlin, UTC)"
        ) from None


class _Reporter(ImportProgress):
    """Progress of an import: a rich bar on a terminal, a plain line now and then elsewhere."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.terminal = err.is_terminal
        self.bar: Any = None
        self.task: Any = None
        self.path = ""
        self.size = 0
        self.started = 0.0
        self.last_line = 0.0

    def file_started(self, path: Path, size: int) -> None:
        self.path, self.size = str(path), size
        self.started = self.last_line = time.monotonic()
        if self.quiet or not self.terminal:
            return
        if self.bar is None:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[positions]:,} positions, {task.fields[rate]:,.0f}/s"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(path.name, total=size or None, positions=0, rate=0.0)

    def advanced(self, done_bytes: int | None, positions: int) -> None:
        now = time.monotonic()
        rate = positions / max(now - self.started, 1e-6)
        if self.bar is not None and self.task is not None:
            if done_bytes is None:
                # A reader that does not say how far it got: a pulsing bar, no ETA.
                self.bar.update(self.task, total=None, positions=positions, rate=rate)
            else:
                self.bar.update(self.task, completed=done_bytes, positions=positions, rate=rate)
        elif not self.quiet and now - self.last_line >= _PLAIN_EVERY_S:
            self.last_line = now
            share = f", {done_bytes / self.size:.0%}" if done_bytes and self.size else ""
            err.print(
                f"{self.path}: {positions:,} positions{share} ({rate:,.0f}/s)",
                highlight=False,
                markup=False,
            )

    def file_done(self, report: FileReport) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        # Each file's lines as it finishes (above the bar on a terminal).
        for notice in report.notices:
            err.print(f"{report.path}: {notice}", highlight=False, markup=False)
        err.print(report.summary(), highlight=False, markup=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
