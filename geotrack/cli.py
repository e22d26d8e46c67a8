"""The ``geotrack`` command: a thin shell over the library.

Each command parses its options, opens what it needs and calls one function. Errors
geotrack raises on purpose become one ``Error: ...`` line and exit code 1 here, and only
here; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from geotrack import __version__
from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.schema import MAX_BATCH, BBox, parse_duration, parse_time
from geotrack.store import DEFAULT_STORE, Store, open_store

app = typer.Typer(
    name="geotrack",
    help=(
        "Realtime position ingestion and replay over WebSocket.\n\n"
        "Devices (or `geotrack publish`) stream positions to a relay (`geotrack serve`), "
        "which stores them and pushes them at once to every subscriber; stored tracks can "
        "be followed live (`geotrack tail`) and exported (`geotrack export`).\n\n"
        "Quick start, in three terminals:\n\n"
        "  geotrack serve\n\n"
        "  geotrack tail\n\n"
        "  geotrack publish --gpx samples/walk.gpx --speed 50"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

err = Console(stderr=True)
_N = TypeVar("_N", int, float)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="GEOTRACK_STORE",
        help="Where positions live: sqlite:///FILE.db (embedded, the default) or mongodb://...",
        show_default=True,
    ),
]
DeviceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--device", "-d", help="Only this device (repeat for several).", show_default=False
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line and exit."""
    err.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn geotrack's own errors into one line on stderr and exit code 1."""
    try:
        yield
    except GeotrackError as exc:
        fail(str(exc))


def _open(url: str) -> Store:
    return open_store(url)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geotrack {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Realtime position ingestion and replay over WebSocket."""


def _configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    # Plain lines, one per event: relay logs end up in files and journald, where wrapped
    # or colored output gets in the way of grep.
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(message)s",
        force=True,
    )
    # websockets logs every failed handshake (a port scan, a bad path) at error level;
    # we log connections ourselves.
    # Never DEBUG: websockets then logs request lines, and those may carry ?token=.
    logging.getLogger("websockets").setLevel(logging.INFO if verbose else logging.CRITICAL)


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


# -- serve ---------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8765,
    store: StoreOption = DEFAULT_STORE,
    max_frame: Annotated[
        int, typer.Option(help="Largest frame accepted, bytes; bigger ones close with 1009.")
    ] = 1 << 20,
    subscriber_queue: Annotated[
        int,
        typer.Option(help="Positions queued for a subscriber before it is dropped as too slow."),
    ] = 10_000,
    max_batch: Annotated[
        int, typer.Option(help=f"Most positions in one frame (1..{MAX_BATCH}).")
    ] = MAX_BATCH,
    max_rate: Annotated[
        float,
        typer.Option(help="Frames per second per connection; faster senders are read slower."),
    ] = 1000.0,
    max_connections: Annotated[
        int, typer.Option(help="Connections held at once; more get HTTP 503.")
    ] = 10_000,
    handshake_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to complete its handshake.")
    ] = 10.0,
    auth: Annotated[
        Path | None,
        typer.Option(
            help="Token file (TOML): who may publish (as which devices) and subscribe. "
            "See docs/operations.md.",
            show_default=False,
        ),
    ] = None,
    certfile: Annotated[
        Path | None,
        typer.Option(help="TLS certificate chain (PEM): serve wss://.", show_default=False),
    ] = None,
    keyfile: Annotated[
        Path | None,
        typer.Option(help="TLS private key (PEM), with --certfile.", show_default=False),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Browser origin allowed to connect (repeat). Default: any. Clients that send "
            "no Origin (devices, servers) are always allowed.",
            show_default=False,
        ),
    ] = None,
    stats_interval: Annotated[
        float, typer.Option(help="Seconds between rate summaries in the log (0: none).")
    ] = 10.0,
    http_port: Annotated[
        int | None,
        typer.Option(
            help="Also serve HTTP on this port: device clients (OsmAnd, OwnTracks), REST, "
            "/healthz, /metrics. Off unless given.",
            show_default=False,
        ),
    ] = None,
    http_host: Annotated[
        str | None,
        typer.Option(help="Address of the HTTP listener (default: --host).", show_default=False),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """Run the relay: publishers in on /publish, subscribers out on /subscribe.

    Every position is validated, stored (group-committed, deduplicated on device and
    time) and acked, then pushed to every matching subscriber. Ctrl-C or SIGTERM stops
    it cleanly: what is in flight is stored and acked, clients are closed with 1001.

    With --http-port, phones and trackers post over HTTP in the same process (Traccar
    Client, OsmAnd and GPSLogger to /, OwnTracks to /owntracks), and the REST API, /healthz
    and /metrics are served there (docs/http.md).

    Examples:

      `geotrack serve --port 8765 --store sqlite:///tracks.db`

      `geotrack serve --host 0.0.0.0 --http-port 5055`

      `geotrack serve --host 0.0.0.0 --auth tokens.toml --certfile cert.pem --keyfile key.pem`
    """
    from geotrack.auth import Tokens
    from geotrack.relay import Relay, RelayConfig

    _configure_logging(quiet, verbose)
    log = logging.getLogger("geotrack.relay")
    with errors():
        config = RelayConfig(
            host=host,
            port=port,
            max_frame=max_frame,
            stats_interval=stats_interval,
            max_batch=_within("--max-batch", max_batch, 1, MAX_BATCH),
            # A subscriber must hold at least two frames' worth, or one frame drops it.
            subscriber_queue=_within("--subscriber-queue", subscriber_queue, 2 * max_batch, 10**9),
            max_rate=_within("--max-rate", max_rate, 0.001, float("inf")),
            max_connections=_within("--max-connections", max_connections, 1, 10**9),
            handshake_timeout=_within("--handshake-timeout", handshake_timeout, 0.001, 3600.0),
            tokens=Tokens.load(auth) if auth is not None else None,
            ssl=_server_tls(certfile, keyfile),
            allow_origins=tuple(allow_origin) if allow_origin else None,
        )
    exposed = [h for h in (host, http_host if http_port is not None else None) if h]
    for address in dict.fromkeys(h for h in exposed if not _loopback(h)):
        if config.tokens is None:
            log.warning(
                "listening on %s without --auth: anyone who can reach it may publish and "
                "subscribe (see docs/operations.md)",
                address,
            )

    async def run(db: Store) -> None:
        relay = Relay(db, config)
        await relay.start()
        listener = None
        if http_port is not None:
            from geotrack.relay.http import HttpListener

            listener = HttpListener(relay, http_host or host, http_port, config.tokens)
            try:
                await listener.start()
            except BaseException:
                await relay.stop()
                raise
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("geotrack relay listening on %s (store %s)", relay.url, db.display_url)
        log.info("publish to %s/publish, subscribe at %s/subscribe", relay.url, relay.url)
        if listener is not None:
            log.info("HTTP on %s: devices at / and /owntracks, REST at /api", listener.url)
        await stop.wait()
        log.info("stopping: storing and acking what is in flight")
        if listener is not None:
            await listener.stop()  # before the relay: what it accepted still gets stored
        await relay.stop()
        c = relay.counters
        log.info(
            "stopped: %d stored, %d duplicates, %d rejected", c.stored, c.duplicates, c.rejected
        )

    with errors(), _open(store) as db, _runner() as runner:
        runner.run(run(db))


def _within(name: str, value: _N, low: _N, high: _N) -> _N:
    if not low <= value <= high:
        raise InvalidParameter(name, f"must be within {low}..{high}, got {value}")
    return value


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_tls(certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext | None:
    if certfile is None:
        if keyfile is not None:
            raise InvalidParameter("--keyfile", "give --certfile too")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidParameter("--certfile", f"cannot load {certfile}: {reason}") from None
    return context


def _client_tls(cafile: Path | None) -> ssl.SSLContext | None:
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidParameter("--cafile", f"cannot load {cafile}: {reason}") from None


# -- publish -------------------------------------------------------------------------------


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
            with _progress(quiet, total, what, publisher) as progress, _runner() as runner:
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


# -- tail ----------------------------------------------------------------------------------


@app.command()
def tail(
    store: StoreOption = DEFAULT_STORE,
    device: DeviceOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Replay from a cursor printed by an earlier tail, or from a time "
            "(2026-11-25T12:00:00Z, Unix seconds, or an age like 15m), then go live."
        ),
    ] = None,
    json: Annotated[
        bool, typer.Option("--json", help="One JSON position per line (NDJSON).")
    ] = False,
) -> None:
    """Follow the store: print each position as it is stored.

    Works on whatever is written to the store, by any relay. When stopped (Ctrl-C) it
    prints the cursor to resume from, so nothing is missed in between.

    Examples:

      `geotrack tail --device bus-12`

      `geotrack tail --json --since 1h | jq .speed`
    """
    from geotrack.tail import follow, format_json, format_line

    fmt = format_json if json else format_line
    out = sys.stdout

    def emit(change: Any) -> None:
        out.write(fmt(change.position) + "\n")
        out.flush()

    with errors(), _open(store) as db:
        start: str | int | None = None
        if since is not None:
            start = since if db.is_cursor(since) else parse_time(since, _now_ms(), "--since")

        def opened(_cursor: str) -> None:
            # Only once the feed is open: a bad cursor must print nothing but its error.
            if not json:
                err.print(f"following {db.display_url} (Ctrl-C to stop)", highlight=False)

        # SIGTERM (systemd, kill) stops it like Ctrl-C: with the cursor printed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            cursor = follow(db, emit, since=start, devices=device or (), on_open=opened)
        except BrokenPipeError:
            # The reader went away (| head): not an error; keep Python from complaining.
            _silence_stdout()
            return
        err.print(f"resume with: geotrack tail --since {cursor}", highlight=False, soft_wrap=True)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- export --------------------------------------------------------------------------------


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
        now = _now_ms()
        since_ms = parse_time(since, now, "--since") if since else None
        until_ms = parse_time(until, now, "--until") if until else None
        gap_s = parse_duration(gap, "--gap")
        with _open(store) as db:
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


def main() -> None:
    """Entry point of the ``geotrack`` console script."""
    app()
