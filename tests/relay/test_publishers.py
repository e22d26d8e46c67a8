"""The publisher side's parts without sockets: the rate limiter and the answers queue."""

from __future__ import annotations

import asyncio

import pytest

from geotrack.relay.publishers import Answers, RateLimiter
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
