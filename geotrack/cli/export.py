"""`geotrack export`: stored tracks to files."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from geotrack.cli._common import (
    DeviceOption,
    StoreOption,
    app,
    err,
    errors,
    fail,
    now_ms,
    open_db,
)
from geotrack.errors import InvalidParameter
from geotrack.schema import parse_duration, parse_time
from geotrack.store import DEFAULT_STORE


@app.command()
def export(
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="gpx, geojson, csv or ndjson (default: from the -o file's suffix, else ndjson).",
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
        typer.Option(help="Only fixes from this time (RFC 3339, Unix seconds, or an age like 2h)."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only fixes up to this time.")] = None,
    gap: Annotated[
        str, typer.Option(help="GPX: start a new track segment after a gap this long.")
    ] = "10m",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
) -> None:
    """Export stored tracks as GPX, GeoJSON, CSV or NDJSON.

    GPX has one track per device, split into segments at gaps; GeoJSON one LineString
    feature per device with its times; CSV a header and one row per fix. Output is
    streamed, and a file is written under a temporary name then renamed, so a failed
    export never leaves a truncated file behind.

    Examples:

      `geotrack export -o walk.gpx --device walk`

      `geotrack export --format geojson --since 2h > last-two-hours.geojson`
    """
    from geotrack.export import export as write
    from geotrack.export import format_for_path

    with errors():
        fmt = format or (format_for_path(str(output)) if output else None)
        if fmt is None:
            if output is not None:
                raise InvalidParameter(
                    "--format",
                    f"cannot tell the format from {output.name!r}: "
                    "give --format gpx, geojson, csv or ndjson",
                )
            fmt = "ndjson"
        now = now_ms()
        since_ms = parse_time(since, now, "--since") if since else None
        until_ms = parse_time(until, now, "--until") if until else None
        gap_s = parse_duration(gap, "--gap")
        with open_db(store) as db:
            positions = db.query(devices=device or (), since_ms=since_ms, until_ms=until_ms)
            if output is None:
                count = write(fmt, positions, sys.stdout, gap_s=gap_s)
                sys.stdout.flush()
            else:
                count = _export_to_file(write, fmt, positions, output, gap_s, quiet)
        if output is not None and not quiet:
            err.print(f"exported {count} positions to {output} ({fmt})", highlight=False)


def _export_to_file(
    write: Callable[..., int],
    fmt: str,
    positions: Iterator[Any],
    output: Path,
    gap_s: float,
    quiet: bool,
) -> int:
    partial = output.with_name(output.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as out:
            count = write(fmt, _counting(positions, quiet), out, gap_s=gap_s)
        partial.replace(output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        fail(f"cannot write {output}: {exc.strerror or exc}")
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return count


def _counting(positions: Iterator[Any], quiet: bool) -> Iterator[Any]:
    """Pass positions through, showing a running count on a terminal."""
    if quiet or not err.is_terminal:
        yield from positions
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("exported {task.completed:,} positions"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("export")
        for n, p in enumerate(positions, 1):
            yield p
            if n % 5000 == 0:
                bar.update(task, completed=n)
