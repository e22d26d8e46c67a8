"""Clients of a relay: a publisher that keeps every frame until it is acked, and a subscriber.

Both survive a lost connection: they reconnect with capped exponential backoff and full
jitter. The publisher then resends every frame not yet acked (the relay's dedupe on device
and time makes that safe: at-least-once sending, exactly-once storage); the subscriber
resubscribes with ``since`` and drops what it already had. Frames are built and parsed by
:mod:`geotrack.schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from geotrack._text import plural
from geotrack.errors import FrameError, RelayError
from geotrack.schema import (
    Ack,
    BBox,
    Position,
    decode_ack,
    decode_positions,
    encode_batch,
    encode_position,
)

__all__ = [
    "Backoff",
    "PermanentRelayError",
    "PublishStats",
    "Publisher",
    "RelayUnreachable",
    "endpoint",
    "subscribe",
]

log = logging.getLogger("geotrack.client")

#: Close codes after which resending the same frames cannot help.
_PERMANENT_CLOSE: Final = {1002, 1003, 1007, 1008, 1009}


class PermanentRelayError(RelayError):
    """The relay refused in a way retrying cannot fix (bad URL, 4xx handshake, bad frame)."""


class RelayUnreachable(RelayError):
    """Nothing answered at the relay's address (refused, no route, timed out): maybe not yet."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach relay at {url}: {reason}")


def endpoint(url: str, path: str, query: dict[str, list[str]] | None = None) -> str:
    """The URL of a relay endpoint: ``ws://host:port`` plus ``/publish`` or ``/subscribe``.

    A URL that already ends in the endpoint's path is kept as it is; ``query`` replaces the
    URL's own query, except its ``token``, which is kept.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise PermanentRelayError(f"relay URL must start with ws:// or wss://, got {url!r}")
    base = parts.path.rstrip("/")
    if not base.endswith(path):
        base += path
    q = parts.query
    if query:
        q = "&".join(x for x in (urlencode(query, doseq=True), _token_part(parts.query)) if x)
    return urlunsplit((parts.scheme, parts.netloc, base, q, ""))


def _token_part(query: str) -> str:
    return "&".join(p for p in query.split("&") if p.startswith("token="))


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with full jitter: delay n is uniform in [0, min(cap, base·2ⁿ)].

    ``give_up_after`` bounds the time spent retrying one outage (None: never give up).
    """

    base: float = 0.25
    cap: float = 30.0
    give_up_after: float | None = 300.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


async def _open(
    url: str,
    ssl_context: ssl.SSLContext | None,
    open_timeout: float,
    token: str | None = None,
) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return await connect(
            url,
            ssl=ssl_context,
            open_timeout=open_timeout,
            compression=None,
            max_size=None if "/subscribe" in url else 1 << 20,
            additional_headers=headers,
        )
    except InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        message = f"{_redact(url)} refused the connection: HTTP {exc.response.status_code}" + (
            f": {body}" if body else ""
        )
        if 400 <= exc.response.status_code < 500:
            raise PermanentRelayError(message) from None
        raise RelayError(message) from None
    except InvalidURI as exc:
        raise PermanentRelayError(f"bad relay URL {_redact(url)!r}: {exc}") from None
    except TimeoutError:
        raise RelayUnreachable(_redact(url), f"no answer within {open_timeout:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        reason = await _certificate_problem(url, exc, ssl_context)
        raise PermanentRelayError(f"cannot reach relay at {_redact(url)}: {reason}") from None
    except OSError as exc:
        # The errno's own words: asyncio says "Connect call failed ('127.0.0.1', 1)" where
        # uvloop and the C library say "Connection refused".
        errno = None if isinstance(exc, socket.gaierror) else exc.errno
        reason = (os.strerror(errno) if errno and errno > 0 else exc.strerror) or str(exc)
        raise RelayUnreachable(_redact(url), reason or type(exc).__name__) from None
    except WebSocketException as exc:
        raise RelayError(f"cannot open a WebSocket to {_redact(url)}: {exc}") from None


# OpenSSL's X509_V_ERR_* codes that need their own advice.
_UNTRUSTED: Final = {18, 19, 20, 21}  # self-signed leaf or chain, unknown issuer
_EXPIRED: Final = 10
_NOT_YET_VALID: Final = 9
_NAME_MISMATCH: Final = {62, 64}  # hostname, IP address


async def _certificate_problem(
    url: str, exc: ssl.SSLCertVerificationError, context: ssl.SSLContext | None
) -> str:
    """What is wrong with the relay's certificate, and what would fix it, in one phrase."""
    code, message = exc.verify_code, exc.verify_message
    host = urlsplit(url).hostname or "?"
    if code in _NAME_MISMATCH:
        names = await _certificate_names(url, context)
        issued = f"is for {', '.join(names)}" if names else "does not name it"
        return (
            f"the certificate {issued}, not {host} "
            "(connect by a name the certificate has, or issue one for this name)"
        )
    if code in _UNTRUSTED:
        return (
            f"certificate not trusted ({message}): give the CA that signed it with --cafile "
            "or SSL_CERT_FILE"
        )
    if code == _EXPIRED:
        return "the relay's certificate has expired: renew it"
    if code == _NOT_YET_VALID:
        return "the relay's certificate is not valid yet (check the clocks here and there)"
    return f"certificate refused ({message})"


async def _certificate_names(url: str, context: ssl.SSLContext | None) -> list[str]:
    """The names the relay's certificate is for, read by a handshake that skips the name check.

    The chain is still verified against the CAs ``context`` trusts, so what comes back is
    the certificate the failed connection saw. Empty when it cannot be read.
    """
    parts = urlsplit(url)
    probe = ssl.create_default_context()
    probe.check_hostname = False
    if context is not None:
        cas = context.get_ca_certs(binary_form=True)
        if cas:
            probe.load_verify_locations(cadata=b"".join(cas))
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 443, ssl=probe), 5
        )
    except (OSError, TimeoutError):
        return []
    try:
        cert = writer.get_extra_info("peercert") or {}
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    names = [value for _kind, value in cert.get("subjectAltName", ())]
    if not names:
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return [str(n) for n in names]


def _redact(url: str) -> str:
    """The URL without its token, for messages."""
    parts = urlsplit(url)
    query = "&".join(
        "token=…" if p.startswith("token=") else p for p in parts.query.split("&") if p
    )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


@dataclass(slots=True)
class PublishStats:
    """What a publisher has sent and what the relay answered."""

    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    #: Rejections counted but not kept in ``rejections`` (it holds the first few only).
    more_rejections: int = 0

    @property
    def acked(self) -> int:
        return self.stored + self.duplicates + self.rejected


@dataclass(slots=True)
class _Frame:
    positions: Sequence[Position]
    data: bytes
    future: asyncio.Future[Ack]


class Publisher:
    """Publishes frames of positions to a relay's ``/publish`` and collects the acks.

    Up to ``window`` frames may be unacknowledged at once (pipelining); :meth:`send` waits
    for room. Every frame is kept until its ack arrives. When the connection is lost, the
    publisher reconnects (``backoff``; None turns that off) and resends every frame still
    unacknowledged, in order, before anything new (``reconnect=False`` fails instead). The
    first connection is retried only when :meth:`connect` is asked to wait.
    """

    def __init__(
        self,
        url: str,
        *,
        window: int = 32,
        open_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        keep_rejections: int = 20,
    ) -> None:
        self.url = endpoint(url, "/publish")
        self.window = window
        self.open_timeout = open_timeout
        self.ssl_context = ssl_context
        self.token = token
        self.reconnect = reconnect
        self.backoff = backoff if backoff is not None else Backoff()
        self.stats = PublishStats()
        self.reconnects = 0
        self._keep_rejections = keep_rejections
        self._ws: ClientConnection | None = None
        self._inflight: deque[_Frame] = deque()
        self._room = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._failure: RelayError | None = None
        self._closing = False

    async def connect(
        self, *, wait: bool = False, on_wait: Callable[[RelayUnreachable], None] | None = None
    ) -> None:
        """Open the connection. Raises RelayError when the relay can't be reached.

        With ``wait``, a relay that does not answer yet (connection refused, no answer) is
        tried again with ``backoff`` for up to its ``give_up_after``, and ``on_wait`` hears
        of the first failure. A refusal that retrying cannot fix (a bad URL, a 4xx
        handshake, a certificate) fails at once either way.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                ws = await _open(self.url, self.ssl_context, self.open_timeout, self.token)
            except RelayUnreachable as exc:
                if not wait:
                    raise
                waited = time.monotonic() - started
                limit = self.backoff.give_up_after
                if limit is not None and waited >= limit:
                    raise RelayError(f"{exc}; gave up waiting after {waited:.0f} s") from None
                if attempt == 0 and on_wait is not None:
                    on_wait(exc)
                delay = self.backoff.delay(attempt)
                if limit is not None:
                    delay = min(delay, limit - waited)
                await asyncio.sleep(delay)
                attempt += 1
            else:
                break
        self._attach(ws)

    def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._reader = asyncio.create_task(self._read_acks(ws))

    async def send(self, positions: Sequence[Position]) -> asyncio.Future[Ack]:
        """Send one frame; the returned future gives its ack."""
        if self._ws is None:
            raise RelayError("the publisher is not connected")
        async with self._room:
            await self._room.wait_for(
                lambda: (
                    (len(self._inflight) < self.window and self._reconnecting is None)
                    or self._failure is not None
                )
            )
        self._raise_failure()
        data = encode_batch(encode_position(p) for p in positions)
        frame = _Frame(positions, data, asyncio.get_running_loop().create_future())
        self._inflight.append(frame)
        self.stats.sent += len(positions)
        ws = self._ws
        try:
            await ws.send(data, text=True)
        except ConnectionClosed:
            self._lost(ws)  # the frame is in flight: the reconnect resends it
        return frame.future

    async def flush(self) -> None:
        """Wait until every sent frame is acked (across reconnects)."""
        async with self._room:
            await self._room.wait_for(lambda: not self._inflight or self._failure is not None)
        self._raise_failure()

    async def close(self) -> None:
        """Close the connection (after :meth:`flush`, to keep nothing unacknowledged)."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    @property
    def unacked(self) -> list[Position]:
        """Positions sent but not acknowledged, in order: what a resend must repeat."""
        return [p for frame in self._inflight for p in frame.positions]

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.flush()
        await self.close()

    async def _read_acks(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if not self._inflight:
                    self._fail(PermanentRelayError("the relay sent an answer to no frame"))
                    return
                frame = self._inflight.popleft()
                try:
                    ack = decode_ack(message)
                except FrameError as exc:
                    self.stats.rejected += len(frame.positions)
                    self.stats.errors.append(str(exc))
                    ack = Ack(0, 0, [])
                except ValueError as exc:
                    self._fail(
                        PermanentRelayError(f"the relay sent something that is not an ack: {exc}")
                    )
                    return
                else:
                    self._count(frame, ack)
                frame.future.set_result(ack)
                async with self._room:
                    self._room.notify_all()
        if not self._closing:
            self._lost(ws)

    def _lost(self, ws: ClientConnection) -> None:
        """The connection ``ws`` is gone: reconnect and resend, or fail."""
        if ws is not self._ws or self._reconnecting is not None or self._failure is not None:
            return
        error = self._closed_error(ws)
        if not self.reconnect or ws.close_code in _PERMANENT_CLOSE:
            self._fail(error)
            return
        log.warning("%s; reconnecting", error)
        self._reconnecting = asyncio.create_task(self._reconnect(error))

    async def _reconnect(self, cause: RelayError) -> None:
        backoff = self.backoff
        started = time.monotonic()
        attempt = 0
        try:
            while True:
                await asyncio.sleep(backoff.delay(attempt))
                attempt += 1
                try:
                    ws = await _open(self.url, self.ssl_context, self.open_timeout, self.token)
                except PermanentRelayError as exc:
                    self._fail(exc)
                    return
                except RelayError as exc:
                    waited = time.monotonic() - started
                    if backoff.give_up_after is not None and waited > backoff.give_up_after:
                        self._fail(
                            RelayError(f"{cause}; gave up reconnecting after {waited:.0f} s: {exc}")
                        )
                        return
                    log.info("reconnect attempt %d failed: %s", attempt, exc)
                    continue
                try:
                    # Everything unacknowledged goes again, in order, before anything new.
                    for frame in list(self._inflight):
                        await ws.send(frame.data, text=True)
                except ConnectionClosed:
                    continue
                self.reconnects += 1
                log.info(
                    "reconnected after %.1f s; resent %s",
                    time.monotonic() - started,
                    plural(sum(len(f.positions) for f in self._inflight), "position"),
                )
                self._reconnecting = None
                self._attach(ws)
                async with self._room:
                    self._room.notify_all()
                return
        finally:
            self._reconnecting = None

    def _count(self, frame: _Frame, ack: Ack) -> None:
        self.stats.stored += ack.stored
        self.stats.duplicates += ack.duplicates
        self.stats.rejected += len(ack.rejected)
        for r in ack.rejected:
            if len(self.stats.rejections) >= self._keep_rejections:
                self.stats.more_rejections += 1
            else:
                p = frame.positions[r.index] if r.index < len(frame.positions) else None
                where = f"{p.device} at {p.time}" if p else f"index {r.index}"
                self.stats.rejections.append(f"{where}: {r.error}")

    def _closed_error(self, ws: ClientConnection) -> RelayError:
        code, reason = ws.close_code, ws.close_reason
        pending = sum(len(f.positions) for f in self._inflight)
        what = f"code {code}" + (f": {reason}" if reason else "") if code else "connection lost"
        return RelayError(
            f"the relay closed the connection ({what}); "
            f"{plural(pending, 'position')} unacknowledged"
        )

    def _fail(self, error: RelayError) -> None:
        self._failure = error
        for frame in self._inflight:
            if not frame.future.done():
                frame.future.set_exception(error)
                frame.future.exception()  # retrieved: the caller learns it from flush()

        async def wake() -> None:
            async with self._room:
                self._room.notify_all()

        asyncio.get_running_loop().create_task(wake())

    def _raise_failure(self, error: RelayError | None = None) -> None:
        if error is not None and self._failure is None:
            self._failure = error
        if self._failure is not None:
            raise self._failure


async def subscribe(
    url: str,
    devices: Sequence[str] = (),
    bbox: BBox | None = None,
    *,
    since: str | None = None,
    open_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
    reconnect: bool = True,
    backoff: Backoff | None = None,
    margin: float = 5.0,
) -> AsyncIterator[list[Position]]:
    """Yield the batches of positions a relay's ``/subscribe`` sends.

    ``since`` (a time or a store cursor) replays what was stored since then first. When the
    connection is lost, it reconnects (unless ``reconnect`` is false) with ``since`` set to
    when the last frame arrived minus ``margin`` seconds (for clock differences between
    here and the relay), and drops the positions it already yielded, so the caller sees
    every position once. Raises RelayError when it gives up.
    """
    backoff = backoff if backoff is not None else Backoff()
    seen = _Seen(window=margin + 120.0)
    last_frame: float | None = None
    attempt = 0
    outage: float | None = None
    while True:
        query: dict[str, list[str]] = {}
        if devices:
            query["device"] = list(devices)
        if bbox is not None:
            query["bbox"] = [str(bbox)]
        if last_frame is not None:
            query["since"] = [f"{last_frame - margin:.3f}"]
        elif since is not None:
            query["since"] = [since]
        try:
            ws = await _open(endpoint(url, "/subscribe", query), ssl_context, open_timeout, token)
        except PermanentRelayError:
            raise
        except RelayError as exc:
            if outage is None:
                raise  # never connected: most likely a wrong URL
            waited = time.monotonic() - outage
            if backoff.give_up_after is not None and waited > backoff.give_up_after:
                raise RelayError(f"gave up reconnecting after {waited:.0f} s: {exc}") from None
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1
            continue
        attempt, outage = 0, None
        try:
            async for message in ws:
                last_frame = time.time()
                fresh = [p for p in decode_positions(message) if seen.first(p.key)]
                if fresh:
                    yield fresh
        except ConnectionClosed:
            pass
        finally:
            await ws.close()
        if not reconnect or ws.close_code in _PERMANENT_CLOSE:
            return
        outage = time.monotonic()
        last_frame = last_frame if last_frame is not None else time.time()
        log.warning("subscription lost (code %s); resubscribing", ws.close_code)


class _Seen:
    """Keys yielded in the last ``window`` seconds (the overlap a resubscription replays)."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._keys: set[tuple[str, str]] = set()
        self._order: deque[tuple[float, tuple[str, str]]] = deque()

    def first(self, key: tuple[str, str]) -> bool:
        """Record ``key``; True unless it was seen within the window."""
        now = time.monotonic()
        while self._order and self._order[0][0] < now - self._window:
            self._keys.discard(self._order.popleft()[1])
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append((now, key))
        return True
