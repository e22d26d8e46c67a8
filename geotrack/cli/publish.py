"""`geotrack publish`: replay files or stored history, or simulate movers."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from geotrack._text import plural
from geotrack.cli._common import (
    CafileOption,
    TokenOption,
    app,
    err,
    errors,
    event_loop_factory,
    now_ms,
)
from geotrack.errors import InvalidParameter
from geotrack.schema import MAX_BATCH, BBox, parse_duration, parse_time
from geotrack.sources.base import parse_start
from geotrack.sources.replay import Input, schedule

if TYPE_CHECKING:
    from geotrack.client import PublishStats

__all__ = ["publish", "rate"]


@app.command()
def publish(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Files to replay: GPX, or any format `geotrack import` reads (see --format).",
            show_default=False,
        ),
    ] = None,
    gpx: Annotated[
        list[Path] | None,
        typer.Option(
            "--gpx",
            metavar="FILE",
            help="GPX file to replay (repeat, or list files after it); the same as an argument.",
            show_default=False,
        ),
    ] = None,
    file_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="The files' format: auto (by content, the suffix breaking ties) or a name "
            "from `geotrack import --help` (gpx, kml, csv, ndjson, google, ...).",
        ),
    ] = "auto",
    from_store: Annotated[
        str | None,
        typer.Option(
            "--from-store",
            metavar="URL",
            help="Replay the history stored here (read only), e.g. sqlite:///old.db; "
            "select with --device, --since and --until.",
            show_default=False,
        ),
    ] = None,
    simulate: Annotated[
        int, typer.Option("--simulate", help="Simulate N movers instead of replaying files.")
    ] = 0,
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar="GEOTRACK_URL",
            metavar="URL",
            help="The relay's WebSocket URL (ws:// or wss://).",
        ),
    ] = "ws://127.0.0.1:8765",
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            "-d",
            metavar="ID",
            help="Files: the device id of every position (several files or tracks: ID-1, "
            "ID-2, ...). --from-store: only this device (repeat for several). Simulation: "
            "the movers' id prefix.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="--from-store: only fixes from this time (RFC 3339, Unix seconds, or an "
            "age like 2h).",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="TIME", help="--from-store: only fixes up to this time.", show_default=False
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            help="Replay speed: 1 real time, 10 ten times faster, 0 as fast as acks allow."
        ),
    ] = 1.0,
    start: Annotated[
        str | None,
        typer.Option(
            metavar="now|TIME",
            help="Move the times so the replay's first position is at TIME (now, RFC 3339, "
            "Unix seconds, or an age like 1h), every interval kept: `--start now --speed 1` "
            "looks live.",
            show_default=False,
        ),
    ] = None,
    as_recorded: Annotated[
        bool | None,
        typer.Option(
            "--as-recorded/--side-by-side",
            help="Keep the times between devices as recorded (a fleet moves as it did; the "
            "default for --from-store), or start every device at once (the default for "
            "files: tracks from different days play together).",
            show_default=False,
        ),
    ] = None,
    loop: Annotated[
        bool,
        typer.Option("--loop", help="Replay the files or history again and again (times shifted)."),
    ] = False,
    retime: Annotated[
        float | None,
        typer.Option(
            metavar="KMH",
            help="Give points times from the distance along their track at this speed, km/h: "
            "for files without times or with meaningless ones (all equal, going backwards).",
            show_default=False,
        ),
    ] = None,
    kmh: Annotated[float | None, typer.Option(hidden=True)] = None,
    tz: Annotated[
        str | None,
        typer.Option(
            metavar="ZONE",
            help="Time zone of local times without an offset (CSV files), e.g. Europe/Berlin.",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[float, typer.Option(help="Simulated fixes per second per mover.")] = 1.0,
    bbox: Annotated[
        str | None,
        typer.Option(
            metavar="W,S,E,N", help="Keep simulated movers in minLon,minLat,maxLon,maxLat."
        ),
    ] = None,
    center: Annotated[
        str | None,
        typer.Option(
            metavar="LAT,LON", help="Keep simulated movers around LAT,LON (see --radius)."
        ),
    ] = None,
    radius: Annotated[float, typer.Option(help="Radius around --center, metres.")] = 2000.0,
    profile: Annotated[
        str, typer.Option(metavar="[walk|bike|car]", help="Simulated motion.")
    ] = "car",
    duration: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Simulate for this long (90s, 15m, 2h).")
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Simulate this many positions in total.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed for a repeatable simulation.")
    ] = None,
    batch: Annotated[
        int, typer.Option(help=f"Most positions per frame (1..{MAX_BATCH}).")
    ] = MAX_BATCH,
    window: Annotated[int, typer.Option(help="Frames in flight before waiting for acks.")] = 32,
    token: TokenOption = None,
    cafile: CafileOption = None,
    retry_for: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="Wait this long for a relay that is not up yet, and keep reconnecting this "
            "long after a lost connection (0: don't).",
        ),
    ] = "5m",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Publish positions to a relay: replay files or stored history, or simulate movers.

    Files of any format `geotrack import` reads (GPX, KML, TCX, GeoJSON, CSV, NDJSON,
    Google location history, OwnTracks, Overland, FIT), recognised by content: their
    points are sent at the times the file gives, scaled by --speed; points due together
    go in one frame. Points a file cannot give (no position, a bad time, a time its
    device already has) are counted per file with the reasons. Every frame is acked by
    the relay once stored. Exits 1 if any point was skipped or rejected, with a summary.

    --from-store replays stored history (read only) into a relay: for demos, load tests
    with real data, moving history between deployments.

    A relay that is not up yet is waited for, a lost one reconnected to (--retry-for).
    Ctrl-C stops sending and waits up to 5 s for the acks of what was sent, so the
    summary says what the store holds; a second Ctrl-C stops waiting.

    Examples:

      `geotrack publish samples/walk.gpx --speed 50`

      `geotrack publish Records.json --start now --speed 60 --device phone`

      `geotrack publish --from-store sqlite:///old.db --since 2026-03-14T09:00:00Z --speed 0`

      `geotrack publish --simulate 100 --rate 2 --duration 5m --center 52.52,13.40`
    """
    from geotrack.publishing import PublishConfig, publish

    # --gpx says the format; files named as arguments are read as --format says.
    paths = [*((p, "gpx") for p in gpx or ()), *((p, file_format) for p in files or ())]
    with errors(), contextlib.ExitStack() as stack:
        given = [
            name
            for name, on in (
                ("files", paths),
                ("--from-store", from_store),
                ("--simulate", simulate),
            )
            if on
        ]
        if len(given) > 1:
            raise InvalidParameter(given[1], f"give either {given[0]} or {given[1]}, not both")
        if not given:
            raise InvalidParameter(
                "source",
                "give GPX files or other files to replay (FILE... or --gpx FILE), "
                "--from-store URL or --simulate N",
            )
        if (since or until) and not from_store:
            raise InvalidParameter(
                "--since" if since else "--until", "selects from --from-store only"
            )
        config = PublishConfig(
            url=url,
            token=token,
            cafile=cafile,
            speed=speed,
            batch=batch,
            window=window,
            retry_for=parse_duration(retry_for, "--retry-for"),
        )
        inputs: list[Input] = []
        if simulate:
            if start is not None:
                raise InvalidParameter("--start", "simulated movers start now already")
            source, count_known, what = _simulation(
                simulate, rate, bbox, center, radius, profile, duration, count, seed, _one(device)
            )
        else:
            start_ms = parse_start(start, now_ms()) if start is not None else None
            if paths:
                inputs = _file_inputs(
                    paths, _one(device), retime if retime is not None else kmh, tz
                )
                what = paths[0][0].name if len(paths) == 1 else plural(len(paths), "file")
            else:
                assert from_store is not None
                inputs = [_store_input(stack, from_store, device or (), since, until)]
                what = f"stored history from {inputs[0].report.name}"
            for source_input in inputs:
                source_input.prime()
            recorded = as_recorded if as_recorded is not None else not paths
            source = schedule(
                inputs, as_recorded=recorded, start_ms=start_ms, loop=loop, notify=_say
            )
            count_known = None
        total = _known_total(inputs, loop) if inputs else lambda: count_known
        with _progress(quiet, total, what) as progress:
            outcome = publish(
                source,
                config,
                on_sent=progress,
                notify=_say,
                loop_factory=event_loop_factory(),
            )
    reports = [i.report for i in inputs]
    for report in reports:
        for line in report.lines(paced=speed > 0):
            err.print(line, highlight=False, markup=False)
    if from_store and not any(r.read for r in reports):
        err.print(
            f"0 positions matched in {reports[0].name}: check --device, --since and --until",
            highlight=False,
            markup=False,
        )
    refused = any(r.failed for r in reports)
    if outcome.failed or (refused and not outcome.interrupted):
        err.print(f"[bold red]{outcome.summary}[/]", highlight=False)
    elif outcome.interrupted:
        err.print(f"interrupted: {outcome.summary}", highlight=False)
    elif not quiet:
        err.print(outcome.summary, highlight=False)
    for line in outcome.details:
        err.print(f"  {line}" if outcome.failed else line, highlight=False, markup=False)
    code = outcome.exit_code or (1 if refused else 0)
    if code:
        raise typer.Exit(code)


def _known_total(inputs: list[Input], loop: bool) -> Callable[[], int | None]:
    """The positions the replay sends, once every file has been read to its end.

    A file that fits the reordering window is read whole before its first position goes
    out, so its total shows from the start; a longer file or a store's shows at the end.
    """

    def total() -> int | None:
        if loop or not all(i.read_through for i in inputs):
            return None
        return sum(i.report.read - i.report.dropped for i in inputs)

    return total


def _say(line: str) -> None:
    err.print(line, highlight=False, markup=False)


def _one(device: list[str] | None) -> str | None:
    if device and len(device) > 1:
        raise InvalidParameter("--device", "give one id (several are for --from-store only)")
    return device[0] if device else None


def _file_inputs(
    files: list[tuple[Path, str]], device: str | None, retime: float | None, tz: str | None
) -> list[Input]:
    """One input per (file, format name), each file's format known before anything is sent."""
    from geotrack.sources.base import ReadOptions
    from geotrack.sources.formats import resolve
    from geotrack.sources.replay import file_input

    if retime is not None and not (math.isfinite(retime) and retime > 0):
        raise InvalidParameter("--retime", "must be more than 0 km/h")
    zone = _zone(tz) if tz else None
    inputs = []
    for i, (path, fmt_name) in enumerate(files):
        name = device if device is None or len(files) == 1 else f"{device}-{i + 1}"
        options = ReadOptions(device=name, tz=zone, retime_kmh=retime)
        inputs.append(file_input(path, resolve(path, fmt_name), options))
    return inputs


def _zone(name: str) -> tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidParameter(
            "--tz", f"unknown time zone {name!r} (e.g. Europe/Berlin, UTC)"
        ) from None


def _store_input(
    stack: contextlib.ExitStack,
    url: str,
    devices: Sequence[str],
    since: str | None,
    until: str | None,
) -> Input:
    from geotrack.sources.replay import store_input
    from geotrack.store import open_store

    now = now_ms()
    since_ms = parse_time(since, now, "--since") if since else None
    until_ms = parse_time(until, now, "--until") if until else None
    if since_ms is not None and until_ms is not None and until_ms < since_ms:
        raise InvalidParameter("--until", f"{until} is before --since {since}: nothing could match")
    store = stack.enter_context(open_store(url, create=False))
    return store_input(store, devices, since_ms, until_ms)


def _simulation(
    movers: int,
    rate: float,
    bbox: str | None,
    center: str | None,
    radius: float,
    profile: str,
    duration: str | None,
    count: int | None,
    seed: int | None,
    prefix: str | None,
) -> tuple[Any, int | None, str]:
    from geotrack.sources.simulate import Simulation

    if movers < 1:
        raise InvalidParameter("--simulate", "needs at least 1 mover")
    if rate <= 0:
        raise InvalidParameter("--rate", "must be more than 0")
    if profile not in ("walk", "bike", "car"):
        raise InvalidParameter("--profile", "use walk, bike or car")
    if bbox and center:
        raise InvalidParameter("--bbox", "give --bbox or --center, not both")
    box = BBox.parse(bbox, "--bbox") if bbox else None
    middle = _lat_lon(center) if center else None
    seconds = parse_duration(duration, "--duration") if duration else None
    if count is not None and count < 1:
        raise InvalidParameter("--count", "must be at least 1")
    sim = Simulation(
        movers=movers,
        rate=rate,
        bbox=box,
        center=middle,
        radius_m=radius,
        prefix=prefix or "sim",
        seed=seed,
        profile=profile,  # type: ignore[arg-type]
        start_ms=time.time_ns() // 1_000_000,
    )
    total = (
        count
        if count is not None
        else (int(movers * rate * seconds) if seconds is not None else None)
    )
    what = plural(movers, "simulated mover")
    return sim.positions(count=count, duration_s=seconds), total, what


def _lat_lon(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidParameter("--center", f"expected LAT,LON, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise InvalidParameter("--center", "latitude must be within -90..90, longitude -180..180")
    return lat, lon


@contextlib.contextmanager
def _progress(
    quiet: bool, total: Callable[[], int | None], what: str
) -> Iterator[Callable[[PublishStats], None]]:
    """A rich progress bar of sent and acked positions (a no-op when quiet)."""
    if quiet or (not err.is_terminal and os.environ.get("GEOTRACK_PROGRESS") != "1"):
        yield lambda stats: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("acked {task.fields[acked]}"),
        TextColumn("{task.fields[rate]}/s"),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    started = time.monotonic()
    last: PublishStats | None = None
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"publishing {what}", total=total(), acked=0, rate="0")

        def advance(stats: PublishStats) -> None:
            nonlocal last
            last = stats
            elapsed = max(time.monotonic() - started, 1e-3)
            bar.update(
                task,
                total=total(),
                completed=stats.sent,
                acked=stats.acked,
                rate=rate(stats.sent / elapsed),
            )

        yield advance
        if last is not None:
            bar.update(task, acked=last.acked)


def rate(per_second: float) -> str:
    """A rate that reads well at both ends: ``0.2``, ``4.5``, ``38``, ``12,400``."""
    if per_second < 10:
        return f"{per_second:.1f}"
    return f"{per_second:,.0f}"
