"""Fan-out: stored positions to every matching subscriber, without letting one slow down.

Each position is encoded once, however many subscribers get it, and each commit's positions
become one JSON array frame, built once for all the subscribers that take everything and
written straight to each one's connection. A subscriber whose connection does not keep up
(its transport's write buffer is full) gets a bounded queue instead, which its sender
drains into array frames as the connection takes them. When that queue is full the
subscriber is dropped (closed with 1013 and a reason) instead of slowing anyone else: that
is the slow-subscriber policy documented in docs/protocol.md.

A subscriber that asked for ``since`` starts *holding*: live positions are kept aside
while the store replays what was stored since then, and released once the replay has
caught up. Positions seen by both paths are sent once: each path checks the other's keys
(device, ts), and replayed keys are remembered for :data:`SEAM_WINDOW` seconds after the
release, longer than any live push can lag its commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Protocol

from geotrack.schema import Position, SubscribeFilter, encode_batch, encode_position

__all__ = [
    "CLOSE_TOO_SLOW",
    "MAX_FRAME_POSITIONS",
    "SEAM_WINDOW",
    "Hub",
    "Outlet",
    "Subscriber",
    "frames_of",
]

log = logging.getLogger("geotrack.relay")

#: Close code for a subscriber dropped for falling behind ("try again later").
CLOSE_TOO_SLOW: Final = 1013
#: At most this many positions go into one frame to a subscriber (about 150 KB), which
#: keeps frames under common clients' default message limits (1 MiB in Python websockets).
MAX_FRAME_POSITIONS: Final = 1000

#: Seconds a replayed key is remembered to drop the same position arriving live.
SEAM_WINDOW: Final = 5.0

Key = tuple[str, str]
#: Makes one frame of the transport from a payload (a WebSocket text frame).
Framer = Callable[[bytes], bytes]
Close = Callable[[int, str], Coroutine[Any, Any, None]]


class _RecentKeys:
    """Keys seen in the last ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._keys: set[Key] = set()
        self._order: deque[tuple[float, Key]] = deque()

    def add(self, key: Key) -> None:
        now = time.monotonic()
        self._keys.add(key)
        self._order.append((now, key))
        self._expire(now)

    def __contains__(self, key: Key) -> bool:
        self._expire(time.monotonic())
        return key in self._keys

    def _expire(self, now: float) -> None:
        while self._order and self._order[0][0] < now - self._window:
            self._keys.discard(self._order.popleft()[1])

    @property
    def empty(self) -> bool:
        self._expire(time.monotonic())
        return not self._order


class Outlet(Protocol):
    """Where a subscriber's frames go: a WebSocket connection, seen from the fan-out."""

    def writable(self) -> bool:
        """Open, and able to take a write without queuing past its limit."""
        ...

    def write_frames(self, frames: bytes) -> bool:
        """Write ready-made frames; False when the connection is no longer open."""
        ...

    async def wait_writable(self) -> None:
        """Wait until :meth:`writable` (or the connection's end)."""
        ...


class Subscriber:
    """One subscriber's queue and sender.

    Positions are written straight to the connection while it keeps up (its queue is
    empty and its transport takes writes); only a subscriber that is behind has positions
    queued, and :meth:`run` sends those as the transport drains.
    """

    def __init__(
        self,
        name: str,
        flt: SubscribeFilter,
        outlet: Outlet,
        framer: Framer,
        close: Close,
        limit: int,
        hold: bool = False,
    ):
        self.name = name
        self.filter = flt
        self._outlet = outlet
        self._framer = framer
        self._close = close
        self._limit = limit
        self._queue: list[bytes] = []
        self._ready = asyncio.Event()
        self._sent = asyncio.Event()  # set after each frame sent and on drop
        self.dropped = False
        self.delivered = 0
        self._closing = False
        self._gone = False
        self._closer: asyncio.Task[None] | None = None
        # Set while replaying: live positions wait here, by key, in arrival order.
        self._held: dict[Key, bytes] | None = {} if hold else None
        self._replayed = _RecentKeys(SEAM_WINDOW) if hold else None

    @property
    def keyed(self) -> bool:
        """Whether pushes need keys (during a replay and for a while after it)."""
        if self._replayed is not None and self._held is None and self._replayed.empty:
            self._replayed = None  # the seam is long past
        return self._replayed is not None

    def push_keyed(self, items: list[tuple[Key, bytes]]) -> None:
        """Queue live positions, leaving out those the replay already sent."""
        replayed = self._replayed
        fresh = [(k, e) for k, e in items if replayed is None or k not in replayed]
        if self._held is None:
            if fresh:
                self.push([e for _, e in fresh])
            return
        if self.dropped:
            return
        self._held.update(fresh)
        if len(self._held) + len(self._queue) > self._limit:
            self._drop()

    def replay(self, items: list[tuple[Key, bytes]]) -> None:
        """Queue positions replayed from the store (oldest first)."""
        if self.dropped or self._replayed is None:
            return
        for key, _ in items:
            self._replayed.add(key)
            if self._held is not None:
                self._held.pop(key, None)
        if items:
            self.push([e for _, e in items])

    def release(self) -> None:
        """The replay has caught up: send the live positions held meanwhile, then go live."""
        held, self._held = self._held, None
        if held:
            self.push(list(held.values()))

    async def room(self) -> None:
        """Wait until the queue is at most half full (a replay's pace)."""
        while len(self._queue) > self._limit // 2 and not self.dropped and not self._gone:
            self._sent.clear()
            await self._sent.wait()

    def push(self, encoded: list[bytes], frames: bytes | None = None) -> None:
        """Send encoded positions, or queue them while the subscriber is behind.

        ``frames`` is the same positions already framed (shared by every subscriber that
        gets all of them). A push that overflows the queue drops the subscriber.
        """
        if self.dropped or self._closing or self._gone:
            return
        if not self._queue and self._outlet.writable():
            if frames is None:
                frames = self._frames(encoded)
            if self._outlet.write_frames(frames):
                self.delivered += len(encoded)
            return
        if len(self._queue) + len(encoded) > self._limit:
            self._drop()
            return
        self._queue.extend(encoded)
        self._ready.set()

    def _frames(self, encoded: list[bytes]) -> bytes:
        return frames_of(encoded, self._framer)

    def _drop(self) -> None:
        self.dropped = True
        self._queue.clear()
        self._ready.set()
        self._sent.set()
        log.warning("subscriber %s dropped: more than %d positions queued", self.name, self._limit)
        # Close now rather than after the send in progress, which may never finish; the
        # close frame reaches the client after the bytes already handed to the socket.
        self._closer = asyncio.create_task(
            self._close(CLOSE_TOO_SLOW, f"too slow: more than {self._limit} positions queued")
        )

    async def run(self) -> None:
        """Send what queues up until the subscriber is dropped, gone, or :meth:`finish` ed."""
        while not self.dropped and not self._gone:
            await self._ready.wait()
            self._ready.clear()
            while self._queue and not self.dropped and not self._gone:
                await self._outlet.wait_writable()
                if self.dropped or self._gone:
                    break
                chunk = self._queue[:MAX_FRAME_POSITIONS]
                del self._queue[:MAX_FRAME_POSITIONS]
                if self._outlet.write_frames(self._framer(encode_batch(chunk))):
                    self.delivered += len(chunk)
                self._sent.set()
            if self._closing:
                return
        if self._closer is not None:
            await self._closer

    def finish(self) -> None:
        """Send what is queued, then let :meth:`run` return (for shutdown)."""
        self._closing = True
        self._ready.set()

    def disconnected(self) -> None:
        """The connection is gone: forget what is queued and let :meth:`run` return."""
        self._gone = True
        self._queue.clear()
        self._ready.set()
        self._sent.set()

    @property
    def queued(self) -> int:
        """Positions waiting to be sent."""
        return len(self._queue)


def frames_of(encoded: list[bytes], framer: Framer) -> bytes:
    """Encoded positions as array frames of at most MAX_FRAME_POSITIONS, back to back."""
    if len(encoded) <= MAX_FRAME_POSITIONS:
        return framer(encode_batch(encoded))
    return b"".join(
        framer(encode_batch(encoded[i : i + MAX_FRAME_POSITIONS]))
        for i in range(0, len(encoded), MAX_FRAME_POSITIONS)
    )


class Hub:
    """The set of subscribers, and the one place stored positions are fanned out."""

    def __init__(self, framer: Framer) -> None:
        self._framer = framer
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0
        #: Called after every publish (new positions are stored): wakes the HTTP feeds.
        self.watchers: list[Callable[[], None]] = []

    def add(self, subscriber: Subscriber) -> None:
        """Start delivering to a subscriber."""
        self.subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        """Stop delivering to a subscriber; it counts as dropped once, however often removed."""
        if subscriber not in self.subscribers:
            return
        self.subscribers.discard(subscriber)
        if subscriber.dropped:
            self.dropped += 1

    def publish(self, positions: Iterable[Position]) -> None:
        """Deliver stored positions to every subscriber whose filter matches."""
        for watcher in self.watchers:
            watcher()
        if not self.subscribers:
            return
        items = [(p, encode_position(p)) for p in positions]
        if items:
            self._deliver([encoded for _, encoded in items], lambda: items)

    def publish_encoded(self, encoded: list[bytes], decode: Callable[[], list[Position]]) -> None:
        """:meth:`publish` of positions already in their wire form (a sibling worker's
        hand-over): ``decode`` gives them as Positions, called only when a subscriber's
        filter needs them."""
        for watcher in self.watchers:
            watcher()
        if self.subscribers and encoded:
            self._deliver(encoded, lambda: list(zip(decode(), encoded, strict=True)))

    def _deliver(
        self, everything: list[bytes], pairs: Callable[[], list[tuple[Position, bytes]]]
    ) -> None:
        # Built once for every subscriber that gets everything, when one is first ready.
        shared: bytes | None = None
        items: list[tuple[Position, bytes]] | None = None
        for subscriber in self.subscribers:
            flt = subscriber.filter
            if not subscriber.keyed and flt.everything:
                if shared is None:
                    shared = frames_of(everything, self._framer)
                subscriber.push(everything, shared)
                continue
            if items is None:
                items = pairs()
            if subscriber.keyed:
                subscriber.push_keyed([(p.key, e) for p, e in items if flt.matches(p)])
            else:
                matching = [encoded for p, encoded in items if flt.matches(p)]
                if matching:
                    subscriber.push(matching)
