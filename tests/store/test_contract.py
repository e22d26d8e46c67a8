"""The store contract: every backend passes these same tests (see conftest.BACKENDS)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Literal

import pytest

from geotrack.errors import InvalidParameter, StoreError
from geotrack.schema import Event, FenceState, Position, ms_to_ts, ts_to_ms
from geotrack.store import EventChange, EventFeed, Pruned, Store, open_store
from tests.conftest import StoreFactory
from tests.factories import T0, pos


def test_write_reports_new_and_duplicates(store: Store) -> None:
    batch = [pos(i=0), pos(i=1), pos("bus", 0)]
    assert store.write(batch) == [True, True, True]
    assert store.write([pos(i=1), pos(i=2)]) == [False, True]
    assert len(list(store.query())) == 4


def test_duplicate_within_one_batch_is_stored_once(store: Store) -> None:
    assert store.write([pos(i=0), pos(i=0, lat=1.0), pos(i=1)]) == [True, False, True]
    stored = list(store.query())
    assert [p.ts for p in stored] == [ms_to_ts(T0), ms_to_ts(T0 + 1000)]
    assert stored[0].lat == pytest.approx(52.5)  # the first one wins


def test_duplicate_key_is_device_and_millisecond(store: Store) -> None:
    # Seconds and an RFC 3339 string naming the same millisecond are the same fix.
    a = Position(device="d", lat=1, lon=2, ts=T0 / 1000 + 0.25)
    b = Position(device="d", lat=1, lon=2, ts=ms_to_ts(T0 + 250).replace("Z", "+00:00"))
    other_device = Position(device="e", lat=1, lon=2, ts=T0 / 1000 + 0.25)
    assert store.write([a, b, other_device]) == [True, False, True]


def test_every_field_round_trips(store: Store) -> None:
    full = pos(
        speed=12.5,
        heading=359.9,
        alt=-12.25,
        acc=3.0,
        attrs={"batt": 87, "ign": True, "note": 'a "quoted" ünïcode', "none": None, "f": 0.1},
    )
    bare = pos("bare", 0)
    store.write([full, bare])
    got = {p.device: p for p in store.query()}
    assert got["car-1"] == full
    assert got["bare"] == bare
    assert got["bare"].attrs is None and got["bare"].alt is None


def test_extreme_values_round_trip(store: Store) -> None:
    edge = [
        Position(device="e", lat=-90, lon=-180, ts="0001-01-01T00:00:00Z"),
        Position(device="e", lat=90, lon=180, ts="9999-12-31T23:59:59.999Z"),
        Position(device="e", lat=1e-7, lon=-1e-7, ts=0, attrs={"big": 2**63 - 1, "neg": -(2**63)}),
    ]
    assert store.write(edge) == [True, True, True]
    assert list(store.query()) == sorted(edge, key=lambda p: p.time)


def test_query_orders_by_device_then_time_and_filters(store: Store) -> None:
    store.write([pos("b", 2), pos("a", 1), pos("b", 0), pos("a", 0), pos("c", 5)])
    everything = [(p.device, p.ts_ms - T0) for p in store.query()]
    assert everything == [("a", 0), ("a", 1000), ("b", 0), ("b", 2000), ("c", 5000)]
    only = [(p.device, p.ts_ms - T0) for p in store.query(devices=["b", "c"])]
    assert only == [("b", 0), ("b", 2000), ("c", 5000)]
    window = store.query(since_ms=T0 + 1000, until_ms=T0 + 2000)
    assert [(p.device, p.ts_ms - T0) for p in window] == [("a", 1000), ("b", 2000)]
    assert list(store.query(devices=["nobody"])) == []
    assert store.devices() == ["a", "b", "c"]


def test_latest_is_each_devices_last_fix(store: Store) -> None:
    assert store.latest() == []
    # Written out of time order: the last fix is the latest ts, not the last write.
    store.write([pos("b", 2), pos("a", 1, speed=3.5), pos("b", 0), pos("a", 0), pos("c", 5)])
    assert store.latest() == [pos("a", 1, speed=3.5), pos("b", 2), pos("c", 5)]
    assert store.latest(["c", "a", "nobody"]) == [pos("a", 1, speed=3.5), pos("c", 5)]
    assert store.latest(["nobody"]) == []


def test_follow_from_now_sees_only_new_positions(store: Store) -> None:
    store.write([pos(i=0)])
    with store.follow() as feed:
        assert feed.poll(0.05) == []
        store.write([pos(i=1), pos(i=2)], origin="relay-a")
        changes = _drain(feed, 2)
    assert [c.position for c in changes] == [pos(i=1), pos(i=2)]
    assert {c.origin for c in changes} == {"relay-a"}


def test_follow_resumes_from_cursor_without_gap_or_repeat(store_factory: StoreFactory) -> None:
    writer = store_factory()
    writer.write([pos(i=0)])
    feed = writer.follow()
    writer.write([pos(i=1)])
    first = _drain(feed, 1)
    assert feed.cursor == first[-1].cursor
    resume = feed.cursor
    feed.close()
    writer.write([pos(i=2), pos(i=3)])
    # Another client of the same store resumes where the first one stopped.
    reader = store_factory()
    assert reader.is_cursor(resume)
    with reader.follow(since=resume) as again:
        got = _drain(again, 2)
    assert [c.position.ts_ms - T0 for c in got] == [2000, 3000]


def test_follow_since_time_replays_then_goes_live(store: Store) -> None:
    store.write([pos(i=0)])
    with store.follow(since=0) as feed:
        replay = _drain(feed, 1)
        assert replay[0].position == pos(i=0)
        store.write([pos(i=1)])
        live = _drain(feed, 1)
    assert live[0].position == pos(i=1)


def test_follow_filters_devices(store: Store) -> None:
    with store.follow(devices=["bus"]) as feed:
        store.write([pos("car", 0), pos("bus", 0), pos("car", 1), pos("bus", 1)])
        got = _drain(feed, 2)
        assert feed.poll(0.05) == []
    assert [(c.position.device, c.position.ts_ms - T0) for c in got] == [("bus", 0), ("bus", 1000)]


def test_feed_preserves_store_order_per_device(store: Store) -> None:
    with store.follow() as feed:
        for i in range(0, 300, 30):
            store.write([pos("d", j) for j in range(i, i + 30)])
        got = _drain(feed, 300)
    assert [c.position.ts_ms for c in got] == sorted(c.position.ts_ms for c in got)


def test_concurrent_writers_lose_nothing(store_factory: StoreFactory) -> None:
    stores = [store_factory() for _ in range(3)]

    def run(k: int) -> None:
        for i in range(20):
            # Overlapping keys across writers: each must be stored exactly once.
            stores[k].write([pos(f"d{i % 4}", i), pos(f"w{k}", i)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [p.key for p in stores[0].query()]
    assert len(keys) == len(set(keys)) == 20 + 3 * 20


def test_ts_survives_as_canonical_milliseconds(store: Store) -> None:
    p = Position(device="d", lat=0, lon=0, ts="2026-11-25T13:00:00.123456+01:00")
    store.write([p])
    (got,) = store.query()
    assert got.ts == "2026-11-25T12:00:00.123Z"
    assert ts_to_ms(got.time) == p.ts_ms


def test_bad_cursor_is_a_clear_error(store: Store) -> None:
    assert not store.is_cursor("2026-11-25T12:00:00Z")
    with pytest.raises(InvalidParameter):
        store.follow(since="not-a-cursor")


def test_ping_answers_while_open_and_fails_once_closed(store: Store) -> None:
    # A dead store (a deleted SQLite file, a stopped server) is backend-specific: see
    # tests/store/test_sqlite.py and tests/store/test_mongo.py.
    store.ping()
    store.write([pos(i=0)])
    store.ping()
    store.close()
    with pytest.raises(StoreError):
        store.ping()


def test_a_reader_opens_an_existing_store_without_creating(store: Store) -> None:
    # Empty but existing (the writer made it): a read-only command follows it all the same.
    with open_store(store.display_url, create=False) as reader:
        assert list(reader.query()) == []
        with reader.follow() as feed:
            store.write([pos(i=0)])
            assert [c.position for c in _drain(feed, 1)] == [pos(i=0)]
        assert list(reader.query()) == [pos(i=0)]


def _pruned(steps: Iterable[Pruned]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for step in steps:
        assert step.count > 0
        counts[step.device] = counts.get(step.device, 0) + step.count
    return counts


def test_prune_deletes_only_fixes_before_the_time(store: Store) -> None:
    store.write([pos("a", i) for i in range(10)] + [pos("b", i) for i in range(3)])
    store.write([pos("c", 20)])
    cut = T0 + 5000  # fixes 0-4 of each device are older
    assert _pruned(store.prune(cut, dry_run=True)) == {"a": 5, "b": 3}
    assert len(list(store.query())) == 14  # a dry run deletes nothing
    assert _pruned(store.prune(cut)) == {"a": 5, "b": 3}
    assert [(p.device, p.ts_ms - T0) for p in store.query()] == [
        ("a", i * 1000) for i in range(5, 10)
    ] + [("c", 20_000)]
    assert store.devices() == ["a", "c"]
    assert _pruned(store.prune(cut)) == {}  # nothing left to delete


def test_prune_narrows_to_devices(store: Store) -> None:
    store.write([pos("a", i) for i in range(4)] + [pos("b", i) for i in range(4)])
    assert _pruned(store.prune(T0 + 2000, devices=["b", "nobody"])) == {"b": 2}
    assert [(p.device, p.ts_ms - T0) for p in store.query(devices=["a", "b"])] == [
        ("a", 0), ("a", 1000), ("a", 2000), ("a", 3000), ("b", 2000), ("b", 3000),
    ]  # fmt: skip


def test_prune_goes_in_batches_and_stops_early_keeping_the_rest(store: Store) -> None:
    store.write([pos("a", i) for i in range(250)])
    store.prune_batch = 100
    steps = store.prune(T0 + 10**9)
    first = next(steps)
    steps.close()  # stopped after one committed batch: the rest stays
    remaining = len(list(store.query()))
    assert first.device == "a" and first.count <= 100
    assert remaining == 250 - first.count


def test_prune_deletes_old_geofence_events_too(store: Store) -> None:
    def event(device: str, i: int) -> Event:
        return Event("enter", device, "depot", ms_to_ts(T0 + i * 1000), 52.5, 13.4)

    store.write_events([event("a", 0), event("a", 1), event("b", 2), event("a", 9)])
    cut = T0 + 5000
    dry = list(store.prune(cut, dry_run=True))
    assert {(s.device, s.count) for s in dry if s.events} == {("a", 2), ("b", 1)}
    assert len(list(store.query_events())) == 4
    steps = list(store.prune(cut, devices=["b"]))
    assert [(s.device, s.count, s.events) for s in steps] == [("b", 1, True)]
    assert sum(s.count for s in store.prune(cut) if s.events) == 2
    assert list(store.query_events()) == [event("a", 9)]


def test_follow_resumes_across_a_prune(store_factory: StoreFactory) -> None:
    # A feed stopped before a prune resumes after it: nothing stored since (and not
    # pruned) is missed, nothing is repeated, though the cursor's row is gone.
    store = store_factory()
    store.write([pos(i=0)])
    feed = store.follow()
    store.write([pos(i=1), pos(i=2)])
    seen = _drain(feed, 2)
    resume = feed.cursor
    feed.close()
    store.write([pos(i=3)])
    # Deletes the cursor's own row and every one before it; fix 3 stays.
    assert _pruned(store.prune(T0 + 3000)) == {"car-1": 3}
    store.write([pos(i=4)])
    with store_factory().follow(since=resume) as again:
        got = _drain(again, 2)
        store.write([pos(i=5)])
        got += _drain(again, 1)
    assert [c.position.ts_ms - T0 for c in seen + got] == [1000, 2000, 3000, 4000, 5000]


def test_follow_from_now_after_pruning_everything(store: Store) -> None:
    store.write([pos(i=0), pos(i=1)])
    assert _pruned(store.prune(T0 + 10**9)) == {"car-1": 2}
    assert list(store.query()) == [] and store.latest() == []
    with store.follow() as feed:
        store.write([pos(i=1), pos(i=2)])  # fix 1 again: new, since it was pruned
        assert [c.position for c in _drain(feed, 2)] == [pos(i=1), pos(i=2)]


def _drain(feed: object, n: int, timeout: float = 10.0) -> list:  # type: ignore[type-arg]
    import time

    from geotrack.store import ChangeFeed

    assert isinstance(feed, ChangeFeed)
    got: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(feed.poll(0.2))
    assert len(got) == n, f"expected {n} changes, got {len(got)}"
    return got


# -- geofence events (issue 13) -------------------------------------------------------


def _event(
    kind: Literal["enter", "exit"], device: str = "van", fence: str = "depot", i: int = 0
) -> Event:
    return Event(kind, device, fence, ms_to_ts(T0 + i * 1000), 52.5 + i * 1e-4, 13.4)


def _drain_events(feed: EventFeed, n: int, timeout: float = 10.0) -> list[EventChange]:
    import time

    got: list[EventChange] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(feed.poll(0.2))
    assert len(got) == n, f"expected {n} events, got {len(got)}"
    return got


def test_events_are_idempotent_on_device_fence_ts_and_type(store_factory: StoreFactory) -> None:
    store, other = store_factory(), store_factory()  # two relays on one store
    batch = [_event("enter", i=1), _event("exit", i=5), _event("enter", "bike", i=1)]
    assert store.write_events(batch, origin="relay-a") == [True, True, True]
    assert other.write_events([_event("exit", i=5), _event("enter", i=9)], "relay-b") == [
        False,
        True,
    ]
    # Same fix, other type or other fence: other events. A repeat within a batch: once.
    assert store.write_events([_event("exit", i=1), _event("enter", fence="yard", i=1)]) == [
        True,
        True,
    ]
    assert store.write_events([_event("enter", i=20), _event("enter", i=20)]) == [True, False]
    assert len(list(store.query_events())) == 7
    assert store.write_events([]) == []


def test_query_events_orders_by_time_and_filters(store: Store) -> None:
    store.write_events(
        [_event("exit", "b", i=3), _event("enter", "a", i=1), _event("enter", "b", "yard", i=2)]
    )
    got = list(store.query_events())
    assert [(e.device, e.fence, e.type) for e in got] == [
        ("a", "depot", "enter"),
        ("b", "yard", "enter"),
        ("b", "depot", "exit"),
    ]
    assert got[0] == _event("enter", "a", i=1)  # every field round-trips
    assert [e.device for e in store.query_events(devices=["b"])] == ["b", "b"]
    assert [e.fence for e in store.query_events(fences=["yard"])] == ["yard"]
    window = store.query_events(since_ms=T0 + 2000, until_ms=T0 + 2000)
    assert [e.fence for e in window] == ["yard"]


def test_follow_events_from_now_resumes_and_filters(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.write_events([_event("enter", i=0)])
    with store.follow_events() as feed:
        store.write_events([_event("exit", i=1), _event("enter", "bike", i=1)])
        seen = _drain_events(feed, 2)
        assert [c.event for c in seen] == [_event("exit", i=1), _event("enter", "bike", i=1)]
        assert store.is_cursor(seen[0].cursor)
        resume = seen[0].cursor
    store.write_events([_event("enter", i=2)])
    with store_factory().follow_events(since=resume) as again:
        got = [c.event for c in _drain_events(again, 2)]
    assert got == [_event("enter", "bike", i=1), _event("enter", i=2)]
    with store.follow_events(devices=["bike"], fences=["depot"]) as narrow:
        store.write_events([_event("exit", i=3), _event("exit", "bike", "yard", i=3)])
        store.write_events([_event("exit", "bike", i=4)])
        assert [c.event for c in _drain_events(narrow, 1)] == [_event("exit", "bike", i=4)]


def test_follow_events_since_time_replays(store: Store) -> None:
    import time

    since = time.time_ns() // 1_000_000 - 60_000  # a minute ago: within any oplog
    store.write_events([_event("enter", i=0), _event("exit", i=1)])
    with store.follow_events(since=since) as feed:
        replay = [c.event for c in _drain_events(feed, 2)]
        assert replay == [_event("enter", i=0), _event("exit", i=1)]
        store.write_events([_event("enter", i=2)])
        assert [c.event for c in _drain_events(feed, 1)] == [_event("enter", i=2)]


def test_a_duplicate_event_is_not_followed_again(store_factory: StoreFactory) -> None:
    store, other = store_factory(), store_factory()
    with store.follow_events() as feed:
        store.write_events([_event("enter", i=1)])
        other.write_events([_event("enter", i=1), _event("exit", i=2)])
        assert [c.event.type for c in _drain_events(feed, 2)] == ["enter", "exit"]
        assert feed.poll(0.3) == []


def test_fence_states_are_saved_and_replaced(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.fence_states() == []
    store.save_fence_states(
        [FenceState("van", "depot", True, None, T0), FenceState("bike", "yard", False, T0, T0)]
    )
    store.save_fence_states([FenceState("van", "depot", False, T0 + 5, T0 + 9)])
    store.save_fence_states([])
    again = store_factory()  # another client (a restarted relay) sees them
    assert again.fence_states() == [
        FenceState("bike", "yard", False, T0, T0),
        FenceState("van", "depot", False, T0 + 5, T0 + 9),
    ]
    van = FenceState("van", "depot", False, T0 + 5, T0 + 9)
    assert again.fence_states(devices=["van"]) == [van]


def test_write_events_saves_states_with_them(store_factory: StoreFactory) -> None:
    store = store_factory()
    state = FenceState("van", "depot", True, None, T0 + 1000)
    assert store.write_events([_event("enter", i=1)], "relay-a", states=[state]) == [True]
    assert store.write_events([], states=[FenceState("bike", "yard", False, T0, T0)]) == []
    assert store_factory().fence_states() == [
        FenceState("bike", "yard", False, T0, T0),
        state,
    ]
    assert [e.type for e in store.query_events()] == ["enter"]


def test_write_events_saves_a_named_cursor_with_them(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.saved_cursor("fences") is None
    feed = store.follow()
    store.write([pos(i=0)])
    assert feed.poll(5)
    cursor = feed.cursor
    feed.close()
    state = FenceState("van", "depot", True, None, T0)
    store.write_events([_event("enter", i=1)], "relay-a", states=[state], cursor=("fences", cursor))
    store.write_events([], cursor=("other", "x"))
    again = store_factory()
    assert again.saved_cursor("fences") == cursor
    assert again.saved_cursor("other") == "x"
    assert again.fence_states() == [state]
    store.write([pos(i=1)])
    with again.follow(since=again.saved_cursor("fences")) as resumed:
        assert [c.position for c in resumed.poll(5)] == [pos(i=1)]
