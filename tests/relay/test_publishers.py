"""The publisher side without sockets: the rate limiter, the answers queue, and the ordered
answers sent through a fake connection."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from geotrack.errors import StoreError
from geotrack.relay import RelayConfig
from geotrack.relay.ingest import Batch, Slot
from geotrack.relay.publishers import Answers, Pending, Publisher, Publishers, RateLimiter
from geotrack.relay.server import Counters, TransportCounters
from geotrack.schema import Ack
from tests.relay_helpers import arun


def test_a_burst_of_twice_the_rate_passes_then_the_rate_holds() -> None:
    # A rate of 8/s: every time below is an exact binary fraction, so no rounding.
    bucket = RateLimiter(8.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(16)] == [0.0] * 16
    assert bucket.take(0.0) == 0.125  # one token comes back every 1/rate seconds
    assert bucket.take(0.0625) == 0.0625
    assert bucket.take(0.125) == 0.0
    # Sustained: one event every 1/rate seconds always passes...
    assert all(bucket.take(0.125 + k / 8) == 0.0 for k in range(1, 64))
    # ... and a second one in the same instant does not.
    assert bucket.take(0.125 + 63 / 8) > 0


def test_an_idle_bucket_fills_up_to_the_burst_only() -> None:
    bucket = RateLimiter(2.0, now=0.0)
    for _ in range(4):
        assert bucket.take(0.0) == 0.0
    assert not bucket.full(0.0)
    assert bucket.full(2.0)  # 4 tokens at 2/s
    # An hour idle is still one burst of 4, not 7,200.
    assert [bucket.take(3600.0) for _ in range(5)].count(0.0) == 4


def test_a_rate_below_one_still_lets_one_event_through() -> None:
    bucket = RateLimiter(0.5, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)
    assert bucket.take(2.0) == 0.0


def test_answers_keep_their_order_and_wake_a_waiter() -> None:
    async def main() -> None:
        answers = Answers()
        waiter = asyncio.create_task(answers.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        answers.put(b"first")
        answers.put(b"second")
        answers.put(None)
        await asyncio.wait_for(waiter, 1)
        assert list(answers.items) == [b"first", b"second", None]
        await answers.wait()  # returns at once while there is something

    arun(main())


def test_answers_wait_again_once_drained() -> None:
    async def main() -> None:
        answers = Answers()
        answers.put(b"x")
        answers.items.popleft()
        waiter = asyncio.create_task(answers.wait())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        answers.put(b"y")
        await asyncio.wait_for(waiter, 1)

    arun(main())


# -- the ordered answers, sent through a fake connection ---------------------------------


class FakeConnection:
    """What Publishers needs of a connection: frames written, reading paused or not."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.closed: tuple[int, str] | None = None

    def write_frames(self, frames: bytes) -> bool:
        self.written.append(frames)
        return True

    def writable(self) -> bool:
        return True

    async def wait_writable(self) -> None:
        return None

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def texts(self) -> list[str]:
        """The payloads of the text frames written (all short: 2-byte headers)."""
        out = []
        for written in self.written:
            rest = written
            while rest:
                length = rest[1] & 0x7F
                out.append(rest[2 : 2 + length].decode())
                rest = rest[2 + length :]
        return out


def fake_relay(max_inflight: int = 64) -> Any:
    counters = Counters()

    def settle(pending: Pending, flags: list[bool]) -> Ack:
        return Ack(sum(flags), len(flags) - sum(flags), pending.rejected)

    return SimpleNamespace(
        config=RelayConfig(max_inflight=max_inflight),
        counters=counters,
        enqueue=None,
        settle=settle,
        stopping=False,
        population=lambda: "",
    )


def pending(loop: asyncio.AbstractEventLoop, size: int) -> tuple[Pending, Batch]:
    batch = Batch(loop)
    return Pending(Slot(batch, 0, size), [], TransportCounters(), loop.time()), batch


def test_answers_go_out_in_frame_order_whatever_order_commits_settle_in() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ws = FakeConnection()
        publisher = Publisher("p", ws)  # type: ignore[arg-type]
        sender = asyncio.create_task(Publishers(fake_relay())._send_answers(publisher))
        first, first_batch = pending(loop, 2)
        second, second_batch = pending(loop, 1)
        publisher.answers.put(first)
        publisher.answers.put(b'{"type":"error","error":"x"}')
        publisher.answers.put(second)
        second_batch.committed.set_result([True])  # the later frame's commit settles first
        await asyncio.sleep(0.01)
        assert ws.written == []  # nothing may overtake the first frame's answer
        first_batch.committed.set_result([True, False])
        publisher.answers.put(None)
        await asyncio.wait_for(sender, 1)
        assert ws.texts() == [
            '{"type":"ack","stored":1,"duplicates":1,"rejected":[]}',
            '{"type":"error","error":"x"}',
            '{"type":"ack","stored":1,"duplicates":0,"rejected":[]}',
        ]
        assert (publisher.stored, publisher.duplicates) == (2, 1)

    arun(main())


def test_a_failed_commit_is_never_acked_and_closes_with_1011() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ws = FakeConnection()
        publisher = Publisher("p", ws)  # type: ignore[arg-type]
        sender = asyncio.create_task(Publishers(fake_relay())._send_answers(publisher))
        ok, ok_batch = pending(loop, 1)
        lost, lost_batch = pending(loop, 1)
        publisher.answers.put(ok)
        publisher.answers.put(lost)
        ok_batch.committed.set_result([True])
        lost_batch.committed.set_exception(StoreError("disk full"))
        await asyncio.wait_for(sender, 1)
        assert ws.texts() == ['{"type":"ack","stored":1,"duplicates":0,"rejected":[]}']
        assert ws.closed == (1011, "store write failed: disk full")
        assert not publisher.reading

    arun(main())


def test_a_full_answers_queue_pauses_reading_until_answers_go_out() -> None:
    async def main() -> None:
        ws = FakeConnection()
        publisher = Publisher("p", ws)  # type: ignore[arg-type]
        publishers = Publishers(fake_relay(max_inflight=2))
        reader = publishers.reader(publisher)
        sender = asyncio.create_task(publishers._send_answers(publisher))
        reader(b"not json", True)
        assert not ws.paused
        reader(b"not json either", True)
        assert ws.paused and publisher.full  # two unanswered: stop reading the socket
        await asyncio.sleep(0.01)
        assert not ws.paused and not publisher.full  # answered: read again
        assert len(ws.texts()) == 2
        publisher.stop_reading()
        await asyncio.wait_for(sender, 1)

    arun(main())


class SlowConnection(FakeConnection):
    """A connection whose write buffer is full after each write until it drains."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.drained = asyncio.Event()

    def write_frames(self, frames: bytes) -> bool:
        assert not self.full, "written to while over the high-water mark"
        self.full = True
        return super().write_frames(frames)

    def writable(self) -> bool:
        return not self.full

    async def wait_writable(self) -> None:
        await self.drained.wait()  # once drained, the client reads everything at once
        self.full = False


def test_acks_wait_while_the_write_buffer_is_full_then_go_out_together() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ws = SlowConnection()
        publisher = Publisher("p", ws)  # type: ignore[arg-type]
        sender = asyncio.create_task(Publishers(fake_relay())._send_answers(publisher))
        frames = [pending(loop, 1) for _ in range(3)]
        for answer, _ in frames:
            publisher.answers.put(answer)
        frames[0][1].committed.set_result([True])
        await asyncio.sleep(0.01)
        assert len(ws.written) == 1 and publisher.blocked  # the first ack filled the buffer
        frames[1][1].committed.set_result([True])
        frames[2][1].committed.set_result([False])
        await asyncio.sleep(0.01)
        assert len(ws.written) == 1  # committed, but held while the buffer is full
        ws.drained.set()
        publisher.answers.put(None)
        await asyncio.wait_for(sender, 1)
        assert len(ws.written) == 2  # both acks in one write once it drained
        assert ws.texts()[1:] == [
            '{"type":"ack","stored":1,"duplicates":0,"rejected":[]}',
            '{"type":"ack","stored":0,"duplicates":1,"rejected":[]}',
        ]

    arun(main())
