"""`geotrack export`: stored tracks to files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from geotrack._text import plural
from geotrack.cli._common import (
    DeviceOption,
    StoreOption,
    app,
    err,
    errors,
    now_ms,
    write_file,
)
from geotrack.errors import InvalidParameter
from geotrack.schema import Position, parse_duration, parse_time
from geotrack.store import DEFAULT_STORE, Store, open_store

__all__ = ["export"]


@app.command()
def export(
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help=(
                "gpx, geojson, csv, ndjson or kml (Google Earth; default: from the -o file's "
                "suffix, else ndjson)."
            ),
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write here (default: standard output).", show_default=False
        ),
    ] = None,
    store: StoreOption = DEFAULT_STORE,
    device: DeviceOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only fixes from this time (RFC 3339, Unix seconds, or an age like 2h), "
            "by the fix's own time: a replayed GPX file keeps the file's times."
        ),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only fixes up to this time.")] = None,
    gap: Annotated[
        str, typer.Option(help="GPX: start a new track segment after a gap this long.")
    ] = "10m",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            help="Export geofence events (enter/exit) instead of positions, as ndjson "
            "(each line as /events sends it) or csv (type,device,fence,ts,lat,lon), by "
            "device time; --since and --until bound the time of the deciding fix.",
        ),
    ] = False,
    fence: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="With --events: only events of this fence (repeat for several).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export stored tracks as GPX, KML, GeoJSON, CSV or NDJSON.

    GPX has one track per device, split into segments at gaps; GeoJSON one LineString
    feature per device with its times; CSV a header and one row per fix. Output is
    streamed, and a file is written under a temporary name then renamed, so a failed
    export never leaves a truncated file behind. The store must exist (a relay creates
    it); a selection that matches nothing says `0 positions matched` on stderr.

    Examples:

      `geotrack export -o walk.gpx --device walk`

      `geotrack export --format geojson --since 2h > last-two-hours.geojson`

      `geotrack export --events --fence depot --since 7d -o depot-visits.csv`
    """
    from geotrack.export import FORMATS, format_for_path

    with errors():
        if output is not None:
            _check_output(output)
        fmt = format or (format_for_path(str(output)) if output else None)
        if fmt is None:
            if output is not None:
                raise InvalidParameter(
                    "--format",
                    f"cannot tell the format from {output.name!r}: "
                    "give --format gpx, geojson, csv, ndjson or kml",
                )
            fmt = "ndjson"
        # Everything the user gave is checked before the store is opened or a file made.
        if fmt not in FORMATS:
            raise InvalidParameter(
                "--format", f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})"
            )
        now = now_ms()
        since_ms = parse_time(since, now, "--since") if since else None
        until_ms = parse_time(until, now, "--until") if until else None
        if since_ms is not None and until_ms is not None and until_ms < since_ms:
            raise InvalidParameter(
                "--until", f"{until} is before --since {since}: nothing could match"
            )
        gap_s = parse_duration(gap, "--gap")
        if fence and not events:
            raise InvalidParameter("--fence", "give --events too: positions have no fence")
        if events:
            _export_events(
                store, fmt, output, device or [], fence or [], (since_ms, until_ms), quiet
            )
            return
        with open_store(store, create=False) as db:
            positions = db.query(devices=device or (), since_ms=since_ms, until_ms=until_ms)
            # Progress on stderr when a person watches it and the data goes elsewhere.
            progress = not quiet and err.is_terminal and (output is not None or not _stdout_tty())
            counted = _counting(positions, progress)
            if output is None:
                try:
                    count = _write(fmt, counted, sys.stdout, gap_s)
                    sys.stdout.flush()
                except BrokenPipeError:
                    # The reader has what it wanted (| head): not an error, like tail.
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    return
            else:
                count = write_file(output, lambda out: _write(fmt, counted, out, gap_s))
            if count == 0:
                # Exit 0 all the same: an empty selection is an answer, not a failure.
                if not quiet:
                    err.print(
                        _nothing_matched(db, device or []),
                        highlight=False,
                        markup=False,
                        soft_wrap=True,
                    )
            elif output is not None and not quiet:
                err.print(
                    f"exported {plural(count, 'position')} to {output} ({fmt})", highlight=False
                )


def _write(fmt: str, positions: Iterator[Position], out: Any, gap_s: float) -> int:
    from geotrack.export import export as write

    return write(fmt, positions, out, gap_s=gap_s)


def _write_events(fmt: str, events: Iterator[Any], out: Any, _gap_s: float) -> int:
    from geotrack.export.events import export_events

    return export_events(fmt, events, out)


def _export_events(
    store: str,
    fmt: str,
    output: Path | None,
    devices: list[str],
    fences: list[str],
    window: tuple[int | None, int | None],
    quiet: bool = False,
) -> None:
    """``--events``: the stored events, by device time, to ``output`` or stdout."""
    from geotrack.export.events import EVENT_FORMATS

    if not all(fences):
        raise InvalidParameter("--fence", "give a fence name")
    if fmt not in EVENT_FORMATS:
        raise InvalidParameter(
            "--format", f"events export as {' or '.join(EVENT_FORMATS)}, not {fmt!r}"
        )
    with open_store(store, create=False) as db:
        selected = db.query_events(devices, fences, *window)
        if output is None:
            try:
                count = _write_events(fmt, selected, sys.stdout, 0.0)
                sys.stdout.flush()
            except BrokenPipeError:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                return
        else:
            count = write_file(output, lambda out: _write_events(fmt, selected, out, 0.0))
    if quiet:
        return
    if count == 0:
        err.print("0 events matched", highlight=False)
    elif output is not None:
        err.print(f"exported {plural(count, 'event')} to {output} ({fmt})", highlight=False)


def _stdout_tty() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (OSError, ValueError):
        return False


def _check_output(output: Path) -> None:
    """Refuse an output path that cannot be written, before a long export starts."""
    if output.is_dir():
        raise InvalidParameter("--output", f"{output} is a directory: give a file name in it")
    parent = output.parent
    if not parent.is_dir():
        raise InvalidParameter("--output", f"cannot write {output}: {parent} is not a directory")


def _nothing_matched(db: Store, devices: list[str]) -> str:
    """``0 positions matched``, with what the store does hold, to show why."""
    stored = db.latest(devices)
    if stored:
        newest = max(stored, key=lambda p: p.ts_ms)
        which = f"of {', '.join(devices)} " if devices else ""
        return (
            f"0 positions matched (the latest fix {which}stored is {newest.time}, from "
            f"{newest.device}): check --since and --until"
        )
    if not devices:
        return "0 positions matched: the store is empty"
    known = db.devices()
    if not known:
        return "0 positions matched: the store is empty"
    listed = ", ".join(known[:5]) + (f" and {len(known) - 5} more" if len(known) > 5 else "")
    return f"0 positions matched: no device {' or '.join(devices)} in the store (it has {listed})"


def _counting(positions: Iterator[Position], progress: bool) -> Iterator[Position]:
    """Pass positions through, showing a running count and rate while ``progress``."""
    if not progress:
        yield from positions
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("exported {task.completed:,} positions in"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("export")
        n = 0
        for n, p in enumerate(positions, 1):
            yield p
            if n % 5000 == 0:
                bar.update(task, completed=n)
        bar.update(task, completed=n)
