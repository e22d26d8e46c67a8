"""`geotrack publish`: replay GPX files or simulate movers."""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from geotrack.cli._common import app, err, errors, event_loop_runner
from geotrack.errors import InvalidParameter
from geotrack.schema import MAX_BATCH, BBox, parse_duration


@app.command()
def publish(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="GPX files to replay (same as --gpx).", show_default=False),
    ] = None,
    gpx: Annotated[
        list[Path] | None,
        typer.Option(
            "--gpx", help="GPX file to replay (repeat, or list files after it).", show_default=False
        ),
    ] = None,
    simulate: Annotated[
        int, typer.Option("--simulate", help="Simulate N movers instead of replaying GPX.")
    ] = 0,
    url: Annotated[
        str, typer.Option("--url", envvar="GEOTRACK_URL", help="The relay's WebSocket URL.")
    ] = "ws://127.0.0.1:8765",
    device: Annotated[
        str | None,
        typer.Option(
            help="Device id for a GPX track (several tracks: ID-1, ID-2, ...); "
            "id prefix for simulated movers."
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
        str | None, typer.Option(help="Keep simulated movers in minLon,minLat,maxLon,maxLat.")
    ] = None,
    center: Annotated[
        str | None, typer.Option(help="Keep simulated movers around LAT,LON (see --radius).")
    ] = None,
    radius: Annotated[float, typer.Option(help="Radius around --center, metres.")] = 2000.0,
    profile: Annotated[str, typer.Option(help="Simulated motion: walk, bike or car.")] = "car",
    duration: Annotated[
        str | None, typer.Option(help="Simulate for this long (90s, 15m, 2h).")
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
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GEOTRACK_TOKEN",
            help="Token for a relay started with --auth.",
            show_default=False,
        ),
    ] = None,
    cafile: Annotated[
        Path | None,
        typer.Option(help="CA certificate (PEM) to trust for a wss:// relay.", show_default=False),
    ] = None,
    retry_for: Annotated[
        str,
        typer.Option(help="After a lost connection, keep reconnecting this long (0: don't)."),
    ] = "5m",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Publish positions to a relay: replay GPX files or simulate movers.

    GPX points are sent at the times the file gives, scaled by --speed; points due
    together go in one frame. Every frame is acked by the relay once stored. Exits 1 if
    any position was rejected, with a summary.

    Examples:

      `geotrack publish --gpx samples/walk.gpx --speed 50`

      `geotrack publish --simulate 100 --rate 2 --duration 5m --center 52.52,13.40`
    """
    from geotrack.client import Backoff, Publisher
    from geotrack.player import play

    paths = [*(gpx or []), *(files or [])]
    with errors():
        if paths and simulate:
            raise InvalidParameter("--simulate", "give either GPX files or --simulate, not both")
        if not paths and not simulate:
            raise InvalidParameter("source", "give GPX files (--gpx FILE) or --simulate N")
        if speed < 0:
            raise InvalidParameter("--speed", "must be 0 (as fast as possible) or more")
        if not 1 <= batch <= MAX_BATCH:
            raise InvalidParameter("--batch", f"must be within 1..{MAX_BATCH}")
        if window < 1:
            raise InvalidParameter("--window", "must be at least 1")
        if paths:
            source, total, what = _gpx_source(paths, device, kmh, loop)
        else:
            source, total, what = _simulation(
                simulate, rate, bbox, center, radius, profile, duration, count, seed, device
            )
        retry_s = parse_duration(retry_for, "--retry-for")
        publisher = Publisher(
            url,
            window=window,
            token=token,
            ssl_context=_client_tls(cafile),
            reconnect=retry_s > 0,
            backoff=Backoff(give_up_after=retry_s),
        )
        started = time.monotonic()

        async def run(progress: Callable[[int], None]) -> None:
            await publisher.connect()
            try:
                await play(source, publisher, speed=speed, batch=batch, on_sent=progress)
            finally:
                await publisher.close()

        interrupted = False
        try:
            with (
                _progress(quiet, total, what, publisher) as progress,
                event_loop_runner() as runner,
            ):
                runner.run(run(progress))
        except KeyboardInterrupt:
            interrupted = True
        stats = publisher.stats
        elapsed = time.monotonic() - started
        summary = (
            f"{stats.sent} sent, {stats.stored} stored, {stats.duplicates} duplicates, "
            f"{stats.rejected} rejected in {elapsed:.1f} s"
        )
        if stats.rejected or stats.errors:
            err.print(f"[bold red]{summary}[/]", highlight=False)
            for line in stats.errors[:10] + stats.rejections:
                err.print(f"  {line}", highlight=False, markup=False)
            raise typer.Exit(1)
        if interrupted:
            err.print(f"interrupted: {summary}", highlight=False)
            unacked = stats.sent - stats.acked
            if unacked:
                err.print(f"{unacked} positions were not acknowledged", highlight=False)
            raise typer.Exit(130)
        if not quiet:
            err.print(summary, highlight=False)


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
            err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    total = None if loop else sum(len(t.positions) for t in tracks)
    devices = ", ".join(t.device for t in tracks)
    return schedule(tracks, loop=loop), total, f"{len(tracks)} tracks ({devices})"


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
    return sim.positions(count=count, duration_s=seconds), total, f"{movers} simulated movers"


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
    quiet: bool, total: int | None, what: str, publisher: Any
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of sent and acked positions (a no-op when quiet)."""
    if quiet or (not err.is_terminal and os.environ.get("GEOTRACK_PROGRESS") != "1"):
        yield lambda n: None
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
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    started = time.monotonic()
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"publishing {what}", total=total, acked=0, rate="0")

        def advance(n: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-3)
            bar.update(
                task,
                advance=n,
                acked=publisher.stats.acked,
                rate=f"{publisher.stats.sent / elapsed:,.0f}",
            )

        yield advance
        bar.update(task, acked=publisher.stats.acked)


def _client_tls(cafile: Path | None) -> ssl.SSLContext | None:
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidParameter("--cafile", f"cannot load {cafile}: {reason}") from None
