"""The HTTP listener: device clients, a REST API, health and metrics, beside the relay.

It runs in the relay's process and event loop (aiohttp's web server) and moves requests
only: parsing lives in :mod:`geotrack.relay.http_devices` and :mod:`geotrack.schema`, and
every position it accepts goes through :meth:`Relay.submit`, the one path into the store,
dedupe and fan-out, so a subscriber cannot tell how a position arrived. The contract is
docs/http.md:

    GET|POST /              OsmAnd protocol (Traccar Client, OsmAnd, GPSLogger)
    GET  /                  without OsmAnd parameters: the web map (docs/web.md)
    GET  /static/...        the web map's files; GET /map/config.json its settings
    POST /owntracks         OwnTracks HTTP mode
    POST /overland          Overland batches (GeoJSON points)
    POST /api/positions     a Position or an array of them; answers the WebSocket ack
    GET  /api/positions     history in any export format, streamed
    GET  /api/devices       every device with its last fix
    GET  /api/positions/poll  long polling; GET /api/stream  Server-Sent Events
                            (:mod:`geotrack.relay.http_feeds`)
    GET  /api/trips, /api/stops   trips and stops (:mod:`geotrack.relay.http_trips`)
    GET|PUT|DELETE /api/fences[/NAME]  the geofences (:mod:`geotrack.relay.http_fences`)
    GET  /healthz           200 when the store answers, else 503
    GET  /metrics           Prometheus text format 0.0.4

The store is synchronous: every read runs on the listener's worker threads, never on the
event loop. Tokens are never logged: the access log names the path without its query.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import MultiDict, MultiMapping

from geotrack import __version__
from geotrack.auth import Grant, Tokens
from geotrack.errors import FrameError, InvalidParameter, InvalidPosition, RelayError, StoreError
from geotrack.export import EXTENSIONS, FORMATS, export
from geotrack.relay.access import (
    Refused,
    authorize,
    bind_error,
    device_ids,
    enforce_devices,
    forbidden_device,
    restrict_devices,
)
from geotrack.relay.http_devices import device_id, parse_osmand, parse_owntracks
from geotrack.relay.http_feeds import Feeds
from geotrack.relay.http_fences import fence_item, fences_list
from geotrack.relay.http_trips import TripsEndpoints
from geotrack.relay.metrics import Family, exposition
from geotrack.relay.publishers import RateLimiter
from geotrack.relay.server import Relay
from geotrack.relay.webmap import (
    CACHE_CONTROL,
    NOT_BUILT,
    WEB_DIR,
    leaflet_built,
    map_config,
    static_file,
)
from geotrack.schema import (
    Position,
    Rejection,
    decode_frame,
    encode_ack,
    encode_error,
    parse_duration,
    parse_time,
)
from geotrack.sources.overland import parse_overland

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from geotrack.relay.fencing import Fencing
    from geotrack.relay.mqtt import MqttBridge
    from geotrack.relay.webhooks import Webhooks

__all__ = ["CONTENT_TYPES", "HttpListener"]

log = logging.getLogger("geotrack.http")

#: The Content-Type of each export format.
CONTENT_TYPES: Final[dict[str, str]] = {
    "gpx": "application/gpx+xml; charset=utf-8",
    "geojson": "application/geo+json; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson; charset=utf-8",
    "kml": "application/vnd.google-earth.kml+xml; charset=utf-8",
}
#: Transports always present in /metrics, so a dashboard's series exist from the start.
TRANSPORTS: Final = ("websocket", "osmand", "owntracks", "overland", "rest")
#: Bytes an export hands to the response at a time, and chunks in flight between them.
CHUNK_BYTES: Final = 64 * 1024
_CHUNKS_IN_FLIGHT: Final = 4
#: Seconds /healthz waits for the store before answering 503.
HEALTH_TIMEOUT: Final = 5.0
_EXPORT_PARAMETERS: Final = ("device", "since", "until", "format", "gap", "token")
#: Rate limiters kept before idle ones (back to a full bucket) are forgotten.
_LIMITERS_KEPT: Final = 4096
_METRICS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Role = Literal["publish", "subscribe"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _DeviceEntry(msgspec.Struct):
    device: str
    last: Position


_encode: Final = msgspec.json.Encoder().encode


class HttpListener:
    """An HTTP listener feeding one relay. Use ``async with`` or start()/stop().

    ``port`` 0 picks a free port (see :attr:`port`). With ``tokens``, every endpoint but
    /healthz and /metrics needs a token: publish for ingestion, subscribe for reads (a
    share link's reads return its own devices only).
    """

    def __init__(
        self,
        relay: Relay,
        host: str,
        port: int,
        tokens: Tokens | None = None,
        *,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.relay = relay
        self.host = host
        self._port = port
        self._tokens = tokens
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._executor: ThreadPoolExecutor | None = None
        #: Requests answered, by (route, method, status), for /metrics.
        self.requests: Counter[tuple[str, str, int]] = Counter()
        # Requests that carry positions, paced per token (or per peer without auth) like
        # a WebSocket publisher's frames; over the rate they are answered 429.
        self._limiters: dict[str, RateLimiter] = {}
        #: The relay's MQTT brokers (``--mqtt``), shown in /healthz and /metrics.
        self.mqtt: list[MqttBridge] = []
        #: Rewrites the families /metrics sends (``serve --workers``: every worker's,
        #: labelled ``worker``); None sends this listener's own.
        self.metrics_view: Callable[[list[Family]], list[Family]] | None = None
        #: More families for /metrics, each called per scrape (``serve --workers``: the
        #: hand-overs between workers).
        self.more_families: list[Callable[[], list[Family]]] = []
        #: The relay's fences (``--fences``), for /api/fences; None without them.
        self.fences: Fencing | None = None
        #: The relay's webhooks (``--webhook``), counted in /metrics; None without them.
        self.webhooks: Webhooks | None = None
        #: Long polling and Server-Sent Events (GET /api/positions/poll, /api/stream).
        self.feeds = Feeds(
            relay.store, relay.hub, relay.id, self._grant, self._viewable, self._store_call
        )

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RelayError("the HTTP listener is not started")
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def url(self) -> str:
        """The base http:// (https:// with TLS) URL."""
        host = self.host
        scheme = "https" if self.relay.config.ssl is not None else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve. Raises RelayError when the address cannot be used."""
        app = web.Application(
            client_max_size=self.relay.config.max_frame, middlewares=[self._middleware]
        )
        app.router.add_route("GET", "/", self._root)
        app.router.add_get("/static/{path:.+}", self._static)
        app.router.add_get("/map/config.json", self._map_config)
        app.router.add_route("POST", "/", self._osmand)
        app.router.add_route("POST", "/owntracks", self._owntracks)
        app.router.add_route("POST", "/overland", self._overland)
        app.router.add_route("POST", "/api/positions", self._post_positions)
        app.router.add_route("GET", "/api/positions", self._get_positions)
        app.router.add_route("GET", "/api/devices", self._devices)
        app.router.add_get("/api/positions/poll", self.feeds.poll)
        app.router.add_get("/api/stream", self.feeds.stream)
        app.router.add_get("/api/fences", self._fences_list)
        app.router.add_route("*", "/api/fences/{name}", self._fence)
        # GET /api/trips and /api/stops (geotrack.relay.http_trips, docs/trips.md).
        trips = TripsEndpoints(self.relay.store, self._grant, self._viewable, self._store_call)
        app.router.add_get("/api/trips", trips.trips)
        app.router.add_get("/api/stops", trips.stops)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        await self.feeds.start()
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="geotrack-http")
        runner = web.AppRunner(
            app,
            access_log_class=_AccessLogger,
            access_log=log,
            logger=log,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        # The relay's TLS settings serve https:// here too: tokens never cross in clear
        # on one port but not the other.
        site = web.TCPSite(
            runner,
            self.host,
            self._port,
            ssl_context=self.relay.config.ssl,
            reuse_port=self.relay.config.reuse_port or None,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._executor.shutdown(wait=False)
            await self.feeds.close()
            raise bind_error(exc, self.host, self._port, "the HTTP listener") from None
        self._runner = runner
        if not leaflet_built():
            log.warning("the web map at / cannot work: %s", NOT_BUILT)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (bounded), release threads."""
        await self.feeds.close()  # held long polls answer and event streams end, at once
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> HttpListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing --------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "other"
        try:
            if self._over_connections():
                raise _Overloaded
            response = await handler(request)
        except _Overloaded:
            # The connection closes with the answer, so it stops counting.
            response = _text(503, "too many connections, retry later")
            response.headers["Retry-After"] = "1"
            response.force_close()
        except web.HTTPNotFound:
            response = _text(
                404,
                f"no such endpoint {request.path[:100]!r}: see docs/http.md "
                "(/, /owntracks, /overland, /api/positions, /api/positions/poll, /api/stream, "
                "/api/devices, /api/trips, /api/stops, /api/fences, /healthz, /metrics)",
            )
        except web.HTTPException as exc:
            self.requests[(name, request.method, exc.status)] += 1
            raise
        self.requests[(name, request.method, response.status)] += 1
        return response

    async def _store_call(self, function: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _over_connections(self) -> bool:
        server = self._runner.server if self._runner is not None else None
        return server is not None and len(server.connections) > self.relay.config.max_connections

    def _grant(self, request: web.Request, role: Role) -> Grant | None:
        """The token's grant (None when auth is off); 401 or 403 when it does not do.

        A request that carries positions (``role`` publish) is also paced: over
        ``--max-rate`` per token (or per peer without auth) it is answered 429.
        """
        query = {key: request.query.getall(key) for key in request.query}
        try:
            grant = authorize(self._tokens, request.headers, query, role)
        except Refused as refused:
            self.relay.refusals.refused(
                str(request.remote), refused.status, refused.reason, kind="request"
            )
            headers = MultiDict([("WWW-Authenticate", c) for c in refused.challenges])
            if refused.challenge:
                raise web.HTTPUnauthorized(text=refused.reason + "\n", headers=headers) from None
            raise web.HTTPForbidden(text=refused.reason + "\n") from None
        if role == "publish":
            self._pace(grant.name if grant is not None else f"peer {request.remote}")
        return grant

    def _viewable(
        self, request: web.Request, grant: Grant | None, devices: tuple[str, ...]
    ) -> tuple[str, ...]:
        """The devices a read may return (a share link's own); 403 for one it may not see."""
        try:
            return restrict_devices(grant, devices)
        except Refused as refused:
            self.relay.refusals.refused(
                str(request.remote), refused.status, refused.reason, kind="request"
            )
            raise web.HTTPForbidden(text=refused.reason + "\n") from None

    def _pace(self, key: str) -> None:
        """Count one request of ``key``; HTTP 429 with Retry-After when over the rate."""
        now = asyncio.get_running_loop().time()
        limiter = self._limiters.get(key)
        if limiter is None:
            if len(self._limiters) >= _LIMITERS_KEPT:
                for old in [k for k, v in self._limiters.items() if v.full(now)]:
                    del self._limiters[old]
            limiter = self._limiters[key] = RateLimiter(self.relay.config.max_rate, now)
        wait = limiter.take(now)
        if wait:
            retry = max(1, math.ceil(wait))
            raise web.HTTPTooManyRequests(
                text=f"over --max-rate ({self.relay.config.max_rate:g} requests/s): "
                f"send it again in {retry} s\n",
                headers={"Retry-After": str(retry)},
            )

    async def _ingest(
        self, positions: list[Position], grant: Grant | None, transport: str
    ) -> web.Response | None:
        """Store the positions of a device request; an error response, or None when stored."""
        if grant is not None:
            for position in positions:
                if not grant.may_publish_as(position.device):
                    reason = forbidden_device(grant, position.device)
                    self._count_rejected(transport, reason, len(positions))
                    return _text(403, reason)
        try:
            await self.relay.submit(positions, [], transport)
        except StoreError as exc:
            return _text(503, f"store write failed, send it again: {exc}")
        return None

    def _count_rejected(self, transport: str, reason: str, count: int = 1) -> None:
        # Through submit, so that rejections are counted where every transport's are.
        self.relay.submit([], [Rejection(i, reason) for i in range(count)], transport)

    # -- device clients --------------------------------------------------------------

    async def _osmand(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, "publish")
        try:
            if request.content_type == "application/json":
                params: MultiDict[str] = MultiDict()
                body = _decode_json(await request.read())
            else:
                body = None
                params = _without_token(request.query)
                if not params and request.method == "POST":
                    # Parameters in a form body when the URL has none, as Traccar reads them.
                    params = _without_token(_form(await request.read()))
            position = parse_osmand(params, body, now_ms=time.time_ns() // 1_000_000)
        except (InvalidParameter, InvalidPosition) as exc:
            self._count_rejected("osmand", str(exc))
            return _text(400, str(exc))
        failed = await self._ingest([position], grant, "osmand")
        return failed or web.Response(status=200)

    # -- the web map -----------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        """GET /: OsmAnd when it carries parameters besides ``token`` (or JSON), else the page."""
        if set(request.query) - {"token"} or request.content_type == "application/json":
            return await self._osmand(request)
        return _file(WEB_DIR / "index.html", "text/html; charset=utf-8")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        found = static_file(request.match_info["path"])
        if found is None:
            raise web.HTTPNotFound
        return _file(*found)

    async def _map_config(self, request: web.Request) -> web.StreamResponse:
        config = self.relay.config
        auth = self._tokens is not None or config.tokens is not None
        body = map_config(config, self.relay.port, __version__, auth=auth)
        response = _json(200, body)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _owntracks(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, "publish")
        user = request.query.get("u") or request.headers.get("X-Limit-U")
        device = request.query.get("d") or request.headers.get("X-Limit-D")
        try:
            body = _decode_json(await request.read())
            # The apps post one message; a list of them is read as well.
            messages = body if isinstance(body, list) else [body]
            parsed = [parse_owntracks(m, user=user, device=device) for m in messages]
        except (InvalidParameter, InvalidPosition) as exc:
            self._count_rejected("owntracks", str(exc))
            return _text(400, str(exc))
        positions = [p for p in parsed if p is not None]
        if positions:
            failed = await self._ingest(positions, grant, "owntracks")
            if failed is not None:
                return failed
        # OwnTracks reads the answer as messages for the app: none.
        return web.Response(body=b"[]", content_type="application/json")

    async def _overland(self, request: web.Request) -> web.StreamResponse:
        """Overland's batch: the valid locations stored, ``{"result": "ok"}`` answered.

        The app keeps a batch and sends it again until it reads that answer, so a batch
        that cannot be read, or names no device, is a 400 (it stays on the phone until the
        setting is fixed); one with some bad locations is answered ok, the bad ones listed
        and counted as rejected (sending them again would not make them good).
        """
        grant = self._grant(request, "publish")
        named = request.query.get("device")
        try:
            body = _decode_json(await request.read())
            positions, refused = parse_overland(body, device_id(named) if named else None)
            unnamed = next((r for _, r in refused if r.startswith("device_id:")), None)
            if unnamed is not None:
                raise InvalidParameter("device_id", unnamed.removeprefix("device_id: "))
        except (InvalidParameter, InvalidPosition) as exc:
            self._count_rejected("overland", str(exc))
            return _text(400, str(exc))
        for _, reason in refused:
            self._count_rejected("overland", reason)
        if positions:
            failed = await self._ingest(positions, grant, "overland")
            if failed is not None:
                return failed
        answer: dict[str, Any] = {"result": "ok"}
        if refused:
            answer["rejected"] = [{"location": at, "reason": why} for at, why in refused]
        return _json(200, msgspec.json.encode(answer))

    # -- REST ------------------------------------------------------------------------

    async def _post_positions(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, "publish")
        try:
            frame = decode_frame(await request.read(), self.relay.config.max_batch)
        except FrameError as exc:
            return _json(400, encode_error(str(exc)))
        positions, rejected = enforce_devices(
            grant, frame.indexes, frame.positions, list(frame.rejected)
        )
        try:
            ack = await self.relay.submit(positions, rejected, "rest")
        except StoreError as exc:
            return _json(503, encode_error(f"store write failed, send it again: {exc}"))
        return _json(200, encode_ack(ack))

    async def _get_positions(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, "subscribe")
        try:
            query = _ExportQuery.parse(request.query)
        except InvalidParameter as exc:
            return _text(400, str(exc))
        devices = self._viewable(request, grant, query.devices)
        # Short polls that find nothing new cost no store read: 304 for the current ETag.
        etag = self.feeds.etag(request)
        if etag is not None and etag in request.headers.getall("If-None-Match", []):
            return web.Response(status=304, headers={"ETag": etag})
        query = msgspec.structs.replace(query, devices=devices, etag=etag)
        return await self._stream_export(request, query)

    async def _fences_list(self, request: web.Request) -> web.StreamResponse:
        return await fences_list(request, self.fences, self._grant)

    async def _fence(self, request: web.Request) -> web.StreamResponse:
        return await fence_item(request, self.fences, self._grant)

    async def _devices(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, "subscribe")
        unknown = sorted(set(request.query) - {"device", "token"})
        if unknown:
            return _text(400, f"{unknown[0]}: unknown parameter (supported: device)")
        try:
            devices = self._viewable(request, grant, _devices_param(request.query))
            latest: list[Position] = await self._store_call(self.relay.store.latest, devices)
        except InvalidParameter as exc:
            return _text(400, str(exc))
        except StoreError as exc:
            return _text(503, f"store read failed: {exc}")
        body = _encode([_DeviceEntry(p.device, p) for p in latest])
        return _json(200, body)

    # -- export streaming ------------------------------------------------------------

    async def _stream_export(self, request: web.Request, query: _ExportQuery) -> web.StreamResponse:
        """Stream an export as the writer produces it, with memory flat.

        The writer runs on a worker thread and writes into a TextIO that hands ~64 KB
        chunks over a small queue; a full queue blocks the writer (backpressure from the
        client's socket). Headers go out with the first chunk, so a store that fails
        before that still gets a 503; one that fails later cuts the connection, so the
        client sees a truncated transfer rather than a complete-looking file.
        """
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_CHUNKS_IN_FLIGHT)
        stop = threading.Event()
        assert self._executor is not None
        producer = loop.run_in_executor(
            self._executor, self._export_into, query, _Handover(chunks, loop, stop)
        )
        response: web.StreamResponse | None = None
        try:
            while (chunk := await _next_chunk(chunks, producer)) is not None:
                if response is None:
                    response = await self._start_export(request, query)
                await response.write(chunk)
            if response is None:  # an empty NDJSON export writes nothing at all
                response = await self._start_export(request, query)
            await response.write_eof()
        except StoreError as exc:
            if response is None:
                return _text(503, f"store read failed: {exc}")
            log.error("export to %s cut off: store read failed: %s", request.remote, exc)
            if request.transport is not None:
                request.transport.abort()
        except ConnectionResetError:
            log.debug("export to %s stopped: the client went away", request.remote)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await producer
        return response if response is not None else web.Response(status=499)

    async def _start_export(self, request: web.Request, query: _ExportQuery) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": CONTENT_TYPES[query.format],
                "Content-Disposition": (f'inline; filename="positions{EXTENSIONS[query.format]}"'),
            }
        )
        if query.etag is not None:
            response.headers["ETag"] = query.etag
        await response.prepare(request)
        return response

    def _export_into(self, query: _ExportQuery, handover: _Handover) -> None:
        """Run on a worker thread: query the store and write the export into ``handover``."""
        sink = _ChunkSink(handover.put)
        out = io.TextIOWrapper(
            io.BufferedWriter(sink, buffer_size=CHUNK_BYTES), encoding="utf-8", newline=""
        )
        try:
            positions = self.relay.store.query(query.devices, query.since_ms, query.until_ms)
            try:
                export(query.format, positions, out, gap_s=query.gap_s)
                out.flush()
            finally:
                close = getattr(positions, "close", None)
                if close is not None:
                    close()  # the store's cursor, now rather than whenever it is collected
        except _Aborted:
            pass
        finally:
            sink.discard = True
            out.close()

    # -- operations ------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.wait_for(self._store_call(self.relay.store.ping), HEALTH_TIMEOUT)
        except StoreError as exc:
            return _text(503, f"store unreachable: {exc}")
        except TimeoutError:
            return _text(503, f"store unreachable: no answer within {HEALTH_TIMEOUT:g} s")
        # A broker down is reported, not a 503: positions still come by the other ways.
        return _text(200, "; ".join(["ok", *(bridge.health() for bridge in self.mqtt)]))

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        families = self.families()
        if self.metrics_view is not None:
            families = self.metrics_view(families)
        body = exposition(families)
        return web.Response(body=body.encode(), headers={"Content-Type": _METRICS_TYPE})

    def families(self) -> list[Family]:
        """What /metrics exposes, as metric families."""
        relay = self.relay
        counters = relay.counters
        positions = Family(
            "geotrack_positions_total",
            "counter",
            "Positions received, by transport and result (stored, duplicate or rejected).",
        )
        for transport in sorted({*TRANSPORTS, *counters.by_transport}):
            counts = counters.transport(transport)
            positions.add(counts.stored, transport=transport, result="stored")
            positions.add(counts.duplicates, transport=transport, result="duplicate")
            positions.add(counts.rejected, transport=transport, result="rejected")
        connections = Family(
            "geotrack_connections", "gauge", "WebSocket clients connected now, by role."
        )
        connections.add(relay.publishers, role="publisher")
        connections.add(relay.subscribers, role="subscriber")
        watchers = Family(
            "geotrack_http_watchers",
            "gauge",
            "Long polls held and Server-Sent Event streams open now (GET /api/positions/poll, "
            "/api/stream).",
        )
        watchers.add(self.feeds.watching)
        latency = Family(
            "geotrack_ack_latency_seconds",
            "histogram",
            "Seconds from a position's arrival to its commit (its ack), all transports.",
        )
        latency.add_histogram(counters.ack_latency)
        drops = Family(
            "geotrack_subscriber_drops_total",
            "counter",
            "Subscribers closed for falling behind (1013).",
        )
        drops.add(relay.hub.dropped)
        delivered = Family("geotrack_delivered_total", "counter", "Positions sent to subscribers.")
        delivered.add(counters.delivered + sum(s.delivered for s in relay.hub.subscribers))
        peers = Family(
            "geotrack_from_peers_total",
            "counter",
            "Positions other relays sharing the store stored, delivered here.",
        )
        peers.add(counters.from_peers)
        frame_errors = Family(
            "geotrack_frame_errors_total",
            "counter",
            "WebSocket frames answered with an error frame.",
        )
        frame_errors.add(counters.frame_errors)
        requests = Family(
            "geotrack_http_requests_total",
            "counter",
            "HTTP requests answered, by route, method and status code.",
        )
        for (route, method, status), count in sorted(self.requests.items()):
            requests.add(count, route=route, method=method, code=str(status))
        families = [positions, connections, watchers, latency, drops, delivered, peers]
        families.append(frame_errors)
        families.append(requests)
        if self.mqtt:
            from geotrack.relay.mqtt import mqtt_families

            families.extend(mqtt_families(self.mqtt))
        if self.webhooks is not None:
            from geotrack.relay.webhooks import webhook_families

            families.extend(webhook_families(self.webhooks))
        if self.fences is not None:
            from geotrack.relay.fencing import fence_families

            families.extend(fence_families(self.fences))
        for more in self.more_families:
            families.extend(more())
        return families


# -- helpers ---------------------------------------------------------------------------------


class _ExportQuery(msgspec.Struct, frozen=True):
    format: str
    devices: tuple[str, ...]
    since_ms: int | None
    until_ms: int | None
    gap_s: float
    #: The answer's ETag (:meth:`Feeds.etag`), None for none.
    etag: str | None = None

    @classmethod
    def parse(cls, query: MultiMapping[str]) -> _ExportQuery:
        unknown = sorted(set(query) - set(_EXPORT_PARAMETERS))
        if unknown:
            supported = ", ".join(p for p in _EXPORT_PARAMETERS if p != "token")
            raise InvalidParameter(unknown[0], f"unknown parameter (supported: {supported})")
        for name in ("since", "until", "format", "gap"):
            if len(query.getall(name, [])) > 1:
                raise InvalidParameter(name, "give it at most once")
        fmt = query.get("format", "ndjson")
        if fmt not in FORMATS:
            known = ", ".join(FORMATS)
            raise InvalidParameter("format", f"unknown format {fmt!r} (use one of: {known})")
        now_ms = time.time_ns() // 1_000_000
        since = query.get("since")
        until = query.get("until")
        return cls(
            format=fmt,
            devices=_devices_param(query),
            since_ms=parse_time(since, now_ms, "since") if since is not None else None,
            until_ms=parse_time(until, now_ms, "until") if until is not None else None,
            gap_s=parse_duration(query["gap"], "gap") if "gap" in query else 600.0,
        )


def _devices_param(query: MultiMapping[str]) -> tuple[str, ...]:
    return device_ids(query.getall("device", []))


class _Overloaded(Exception):
    """The listener holds more connections than --max-connections."""


class _Aborted(Exception):
    """The client went away: the export thread stops writing."""


class _Handover:
    """Hands chunks from the export thread to the event loop, blocking while the queue is full."""

    def __init__(
        self, queue: asyncio.Queue[bytes], loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        self._queue = queue
        self._loop = loop
        self._stop = stop

    def put(self, chunk: bytes) -> None:
        if self._stop.is_set():
            raise _Aborted
        done = asyncio.run_coroutine_threadsafe(self._queue.put(chunk), self._loop)
        while True:
            try:
                done.result(timeout=0.25)
                return
            except concurrent.futures.TimeoutError:
                # Check now and then whether the response is gone: nobody may drain the queue.
                if self._stop.is_set():
                    done.cancel()
                    raise _Aborted from None


class _ChunkSink(io.RawIOBase):
    """The raw end of the export's TextIO: every block written goes to ``deliver``."""

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self._deliver = deliver
        #: Set once the export is over: writes at close time go nowhere.
        self.discard = False

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        chunk = bytes(data)
        if chunk and not self.discard:
            self._deliver(chunk)
        return len(chunk)


async def _next_chunk(chunks: asyncio.Queue[bytes], producer: asyncio.Future[None]) -> bytes | None:
    """The next chunk of the export; None at its end; raises what the export raised."""
    while True:
        if not chunks.empty():
            return chunks.get_nowait()
        if producer.done():
            producer.result()
            return None
        getter = asyncio.ensure_future(chunks.get())
        waiting: set[asyncio.Future[Any]] = {getter, producer}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()


class _AccessLogger(AbstractAccessLogger):
    """One debug line per request, without the query string (it may carry ?token=)."""

    def log(self, request: Any, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s -> %d in %.1f ms",
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
        )


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text.replace("\n", " ").strip() + "\n")


def _file(path: Path, content_type: str) -> web.FileResponse:
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": CACHE_CONTROL}
    )


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def _decode_json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidParameter("body", f"not valid JSON: {exc}") from None


def _form(body: bytes) -> MultiDict[str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter("body", "a form body must be UTF-8") from None
    return MultiDict(parse_qsl(text, keep_blank_values=True))


def _without_token(params: Mapping[str, str]) -> MultiDict[str]:
    # The token authenticates; it must never end up stored in attrs.
    return MultiDict((k, v) for k, v in params.items() if k != "token")
