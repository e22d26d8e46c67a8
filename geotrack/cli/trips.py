"""`geotrack trips` and `geotrack stops`: what stored tracks say about moving and staying."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from geotrack._text import plural
from geotrack.analysis import FORMATS, Kind, Params, Stop, Trip, analyze, write
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
from geotrack.store import DEFAULT_STORE, open_store

__all__ = ["stops", "trips"]

_SUFFIXES = {".csv": "csv", ".json": "json", ".geojson": "geojson"}

FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        metavar="[table|csv|json|geojson]",
        help="table (on a terminal, the default there), csv, json or geojson (default: from "
        "the -o file's suffix, else csv when piped).",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write here (default: standard output).", show_default=False
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        help="Only fixes from this time (RFC 3339, Unix seconds, or an age like 24h); "
        "a trip or stop under way then starts there.",
        show_default=False,
    ),
]
UntilOption = Annotated[
    str | None, typer.Option(help="Only fixes up to this time.", show_default=False)
]
RadiusOption = Annotated[
    float,
    typer.Option(
        "--stop-radius",
        metavar="METRES",
        help="A stop: the device stays within this many metres (of its first fix there) ...",
    ),
]
DurationOption = Annotated[
    str,
    typer.Option(
        "--stop-duration",
        metavar="DURATION",
        help="... for at least this long (90s, 3m, 1h), without drifting (docs/trips.md).",
    ),
]
GapOption = Annotated[
    str,
    typer.Option(
        metavar="DURATION",
        help="No fix for longer than this ends a trip (back in the same place: a stop).",
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")]


@app.command()
def trips(
    store: StoreOption = DEFAULT_STORE,
    device: DeviceOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    stop_radius: RadiusOption = 200.0,
    stop_duration: DurationOption = "3m",
    gap: GapOption = "1h",
    format: FormatOption = None,
    output: OutputOption = None,
    quiet: QuietOption = False,
) -> None:
    """Trips of stored tracks: start and end, distance, duration, average and top speed.

    A trip runs from one stop (or the first fix, or the first after a gap) to the next;
    stops are found as `geotrack stops` finds them. Distances are geodesic (WGS 84),
    summed fix to fix; speeds are in km/h in the table and m/s in the other formats. The
    store is only read. docs/trips.md has the rules and every field.

    Examples:

      `geotrack trips --device van-3 --since 24h`

      `geotrack trips --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z -o nov.csv`

      `geotrack trips --stop-radius 50 --stop-duration 5m --format geojson > trips.geojson`
    """
    detection = (stop_radius, stop_duration, gap)
    _run("trips", store, device, since, until, detection, format, output, quiet)


@app.command()
def stops(
    store: StoreOption = DEFAULT_STORE,
    device: DeviceOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    stop_radius: RadiusOption = 200.0,
    stop_duration: DurationOption = "3m",
    gap: GapOption = "1h",
    format: FormatOption = None,
    output: OutputOption = None,
    quiet: QuietOption = False,
) -> None:
    """Stops of stored tracks: place, arrival, departure and duration.

    A stop is where a device stays within --stop-radius for at least --stop-duration
    without drifting: a parked car whose fixes jitter by tens of metres is one stop, a
    slow walker is none. Its place is the centroid of its fixes. A device that is silent
    for longer than --gap and then reports from the same place stopped through the
    silence. The store is only read. docs/trips.md has the rules and every field.

    Examples:

      `geotrack stops --device van-3 --since 7d`

      `geotrack stops --stop-duration 10m --format json | jq '.[] | .duration_s'`
    """
    detection = (stop_radius, stop_duration, gap)
    _run("stops", store, device, since, until, detection, format, output, quiet)


def _run(
    kind: Kind,
    store: str,
    device: list[str] | None,
    since: str | None,
    until: str | None,
    detection: tuple[float, str, str],
    format: str | None,
    output: Path | None,
    quiet: bool,
) -> None:
    stop_radius, stop_duration, gap = detection
    with errors():
        # Everything the user gave is checked before the store is opened or a file made.
        fmt = _format(format, output)
        now = now_ms()
        since_ms = parse_time(since, now, "--since") if since else None
        until_ms = parse_time(until, now, "--until") if until else None
        if since_ms is not None and until_ms is not None and until_ms < since_ms:
            raise InvalidParameter(
                "--until", f"{until} is before --since {since}: nothing could match"
            )
        params = Params(
            stop_radius_m=stop_radius,
            stop_duration_s=parse_duration(stop_duration, "--stop-duration"),
            gap_s=parse_duration(gap, "--gap"),
        )
        if output is not None and output.is_dir():
            raise InvalidParameter("--output", f"{output} is a directory: give a file name in it")
        with open_store(store, create=False) as db:
            read = _Counted(db.query(devices=device or (), since_ms=since_ms, until_ms=until_ms))
            wanted = Trip if kind == "trips" else Stop
            items = (
                i for i in analyze(read, params, paths=fmt == "geojson") if isinstance(i, wanted)
            )
            if output is None:
                try:
                    count = _emit(fmt, kind, items, sys.stdout)
                    sys.stdout.flush()
                except BrokenPipeError:
                    # The reader has what it wanted (| head): not an error, like export.
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    return
            else:
                count = write_file(output, lambda out: _emit(fmt, kind, items, out))
        if quiet:
            return
        if count == 0:
            # Exit 0 all the same: an empty answer is an answer, not a failure.
            err.print(
                f"0 {kind} found in {plural(read.count, 'position')}"
                + (": check --device, --since and --until" if read.count == 0 else ""),
                highlight=False,
            )
        elif output is not None:
            err.print(f"wrote {plural(count, kind[:-1])} to {output} ({fmt})", highlight=False)


def _format(given: str | None, output: Path | None) -> str:
    if given is not None:
        if given != "table" and given not in FORMATS:
            raise InvalidParameter(
                "--format", f"unknown format {given!r} (use one of: table, {', '.join(FORMATS)})"
            )
        return given
    if output is not None:
        fmt = _SUFFIXES.get(output.suffix.lower())
        if fmt is None:
            raise InvalidParameter(
                "--format",
                f"cannot tell the format from {output.name!r}: give --format csv, json or geojson",
            )
        return fmt
    return "table" if _stdout_tty() else "csv"


def _stdout_tty() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (OSError, ValueError):
        return False


class _Counted:
    """Positions passed through, counted (to say how many an empty answer came from)."""

    def __init__(self, positions: Iterable[Position]) -> None:
        self._positions = positions
        self.count = 0

    def __iter__(self) -> Iterator[Position]:
        for position in self._positions:
            self.count += 1
            yield position


def _emit(fmt: str, kind: Kind, items: Iterable[Trip | Stop], out: TextIO) -> int:
    if fmt == "table":
        return _table(kind, items, out)
    return write(fmt, kind, items, out)


def _table(kind: Kind, items: Iterable[Trip | Stop], out: TextIO) -> int:
    """A table of every item; narrower when the terminal is (short times, then no places)."""
    from rich.console import Console

    rows = list(items)
    if not rows:
        return 0
    # A terminal's own width; elsewhere (a file, a pipe) rows are not wrapped at 80.
    console = Console(file=out, soft_wrap=False, width=None if out.isatty() else 200)
    for year, places in ((True, True), (False, True), (False, False)):
        table = _build(kind, rows, year=year, places=places)
        natural = console.measure(table, options=console.options.update_width(10_000))
        if natural.maximum <= console.width:
            break
    console.print(table)
    return len(rows)


def _build(kind: Kind, rows: list[Trip | Stop], *, year: bool, places: bool) -> Any:
    from rich.table import Table

    if kind == "trips":
        columns = ["device", "start", "end", "duration", "km", "avg", "top", "from", "to"]
        caption = "times UTC, speeds km/h"
    else:
        columns = ["device", "arrival", "departure", "duration", "place", "fixes"]
        caption = "times UTC"
    if not places:
        columns = [c for c in columns if c not in ("from", "to", "place")]
        caption += "; places: --format csv"
    table = Table(box=None, header_style="bold", pad_edge=False, caption=caption)
    numeric = {"km", "avg", "top", "duration", "fixes"}
    for column in columns:
        # Everything stays on one line: a wrapped time reads as two rows.
        table.add_column(
            column,
            justify="right" if column in numeric else "left",
            no_wrap=True,
            min_width=6 if column == "device" else None,
        )
    for item in rows:
        cells = _cells(item, year)
        table.add_row(*(c for c, name in zip(cells, _ALL[kind], strict=True) if name in columns))
    return table


_ALL: dict[str, tuple[str, ...]] = {
    "trips": ("device", "start", "end", "duration", "km", "avg", "top", "from", "to"),
    "stops": ("device", "arrival", "departure", "duration", "place", "fixes"),
}


def _cells(item: Trip | Stop, year: bool) -> list[str]:
    if isinstance(item, Trip):
        return [
            item.device,
            _when(item.start, year),
            _when(item.end, year),
            _duration(item.duration_s),
            f"{item.distance_m / 1000:.2f}",
            f"{item.avg_speed * 3.6:.1f}",
            f"{item.max_speed * 3.6:.1f}",
            _place(item.start_lat, item.start_lon),
            _place(item.end_lat, item.end_lon),
        ]
    return [
        item.device,
        _when(item.arrival, year),
        _when(item.departure, year),
        _duration(item.duration_s),
        _place(item.lat, item.lon),
        str(item.fixes),
    ]


def _when(ts: str, year: bool = True) -> str:
    """``2026-11-25 12:00:00`` (UTC, to the second; ``11-25 12:00:00`` without the year)."""
    text = ts[:19].replace("T", " ")
    return text if year else text[5:]


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _place(lat: float, lon: float) -> str:
    return f"{lat:.5f},{lon:.5f}"
