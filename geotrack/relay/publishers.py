"""The publisher side of the relay: frames in, one answer per frame out, in order.

Frames are read in the connection's data callback (:meth:`Publishers.reader`: no task or
future per frame), paced by a :class:`RateLimiter` and by the number of frames left
unanswered; each frame's answer — an error frame, or a pending commit — goes into the
publisher's :class:`Answers`, which :meth:`Publishers.serve` sends in frame order as the
commits settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from websockets.exceptions import ConnectionClosed

from geotrack.auth import Grant
from geotrack.errors import FrameError
from geotrack.relay.access import enforce_devices
from geotrack.relay.ingest import Batch, Slot
from geotrack.relay.wsconn import RelayConnection, close_text, text_frame
from geotrack.schema import Ack, Rejection, decode_frame, encode_ack, encode_error

if TYPE_CHECKING:
    from geotrack.relay.server import Relay, TransportCounters

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_STORE_FAILED",
    "Answer",
    "Answers",
    "Pending",
    "Publisher",
    "Publishers",
    "RateLimiter",
    "close_reason",
]

log = logging.getLogger("geotrack.relay")

CLOSE_GOING_AWAY: Final = 1001
CLOSE_STORE_FAILED: Final = 1011


class RateLimiter:
    """A token bucket: ``rate`` events per second sustained, bursts of twice that.

    :meth:`take` is called with the time of each event and says how long to wait before
    the event may pass (0.0: at once, and it is counted). The caller decides what waiting
    means: the WebSocket reader stops reading the socket, HTTP answers 429.
    """

    __slots__ = ("_allowance", "_burst", "_last", "_rate")

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._burst = max(2 * rate, 1.0)
        self._allowance = self._burst
        self._last = now

    def take(self, now: float) -> float:
        """Count one event at ``now`` if the bucket allows it (0.0), else the seconds to wait."""
        allowance = min(self._burst, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if allowance < 1:
            self._allowance = allowance
            return (1 - allowance) / self._rate
        self._allowance = allowance - 1
        return 0.0

    def full(self, now: float) -> bool:
        """Whether the bucket is full again at ``now``: as good as a new one."""
        return self._allowance + (now - self._last) * self._rate >= self._burst


@dataclass(slots=True)
class Pending:
    """Positions queued for the next commit, and what their ack will need."""

    slot: Slot
    rejected: list[Rejection]
    counts: TransportCounters
    started: float


#: An answer to a publish frame: ready bytes (errors, all-rejected acks) or a pending commit.
Answer = bytes | Pending


class Answers:
    """A publisher's answers in frame order; None marks the end.

    A pending commit does not wake the sender task when it is queued: the answers watch
    each batch their frames are in (one callback per batch, however many frames) and,
    when it commits, call :attr:`on_commit` in that callback, which writes the acks that
    are ready at once. The task is woken only for what needs it: an answer ready when it
    is queued (an error frame), the end, a failed commit, a full write buffer. So a frame
    costs no task step, future or wake-up of its own on its way to its ack.
    """

    def __init__(self) -> None:
        self.items: deque[Answer | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        #: The batch watched last: frames that follow it into the same batch add nothing.
        self._watching: Batch | None = None
        #: Called when a watched batch has committed (or failed); True: wake the task.
        self.on_commit: Callable[[], bool] | None = None

    def put(self, answer: Answer | None) -> None:
        self.items.append(answer)
        if isinstance(answer, Pending):
            batch = answer.slot.batch
            if batch is not self._watching:
                self._watching = batch
                batch.committed.add_done_callback(self._committed)
            return
        self._notify()

    def _committed(self, committed: asyncio.Future[list[bool]]) -> None:
        watching = self._watching
        if watching is not None and watching.committed is committed:
            self._watching = None  # let the batch go
        if self.on_commit is None or self.on_commit():
            self.wake()

    def wake(self) -> None:
        """Wake the task in :meth:`wait` (or let its next wait return at once)."""
        self._woken = True
        self._notify()

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _ready(self) -> bool:
        """Whether the first answer can be acted on: sent, or its commit's outcome known."""
        if not self.items:
            return False
        head = self.items[0]
        return not isinstance(head, Pending) or head.slot.batch.committed.done()

    async def wait(self) -> None:
        """Wait until the first answer can be acted on, or :meth:`wake` was called."""
        while not self._woken and not self._ready():
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._woken = False


@dataclass(slots=True, eq=False)
class Publisher:
    name: str
    ws: RelayConnection
    grant: Grant | None = None
    answers: Answers = field(default_factory=Answers)
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
    #: The connection's write buffer is over its high-water mark: answers wait.
    blocked: bool = False
    #: A commit failed: nothing more is acked, the connection is being closed.
    failed: bool = False

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


class Publishers:
    """The relay's publishers: reading their frames and sending their answers."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._config = relay.config
        self._counters = relay.counters
        self._enqueue = relay.enqueue
        self._settle = relay.settle
        self.connected: set[Publisher] = set()

    def stop_reading(self) -> None:
        """Shutdown: every publisher stops taking frames; those taken are still answered."""
        for publisher in list(self.connected):
            publisher.stop_reading()

    async def serve(self, ws: RelayConnection, peer: str, grant: Grant | None) -> None:
        """Handle one publisher's connection until it is gone and every frame is answered."""
        publisher = Publisher(peer, ws, grant)
        self.connected.add(publisher)
        log.info("publisher %s connected (%s)", peer, self._relay.population())
        # Frames are read in the connection's data callback (no task or future per
        # frame); this handler sends the answers, and ends once the connection is gone
        # (or the relay stops reading) and every frame read has been answered.
        ws.on_lost(lambda: publisher.answers.put(None))
        ws.set_sink(self.reader(publisher))
        try:
            await self._send_answers(publisher)
        finally:
            self.connected.discard(publisher)
            if self._relay.stopping:
                await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
            log.info(
                "publisher %s disconnected (%s): %d stored, %d duplicates, %d rejected in %.1f s",
                peer,
                close_text(ws),
                publisher.stored,
                publisher.duplicates,
                publisher.rejected,
                time.monotonic() - publisher.started,
            )

    def reader(self, publisher: Publisher) -> Callable[[bytes, bool], None]:
        """The callback that takes a publisher's frames, in order, as they arrive."""
        loop = asyncio.get_running_loop()
        answers = publisher.answers
        ws = publisher.ws
        limit = self._config.max_inflight
        counters = self._counters
        answer_of = self._answer
        # A publisher over its rate is not read until it is back within it (TCP
        # backpressure); frames that came in the same read wait in ``held`` meanwhile.
        bucket = RateLimiter(self._config.max_rate, loop.time())
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
            wait = bucket.take(loop.time())
            if wait:
                publisher.throttled = True
                publisher.update_reading()
                held.appendleft((payload, text))
                loop.call_later(wait, unthrottle)
                return
            answer: Answer
            if not text:
                answer = encode_error("binary frames are not accepted: send JSON in text frames")
                counters.frame_errors += 1
            else:
                try:
                    message = payload.decode()
                except UnicodeDecodeError as exc:
                    ws.fail(1007, f"{exc.reason} at position {exc.start}")
                    return
                try:
                    answer = answer_of(message, publisher)
                except Exception:  # a bug must cost one frame, not the connection
                    log.exception("publish frame from %s failed", publisher.name)
                    counters.frame_errors += 1
                    answer = encode_error("internal error: this frame was not stored")
            answers.put(answer)
            if len(answers.items) >= limit and not publisher.full:
                publisher.full = True
                publisher.update_reading()

        return on_frame

    def _answer(self, message: str, publisher: Publisher) -> Answer:
        try:
            frame = decode_frame(message, self._config.max_batch)
        except FrameError as exc:
            self._counters.frame_errors += 1
            return encode_error(str(exc))
        positions, rejected = frame.positions, frame.rejected
        grant = publisher.grant
        if grant is not None and grant.devices:
            positions, rejected = enforce_devices(grant, frame.indexes, positions, rejected)
        publisher.rejected += len(rejected)
        pending = self._enqueue(positions, rejected, "websocket")
        # A future per frame and no task: at tens of thousands of frames a second, tasks
        # would cost more than everything else the relay does with a frame.
        return pending if pending is not None else encode_ack(Ack(0, 0, rejected))

    async def _send_answers(self, publisher: Publisher) -> None:
        """Send one answer per frame, in frame order, each once its frame is committed.

        Acks are written by :meth:`_flush` as soon as their commit is done, mostly from
        the commit's callback (see :class:`Answers`); this task waits for the rest: the
        end, a failed commit, a full write buffer. Every answer ready at once goes out in
        one write: under load a commit settles many frames of a publisher together.
        """
        ws, answers = publisher.ws, publisher.answers
        items = answers.items
        answers.on_commit = lambda: self._flush(publisher)
        try:
            while True:
                await answers.wait()
                if publisher.blocked:
                    with contextlib.suppress(ConnectionClosed, OSError):
                        await ws.wait_writable()
                    publisher.blocked = False
                self._flush(publisher)
                if not items or publisher.blocked:
                    continue
                head = items[0]
                if head is None:
                    return
                if isinstance(head, Pending) and head.slot.batch.committed.done():
                    # Never ack what is not stored. Closing tells the publisher to reconnect
                    # and resend everything unacknowledged; dedupe makes the resend safe.
                    exc = head.slot.batch.committed.exception()
                    publisher.failed = True
                    log.error("closing publisher %s: store write failed", publisher.name)
                    publisher.stop_reading()
                    with contextlib.suppress(ConnectionClosed):
                        await ws.close(
                            CLOSE_STORE_FAILED, close_reason(f"store write failed: {exc}")
                        )
        finally:
            answers.on_commit = None

    def _flush(self, publisher: Publisher) -> bool:
        """Write the answers that are ready, in frame order, in one write.

        Stops at the first frame whose commit is not done. Returns True when the sender
        task has something to do: the end is reached, a commit failed, or the write
        buffer is full (the task waits for it to drain, then calls this again).
        """
        if publisher.blocked:
            return False  # the task is waiting for the buffer to drain
        items = publisher.answers.items
        failed = publisher.failed
        ready: list[bytes] = []
        task = False
        while items:
            answer = items[0]
            if answer is None:
                task = True
                break
            if isinstance(answer, bytes):
                items.popleft()
                if not failed:
                    ready.append(text_frame(answer))
                continue
            committed = answer.slot.batch.committed
            if not committed.done():
                break
            if committed.exception() is not None:
                if not failed:
                    task = True
                    break
                items.popleft()  # the connection is closing: not acked
                continue
            items.popleft()
            ack = self._settle(answer, answer.slot.flags())
            publisher.stored += ack.stored
            publisher.duplicates += ack.duplicates
            if not failed:
                ready.append(_ack_frame(ack))
        if publisher.full and len(items) < self._config.max_inflight:
            publisher.full = False
            publisher.update_reading()
        if ready:
            ws = publisher.ws
            ws.write_frames(b"".join(ready) if len(ready) > 1 else ready[0])
            if not ws.writable():
                publisher.blocked = True
                task = True
        return task


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


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame: 123 bytes of UTF-8, never in mid-character.

    Cutting characters is not enough: a store path with non-ASCII letters makes a longer
    reason, and websockets refuses to send it (ProtocolError), so the close never went out.
    """
    return text.encode()[:123].decode(errors="ignore")
