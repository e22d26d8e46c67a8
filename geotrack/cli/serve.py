"""`geotrack serve`: the relay."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from geotrack.cli._common import (
    StoreOption,
    app,
    configure_logging,
    errors,
    event_loop_factory,
    event_loop_runner,
    open_db,
)
from geotrack.schema import MAX_BATCH, parse_duration
from geotrack.store import DEFAULT_STORE

if TYPE_CHECKING:
    from geotrack.relay.config import RelayConfig

__all__ = ["serve"]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8765,
    store: StoreOption = DEFAULT_STORE,
    workers: Annotated[
        str,
        typer.Option(
            metavar="N|auto",
            help="Relay processes sharing --port (and --http-port) through SO_REUSEPORT, "
            "supervised: one that dies is restarted. 'auto': one per usable core. Every "
            "subscriber still gets every position once, whichever worker stored it. "
            "Example: --workers auto. See docs/operations.md, 'Workers'.",
        ),
    ] = "1",
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
        typer.Option(
            help="Frames per second per connection, and HTTP position requests per token "
            "(or client): faster senders are read slower, HTTP gets 429."
        ),
    ] = 1000.0,
    max_connections: Annotated[
        int,
        typer.Option(
            help="Connections held at once (WebSocket, and HTTP apart); more get HTTP 503."
        ),
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
    tiles: Annotated[
        str | None,
        typer.Option(
            metavar="TEMPLATE",
            help="Base map tiles of the web map (served at / with --http-port): a URL "
            "template with {z}, {x} and {y}, or 'none' for a plain background. Default: "
            "OpenStreetMap's standard tiles.",
            show_default=False,
        ),
    ] = None,
    mqtt: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL",
            help="Take positions from an MQTT broker (repeat for several): "
            "mqtt[s]://[USER:PASS@]HOST[:PORT][/FILTER], FILTER by default owntracks/# "
            "(OwnTracks in MQTT mode, device USER:DEVICE from owntracks/USER/DEVICE). "
            "Subscribed at QoS 1 in a persistent session: messages sent while the relay "
            "is down arrive when it is back, and each is acked only once stored. "
            "Example: --mqtt 'mqtts://geotrack:secret@broker.example.org'. In "
            "GEOTRACK_MQTT (space-separated) a password stays out of the process list. "
            "See docs/mqtt.md.",
            envvar="GEOTRACK_MQTT",
            show_default=False,
        ),
    ] = None,
    mqtt_json_filter: Annotated[
        str | None,
        typer.Option(
            metavar="FILTER",
            help="Also take geotrack's own JSON (a position or an array, as on /publish) "
            "from topics matching this filter on every --mqtt broker, e.g. geotrack/in/#.",
            show_default=False,
        ),
    ] = None,
    mqtt_retained: Annotated[
        bool,
        typer.Option(
            "--mqtt-retained",
            help="Also store retained messages (the broker's last message per topic, "
            "replayed at every subscription; usually positions already stored).",
        ),
    ] = False,
    mqtt_client_id: Annotated[
        str | None,
        typer.Option(
            metavar="ID",
            help="Client id of the relay's session on the brokers. Default: derived from "
            "the host name, --store and --port, so it is the same after a restart. Give "
            "each relay its own.",
            show_default=False,
        ),
    ] = None,
    mqtt_publish: Annotated[
        str | None,
        typer.Option(
            metavar="TEMPLATE",
            help="Publish every position this relay stores (from any transport) to the "
            "--mqtt brokers, on a topic made from {device}, e.g. geotrack/{device}: for "
            "Home Assistant or Node-RED.",
            show_default=False,
        ),
    ] = None,
    cafile: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="CA certificate (PEM) to trust for mqtts:// brokers, instead of the "
            "system's (which SSL_CERT_FILE or SSL_CERT_DIR can name).",
            show_default=False,
        ),
    ] = None,
    retain: Annotated[
        str | None,
        typer.Option(
            metavar="AGE",
            help="Keep fixes this long (e.g. 90d, 12h; at least 1m), by their own time: "
            "older ones are deleted at start and every --retain-every, in short batches "
            "that do not hold up publishers. Default: keep everything.",
            show_default=False,
        ),
    ] = None,
    retain_every: Annotated[
        str,
        typer.Option(metavar="DURATION", help="How often --retain looks for old fixes."),
    ] = "5m",
    fences: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="A GeoJSON FeatureCollection of fences (Polygon or MultiPolygon with "
            "properties.name; a Point with properties.radius in metres is a circle): every "
            "stored position is checked, and enter/exit events are stored and sent on "
            "/events. SIGHUP rereads the file; PUT/DELETE /api/fences/NAME edit it "
            "(docs/fences.md).",
            show_default=False,
        ),
    ] = None,
    fence_dwell: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Seconds (device time) a device must be seen inside a fence before "
            "'enter', and outside before 'exit': stops GPS jitter at an edge from "
            "flapping. 0: the first fix decides.",
        ),
    ] = 0.0,
    webhook: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL",
            help="POST every stored fence event to this URL as JSON (repeat for several), "
            "with an Idempotency-Key header naming it; anything but 2xx is retried with "
            "backoff (each device's events in order), and a restart resumes where delivery "
            "stopped: at least once. Example: --webhook https://hooks.example.org/geotrack. In "
            "GEOTRACK_WEBHOOK (space-separated) a password stays out of the process list. "
            "See docs/fences.md.",
            envvar="GEOTRACK_WEBHOOK",
            show_default=False,
        ),
    ] = None,
    webhook_state: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Directory of the webhooks' delivery cursors (one small file per store "
            "and URL). Default: $XDG_STATE_HOME/geotrack/webhooks "
            "(~/.local/state/geotrack/webhooks).",
            show_default=False,
        ),
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
    Refused handshakes are logged with the client's address and the reason (never the
    token), at most 20 a minute.

    With --http-port, phones and trackers post over HTTP in the same process (Traccar
    Client, OsmAnd and GPSLogger to /, OwnTracks to /owntracks, Overland to /overland), and
    the REST API, /healthz and /metrics are served there (docs/http.md), with the live web
    map at / (docs/web.md).

    Examples:

      `geotrack serve --port 8765 --store sqlite:///tracks.db`

      `geotrack serve --host 0.0.0.0 --http-port 5055`

      `geotrack serve --http-port 8080 --tiles none`

      `geotrack serve --store sqlite:///tracks.db --retain 90d`

      `geotrack serve --mqtt mqtt://localhost --mqtt-publish 'geotrack/{device}'`

      `geotrack serve --fences depots.geojson --fence-dwell 30 --http-port 8080`

      `geotrack serve --fences depots.geojson --webhook https://hooks.example.org/fences`

      `geotrack serve --host 0.0.0.0 --auth tokens.toml --certfile cert.pem --keyfile key.pem`
    """
    configure_logging(quiet, verbose)
    with errors():
        from geotrack.relay import RelayConfig, serve
        from geotrack.relay.config import DEFAULT_TILES

        config = RelayConfig(
            host=host,
            port=port,
            max_frame=max_frame,
            stats_interval=stats_interval,
            max_batch=max_batch,
            subscriber_queue=subscriber_queue,
            max_rate=max_rate,
            max_connections=max_connections,
            handshake_timeout=handshake_timeout,
            auth=auth,
            certfile=certfile,
            keyfile=keyfile,
            allow_origins=tuple(allow_origin) if allow_origin else None,
            http_port=http_port,
            http_host=http_host,
            tiles=_tiles(tiles, DEFAULT_TILES),
            retain=None if retain is None else parse_duration(retain, "--retain"),
            retain_every=parse_duration(retain_every, "--retain-every"),
            mqtt=tuple(mqtt or ()),
            mqtt_json_filter=mqtt_json_filter,
            mqtt_retained=mqtt_retained,
            mqtt_client_id=mqtt_client_id,
            mqtt_publish=mqtt_publish,
            cafile=cafile,
            fences=fences,
            fence_dwell=fence_dwell,
            webhooks=tuple(webhook or ()),
            webhook_state=webhook_state,
        )
    with errors():
        from geotrack.relay.workers import parse_workers

        count = parse_workers(workers)
    if count > 1:
        _serve_workers(store, config, count)
        return
    with errors(), open_db(store) as db, event_loop_runner() as runner:
        runner.run(serve(db, config, started=_freeze_start_up))


def _freeze_start_up(*_: object) -> None:
    """Once the relay listens: what start-up made (modules, settings, the fences'
    geometries) lives as long as this process, so move it out of the garbage collector's
    sight and no full collection walks it again (with 10,000 fences this was a tenth of
    the relay's CPU per stored position). For a process of its own only: frozen objects
    that become cyclic garbage later are never collected."""
    gc.collect()
    gc.freeze()


def _serve_workers(store: str, config: RelayConfig, count: int) -> None:
    """``--workers N``: check the store here, then supervise N relay processes."""
    from geotrack.relay.workers import Supervisor

    with errors():
        with open_db(store):  # a bad --store fails here, once, before any worker starts
            pass
        code = Supervisor(lambda: open_db(store), config, count, event_loop_factory()).run()
    if code:
        raise typer.Exit(code)


def _tiles(option: str | None, default: str) -> str | None:
    """RelayConfig's ``tiles`` for --tiles: ``default`` when not given, None for 'none'."""
    if option is None:
        return default
    return None if option.strip().lower() == "none" else option
