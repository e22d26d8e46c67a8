"""`geotrack publish`: replay GPX files or simulate movers."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from geotrack._text import plural
from geotrack.cli._common import CafileOption, TokenOption, app, err, errors, event_loop_factory
from geotrack.errors import InvalidParameter
from geotrack.schema import MAX_BATCH, BBox, parse_duration

if TYPE_CHECKING:
    from geotrack.client import PublishStats

__all__ = ["publish", "rate"]


@app.command()
def publish(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="GPX files to replay (same as --gpx).", show_default=False),
    ] = None,
    gpx: Annotated[
        list[Path] | None,
        typer.Option(
            "--gpx",
            metavar="FILE",
            help="GPX file to replay (repeat, or list files after it).",
            show_default=False,
        ),
    ] = None,
    simulate: Annotated[
        int, typer.Option("--simulate", help="Simulate N movers instead of replaying GPX.")
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
        str | None,
        typer.Option(
            metavar="ID",
            help="Device id for a GPX track (several tracks: ID-1, ID-2, ...); "
            "id prefix for simulated movers.",
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            help="Replay speed: 1 real time, 10 ten times faster, 0 as fast as acks allow."
        ),
    ] = 1.0,
    loop: Annotated[
        bool, typer.Option("--loop", help="Replay GPX tracks again and again (times shifted).")
    ] = False,
    kmh: Annotated[
        float, typer.Option(help="Assumed speed for GPX points without times, km/h.")
    ] = 5.0,
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
    """Publish positions to a relay: replay GPX files or simulate movers.

    GPX points are sent at the times the file gives, scaled by --speed; points due
    together go in one frame. Every frame is acked by the relay once stored. Exits 1 if
    any position was rejected, with a summary.

    A relay that is not up yet is waited for, a lost one reconnected to (--retry-for).
    Ctrl-C stops sending and waits up to 5 s for the acks of what was sent, so the
    summary says what the store holds; a second Ctrl-C stops waiting.

    Examples:

      `geotrack publish --gpx samples/walk.gpx --speed 50`

      `geotrack publish --simulate 100 --rate 2 --duration 5m --center 52.52,13.40`
    """
    from geotrack.publishing import PublishConfig, publish

    paths = [*(gpx or []), *(files or [])]
    with errors():
        if paths and simulate:
            raise InvalidParameter("--simulate", "give either GPX files or --simulate, not both")
        if not paths and not simulate:
            raise InvalidParameter("source", "give GPX files (--gpx FILE) or --simulate N")
        config = PublishConfig(
            url=url,
            token=token,
            cafile=cafile,
            speed=speed,
            batch=batch,
            window=window,
            retry_for=parse_duration(retry_for, "--retry-for"),
        )
        if paths:
            source, total, what = _gpx_source(paths, device, kmh, loop)
        else:
            source, total, what = _simulation(
                simulate, rate, bbox, center, radius, profile, duration, count, seed, device
            )
        with _progress(quiet, total, what) as progress:
            outcome = publish(
                source,
                config,
                on_sent=progress,
                notify=lambda line: err.print(line, highlight=False, markup=False),
                loop_factory=event_loop_factory(),
            )
    if outcome.failed:
        err.print(f"[bold red]{outcome.summary}[/]", highlight=False)
    elif outcome.interrupted:
        err.print(f"interrupted: {outcome.summary}", highlight=False)
    elif not quiet:
        err.print(outcome.summary, highlight=False)
    for line in outcome.details:
        err.print(f"  {line}" if outcome.failed else line, highlight=False, markup=False)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _gpx_source(
    paths: list[Path], device: str | None, kmh: float, loop: bool
) -> tuple[Any, int | None, str]:
    from geotrack.sources.gpx import read_gpx, schedule

    if kmh <= 0:
        raise InvalidParameter("--kmh", "must be more than 0")
    tracks = []
    for i, path in enumerate(paths):
        name = device if device is None or len(paths) == 1 else f"{device}-{i + 1}"
        tracks.extend(read_gpx(path, device=name, kmh=kmh))
    for track in tracks:
        for warning in getattr(track, "warnings", []):
            err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    total = None if loop else sum(len(t.positions) for t in tracks)
    devices = ", ".join(t.device for t in tracks)
    return schedule(tracks, loop=loop), total, f"{plural(len(tracks), 'track')} ({devices})"


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
    quiet: bool, total: int | None, what: str
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
        task = bar.add_task(f"publishing {what}", total=total, acked=0, rate="0")

        def advance(stats: PublishStats) -> None:
            nonlocal last
            last = stats
            elapsed = max(time.monotonic() - started, 1e-3)
            bar.update(
                task, completed=stats.sent, acked=stats.acked, rate=rate(stats.sent / elapsed)
            )

        yield advance
        if last is not None:
            bar.update(task, acked=last.acked)


def rate(per_second: float) -> str:
    """A rate that reads well at both ends: ``0.2``, ``4.5``, ``38``, ``12,400``."""
    if per_second < 10:
        return f"{per_second:.1f}"
    return f"{per_second:,.0f}"
