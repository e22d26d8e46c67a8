"""Schedules from files' items and stored history; a store replayed into a relay's store."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from geotrack.client import Publisher
from geotrack.errors import SourceError
from geotrack.player import play
from geotrack.schema import Position, ms_to_ts
from geotrack.sources.base import Item, Notice, Skipped
from geotrack.sources.replay import SAME_TIME, Input, _pages, schedule, stored_lanes
from geotrack.store import open_store
from tests.factories import T0, pos, stored
from tests.mongo_servers import fresh_database, nx27017_server
from tests.relay_helpers import arun, running_relay

DAY = 86_400_000


def at(device: str, ms: int, i: int = 0) -> Position:
    return pos(device, i, ts=ms_to_ts(ms))


def items(*positions: Item) -> Input:
    return Input.file("f.ndjson", lambda: list(positions))


def plan(*inputs: Input, **options: object) -> list[tuple[float, str, str]]:
    return [(o, p.device, p.time) for o, p in schedule(inputs, **options)]  # type: ignore[arg-type]


def test_devices_start_together_and_keep_their_times() -> None:
    """Side by side (the default): each device from offset 0; times are the file's own."""
    a = [at("a", T0 + i * 1000) for i in range(3)]
    b = [at("b", T0 + DAY + i * 2000) for i in range(2)]
    got = plan(items(*a, *b))
    assert got == [
        (0.0, "a", a[0].time),
        (0.0, "b", b[0].time),
        (1.0, "a", a[1].time),
        (2.0, "a", a[2].time),
        (2.0, "b", b[1].time),
    ]


def test_as_recorded_keeps_the_intervals_between_devices() -> None:
    a = [at("a", T0 + i * 1000) for i in range(2)]
    b = [at("b", T0 + 500 + i * 1000) for i in range(2)]
    # One device after the other in the file, as geotrack's own export writes them.
    got = plan(items(*a, *b), as_recorded=True)
    assert [(o, d) for o, d, _ in got] == [(0.0, "a"), (0.5, "b"), (1.0, "a"), (1.5, "b")]


def test_files_start_together() -> None:
    one = items(at("a", T0), at("a", T0 + 1000))
    two = Input.file("g.gpx", lambda: [at("b", T0 - DAY), at("b", T0 - DAY + 3000)])
    assert [(o, d) for o, d, _ in plan(one, two)] == [(0, "a"), (0, "b"), (1, "a"), (3, "b")]


def test_start_puts_the_first_point_at_the_time_and_keeps_every_interval() -> None:
    a = [at("a", T0 + i * 1000) for i in range(3)]
    b = [at("b", T0 + DAY + i * 2000) for i in range(2)]
    start = T0 + 7 * DAY
    got = [(o, p.device, p.ts_ms) for o, p in schedule([items(*a, *b)], start_ms=start)]
    assert got == [(o, d, start + round(o * 1000)) for o, d, _ in got]
    assert got[0] == (0.0, "a", start) and got[1] == (0.0, "b", start)
    recorded = [
        (p.device, p.ts_ms) for _, p in schedule([items(*a, *b)], start_ms=start, as_recorded=True)
    ]
    assert recorded == [
        ("a", start),
        ("a", start + 1000),
        ("a", start + 2000),
        ("b", start + DAY),
        ("b", start + DAY + 2000),
    ]


def test_a_loop_shifts_each_round_by_the_span_and_an_interval() -> None:
    a = [at("a", T0 + i * 2000) for i in range(3)]  # 4 s long, a fix every 2 s
    got = list(itertools.islice(schedule([items(*a)], loop=True), 7))
    assert [o for o, _ in got] == [0, 2, 4, 6, 8, 10, 12]
    assert [p.ts_ms - T0 for _, p in got] == [0, 2000, 4000, 6000, 8000, 10000, 12000]
    assert len({p.key for _, p in got}) == 7  # new positions to a deduplicating relay


def test_points_sharing_a_time_are_not_sent_and_are_counted() -> None:
    """Real-file bug: 184 points with one time stored 1 and exited 0."""
    source = items(*(at("a", T0, i) for i in range(184)), at("a", T0 + 1000))
    got = plan(source)
    assert [o for o, _, _ in got] == [0.0, 1.0]
    assert source.report.skipped == {SAME_TIME: 183}
    assert source.report.lines() == [
        f"f.ndjson: read 2, 183 skipped: 183 {SAME_TIME} (first at a at {ms_to_ts(T0)})"
    ]


def test_notices_and_skips_are_reported_once_however_many_rounds() -> None:
    notices: list[str] = []
    source = items(
        Notice("3 points have no time"),
        at("a", T0),
        Skipped("latitude out of range", "line 2"),
        Skipped("no time", "line 3"),
        Skipped("latitude out of range", "line 4"),
        at("a", T0 + 1000),
    )
    got = list(itertools.islice(schedule([source], loop=True, notify=notices.append), 6))
    assert len(got) == 6
    assert notices == ["f.ndjson: 3 points have no time"]
    assert source.report.read == 2
    assert source.report.lines() == [
        "f.ndjson: read 2, 3 skipped: 2 latitude out of range (first at line 2); "
        "1 no time (first at line 3)"
    ]


def test_a_file_out_of_order_within_the_window_replays_in_order() -> None:
    times = [5, 1, 4, 2, 3, 0]
    source = items(*(at("a", T0 + t * 1000) for t in times))
    got = plan(source, as_recorded=True)
    assert [o for o, _, _ in got] == [0, 1, 2, 3, 4, 5]
    assert source.report.late == 0


def test_beyond_the_window_nothing_is_lost_and_lateness_is_counted() -> None:
    a = [at("a", T0 + i * 1000) for i in range(5)]
    b = [at("b", T0 + i * 1000) for i in range(5)]
    source = items(*a, *b)  # one device after the other
    got = list(schedule([source], as_recorded=True, window=2))
    assert sorted(p.key for _, p in got) == sorted(p.key for p in a + b)
    assert source.report.late > 0
    assert "were sent late" in source.report.lines()[0]
    assert source.report.lines(paced=False) == []


def test_a_time_ordered_file_is_read_lazily_in_bounded_memory() -> None:
    read = 0

    def endless() -> Iterator[Position]:
        nonlocal read
        for i in itertools.count():
            read += 1
            yield at("a", T0 + i * 1000)

    got = list(itertools.islice(schedule([Input.file("big", endless)], window=50), 10))
    assert len(got) == 10
    assert read <= 10 + 50 + 1  # the window, and nothing more, read ahead


# -- a store as a source ----------------------------------------------------------------------


def _fleet(db: Path, devices: Iterable[str] = ("bus-1", "bus-2", "car-1"), n: int = 30) -> None:
    with open_store(f"sqlite:///{db}") as store:
        store.write(
            [
                pos(d, i, ts=ms_to_ts(T0 + k * 333 + i * 1000))
                for k, d in enumerate(devices)
                for i in range(n)
            ]
        )


def test_stored_lanes_page_through_each_device_in_time_order(tmp_path: Path) -> None:
    _fleet(tmp_path / "a.db")
    with open_store(f"sqlite:///{tmp_path / 'a.db'}", create=False) as store:
        paged = list(_pages(store, "bus-2", T0 + 5000, None, 7))
        assert paged == list(store.query(["bus-2"], T0 + 5000))
        assert len(paged) == 25
        lanes = stored_lanes(store, ["car-1", "bus-1", "nobody"])
        assert [[p.device for p in lane][:1] for lane in lanes] == [["bus-1"], ["car-1"], []]


@pytest.mark.parametrize("as_recorded", [True, False])
def test_a_store_replays_into_a_relay_and_its_store_holds_the_same(
    tmp_path: Path, as_recorded: bool
) -> None:
    """Store A -> relay on store B: B holds exactly A's positions, played in time order."""
    _fleet(tmp_path / "a.db")
    sent: list[float] = []

    async def main() -> int:
        with open_store(f"sqlite:///{tmp_path / 'a.db'}", create=False) as a:
            source = Input("a", lambda: stored_lanes(a), ordered=True)
            plan = list(schedule([source], as_recorded=as_recorded))
            sent.extend(o for o, _ in plan)
            async with running_relay(tmp_path / "b.db") as relay:
                publisher = Publisher(relay.url)
                await publisher.connect()
                assert await play(plan, publisher, speed=0)
                await publisher.close()
        return publisher.stats.stored

    assert arun(main()) == 90
    assert stored(tmp_path / "b.db") == stored(tmp_path / "a.db")
    assert sent == sorted(sent)
    assert sent[0] == 0 and sent[-1] == (29 + (0.666 if as_recorded else 0))


def test_a_broken_file_plays_what_was_read_and_says_where_it_stopped() -> None:
    def truncated() -> Iterator[Item]:
        yield at("a", T0)
        yield at("a", T0 + 1000)
        raise SourceError("f.gpx", "not a valid GPX file: unclosed token: line 9")

    source = Input.file("f.gpx", truncated)
    assert [o for o, _ in schedule([source])] == [0.0, 1.0]
    assert source.report.failed
    assert source.report.lines() == [
        "f.gpx: read 2; stopped: not a valid GPX file: unclosed token: line 9"
    ]


def test_priming_raises_for_a_file_that_cannot_be_read_at_all() -> None:
    opened = 0

    def unreadable() -> Iterator[Item]:
        nonlocal opened
        opened += 1
        raise SourceError("f.gpx", "not an XML file")
        yield  # a generator, as readers are

    with pytest.raises(SourceError, match="not an XML file"):
        Input.file("f.gpx", unreadable).prime()

    def fine() -> Iterator[Item]:
        nonlocal opened
        opened += 1
        yield at("a", T0)

    source = Input.file("f.ndjson", fine)
    source.prime()
    assert [p.device for _, p in schedule([source])] == ["a"]
    assert opened == 2  # the primed lane is the one played, not a second read


def test_a_mongodb_store_replays_into_a_relay_on_sqlite(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The store source uses only the Store interface: MongoDB (nx-27017) pages the same."""
    nx = nx27017_server(request)
    database = fresh_database()
    request.addfinalizer(lambda: nx.drop_database(database))
    fleet = [pos(d, i, ts=ms_to_ts(T0 + i * 1000)) for d in ("bus-1", "bus-2") for i in range(25)]
    with open_store(nx.url(database)) as store:
        store.write(fleet)

    async def main() -> int:
        with open_store(nx.url(database), create=False) as a:
            paged = list(_pages(a, "bus-2", T0 + 3000, T0 + 20_000, 4))
            assert paged == [p for p in fleet if p.device == "bus-2"][3:21]
            plan = list(schedule([Input("a", lambda: stored_lanes(a), ordered=True)]))
            async with running_relay(tmp_path / "b.db") as relay:
                publisher = Publisher(relay.url)
                await publisher.connect()
                assert await play(plan, publisher, speed=0)
                await publisher.close()
        return publisher.stats.stored

    assert arun(main()) == 50
    assert stored(tmp_path / "b.db") == fleet
