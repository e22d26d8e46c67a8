"""Simulated movers: inside the region, believable motion, schedule, determinism, schema."""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections import defaultdict

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geotrack.errors import InvalidParameter
from geotrack.schema import DEVICE_PATTERN, BBox, Position, ts_to_ms
from geotrack.sources.simulate import DEFAULT_CENTER, PROFILES, Profile, Simulation

R = 6371008.8
START = 1_780_000_000_000
PROFILE_NAMES: list[Profile] = ["walk", "bike", "car"]


def haversine(a: Position, b: Position) -> float:
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    h = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(b.lon - a.lon) / 2) ** 2
    )
    return 2 * R * math.asin(math.sqrt(min(1.0, h)))


def bearing(a: Position, b: Position) -> float:
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dlam = math.radians(b.lon - a.lon)
    y = math.sin(dlam) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlam)
    return math.degrees(math.atan2(y, x)) % 360


def at(lat: float, lon: float) -> Position:
    return Position("x", lat, lon, 0.0)


def tracks(sim: Simulation, **stop: float) -> dict[str, list[Position]]:
    by_device: dict[str, list[Position]] = defaultdict(list)
    for _, p in sim.positions(**stop):  # type: ignore[arg-type]
        by_device[p.device].append(p)
    return dict(by_device)


def check_motion(sim: Simulation, track: list[Position]) -> None:
    """Every fix valid, in range, and no faster between fixes than the profile allows."""
    motion = PROFILES[sim.profile]
    dt = 1 / sim.rate
    for p in track:
        assert msgspec.convert(msgspec.to_builtins(p), Position) == p
        assert p.speed is not None
        assert 0 <= p.speed <= motion.max_speed
        assert p.heading is not None
        assert 0 <= p.heading < 360
        assert p.acc is not None
        assert 1 <= p.acc <= 30
        assert p.alt is not None
        assert -100 < p.alt < 1000
    for a, b in itertools.pairwise(track):
        assert haversine(a, b) <= motion.max_speed * dt * (1 + 1e-9) + 1e-6
        assert ts_to_ms(b.time) > ts_to_ms(a.time)


def check_turns(sim: Simulation, track: list[Position]) -> None:
    """Headings change no faster than the profile turns plus its drift: no snapping round."""
    motion = PROFILES[sim.profile]
    dt = 1 / sim.rate
    limit = motion.turn_rate * dt + 6 * motion.drift * math.sqrt(dt) + 0.1
    for a, b in itertools.pairwise(track):
        assert abs(((b.heading or 0) - (a.heading or 0) + 180) % 360 - 180) <= limit


def test_long_run_stays_inside_a_small_disc() -> None:
    center = (48.8584, 2.2945)
    sim = Simulation(2, 1.0, center=center, radius_m=300, seed=7, profile="car", start_ms=START)
    middle = at(*center)
    by_device = tracks(sim, duration_s=4 * 3600)
    assert len(by_device) == 2
    for track in by_device.values():
        assert len(track) == 4 * 3600
        check_motion(sim, track)
        check_turns(sim, track)
        assert max(haversine(middle, p) for p in track) <= 300 + 1e-6
        # It goes near the edge, so turning back is what kept it inside.
        assert max(haversine(middle, p) for p in track) > 250


def test_long_run_stays_inside_a_bbox() -> None:
    bbox = BBox(13.40, 52.51, 13.41, 52.515)
    sim = Simulation(3, 0.5, bbox=bbox, seed=3, profile="bike", start_ms=START)
    for track in tracks(sim, duration_s=3 * 3600).values():
        check_motion(sim, track)
        check_turns(sim, track)
        assert all(bbox.contains(p.lon, p.lat) for p in track)


@pytest.mark.parametrize(
    "bbox",
    [
        BBox(179.99, -10.0, -179.99, -9.99),  # across the antimeridian
        BBox(-180.0, 89.98, 180.0, 90.0),  # the north polar cap
        BBox(-180.0, -90.0, 180.0, 90.0),  # the whole world
    ],
)
def test_awkward_bboxes(bbox: BBox) -> None:
    sim = Simulation(2, 1.0, bbox=bbox, seed=5, profile="car", start_ms=START)
    for track in tracks(sim, duration_s=3600).values():
        check_motion(sim, track)
        assert all(bbox.contains(p.lon, p.lat) for p in track)


@pytest.mark.parametrize("center", [(90.0, 0.0), (-89.99, 179.99), (0.0, -180.0)])
def test_discs_over_a_pole_or_the_antimeridian(center: tuple[float, float]) -> None:
    sim = Simulation(2, 1.0, center=center, radius_m=1000, seed=5, profile="car")
    middle = at(*center)
    for track in tracks(sim, duration_s=3600).values():
        check_motion(sim, track)
        check_turns(sim, track)
        assert all(haversine(middle, p) <= 1000 + 1e-6 for p in track)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_motion_is_believable(profile: Profile) -> None:
    motion = PROFILES[profile]
    sim = Simulation(1, 1.0, radius_m=5000, seed=11, profile=profile, start_ms=START)
    (track,) = tracks(sim, duration_s=2 * 3600).values()
    check_motion(sim, track)
    speeds = [p.speed or 0.0 for p in track]
    assert 0.5 * motion.cruise < statistics.mean(speeds) < 1.2 * motion.cruise
    # It stops now and then, but not most of the time.
    stopped = sum(s == 0 for s in speeds) / len(speeds)
    assert 0 < stopped < 0.35
    moved = [haversine(a, b) for a, b in itertools.pairwise(track)]
    # The reported speeds agree with the distance covered.
    assert sum(moved) / len(moved) == pytest.approx(statistics.mean(speeds), rel=0.15)
    for a, b, dist in zip(track, track[1:], moved, strict=False):
        # Bounded acceleration (speeds are rounded to millimetres per second).
        assert abs((b.speed or 0) - (a.speed or 0)) <= max(motion.accel, motion.brake) + 0.0011
        # The reported heading is the direction of travel, to its 0.1° rounding and that
        # of the coordinates (1e-7°: each end within about 8 mm).
        if dist > 0.5:
            off = abs((bearing(a, b) - (b.heading or 0) + 180) % 360 - 180)
            assert off < 0.1 + math.degrees(0.016 / dist)
    # The heading drifts and turns: it does not stay put, nor spin at random.
    turns = [
        abs(((b.heading or 0) - (a.heading or 0) + 180) % 360 - 180)
        for a, b in itertools.pairwise(track)
    ]
    assert statistics.median(turns) < 10
    assert max(turns) > 30


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    min_lon=st.floats(-180, 180),
    min_lat=st.floats(-89, 89),
    width=st.floats(0, 5),
    height=st.floats(0, 1),
    profile=st.sampled_from(PROFILE_NAMES),
    rate=st.sampled_from([0.05, 0.5, 1.0, 4.0]),
    seed=st.integers(0, 2**32),
)
def test_any_bbox_is_never_left(
    min_lon: float,
    min_lat: float,
    width: float,
    height: float,
    profile: Profile,
    rate: float,
    seed: int,
) -> None:
    max_lon = min_lon + width
    if max_lon > 180:
        max_lon -= 360  # across the antimeridian
    bbox = BBox(min_lon, min_lat, max_lon, min(90.0, min_lat + height))
    sim = Simulation(2, rate, bbox=bbox, seed=seed, profile=profile, start_ms=START)
    for track in tracks(sim, count=400).values():
        check_motion(sim, track)
        assert all(bbox.contains(p.lon, p.lat) for p in track)


@settings(max_examples=40, deadline=None)
@given(
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    radius_m=st.floats(1, 50_000),
    profile=st.sampled_from(PROFILE_NAMES),
    rate=st.sampled_from([0.05, 1.0, 10.0]),
    seed=st.integers(0, 2**32),
)
def test_any_disc_is_never_left(
    lat: float, lon: float, radius_m: float, profile: Profile, rate: float, seed: int
) -> None:
    sim = Simulation(
        2, rate, center=(lat, lon), radius_m=radius_m, seed=seed, profile=profile, start_ms=START
    )
    middle = at(lat, lon)
    for track in tracks(sim, count=400).values():
        check_motion(sim, track)
        assert all(haversine(middle, p) <= radius_m + 1e-6 for p in track)


def test_a_point_bbox_keeps_movers_still() -> None:
    bbox = BBox(13.4, 52.5, 13.4, 52.5)
    sim = Simulation(1, 1.0, bbox=bbox, seed=1, start_ms=START)
    for _, p in sim.positions(count=50):
        assert (p.lat, p.lon) == (52.5, 13.4)
        assert msgspec.convert(msgspec.to_builtins(p), Position) == p


def test_default_region_is_central_berlin() -> None:
    sim = Simulation(5, 1.0, seed=2, start_ms=START)
    berlin = at(*DEFAULT_CENTER)
    assert haversine(berlin, at(52.52, 13.405)) < 1000
    assert all(haversine(berlin, p) <= 2000 + 1e-6 for _, p in sim.positions(count=2000))


def test_schedule_interleaves_movers_with_a_phase() -> None:
    sim = Simulation(4, 2.0, seed=1, start_ms=START)
    items = list(sim.positions(count=40))
    offsets = [offset for offset, _ in items]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)  # nobody fires at the same instant
    for k, (offset, p) in enumerate(items):
        i, m = divmod(k, 4)
        assert p.device == f"sim-{m + 1:04d}"
        assert offset == pytest.approx(i / 2.0 + m / 8.0)
        assert ts_to_ms(p.time) == START + round(offset * 1000)


@given(movers=st.integers(1, 5), rate=st.floats(0.01, 1000), count=st.integers(0, 60))
@settings(max_examples=50, deadline=None)
def test_count_and_timestamps(movers: int, rate: float, count: int) -> None:
    sim = Simulation(movers, rate, seed=0, start_ms=START)
    items = list(sim.positions(count=count))
    assert len(items) == count
    last: dict[str, int] = {}
    for offset, p in items:
        ms = ts_to_ms(p.time)
        assert abs(ms - START - offset * 1000) <= 0.5 + 1e-6
        # A mover's fixes never share a millisecond, even at the highest rate.
        assert ms > last.get(p.device, -1)
        last[p.device] = ms


def test_duration_stop() -> None:
    sim = Simulation(3, 2.0, seed=1, start_ms=START)
    items = list(sim.positions(duration_s=10))
    assert len(items) == 3 * 2 * 10
    assert all(offset < 10 for offset, _ in items)
    assert len(list(sim.positions(count=7, duration_s=10))) == 7
    assert len(list(sim.positions(count=100, duration_s=1))) == 6
    assert list(sim.positions(duration_s=0)) == []


def test_unbounded_when_no_stop_is_given() -> None:
    gen = Simulation(1, 1000.0, seed=1).positions()
    for _ in range(5000):
        next(gen)
    offset, _ = next(gen)
    assert offset == pytest.approx(5.0)


def test_deterministic_for_a_seed() -> None:
    def run(seed: int | None, movers: int = 3) -> list[tuple[float, Position]]:
        sim = Simulation(movers, 1.0, seed=seed, profile="bike", start_ms=START)
        return list(sim.positions(count=300))

    assert run(5) == run(5)
    assert run(5) != run(6)
    sim = Simulation(3, 1.0, profile="bike", start_ms=START)
    first = list(sim.positions(count=300))
    assert list(sim.positions(count=300)) == first  # each call starts afresh
    assert run(sim.seed) == first  # a random seed is kept and replays the run
    # A mover's track depends on its own number, not on how many others there are.
    alone = [p for _, p in run(5, movers=1)[:50]]
    among = [p for _, p in run(5, movers=3) if p.device == "sim-0001"][:50]
    assert [(p.lat, p.lon, p.speed) for p in alone] == [(p.lat, p.lon, p.speed) for p in among]


def test_device_ids() -> None:
    sim = Simulation(12, 1.0, seed=1)
    devices = [p.device for _, p in sim.positions(count=12)]
    assert devices == [f"sim-{i:04d}" for i in range(1, 13)]
    assert all(re.match(DEVICE_PATTERN, d) for d in devices)
    custom = Simulation(2, 1.0, prefix="fleet.a", seed=1)
    assert [p.device for _, p in custom.positions(count=2)] == ["fleet.a-0001", "fleet.a-0002"]
    assert Simulation(10_000, 1.0, seed=1).device(9_999) == "sim-10000"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"movers": 0}, "movers"),
        ({"rate": 0.0}, "rate"),
        ({"rate": -1.0}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": 1001.0}, "rate"),
        ({"profile": "plane"}, "profile"),
        ({"prefix": "bad prefix"}, "prefix"),
        ({"prefix": "x" * 60}, "prefix"),
        ({"center": (91.0, 0.0)}, "center"),
        ({"center": (0.0, 0.0), "bbox": BBox(0, 0, 1, 1)}, "center"),
        ({"radius_m": 0.0}, "radius"),
        ({"radius_m": math.nan}, "radius"),
    ],
)
def test_invalid_parameters(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        Simulation(**kwargs)  # type: ignore[arg-type]
    assert info.value.name == name


def test_invalid_stops() -> None:
    sim = Simulation(1, 1.0, seed=1)
    with pytest.raises(InvalidParameter):
        next(sim.positions(count=-1))
    with pytest.raises(InvalidParameter):
        next(sim.positions(duration_s=math.nan))


def test_fixes_are_rounded_to_what_a_gps_means() -> None:
    """1e-7 degrees, mm/s, 0.1 degree and 0.1 m: no 14-decimal coordinates on the wire."""
    sim = Simulation(movers=5, rate=2.0, seed=11, profile="bike", start_ms=START)
    fixes = list(itertools.islice((p for _, p in sim.positions(duration_s=60.0)), 600))
    assert fixes
    for p in fixes:
        assert p.lat == round(p.lat, 7) and p.lon == round(p.lon, 7), p
        assert p.speed == round(p.speed, 3), p
        for value in (p.heading, p.alt, p.acc):
            assert value == round(value, 1), p
        wire = msgspec.json.encode(p).decode()
        for number in re.findall(r"-?\d+\.(\d+)", wire):
            assert len(number) <= 7, wire
