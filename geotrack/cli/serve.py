"""`geotrack serve`: the relay."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path
from typing import Annotated

import typer

from geotrack.cli._common import (
    StoreOption,
    app,
    configure_logging,
    errors,
    event_loop_runner,
    open_db,
    within,
)
from geotrack.errors import InvalidParameter
from geotrack.schema import MAX_BATCH
from geotrack.store import DEFAULT_STORE, Store


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

    configure_logging(quiet, verbose)
    log = logging.getLogger("geotrack.relay")
    with errors():
        config = RelayConfig(
            host=host,
            port=port,
            max_frame=max_frame,
            stats_interval=stats_interval,
            max_batch=within("--max-batch", max_batch, 1, MAX_BATCH),
            # A subscriber must hold at least two frames' worth, or one frame drops it.
            subscriber_queue=within("--subscriber-queue", subscriber_queue, 2 * max_batch, 10**9),
            max_rate=within("--max-rate", max_rate, 0.001, float("inf")),
            max_connections=within("--max-connections", max_connections, 1, 10**9),
            handshake_timeout=within("--handshake-timeout", handshake_timeout, 0.001, 3600.0),
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

    with errors(), open_db(store) as db, event_loop_runner() as runner:
        runner.run(run(db))


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
