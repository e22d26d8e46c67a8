"""The WebSocket relay: the coordinator of its publishers, subscribers and store.

This module holds the relay's lifecycle (bind, stop), the opening handshake, its counters
and the one path into the store (:meth:`Relay.submit`). Everything else has its own
module: settings in :mod:`~geotrack.relay.config`, policies shared with HTTP in
:mod:`~geotrack.relay.access`, the publisher side in :mod:`~geotrack.relay.publishers`,
the subscriber side in :mod:`~geotrack.relay.subscribers`, durable writes in
:mod:`~geotrack.relay.ingest`, delivery in :mod:`~geotrack.relay.fanout`. The wire
contract it implements is docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Origin

from geotrack.auth import Grant
from geotrack.errors import InvalidParameter, RelayError, StoreError
from geotrack.relay.access import (
    RefusalLog,
    Refused,
    authorize,
    bind_error,
    check_parameters,
    device_ids,
    restrict_filter,
    watch_tls_failures,
)
from geotrack.relay.config import RelayConfig
from geotrack.relay.events import EventSubscriptions
from geotrack.relay.fanout import Hub
from geotrack.relay.ingest import GroupCommitter
from geotrack.relay.metrics import Histogram
from geotrack.relay.publishers import CLOSE_STORE_FAILED, Pending, Publishers
from geotrack.relay.subscribers import Subscriptions
from geotrack.relay.wsconn import RelayConnection, peer_name, text_frame
from geotrack.schema import (
    Ack,
    Position,
    Rejection,
    SubscribeFilter,
    literal_role,
    parse_time,
)
from geotrack.store import Change, ChangeFeed, Store

__all__ = ["Counters", "Relay", "RelayConfig", "TransportCounters"]

log = logging.getLogger("geotrack.relay")


@dataclass(slots=True)
class TransportCounters:
    """Positions one transport brought in."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(slots=True)
class Counters:
    """What the relay has done since it started."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    frame_errors: int = 0
    delivered: int = 0
    from_peers: int = 0
    by_transport: dict[str, TransportCounters] = field(default_factory=dict)
    #: Seconds from a frame's arrival to its ack being ready (committed), all transports.
    ack_latency: Histogram = field(default_factory=Histogram)

    def transport(self, name: str) -> TransportCounters:
        """The counters of one transport (``websocket``, ``http``, ...), created on first use."""
        counts = self.by_transport.get(name)
        if counts is None:
            counts = self.by_transport[name] = TransportCounters()
        return counts

    def snapshot(self) -> tuple[int, ...]:
        return (self.stored, self.duplicates, self.rejected, self.delivered, self.from_peers)


@dataclass(slots=True)
class _Admission:
    """What the handshake established, for the connection handler."""

    grant: Grant | None
    filter: SubscribeFilter | None = None
    since: str | int | None = None


class Relay:
    """A relay bound to one store. Use ``async with Relay(...)`` or start()/stop().

    To run one with its HTTP listener until SIGINT/SIGTERM, as ``geotrack serve`` does,
    use :func:`geotrack.relay.runner.serve`.
    """

    def __init__(self, store: Store, config: RelayConfig | None = None) -> None:
        self.store = store
        self.config = config or RelayConfig()
        #: Written with every stored position, so peers' feeds can tell our writes apart.
        self.id = f"relay-{uuid.uuid4().hex[:12]}"
        self.counters = Counters()
        self.hub = Hub(text_frame)
        #: Called after each commit with the positions it newly stored, after the fan-out
        #: (``--mqtt-publish`` forwards them); an exception is logged, not raised.
        self.stored_hooks: list[Callable[[list[Position]], None]] = []
        #: Called with the positions other relays on the store stored, as the follower
        #: reads them (the fence engine evaluates those too); exceptions are logged.
        self.peer_hooks: list[Callable[[list[Position]], None]] = []
        #: Set by serve --workers on SQLite (relay/handoff.py): what the follower reads goes
        #: here, with the feed's cursor after it, instead of straight to the subscribers.
        self.peer_order: Callable[[list[Change], str], None] | None = None
        #: The follower's cursor after the last read it handed on (everything up to it is
        #: delivered); None before start.
        self.peer_cursor: str | None = None
        #: WebSocket /events: geofence events from the store (relay/events.py).
        self.events = EventSubscriptions(self)
        #: Refused handshakes and requests (both transports), logged at a bounded rate.
        self.refusals = RefusalLog(log, self.config.refusals_logged, self.config.refusal_interval)
        # One commit's new positions all go to every subscriber at once: a commit larger
        # than a subscriber's queue would drop even a subscriber that keeps up.
        self._committer = GroupCommitter(
            store,
            self.id,
            self._fan_out,
            max_rows=max(1, min(20_000, self.config.subscriber_queue // 2)),
        )
        self._publishers = Publishers(self)
        self._subscriptions = Subscriptions(self)
        self._server: Server | None = None
        self._connected = 0  # connections past their handshake, until their handler ends
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        self._follow_executor = ThreadPoolExecutor(1, thread_name_prefix="geotrack-follow")
        self._feed: ChangeFeed | None = None  # the follower's, while started
        # Weak: a handshake admitted here can still fail afterwards (no Upgrade header, a
        # refused Origin, the client gone before the handler runs), and then no handler
        # ever pops its entry.
        self._admissions: weakref.WeakKeyDictionary[ServerConnection, _Admission] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None:
            raise RelayError("the relay is not started")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The base ws:// URL clients connect to."""
        host = self.config.host
        scheme = "wss" if self.config.ssl is not None else "ws"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has begun."""
        return self._stopping

    async def start(self) -> None:
        """Bind, start the writer and the peer follower. Raises RelayError if it can't bind."""
        feed = await asyncio.get_running_loop().run_in_executor(
            self._follow_executor, lambda: self.store.follow(exclude_origin=self.id)
        )
        self._committer.start()
        tls = self.config.ssl
        if tls is not None:
            watch_tls_failures(tls, self.refusals)

        class Connection(RelayConnection):
            refusals = self.refusals
            handshake_timeout = self.config.handshake_timeout

        try:
            self._server = await serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                process_response=self._process_response,
                max_size=self.config.max_frame,
                open_timeout=self.config.handshake_timeout,
                ssl=tls,
                origins=(
                    [None, *(Origin(o) for o in self.config.allow_origins)]
                    if self.config.allow_origins is not None
                    else None
                ),
                # Positions are small and frequent: deflate would cost more CPU than it saves.
                compression=None,
                server_header="geotrack",
                # asyncio's default of 100 loses handshakes when many clients reconnect at
                # once (after a relay restart); Node's default is 511.
                backlog=self.config.backlog,
                # serve --workers: every worker binds the port (the kernel spreads clients).
                reuse_port=self.config.reuse_port or None,
                create_connection=Connection,
            )
        except OSError as exc:
            await self._committer.close()
            feed.close()
            raise bind_error(exc, self.config.host, self.config.port) from None
        self._feed = feed
        self.peer_cursor = feed.cursor
        self._tasks.append(asyncio.create_task(self._follow_peers(feed), name="geotrack-follow"))
        if self.config.stats_interval > 0:
            self._tasks.append(asyncio.create_task(self._report(), name="geotrack-stats"))

    async def stop(self) -> None:
        """Stop accepting, commit and ack what is in flight, close clients with 1001."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self._server is not None:
            self._server.close(close_connections=False)
        # No more frames are read; frames already read are committed and acked.
        self._publishers.stop_reading()
        await self._committer.close()
        for subscriber in list(self.hub.subscribers):
            subscriber.finish()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=15)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._follow_executor.shutdown(wait=True)
        self.refusals.flush()
        self._stopped.set()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handshake -------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        role = literal_role(parts.path)
        if role is None and parts.path != "/events":
            return _text_response(
                connection,
                HTTPStatus.NOT_FOUND,
                f"no such endpoint {parts.path[:100]!r}: use /publish or /subscribe (or /events)\n",
            )
        if self._stopping:
            return _text_response(
                connection, HTTPStatus.SERVICE_UNAVAILABLE, "relay shutting down\n"
            )
        # Counted, not listed: websockets' Server.connections builds a set of every open
        # connection, which made each handshake O(connections) (10,000 took a minute).
        if self._connected + len(self._admissions) >= self.config.max_connections:
            return _text_response(
                connection, HTTPStatus.SERVICE_UNAVAILABLE, "too many connections, retry later\n"
            )
        if role is None:  # /events
            return self.events.admit(connection, request, parts.query, _text_response)
        query = parse_qs(parts.query, keep_blank_values=True)
        try:
            grant = authorize(self.config.tokens, request.headers, query, role)
        except Refused as refused:
            response = _text_response(connection, HTTPStatus(refused.status), refused.reason)
            for challenge in refused.challenges:
                response.headers["WWW-Authenticate"] = challenge
            return response
        admission = _Admission(grant)
        try:
            check_parameters("/" + role, query)
            query.pop("token", None)
            if role == "subscribe":
                since = query.pop("since", [])
                device_ids(query.get("device", ()))
                admission.filter = restrict_filter(
                    grant, SubscribeFilter.from_query(query, others=())
                )
                if len(since) > 1:
                    raise InvalidParameter("since", "give it at most once")
                if since:
                    admission.since = self._parse_since(since[0])
        except InvalidParameter as exc:
            return _text_response(connection, HTTPStatus.BAD_REQUEST, f"{exc}\n")
        except Refused as refused:  # a share link asking for a device it does not show
            return _text_response(connection, HTTPStatus(refused.status), refused.reason)
        self._admissions[connection] = admission
        return None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """Log every refused handshake: ours above, and websockets' own (400, 403 origin)."""
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            # Admitted above but refused after (a bad Origin, no Upgrade): no longer held.
            self._admissions.pop(connection, None)
            # The body is ours or websockets' and never holds a token; the request's path
            # (its query string may) is not logged.
            reason = response.body.decode(errors="replace").strip().split("\n")[0][:200]
            self.refusals.refused(peer_name(connection), response.status_code, reason)

    def _parse_since(self, text: str) -> str | int:
        if self.store.is_cursor(text):
            return text
        return parse_time(text, time.time_ns() // 1_000_000, "since")

    async def _handle(self, ws: ServerConnection) -> None:
        events = self.events.take(ws)
        if events is not None and isinstance(ws, RelayConnection):
            self._connected += 1
            try:
                await self.events.serve(ws, peer_name(ws), events)
            finally:
                self._connected -= 1
            return
        admission = self._admissions.pop(ws, None)
        if admission is None or not isinstance(ws, RelayConnection):  # cannot happen
            await ws.close(CLOSE_STORE_FAILED, "internal error")
            return
        self._connected += 1
        try:
            # The handshake's headers are not looked at again: with 10,000 connections
            # they would hold ~30 MB.
            if ws.request is not None:
                ws.request.headers = Headers()
            if ws.response is not None:
                ws.response.headers = Headers()
            peer = peer_name(ws)
            if admission.filter is None:
                await self._publishers.serve(ws, peer, admission.grant)
            else:
                await self._subscriptions.serve(
                    ws, peer, admission.filter, admission.since, admission.grant
                )
        finally:
            self._connected -= 1

    # -- the one path into the store -------------------------------------------------

    def enqueue(
        self, positions: list[Position], rejected: list[Rejection], transport: str
    ) -> Pending | None:
        """Count rejections and queue positions for the next commit (None when none)."""
        counts = self.counters.transport(transport)
        counts.rejected += len(rejected)
        self.counters.rejected += len(rejected)
        if not positions:
            return None
        loop = asyncio.get_running_loop()
        return Pending(self._committer.submit(positions), rejected, counts, loop.time())

    def settle(self, pending: Pending, flags: list[bool]) -> Ack:
        """Count a committed frame and build its ack."""
        self.counters.ack_latency.observe(asyncio.get_running_loop().time() - pending.started)
        stored = sum(flags)
        duplicates = len(flags) - stored
        self.counters.stored += stored
        self.counters.duplicates += duplicates
        pending.counts.stored += stored
        pending.counts.duplicates += duplicates
        return Ack(stored, duplicates, pending.rejected)

    def submit(
        self, positions: list[Position], rejected: list[Rejection], transport: str
    ) -> asyncio.Future[Ack]:
        """Store positions the way a publish frame is stored; the future gives its Ack.

        This is the one path into the store for every transport (``transport`` names it in
        the counters): dedupe, group commit and fan-out are the same whatever carried the
        positions. The future raises StoreError when the write failed; nothing is then
        acked, and the sender must retry.
        """
        pending = self.enqueue(positions, rejected, transport)
        if pending is None:
            done: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            done.set_result(Ack(0, 0, rejected))
            return done

        async def ack(pending: Pending) -> Ack:
            await asyncio.shield(pending.slot.batch.committed)
            return self.settle(pending, pending.slot.flags())

        return asyncio.ensure_future(ack(pending))

    def _fan_out(self, positions: list[Position]) -> None:
        self.hub.publish(positions)
        for hook in self.stored_hooks:
            try:
                hook(positions)
            except Exception:
                log.exception("a stored-positions hook failed")

    @property
    def follower_feed(self) -> ChangeFeed | None:
        """The change feed that follows what other relays store (None before start)."""
        return self._feed

    async def _follow_peers(self, feed: ChangeFeed) -> None:
        """Deliver what other relays sharing the store stored (scale-out)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    changes = await loop.run_in_executor(
                        self._follow_executor, feed.poll, self.config.follow_interval
                    )
                except StoreError as exc:
                    log.error("following the store failed: %s; retrying in 1 s", exc)
                    await asyncio.sleep(1)
                    continue
                cursor = feed.cursor
                if self.peer_order is not None:
                    self.peer_order(changes, cursor)
                elif changes:
                    self.deliver_peers([c.position for c in changes])
                self.peer_cursor = cursor
        finally:
            await loop.run_in_executor(self._follow_executor, feed.close)

    def deliver_peers(self, positions: list[Position]) -> None:
        """Deliver positions other relays (or sibling workers) stored."""
        if not positions:
            return
        self.counters.from_peers += len(positions)
        self.hub.publish(positions)
        self._peer_hooks(positions)

    def deliver_peers_encoded(
        self, encoded: list[bytes], decode: Callable[[], list[Position]]
    ) -> None:
        """:meth:`deliver_peers` of positions in their wire form (a sibling's hand-over):
        ``decode`` is called only if a subscriber's filter or a hook needs the positions."""
        if not encoded:
            return
        self.counters.from_peers += len(encoded)
        self.hub.publish_encoded(encoded, decode)
        if self.peer_hooks:
            self._peer_hooks(decode())

    def _peer_hooks(self, positions: list[Position]) -> None:
        for hook in self.peer_hooks:
            try:
                hook(positions)
            except Exception:
                log.exception("a peer-positions hook failed")

    # -- reporting -------------------------------------------------------------------

    @property
    def publishers(self) -> int:
        """Publishers connected now."""
        return len(self._publishers.connected)

    @property
    def subscribers(self) -> int:
        """Subscribers connected now."""
        return len(self.hub.subscribers)

    def population(self) -> str:
        """``N publishers, M subscribers``, for log lines."""
        return f"{self.publishers} publishers, {self.subscribers} subscribers"

    async def _report(self) -> None:
        interval = self.config.stats_interval
        last = self.counters.snapshot()
        while True:
            await asyncio.sleep(interval)
            now = self.counters.snapshot()
            delivered = self.counters.delivered + sum(s.delivered for s in self.hub.subscribers)
            if now == last and not self._publishers.connected:
                continue
            stored, dups, rejected, _, peers = (b - a for a, b in zip(last, now, strict=True))
            log.info(
                "%.0f stored/s, %d duplicates, %d rejected, %d from peers in %.0f s; "
                "%d delivered in total; %s",
                stored / interval,
                dups,
                rejected,
                peers,
                interval,
                delivered,
                self.population(),
            )
            last = now


def _text_response(connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
    response = connection.respond(status, body.rstrip("\n") + "\n")
    response.headers = Headers(
        [(k, v) for k, v in response.headers.raw_items() if k.lower() != "content-type"]
        + [("Content-Type", "text/plain; charset=utf-8")]
    )
    return response
