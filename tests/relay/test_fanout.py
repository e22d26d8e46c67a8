"""Fan-out without sockets: Hub and Subscriber against a fake outlet."""

from __future__ import annotations

import asyncio
import json

from geotrack.relay.fanout import CLOSE_TOO_SLOW, MAX_FRAME_POSITIONS, Hub, Subscriber, frames_of
from geotrack.schema import Position, SubscribeFilter, encode_position
from tests.factories import T0_S
from tests.relay_helpers import arun


def fix(device: str = "car-1", i: int = 0, lon: float = 13.4) -> Position:
    return Position(device=device, lat=52.5, lon=lon, ts=T0_S + i)


def framer(payload: bytes) -> bytes:
    """A frame that the fake outlet can split again: one payload per line."""
    return payload + b"\n"


class FakeOutlet:
    """Takes writes while ``open_`` and ``room``; records the positions of each frame."""

    def __init__(self) -> None:
        self.frames: list[list[dict[str, object]]] = []
        self.room = True
        self.open_ = True
        self._drained = asyncio.Event()

    def writable(self) -> bool:
        return self.open_ and self.room

    def write_frames(self, frames: bytes) -> bool:
        if not self.open_:
            return False
        for line in frames.splitlines():
            self.frames.append(json.loads(line))
        return True

    async def wait_writable(self) -> None:
        while not self.writable():
            self._drained.clear()
            await self._drained.wait()

    def drain(self) -> None:
        self.room = True
        self._drained.set()

    @property
    def devices(self) -> list[str]:
        return [str(p["device"]) for frame in self.frames for p in frame]


class Closes:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    async def __call__(self, code: int, reason: str) -> None:
        self.calls.append((code, reason))


def subscriber(
    outlet: FakeOutlet, flt: SubscribeFilter | None = None, limit: int = 100, hold: bool = False
) -> tuple[Subscriber, Closes]:
    closes = Closes()
    sub = Subscriber("test", flt or SubscribeFilter(), outlet, framer, closes, limit, hold=hold)
    return sub, closes


def test_every_matching_subscriber_gets_a_commit_in_one_frame() -> None:
    async def main() -> None:
        hub = Hub(framer)
        everything, cars = FakeOutlet(), FakeOutlet()
        hub.add(subscriber(everything)[0])
        hub.add(subscriber(cars, SubscribeFilter(frozenset({"car-1"})))[0])
        hub.publish([fix("car-1", 0), fix("bus-1", 0), fix("car-1", 1)])
        assert len(everything.frames) == 1 and everything.devices == ["car-1", "bus-1", "car-1"]
        assert len(cars.frames) == 1 and cars.devices == ["car-1", "car-1"]
        hub.publish([fix("bus-1", 1)])
        assert len(cars.frames) == 1  # nothing matched: no empty frame

    arun(main())


def test_a_subscriber_behind_gets_a_queue_drained_as_its_outlet_takes_writes() -> None:
    async def main() -> None:
        hub = Hub(framer)
        outlet = FakeOutlet()
        sub, _ = subscriber(outlet, limit=10)
        hub.add(sub)
        pump = asyncio.create_task(sub.run())
        outlet.room = False
        hub.publish([fix(i=0), fix(i=1)])
        hub.publish([fix(i=2)])
        assert sub.queued == 3 and outlet.frames == []
        outlet.drain()
        await asyncio.sleep(0.01)
        assert sub.queued == 0
        assert [len(f) for f in outlet.frames] == [3]  # coalesced into one frame
        assert sub.delivered == 3
        sub.finish()
        await asyncio.wait_for(pump, 1)

    arun(main())


def test_an_overflowing_subscriber_is_dropped_and_counted_once() -> None:
    async def main() -> None:
        hub = Hub(framer)
        slow, fast = FakeOutlet(), FakeOutlet()
        slow.room = False
        sub, closes = subscriber(slow, limit=3)
        hub.add(sub)
        hub.add(subscriber(fast)[0])
        hub.publish([fix(i=i) for i in range(2)])
        hub.publish([fix(i=i) for i in range(2, 4)])  # 4 > 3 queued: dropped
        assert sub.dropped and sub.queued == 0
        assert len(fast.devices) == 4  # the others never wait for it
        await sub.run()  # returns once the close is done
        assert closes.calls == [(CLOSE_TOO_SLOW, "too slow: more than 3 positions queued")]
        # Defect: a failed replay removed the subscriber twice, and it counted twice.
        hub.remove(sub)
        hub.remove(sub)
        assert hub.dropped == 1 and sub not in hub.subscribers

    arun(main())


def test_removing_a_subscriber_that_was_not_dropped_counts_nothing() -> None:
    hub = Hub(framer)
    sub, _ = subscriber(FakeOutlet())
    hub.add(sub)
    hub.remove(sub)
    hub.remove(sub)
    assert hub.dropped == 0 and not hub.subscribers


def test_a_replaying_subscriber_gets_each_position_once_across_the_seam() -> None:
    async def main() -> None:
        hub = Hub(framer)
        outlet = FakeOutlet()
        sub, _ = subscriber(outlet, hold=True)
        hub.add(sub)
        # Live positions during the replay are held, not sent ...
        hub.publish([fix(i=2), fix(i=3)])
        assert outlet.frames == []
        # ... the replay sends what was stored, including one of those ...
        sub.replay([(p.key, encode_position(p)) for p in (fix(i=0), fix(i=1), fix(i=2))])
        # ... and the release sends only what the replay did not.
        sub.release()
        # A live push of a replayed position that lags behind its commit: not repeated.
        hub.publish([fix(i=1)])
        hub.publish([fix(i=4)])
        ts = [p["ts"] for frame in outlet.frames for p in frame]
        assert len(ts) == len(set(ts)) == 5

    arun(main())


def test_frames_hold_at_most_max_frame_positions() -> None:
    encoded = [encode_position(fix(i=i)) for i in range(MAX_FRAME_POSITIONS + 1)]
    frames = frames_of(encoded, framer).splitlines()
    assert [len(json.loads(f)) for f in frames] == [MAX_FRAME_POSITIONS, 1]


def test_positions_in_wire_form_are_decoded_only_for_a_subscriber_that_filters() -> None:
    """A sibling worker's hand-over: the encoded positions go out as they are."""

    async def main() -> None:
        hub = Hub(framer)
        everything, cars = FakeOutlet(), FakeOutlet()
        hub.add(subscriber(everything)[0])
        positions = [fix("car-1", 0), fix("bus-1", 0)]
        encoded = [encode_position(p) for p in positions]
        decoded: list[int] = []

        def decode() -> list[Position]:
            decoded.append(1)
            return positions

        hub.publish_encoded(encoded, decode)
        assert everything.devices == ["car-1", "bus-1"] and decoded == []
        hub.add(subscriber(cars, SubscribeFilter(frozenset({"car-1"})))[0])
        hub.publish_encoded(encoded, decode)
        assert decoded == [1] and cars.devices == ["car-1"]
        assert everything.devices == ["car-1", "bus-1"] * 2

    arun(main())
