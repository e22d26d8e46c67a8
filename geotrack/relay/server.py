"""The WebSocket relay: publishers in, subscribers out, everything stored.

This module only moves messages: parsing and validation live in :mod:`geotrack.schema`,
durable writes in :mod:`geotrack.relay.ingest`, delivery in :mod:`geotrack.relay.fanout`.
The wire contract it implements is docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Origin

from geotrack.auth import Grant, Tokens, presented_token
from geotrack.errors import FrameError, InvalidParameter, RelayError, StoreError
from geotrack.relay.fanout import Hub, Subscriber
from geotrack.relay.ingest import GroupCommitter, Slot
from geotrack.relay.metrics import Histogram
from geotrack.relay.wsconn import RelayConnection, text_frame
from geotrack.schema import (
    MAX_BATCH,
    Ack,
    ParsedFrame,
    Position,
    Rejection,
    SubscribeFilter,
    decode_frame,
    encode_ack,
    encode_error,
    encode_position,
    literal_role,
    parse_time,
)
from geotrack.store import ChangeFeed, Store

log = logging.getLogger("geotrack.relay")

CLOSE_GOING_AWAY: Final = 1001
CLOSE_STORE_FAILED: Final = 1011
#: Seconds a client gets to complete a closing handshake before it is cut off.
CLOSE_TIMEOUT: Final = 10.0


@dataclass(slots=True)
class RelayConfig:
    """Settings of a relay; every limit here is documented in docs/protocol.md."""

    host: str = "127.0.0.1"
    port: int = 8765
    #: Largest frame accepted from a client; larger ones close the connection with 1009.
    max_frame: int = 1 << 20
    #: Positions queued for one subscriber before it is dropped as too slow.
    subscriber_queue: int = 10_000
    #: Frames a publisher may have unacknowledged before the relay stops reading from it.
    max_inflight: int = 64
    #: Seconds between rate summaries in the log (0 turns them off).
    stats_interval: float = 10.0
    #: Deliver what other relays sharing the store stored (scale-out); seconds per poll.
    follow_interval: float = 0.5
    #: Most positions in one publish frame (the protocol allows at most 1000).
    max_batch: int = MAX_BATCH
    #: Frames per second one connection may send, sustained (bursts of twice that pass);
    #: a faster sender is read more slowly (TCP backpressure), nothing is dropped.
    max_rate: float = 1000.0
    #: WebSocket connections held at once; handshakes beyond it get HTTP 503.
    max_connections: int = 10_000
    #: Seconds a client has to complete its opening handshake.
    handshake_timeout: float = 10.0
    #: Connections the kernel queues before the relay accepts them.
    backlog: int = 1024
    #: Who may publish and subscribe (``--auth``); None lets anyone do both.
    tokens: Tokens | None = None
    #: TLS settings to serve wss:// (``--certfile``/``--keyfile``).
    ssl: ssl.SSLContext | None = None
    #: Origins browsers may connect from (``--allow-origin``); None allows any. Clients
    #: that send no Origin header (devices, servers) are always allowed.
    allow_origins: tuple[str, ...] | None = None


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
class _Pending:
    """Positions queued for the next commit, and what their ack will need."""

    slot: Slot
    rejected: list[Rejection]
    counts: TransportCounters
    started: float


#: An answer to a publish frame: ready bytes (errors, all-rejected acks) or a pending commit.
_Answer = bytes | _Pending


class _Answers:
    """A publisher's answers in frame order; None marks the end."""

    def __init__(self) -> None:
        self.items: deque[_Answer | None] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, answer: _Answer | None) -> None:
        self.items.append(answer)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Wait until there is at least one answer."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


@dataclass(slots=True)
class _Admission:
    """What the handshake established, for the connection handler."""

    grant: Grant | None
    filter: SubscribeFilter | None = None
    since: str | int | None = None


@dataclass(slots=True, eq=False)
class _Publisher:
    name: str
    ws: RelayConnection
    grant: Grant | None = None
    answers: _Answers = field(default_factory=_Answers)
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.monotonic)
    #: Reading pauses while the publisher has too many frames unanswered (``full``) or
    #: sends faster than its rate (``throttled``). At the end (``reading`` False) frames
    #: are ignored, but the socket is read: the closing handshake needs the client's
    #: close frame.
    reading: bool = True
    full: bool = False
    throttled: bool = False

    def update_reading(self) -> None:
        if self.reading and (self.full or self.throttled):
            self.ws.pause_reading()
        else:
            self.ws.resume_reading()

    def stop_reading(self) -> None:
        """Take no more frames; those taken are still answered."""
        if self.reading:
            self.reading = False
            self.update_reading()
            self.answers.put(None)


class Relay:
    """A relay bound to one store. Use ``async with Relay(...)`` or start()/stop()."""

    def __init__(self, store: Store, config: RelayConfig | None = None) -> None:
        self.store = store
        self.config = config or RelayConfig()
        #: Written with every stored position, so peers' feeds can tell our writes apart.
        self.id = f"relay-{uuid.uuid4().hex[:12]}"
        self.counters = Counters()
        self.hub = Hub(text_frame)
        # One commit's new positions all go to every subscriber at once: a commit larger
        # than a subscriber's queue would drop even a subscriber that keeps up.
        self._committer = GroupCommitter(
            store,
            self.id,
            self._fan_out,
            max_rows=max(1, min(20_000, self.config.subscriber_queue // 2)),
        )
        self._publishers: set[_Publisher] = set()
        self._server: Server | None = None
        self._connected = 0  # connections past their handshake, until their handler ends
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        self._follow_executor = ThreadPoolExecutor(1, thread_name_prefix="geotrack-follow")
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

    async def start(self) -> None:
        """Bind, start the writer and the peer follower. Raises RelayError if it can't bind."""
        feed = await asyncio.get_running_loop().run_in_executor(
            self._follow_executor, lambda: self.store.follow(exclude_origin=self.id)
        )
        self._committer.start()
        try:
            self._server = await serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                max_size=self.config.max_frame,
                open_timeout=self.config.handshake_timeout,
                ssl=self.config.ssl,
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
                create_connection=RelayConnection,
            )
        except OSError as exc:
            await self._committer.close()
            feed.close()
            host, port = self.config.host, self.config.port
            if exc.errno == errno.EADDRINUSE:
                raise RelayError(f"port {port} on {host} is already in use") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise RelayError(f"cannot bind to {host}: no such local address") from None
            if exc.errno == errno.EACCES:
                raise RelayError(f"not allowed to bind to {host}:{port}") from None
            raise RelayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
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
        for publisher in list(self._publishers):
            publisher.stop_reading()
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
        if role is None:
            return _text_response(
                connection,
                HTTPStatus.NOT_FOUND,
                f"no such endpoint {parts.path!r}: use /publish or /subscribe\n",
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
        query = parse_qs(parts.query, keep_blank_values=True)
        grant: Grant | None = None
        tokens = self.config.tokens
        if tokens is not None:
            grant = tokens.check(presented_token(request.headers, query))
            if grant is None:
                response = _text_response(
                    connection,
                    HTTPStatus.UNAUTHORIZED,
                    "a valid token is required: Authorization: Bearer TOKEN, or ?token=TOKEN\n",
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="geotrack"'
                return response
            allowed = grant.may_publish if role == "publish" else grant.may_subscribe
            if not allowed:
                return _text_response(
                    connection, HTTPStatus.FORBIDDEN, f"this token may not {role}\n"
                )
        query.pop("token", None)
        admission = _Admission(grant)
        if role == "subscribe":
            try:
                since = query.pop("since", [])
                admission.filter = SubscribeFilter.from_query(query)
                if len(since) > 1:
                    raise InvalidParameter("since", "give it at most once")
                if since:
                    admission.since = self._parse_since(since[0])
            except InvalidParameter as exc:
                return _text_response(connection, HTTPStatus.BAD_REQUEST, f"{exc}\n")
        elif query:
            return _text_response(
                connection,
                HTTPStatus.BAD_REQUEST,
                "/publish takes no query parameters (but token)\n",
            )
        self._admissions[connection] = admission
        return None

    def _parse_since(self, text: str) -> str | int:
        if self.store.is_cursor(text):
            return text
        return parse_time(text, time.time_ns() // 1_000_000, "since")

    async def _handle(self, ws: ServerConnection) -> None:
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
            peer = _peer(ws)
            if admission.filter is None:
                await self._publish(ws, peer, admission.grant)
            else:
                await self._subscribe(ws, peer, admission.filter, admission.since)
        finally:
            self._connected -= 1

    # -- publishers ------------------------------------------------------------------

    async def _publish(self, ws: RelayConnection, peer: str, grant: Grant | None) -> None:
        publisher = _Publisher(peer, ws, grant)
        self._publishers.add(publisher)
        log.info("publisher %s connected (%s)", peer, self._population())
        # Frames are read in the connection's data callback (no task or future per
        # frame); this handler sends the answers, and ends once the connection is gone
        # (or the relay stops reading) and every frame read has been answered.
        ws.on_lost(lambda: publisher.answers.put(None))
        ws.set_sink(self._reader(publisher))
        try:
            await self._send_answers(publisher)
        finally:
            self._publishers.discard(publisher)
            if self._stopping:
                await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
            log.info(
                "publisher %s disconnected (%s): %d stored, %d duplicates, %d rejected in %.1f s",
                peer,
                _close_text(ws),
                publisher.stored,
                publisher.duplicates,
                publisher.rejected,
                time.monotonic() - publisher.started,
            )

    def _reader(self, publisher: _Publisher) -> Callable[[bytes, bool], None]:
        """The callback that takes a publisher's frames, in order, as they arrive."""
        loop = asyncio.get_running_loop()
        ws, answers = publisher.ws, publisher.answers
        limit = self.config.max_inflight
        # A token bucket: max_rate frames per second, bursts of twice that. A publisher
        # over its rate is not read until it is back within it (TCP backpressure); frames
        # that came in the same read wait in ``held`` meanwhile.
        rate = self.config.max_rate
        burst = max(2 * rate, 1.0)
        allowance = burst
        last = loop.time()
        held: deque[tuple[bytes, bool]] = deque()

        def unthrottle() -> None:
            publisher.throttled = False
            while held and not publisher.throttled and publisher.reading:
                take(*held.popleft())
            publisher.update_reading()

        def on_frame(payload: bytes, text: bool) -> None:
            if not publisher.reading:
                return
            if publisher.throttled:
                held.append((payload, text))
                return
            take(payload, text)

        def take(payload: bytes, text: bool) -> None:
            nonlocal allowance, last
            now = loop.time()
            allowance = min(burst, allowance + (now - last) * rate)
            last = now
            if allowance < 1:
                publisher.throttled = True
                publisher.update_reading()
                held.appendleft((payload, text))
                loop.call_later((1 - allowance) / rate, unthrottle)
                return
            allowance -= 1
            answer: _Answer
            if not text:
                answer = encode_error("binary frames are not accepted: send JSON in text frames")
                self.counters.frame_errors += 1
            else:
                try:
                    message = payload.decode()
                except UnicodeDecodeError as exc:
                    ws.fail(1007, f"{exc.reason} at position {exc.start}")
                    return
                try:
                    answer = self._answer(message, publisher)
                except Exception:  # a bug must cost one frame, not the connection
                    log.exception("publish frame from %s failed", publisher.name)
                    self.counters.frame_errors += 1
                    answer = encode_error("internal error: this frame was not stored")
            answers.put(answer)
            if len(answers.items) >= limit and not publisher.full:
                publisher.full = True
                publisher.update_reading()

        return on_frame

    def _answer(self, message: str, publisher: _Publisher) -> _Answer:
        try:
            frame = decode_frame(message, self.config.max_batch)
        except FrameError as exc:
            self.counters.frame_errors += 1
            return encode_error(str(exc))
        positions, rejected = frame.positions, frame.rejected
        if publisher.grant is not None and publisher.grant.devices:
            positions, rejected = _enforce(publisher.grant, frame)
        publisher.rejected += len(rejected)
        pending = self._enqueue(positions, rejected, "websocket")
        # A future per frame and no task: at tens of thousands of frames a second, tasks
        # would cost more than everything else the relay does with a frame.
        return pending if pending is not None else encode_ack(Ack(0, 0, rejected))

    def _enqueue(
        self, positions: list[Position], rejected: list[Rejection], transport: str
    ) -> _Pending | None:
        """Count rejections and queue positions for the next commit (None when none)."""
        counts = self.counters.transport(transport)
        counts.rejected += len(rejected)
        self.counters.rejected += len(rejected)
        if not positions:
            return None
        loop = asyncio.get_running_loop()
        return _Pending(self._committer.submit(positions), rejected, counts, loop.time())

    def _settle(self, pending: _Pending, flags: list[bool]) -> Ack:
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
        pending = self._enqueue(positions, rejected, transport)
        if pending is None:
            done: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            done.set_result(Ack(0, 0, rejected))
            return done

        async def ack(pending: _Pending) -> Ack:
            await asyncio.shield(pending.slot.batch.committed)
            return self._settle(pending, pending.slot.flags())

        return asyncio.ensure_future(ack(pending))

    async def _send_answers(self, publisher: _Publisher) -> None:
        """Send one answer per frame, in frame order, each once its frame is committed.

        Every answer ready at once goes out in one write: under load a commit settles
        many frames of a publisher together.
        """
        ws, answers = publisher.ws, publisher.answers
        items = answers.items
        limit = self.config.max_inflight
        failed = False
        while True:
            await answers.wait()
            ready: list[bytes] = []
            end = False
            while items:
                answer = items[0]
                if answer is None:
                    end = True
                    break
                if isinstance(answer, bytes):
                    items.popleft()
                    if not failed:
                        ready.append(text_frame(answer))
                    continue
                committed = answer.slot.batch.committed
                if not committed.done():
                    if ready:
                        break  # send what is ready first
                    with contextlib.suppress(StoreError):
                        await asyncio.shield(committed)
                items.popleft()
                try:
                    flags = answer.slot.flags()
                except StoreError as exc:
                    # Never ack what is not stored. Closing tells the publisher to reconnect
                    # and resend everything unacknowledged; dedupe makes the resend safe.
                    if not failed:
                        failed = True
                        log.error("closing publisher %s: store write failed", publisher.name)
                        publisher.stop_reading()
                        ws.write_frames(b"".join(ready))
                        ready = []
                        with contextlib.suppress(ConnectionClosed):
                            await ws.close(
                                CLOSE_STORE_FAILED, _close_reason(f"store write failed: {exc}")
                            )
                    continue
                ack = self._settle(answer, flags)
                publisher.stored += ack.stored
                publisher.duplicates += ack.duplicates
                if not failed:
                    ready.append(_ack_frame(ack))
            if publisher.full and len(items) < limit:
                publisher.full = False
                publisher.update_reading()
            if ready:
                ws.write_frames(b"".join(ready))
                with contextlib.suppress(ConnectionClosed, OSError):
                    await ws.wait_writable()
            if end:
                return

    # -- subscribers -----------------------------------------------------------------

    async def _subscribe(
        self, ws: RelayConnection, peer: str, flt: SubscribeFilter, since: str | int | None
    ) -> None:
        # Nothing a subscriber sends means anything; the connection still reads (pings,
        # the close frame), so its end is noticed.
        ws.set_sink(_ignore)

        async def close(code: int, reason: str) -> None:
            # A client that never reads never takes the close frame either: give it the
            # close timeout, then cut the connection.
            try:
                await asyncio.wait_for(ws.close(code, reason), CLOSE_TIMEOUT)
            except TimeoutError:
                ws.transport.abort()

        subscriber = Subscriber(
            peer,
            flt,
            ws,
            text_frame,
            close,
            self.config.subscriber_queue,
            hold=since is not None,
        )
        ws.on_lost(subscriber.disconnected)
        self.hub.add(subscriber)
        log.info("subscriber %s connected%s (%s)", peer, _describe(flt), self._population())
        try:
            if since is None:
                await subscriber.run()
            else:
                pump = asyncio.create_task(subscriber.run())
                try:
                    await self._replay(subscriber, since)
                except StoreError as exc:
                    log.error("replay for subscriber %s failed: %s", peer, exc)
                    self.hub.remove(subscriber)
                    pump.cancel()
                    await ws.close(CLOSE_STORE_FAILED, _close_reason(f"replay failed: {exc}"))
                    return
                finally:
                    if not pump.done() and self.hub.subscribers.isdisjoint((subscriber,)):
                        pump.cancel()
                await pump
            if self._stopping and not subscriber.dropped:
                await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
        finally:
            self.hub.remove(subscriber)
            self.counters.delivered += subscriber.delivered
            log.info(
                "subscriber %s disconnected (%s): %d delivered",
                peer,
                _close_text(ws),
                subscriber.delivered,
            )

    async def _replay(self, subscriber: Subscriber, since: str | int) -> None:
        """Send what was stored since ``since``, then release the live positions held."""
        loop = asyncio.get_running_loop()
        flt = subscriber.filter
        feed = await asyncio.to_thread(self.store.follow, since, tuple(flt.devices))
        step = max(1, self.config.subscriber_queue // 2)
        try:
            while not subscriber.dropped:
                changes = await loop.run_in_executor(None, feed.poll, 0)
                if not changes:
                    break
                items = [
                    (c.position.key, encode_position(c.position))
                    for c in changes
                    if flt.matches(c.position)
                ]
                for start in range(0, len(items), step):
                    await subscriber.room()
                    subscriber.replay(items[start : start + step])
        finally:
            await asyncio.to_thread(feed.close)
        subscriber.release()

    def _fan_out(self, positions: list[Position]) -> None:
        self.hub.publish(positions)

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
                if changes:
                    self.counters.from_peers += len(changes)
                    self.hub.publish([c.position for c in changes])
        finally:
            await loop.run_in_executor(self._follow_executor, feed.close)

    # -- reporting -------------------------------------------------------------------

    @property
    def publishers(self) -> int:
        """Publishers connected now."""
        return len(self._publishers)

    @property
    def subscribers(self) -> int:
        """Subscribers connected now."""
        return len(self.hub.subscribers)

    def _population(self) -> str:
        return f"{len(self._publishers)} publishers, {len(self.hub.subscribers)} subscribers"

    async def _report(self) -> None:
        interval = self.config.stats_interval
        last = self.counters.snapshot()
        while True:
            await asyncio.sleep(interval)
            now = self.counters.snapshot()
            delivered = self.counters.delivered + sum(s.delivered for s in self.hub.subscribers)
            if now == last and not self._publishers:
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
                self._population(),
            )
            last = now


def _enforce(grant: Grant, frame: ParsedFrame) -> tuple[list[Position], list[Rejection]]:
    """Reject the positions of devices the publisher's token may not publish as."""
    allowed: list[Position] = []
    rejected = list(frame.rejected)
    for index, position in zip(frame.indexes, frame.positions, strict=True):
        if grant.may_publish_as(position.device):
            allowed.append(position)
        else:
            rejected.append(
                Rejection(index, f"device: this token may not publish as {position.device!r}")
            )
    rejected.sort(key=lambda r: r.index)
    return allowed, rejected


_ACK_FRAMES: dict[tuple[int, int], bytes] = {}


def _ack_frame(ack: Ack) -> bytes:
    """The frame of an ack; those without rejections are few and built once each."""
    if ack.rejected:
        return text_frame(encode_ack(ack))
    key = (ack.stored, ack.duplicates)
    frame = _ACK_FRAMES.get(key)
    if frame is None:
        frame = text_frame(encode_ack(ack))
        if len(_ACK_FRAMES) < 4096:
            _ACK_FRAMES[key] = frame
    return frame


def _ignore(payload: bytes, text: bool) -> None:
    """The sink of a subscriber's connection: what a subscriber sends means nothing."""


def _text_response(connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
    response = connection.respond(status, body)
    response.headers = Headers(
        [(k, v) for k, v in response.headers.raw_items() if k.lower() != "content-type"]
        + [("Content-Type", "text/plain; charset=utf-8")]
    )
    return response


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _describe(flt: SubscribeFilter) -> str:
    parts = []
    if flt.devices:
        parts.append("devices " + ",".join(sorted(flt.devices)))
    if flt.bbox is not None:
        parts.append(f"bbox {flt.bbox}")
    return f" [{'; '.join(parts)}]" if parts else ""


def _close_reason(text: str) -> str:
    """``text`` cut to fit a close frame: 123 bytes of UTF-8, never in mid-character.

    Cutting characters is not enough: a store path with non-ASCII letters makes a longer
    reason, and websockets refuses to send it (ProtocolError), so the close never went out.
    """
    return text.encode()[:123].decode(errors="ignore")


def _close_text(ws: ServerConnection) -> str:
    code = ws.close_code
    reason = ws.close_reason
    if code is None:
        return "no close code"
    return f"code {code}{': ' + reason if reason else ''}"
