"""Clients of a relay: a publisher that keeps every frame until it is acked, and a subscriber.

Both are thin: frames are built and parsed by :mod:`geotrack.schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

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

__all__ = ["PublishStats", "Publisher", "endpoint", "subscribe"]


def endpoint(url: str, path: str, query: dict[str, list[str]] | None = None) -> str:
    """The URL of a relay endpoint: ``ws://host:port`` plus ``/publish`` or ``/subscribe``.

    A URL that already ends in the endpoint's path is kept as it is.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise RelayError(f"relay URL must start with ws:// or wss://, got {url!r}")
    base = parts.path.rstrip("/")
    if not base.endswith(path):
        base += path
    q = urlencode(query, doseq=True) if query else parts.query
    return urlunsplit((parts.scheme, parts.netloc, base, q, ""))


async def _open(
    url: str, ssl_context: ssl.SSLContext | None, open_timeout: float
) -> ClientConnection:
    try:
        return await connect(
            url,
            ssl=ssl_context,
            open_timeout=open_timeout,
            compression=None,
            max_size=None if "/subscribe" in url else 1 << 20,
        )
    except InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        raise RelayError(
            f"{url} refused the connection: HTTP {exc.response.status_code}"
            + (f": {body}" if body else "")
        ) from None
    except InvalidURI as exc:
        raise RelayError(f"bad relay URL {url!r}: {exc}") from None
    except TimeoutError:
        raise RelayError(
            f"cannot reach relay at {url}: no answer within {open_timeout:g} s"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RelayError(f"cannot reach relay at {url}: {reason}") from None
    except WebSocketException as exc:
        raise RelayError(f"cannot open a WebSocket to {url}: {exc}") from None


@dataclass(slots=True)
class PublishStats:
    """What a publisher has sent and what the relay answered."""

    sent: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)

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
    for room. Every frame is kept until its ack arrives.
    """

    def __init__(
        self,
        url: str,
        *,
        window: int = 32,
        open_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        keep_rejections: int = 20,
    ) -> None:
        self.url = endpoint(url, "/publish")
        self.window = window
        self.open_timeout = open_timeout
        self.ssl_context = ssl_context
        self.stats = PublishStats()
        self._keep_rejections = keep_rejections
        self._ws: ClientConnection | None = None
        self._inflight: deque[_Frame] = deque()
        self._room = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._failure: RelayError | None = None

    async def connect(self) -> None:
        """Open the connection. Raises RelayError when the relay can't be reached."""
        self._ws = await _open(self.url, self.ssl_context, self.open_timeout)
        self._reader = asyncio.create_task(self._read_acks(self._ws))

    async def send(self, positions: Sequence[Position]) -> asyncio.Future[Ack]:
        """Send one frame; the returned future gives its ack."""
        if self._ws is None:
            raise RelayError("the publisher is not connected")
        async with self._room:
            await self._room.wait_for(
                lambda: len(self._inflight) < self.window or self._failure is not None
            )
        self._raise_failure()
        data = encode_batch(encode_position(p) for p in positions)
        frame = _Frame(positions, data, asyncio.get_running_loop().create_future())
        self._inflight.append(frame)
        self.stats.sent += len(positions)
        try:
            await self._ws.send(data, text=True)
        except ConnectionClosed:
            self._raise_failure(self._closed_error(self._ws))
        return frame.future

    async def flush(self) -> None:
        """Wait until every sent frame is acked."""
        async with self._room:
            await self._room.wait_for(lambda: not self._inflight or self._failure is not None)
        self._raise_failure()

    async def close(self) -> None:
        """Close the connection (after :meth:`flush`, to keep nothing unacknowledged)."""
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
        try:
            async for message in ws:
                if not self._inflight:
                    self._fail(RelayError("the relay sent an answer to no frame"))
                    return
                frame = self._inflight.popleft()
                try:
                    ack = decode_ack(message)
                except FrameError as exc:
                    self.stats.rejected += len(frame.positions)
                    self.stats.errors.append(str(exc))
                    ack = Ack(0, 0, [])
                except ValueError as exc:
                    self._fail(RelayError(f"the relay sent something that is not an ack: {exc}"))
                    return
                else:
                    self._count(frame, ack)
                frame.future.set_result(ack)
                async with self._room:
                    self._room.notify_all()
        except ConnectionClosed:
            pass
        if self._inflight:
            self._fail(self._closed_error(ws))

    def _count(self, frame: _Frame, ack: Ack) -> None:
        self.stats.stored += ack.stored
        self.stats.duplicates += ack.duplicates
        self.stats.rejected += len(ack.rejected)
        for r in ack.rejected:
            if len(self.stats.rejections) < self._keep_rejections:
                p = frame.positions[r.index] if r.index < len(frame.positions) else None
                where = f"{p.device} at {p.time}" if p else f"index {r.index}"
                self.stats.rejections.append(f"{where}: {r.error}")

    def _closed_error(self, ws: ClientConnection) -> RelayError:
        code, reason = ws.close_code, ws.close_reason
        pending = sum(len(f.positions) for f in self._inflight)
        what = f"code {code}" + (f": {reason}" if reason else "") if code else "connection lost"
        return RelayError(
            f"the relay closed the connection ({what}); {pending} positions unacknowledged"
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
    open_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[list[Position]]:
    """Yield the batches of positions a relay's ``/subscribe`` sends, until it closes."""
    query: dict[str, list[str]] = {}
    if devices:
        query["device"] = list(devices)
    if bbox is not None:
        query["bbox"] = [str(bbox)]
    ws = await _open(endpoint(url, "/subscribe", query), ssl_context, open_timeout)
    try:
        async for message in ws:
            yield decode_positions(message)
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
