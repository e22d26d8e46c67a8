"""Trips and stops on constructed tracks whose answers are known."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod

from geotrack.analysis import Params, Stop, Trip, analyze, stops, trips
from geotrack.errors import InvalidParameter
from geotrack.schema import Position, ms_to_ts
from tests.factories import T0

GEOD = Geod(ellps="WGS84")
HOME = (52.52, 13.405)


class Track:
    """Builds one device's fixes: drive along a bearing, stand (with jitter), skip time."""

    def __init__(self, device: str = "car-1", start: tuple[float, float] = HOME) -> None:
        self.device = device
        self.lat, self.lon = start
        self.t = T0
        self.fixes: list[Position] = []
        self.rng = random.Random(13)

    def _fix(self, lat: float, lon: float, **extra: float) -> None:
        self.fixes.append(
            Position(device=self.device, lat=lat, lon=lon, ts=ms_to_ts(self.t), **extra)
        )

    def move(
        self,
        seconds: float,
        speed: float,
        bearing: float,
        every: float = 5.0,
        jitter: float = 0.0,
        reported: float | None = None,
    ) -> Track:
        """Fixes every ``every`` s while moving at ``speed`` m/s (the first at the start)."""
        for _ in range(round(seconds / every)):
            extra = {} if reported is None else {"speed": reported}
            self._fix(*self._jittered(jitter), **extra)
            lon, lat, _ = GEOD.fwd(self.lon, self.lat, bearing, speed * every)
            self.lat, self.lon = lat, lon
            self.t += round(every * 1000)
        return self

    def stand(self, seconds: float, every: float = 5.0, jitter: float = 0.0) -> Track:
        """Fixes every ``every`` s, each up to ``jitter`` metres off in each axis."""
        return self.move(seconds, 0.0, 0.0, every, jitter)

    def skip(self, seconds: float) -> Track:
        self.t += round(seconds * 1000)
        return self

    def jump(self, metres: float, bearing: float) -> Track:
        lon, lat, _ = GEOD.fwd(self.lon, self.lat, bearing, metres)
        self.lat, self.lon = lat, lon
        return self

    def _jittered(self, jitter: float) -> tuple[float, float]:
        if not jitter:
            return self.lat, self.lon
        dx = self.rng.uniform(-jitter, jitter)
        dy = self.rng.uniform(-jitter, jitter)
        lon, lat, _ = GEOD.fwd(self.lon, self.lat, 90, dx)
        lon, lat, _ = GEOD.fwd(lon, lat, 0, dy)
        return lat, lon


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(GEOD.inv(a[1], a[0], b[1], b[0])[2])


def split(items: list[Trip | Stop]) -> tuple[list[Trip], list[Stop]]:
    return [i for i in items if isinstance(i, Trip)], [i for i in items if isinstance(i, Stop)]


def test_a_ten_minute_stop_mid_drive() -> None:
    track = Track().move(600, 15, 90)  # 9 km east at 54 km/h
    arrived = track.t
    place = (track.lat, track.lon)
    track.stand(600, jitter=10)
    left = track.t
    track.move(600, 15, 0)
    found = list(analyze(track.fixes))
    drives, halts = split(found)
    assert [type(i).__name__ for i in found] == ["Trip", "Stop", "Trip"]
    (stop,) = halts
    assert abs(stop.arrival_ms - arrived) <= 30_000
    assert abs(stop.departure_ms - left) <= 30_000
    assert 540 <= stop.duration_s <= 660
    assert metres((stop.lat, stop.lon), place) < 20
    first, second = drives
    assert first.start_ms == T0
    assert first.end_ms == stop.arrival_ms and second.start_ms == stop.departure_ms
    assert first.distance_m == pytest.approx(9000, rel=0.03)
    assert second.distance_m == pytest.approx(9000, rel=0.03)
    assert first.max_speed == pytest.approx(15, rel=0.05)
    assert first.avg_speed == pytest.approx(15, rel=0.05)


def test_a_parked_device_jittering_30_m_for_an_hour_is_one_stop_and_no_trip() -> None:
    for every in (1.0, 10.0, 30.0):
        track = Track().stand(3600, every=every, jitter=30)
        drives, halts = split(list(analyze(track.fixes)))
        assert drives == [], every
        (stop,) = halts
        assert stop.arrival_ms == T0
        assert stop.departure_ms == track.fixes[-1].ts_ms
        assert stop.fixes == len(track.fixes)
        assert metres((stop.lat, stop.lon), HOME) < 10


def test_a_single_wild_fix_does_not_split_a_stop() -> None:
    track = Track().stand(1200, jitter=20).jump(600, 45)
    track.stand(5)  # one fix 600 m off
    track.jump(600, 225).stand(1200, jitter=20)
    drives, halts = split(list(analyze(track.fixes)))
    assert drives == []
    (stop,) = halts
    assert stop.duration_s == pytest.approx(2405, abs=5)


def test_a_burst_of_wild_fixes_for_a_minute_does_not_split_a_stop() -> None:
    track = Track().stand(1200, jitter=20).jump(400, 45)
    track.stand(60, jitter=50)  # 12 fixes 400 m off, for a minute (multipath)
    track.jump(400, 225).stand(1200, jitter=20)
    drives, halts = split(list(analyze(track.fixes)))
    assert drives == []
    (stop,) = halts
    assert stop.arrival_ms == T0
    assert stop.departure_ms == track.fixes[-1].ts_ms
    assert stop.fixes == len(track.fixes)


def test_a_real_round_trip_back_to_the_same_place_is_a_trip() -> None:
    track = Track().stand(600).move(300, 10, 90).move(300, 10, 270).stand(600)
    found = list(analyze(track.fixes))
    assert [type(i).__name__ for i in found] == ["Stop", "Trip", "Stop"]
    trip = found[1]
    assert isinstance(trip, Trip)
    assert trip.distance_m == pytest.approx(6000, rel=0.05)


def test_a_tracker_that_reports_seldom_while_parked() -> None:
    """Every 5 s while moving, every 5 minutes while parked: the drift is weighted by time."""
    track = Track().move(600, 15, 90, every=5)
    arrived = track.t
    track.stand(1800, every=300, jitter=15)
    left = track.t
    track.move(600, 15, 0, every=5)
    found = list(analyze(track.fixes))
    assert [type(i).__name__ for i in found] == ["Trip", "Stop", "Trip"]
    stop = found[1]
    assert isinstance(stop, Stop)
    assert (stop.arrival_ms, stop.departure_ms) == (arrived, left)


def test_a_walker_stopping_for_coffee_with_a_fix_every_30_s() -> None:
    track = Track("walker").move(900, 1.3, 0, every=30, jitter=10)
    arrived = track.t
    track.stand(240, every=30, jitter=10)
    left = track.t
    track.move(900, 1.3, 0, every=30, jitter=10)
    drives, halts = split(list(analyze(track.fixes)))
    assert len(drives) == 2
    (stop,) = halts
    # One fix either side at most.
    assert arrived - 30_000 <= stop.arrival_ms <= arrived
    assert left - 30_000 <= stop.departure_ms <= left + 30_000


def test_a_long_gap_ends_the_trip() -> None:
    track = Track().move(600, 15, 90)
    before = track.fixes[-1]
    track.skip(7200).jump(20_000, 180).move(600, 15, 90)
    drives, halts = split(list(analyze(track.fixes)))
    assert halts == []
    first, second = drives
    assert first.end_ms == before.ts_ms
    assert second.start_ms == before.ts_ms + 5000 + 7_200_000
    # No distance is counted across the gap.
    assert first.distance_m + second.distance_m == pytest.approx(2 * 8925, rel=0.02)


def test_a_tracker_asleep_while_parked_is_a_stop_through_the_gap() -> None:
    track = Track().move(600, 15, 90)
    parked = track.fixes[-1]
    track.skip(3 * 3600).move(600, 15, 0)
    drives, halts = split(list(analyze(track.fixes)))
    assert len(drives) == 2
    (stop,) = halts
    assert stop.arrival_ms == parked.ts_ms
    assert stop.departure_ms >= parked.ts_ms + 3 * 3_600_000
    assert drives[0].end_ms == stop.arrival_ms


def test_a_gap_shorter_than_the_gap_option_does_not_end_a_trip() -> None:
    track = Track().move(600, 15, 90).skip(1800).jump(3000, 90).move(600, 15, 90)
    assert len(list(trips(track.fixes))) == 1
    assert len(list(trips(track.fixes, Params(gap_s=600)))) == 2


@pytest.mark.parametrize("speed", [0.5, 0.8])
def test_a_slow_walker_who_never_stops_has_no_stops(speed: float) -> None:
    track = Track("walker").move(3600, speed, 30, every=5, jitter=3)
    drives, halts = split(list(analyze(track.fixes)))
    assert halts == []
    (walk,) = drives
    assert walk.start_ms == T0 and walk.end_ms == track.fixes[-1].ts_ms
    # Jitter adds to a sum of short steps, never takes away.
    assert speed * 3600 * 0.98 < walk.distance_m < speed * 3600 * 2


def test_jitter_does_not_add_up_to_distance_at_one_fix_a_second() -> None:
    track = Track("walker").move(1800, 1.2, 30, every=1, jitter=3)
    (walk,) = trips(track.fixes)
    assert walk.distance_m == pytest.approx(2160, rel=0.05)
    # Counting every step, the same jitter would almost triple it.
    (every_step,) = trips(track.fixes, Params(min_step_m=0))
    assert every_step.distance_m > 2.5 * 2160


def test_a_walker_who_stops_for_five_minutes_has_that_stop() -> None:
    track = Track("walker").move(900, 1.2, 30, jitter=3)
    arrived = track.t
    track.stand(300, jitter=8).move(900, 1.2, 30, jitter=3)
    drives, halts = split(list(analyze(track.fixes)))
    assert len(drives) == 2
    (stop,) = halts
    # A walker is inside the 200 m circle for a while before and after.
    assert abs(stop.arrival_ms - arrived) <= 120_000
    assert 300 <= stop.duration_s <= 600


def test_a_stop_shorter_than_the_stop_duration_is_no_stop() -> None:
    track = Track().move(300, 15, 90).stand(120).move(300, 15, 90)
    assert len(list(trips(track.fixes))) == 1
    assert list(stops(track.fixes)) == []
    assert len(list(stops(track.fixes, Params(stop_duration_s=60)))) == 1


def test_reported_speeds_give_the_top_speed() -> None:
    track = Track().move(300, 15, 90, reported=16.5).stand(600).move(30, 15, 0)
    first = next(trips(track.fixes))
    assert first.max_speed == 16.5
    # A device that reports 0 for unknown: the speed from the fixes instead.
    track = Track().move(300, 15, 90, reported=0.0).stand(600)
    assert next(trips(track.fixes)).max_speed == pytest.approx(15, rel=0.01)


def test_paths_and_devices_one_after_the_other() -> None:
    a = Track("a").move(300, 10, 90).fixes
    b = Track("b").stand(600).fixes
    found = list(analyze(a + b, paths=True))
    assert [(i.device, type(i).__name__) for i in found] == [("a", "Trip"), ("b", "Stop")]
    trip = found[0]
    assert isinstance(trip, Trip)
    assert len(trip.path) == trip.fixes == len(a)
    assert trip.path[0] == (a[0].lon, a[0].lat)


def test_results_stream_before_the_input_ends() -> None:
    track = Track().move(300, 15, 90).stand(600).move(300, 15, 90).stand(600)
    read = 0

    def counted() -> Iterator[Position]:
        nonlocal read
        for fix in track.fixes:
            read += 1
            yield fix

    found = analyze(counted())
    assert isinstance(next(found), Trip)
    assert read < len(track.fixes) / 2


def test_late_fixes_are_skipped() -> None:
    fixes = Track().stand(600).fixes
    (stop,) = stops([*fixes[:10], fixes[3], *fixes[10:]])
    assert stop.fixes == len(fixes)


@pytest.mark.parametrize(
    ("field", "option"),
    [
        ("stop_radius_m", "--stop-radius"),
        ("stop_duration_s", "--stop-duration"),
        ("gap_s", "--gap"),
    ],
)
def test_parameters_must_be_positive(field: str, option: str) -> None:
    with pytest.raises(InvalidParameter, match=f"^{option}: must be a positive number"):
        Params(**{field: 0.0})


def test_the_windows_running_drift_is_the_least_squares_one() -> None:
    """The sums a sliding window keeps give what a fresh fit over its fixes gives."""
    from geotrack.analysis.pieces import _Fix, _plane, _Window

    def fitted(fixes: list[_Fix]) -> float:
        origin = fixes[0]
        ts = [(f.t - origin.t) / 1000 for f in fixes]
        n = len(ts)
        ws = [(ts[min(i + 1, n - 1)] - ts[max(i - 1, 0)]) / 2 for i in range(n)]
        xy = [_plane(origin, f) for f in fixes]
        total = sum(ws)
        mt = sum(w * t for w, t in zip(ws, ts, strict=True)) / total
        mx = sum(w * p[0] for w, p in zip(ws, xy, strict=True)) / total
        my = sum(w * p[1] for w, p in zip(ws, xy, strict=True)) / total
        vt = sum(w * (t - mt) ** 2 for w, t in zip(ws, ts, strict=True))
        vx = sum(w * (t - mt) * (p[0] - mx) for w, t, p in zip(ws, ts, xy, strict=True))
        vy = sum(w * (t - mt) * (p[1] - my) for w, t, p in zip(ws, ts, xy, strict=True))
        return float(math.hypot(vx, vy) / vt)

    rng = random.Random(7)
    window = _Window()
    t, lat, lon = T0, 52.0, 13.0
    for _ in range(5000):
        t += rng.choice([1000, 5000, 60_000, 300_000])
        lat += rng.uniform(-1e-4, 2e-4)
        lon += rng.uniform(-1e-4, 2e-4)
        window.append(_Fix(t, lat, lon, None))
        while len(window) > rng.randint(2, 60):
            window.popleft()
        if len(window) > 2:
            assert window.drift() == pytest.approx(fitted(list(window)), rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("moving", [True, False])
def test_memory_is_one_trip_or_stop_not_the_history(moving: bool) -> None:
    """A 5.5-hour trip (or stop) at 1 Hz costs what a 33-minute one does (20,000 fixes
    would take megabytes if they were kept)."""
    import tracemalloc

    def fixes(n: int) -> Iterator[Position]:
        rng = random.Random(3)
        for i in range(n):
            lat = 52.52 + (i * 1e-4 if moving else rng.uniform(-2e-4, 2e-4))
            yield Position(device="d", lat=lat, lon=13.4, ts=ms_to_ts(T0 + i * 1000))

    peaks = []
    for n in (2_000, 20_000):
        tracemalloc.start()
        try:
            assert len(list(analyze(fixes(n)))) == 1
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < peaks[0] + 100_000, peaks


def test_a_real_run_paused_twice_has_two_stops_over_the_pauses() -> None:
    """samples/multi_segment.gpx: a run recorded in 3 segments, paused 4 and 6 minutes with
    no fixes meanwhile, then a dog walk that never pauses; drive.gpx's red lights are short."""
    from geotrack.sources.gpx import read_gpx
    from tests.conftest import SAMPLES

    run, dog = read_gpx(SAMPLES / "multi_segment.gpx")
    found = list(analyze(run.positions))
    assert [type(i).__name__ for i in found] == ["Trip", "Stop", "Trip", "Stop", "Trip"]
    # The pauses: the last fix before and the first after each.
    ms = [p.ts_ms for p in run.positions]
    pauses = [(a, b) for a, b in itertools.pairwise(ms) if b - a > 60_000]
    assert len(pauses) == 2
    for stop, (before, after) in zip(found[1::2], pauses, strict=True):
        assert isinstance(stop, Stop)
        # Around the pause, give or take the time to run across the stop's core (~20 s).
        assert before - 30_000 <= stop.arrival_ms <= before
        assert after <= stop.departure_ms <= after + 30_000
    total = sum(i.distance_m for i in found if isinstance(i, Trip))
    assert 750 < total < 850
    drives, halts = split(list(analyze(dog.positions)))
    assert (len(drives), halts) == (1, [])
    (drive,) = read_gpx(SAMPLES / "drive.gpx")
    drives, halts = split(list(analyze(drive.positions)))
    assert (len(drives), halts) == (1, [])
    # Its fixes report speed: the top speed is the highest reported.
    assert drives[0].max_speed == max(p.speed or 0 for p in drive.positions)
    # scripts/make_samples.py drove 2,168 m; fixes jitter by 3 m, also at three red lights.
    assert drives[0].distance_m == pytest.approx(2168, rel=0.05)


@st.composite
def _journeys(draw: st.DrawFn) -> list[Position]:
    """A device's day made of random legs: moving, standing, silent, a jump."""
    track = Track("any", (draw(st.floats(-60, 60)), draw(st.floats(-179, 179))))
    track.rng = random.Random(draw(st.integers(0, 2**16)))
    for _ in range(draw(st.integers(1, 8))):
        every = draw(st.sampled_from([1.0, 5.0, 30.0, 120.0]))
        seconds = draw(st.floats(10, 2400))
        leg = draw(st.sampled_from(["move", "stand", "skip", "jump"]))
        if leg == "move":
            speed = draw(st.floats(0.2, 35))
            track.move(seconds, speed, draw(st.floats(0, 359)), every, draw(st.floats(0, 40)))
        elif leg == "stand":
            track.stand(seconds, every, draw(st.floats(0, 60)))
        elif leg == "skip":
            track.skip(draw(st.floats(1, 3 * 3600)))
        else:
            track.jump(draw(st.floats(0, 5000)), draw(st.floats(0, 359)))
    return track.fixes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_journeys())
def test_any_track_gives_ordered_trips_and_stops_that_never_overlap(fixes: list[Position]) -> None:
    params = Params()
    found = list(analyze(fixes, params))
    first, last = (fixes[0].ts_ms, fixes[-1].ts_ms) if fixes else (0, 0)
    previous_end = first
    for item in found:
        start, end = (
            (item.start_ms, item.end_ms)
            if isinstance(item, Trip)
            else (item.arrival_ms, item.departure_ms)
        )
        # In time order, one after the other (a trip may start where a stop ended).
        assert first <= previous_end <= start <= end <= last
        previous_end = end
        if isinstance(item, Stop):
            assert item.duration_s >= params.stop_duration_s
            assert item.fixes >= 2
        else:
            assert item.fixes >= 2
            assert item.distance_m >= 0 and item.max_speed >= 0
            assert item.avg_speed <= item.max_speed + 1e-9 or item.duration_s == 0
