"""Fan-out: stored positions to every matching subscriber, without letting one slow down.

Each position is encoded once, however many subscribers get it. Each subscriber has a
bounded queue of encoded positions and its own sender task, which coalesces whatever has
queued while the previous send was in progress into one JSON array frame. When a
subscriber's queue is full it is dropped (closed with 1013 and a reason) instead of
slowing anyone else: that is the slow-subscriber policy documented in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final

from geotrack.schema import Position, SubscribeFilter, encode_batch, encode_position

log = logging.getLogger("geotrack.relay")

#: Close code for a subscriber dropped for falling behind ("try again later").
CLOSE_TOO_SLOW: Final = 1013
#: At most this many positions go into one frame to a subscriber (about 150 KB), which
#: keeps frames under common clients' default message limits (1 MiB in Python websockets).
MAX_FRAME_POSITIONS: Final = 1000

Send = Callable[[bytes], Awaitable[None]]
Close = Callable[[int, str], Coroutine[Any, Any, None]]


class Subscriber:
    """One subscriber's queue and sender."""

    def __init__(self, name: str, flt: SubscribeFilter, send: Send, close: Close, limit: int):
        self.name = name
        self.filter = flt
        self._send = send
        self._close = close
        self._limit = limit
        self._queue: list[bytes] = []
        self._ready = asyncio.Event()
        self.dropped = False
        self.delivered = 0
        self._closing = False
        self._closer: asyncio.Task[None] | None = None

    def push(self, encoded: list[bytes]) -> None:
        """Queue encoded positions; drop the subscriber if that overflows its queue."""
        if self.dropped or self._closing:
            return
        if len(self._queue) + len(encoded) > self._limit:
            self._drop()
            return
        self._queue.extend(encoded)
        self._ready.set()

    def _drop(self) -> None:
        self.dropped = True
        self._queue.clear()
        self._ready.set()
        log.warning("subscriber %s dropped: more than %d positions queued", self.name, self._limit)
        # Close now rather than after the send in progress, which may never finish; the
        # close frame reaches the client after the bytes already handed to the socket.
        self._closer = asyncio.create_task(
            self._close(CLOSE_TOO_SLOW, f"too slow: more than {self._limit} positions queued")
        )

    async def run(self) -> None:
        """Send queued positions until the subscriber is dropped or :meth:`finish` is called."""
        while not self.dropped:
            await self._ready.wait()
            self._ready.clear()
            while self._queue and not self.dropped:
                chunk = self._queue[:MAX_FRAME_POSITIONS]
                del self._queue[:MAX_FRAME_POSITIONS]
                await self._send(encode_batch(chunk))
                self.delivered += len(chunk)
            if self._closing:
                return
        if self._closer is not None:
            await self._closer

    def finish(self) -> None:
        """Send what is queued, then let :meth:`run` return (for shutdown)."""
        self._closing = True
        self._ready.set()

    @property
    def queued(self) -> int:
        """Positions waiting to be sent."""
        return len(self._queue)


class Hub:
    """The set of subscribers, and the one place stored positions are fanned out."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0

    def add(self, subscriber: Subscriber) -> None:
        """Start delivering to a subscriber."""
        self.subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        """Stop delivering to a subscriber."""
        self.subscribers.discard(subscriber)
        if subscriber.dropped:
            self.dropped += 1

    def publish(self, positions: Iterable[Position]) -> None:
        """Deliver stored positions to every subscriber whose filter matches."""
        if not self.subscribers:
            return
        items = [(p, encode_position(p)) for p in positions]
        if not items:
            return
        everything = [encoded for _, encoded in items]
        for subscriber in self.subscribers:
            flt = subscriber.filter
            if flt.everything:
                subscriber.push(everything)
            else:
                matching = [encoded for p, encoded in items if flt.matches(p)]
                if matching:
                    subscriber.push(matching)
