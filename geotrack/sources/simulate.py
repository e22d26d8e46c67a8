"""Simulated movers: believable tracks inside a region, for demos and load tests.

Each mover walks, rides or drives at a speed that changes smoothly (bounded acceleration
and braking, occasional stops), on a heading that drifts and now and then turns. When the
way ahead leaves the region the mover turns back towards its middle, and a step that would
still cross the edge is never taken, so every fix lies inside. Movement is integrated in
steps of at most one second whatever the reporting rate, on a sphere of the mean Earth
radius. Altitude is a gentle random walk around 40 m: the simulation knows no terrain.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from geotrack.errors import InvalidParameter
from geotrack.schema import DEVICE_PATTERN, BBox, Position, ms_to_ts

__all__ = ["DEFAULT_CENTER", "EARTH_RADIUS_M", "PROFILES", "Motion", "Profile", "Simulation"]

EARTH_RADIUS_M: Final = 6371008.8
DEFAULT_CENTER: Final = (52.5200, 13.4050)  # Berlin, by the Alexanderplatz
MAX_RATE: Final = 1000.0

Profile = Literal["walk", "bike", "car"]


@dataclass(frozen=True, slots=True)
class Motion:
    """How one kind of mover moves: speeds in m/s, angles in degrees, times in seconds."""

    cruise: float
    spread: float  # standard deviation of the cruising speed
    max_speed: float
    accel: float  # m/s²
    brake: float  # m/s²
    drift: float  # random walk of the heading, degrees per √s while moving
    turn_every: float  # mean time between deliberate turns
    turn: tuple[float, float]  # size of a deliberate turn, either way
    turn_rate: float  # degrees per second at most
    corner_speed: float  # the most a mover goes while a sharp turn is under way
    stop_every: float  # mean time between stops
    stop_s: tuple[float, float]  # how long a stop lasts
    retarget_every: float = 20.0  # mean time between changes of the cruising speed


PROFILES: Final[dict[str, Motion]] = {
    "walk": Motion(
        cruise=1.4,
        spread=0.2,
        max_speed=2.5,
        accel=0.5,
        brake=1.0,
        drift=6.0,
        turn_every=60.0,
        turn=(20.0, 120.0),
        turn_rate=90.0,
        corner_speed=1.1,
        stop_every=240.0,
        stop_s=(5.0, 45.0),
    ),
    "bike": Motion(
        cruise=5.0,
        spread=1.0,
        max_speed=9.0,
        accel=1.0,
        brake=2.0,
        drift=3.0,
        turn_every=90.0,
        turn=(20.0, 100.0),
        turn_rate=45.0,
        corner_speed=3.5,
        stop_every=180.0,
        stop_s=(5.0, 40.0),
    ),
    "car": Motion(
        cruise=12.0,
        spread=3.0,
        max_speed=22.0,
        accel=2.0,
        brake=4.0,
        drift=1.5,
        turn_every=60.0,
        turn=(70.0, 110.0),
        turn_rate=30.0,
        corner_speed=6.0,
        stop_every=120.0,
        stop_s=(5.0, 45.0),
    ),
}

_BASE_ALT: Final = 40.0
# Ways out tried, in order, when a step would cross the region's edge: towards the middle
# first, then fanning out (a great circle towards the middle of a wide box can bulge out).
_DETOURS: Final = (0.0, 45.0, -45.0, 90.0, -90.0, 135.0, -135.0, 180.0)


def _destination(lat: float, lon: float, bearing: float, dist_m: float) -> tuple[float, float]:
    """The point dist_m along the great circle leaving (lat, lon) on an initial bearing."""
    phi, lam, theta = math.radians(lat), math.radians(lon), math.radians(bearing)
    delta = dist_m / EARTH_RADIUS_M
    sin_phi2 = math.sin(phi) * math.cos(delta) + math.cos(phi) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lam2 = lam + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi),
        math.cos(delta) - math.sin(phi) * sin_phi2,
    )
    return math.degrees(phi2), (math.degrees(lam2) + 540.0) % 360.0 - 180.0


def _distance(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, h)))


def _bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing in degrees [0, 360) of the great circle from point 1 to point 2."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dlam = math.radians(lon2 - lon1)
    y = math.sin(dlam) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlam)
    return math.degrees(math.atan2(y, x)) % 360.0


def _wrap180(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


class _Region(Protocol):
    middle: tuple[float, float]
    size_m: float  # the least width across, to keep the look-ahead short in a small region

    def contains(self, lat: float, lon: float) -> bool: ...

    def random_point(self, rng: random.Random) -> tuple[float, float]: ...


class _Disc:
    def __init__(self, lat: float, lon: float, radius_m: float) -> None:
        self.middle = (lat, lon)
        self.radius_m = radius_m
        self.size_m = 2 * radius_m

    def contains(self, lat: float, lon: float) -> bool:
        return _distance(self.middle[0], self.middle[1], lat, lon) <= self.radius_m

    def random_point(self, rng: random.Random) -> tuple[float, float]:
        # sqrt spreads starts evenly over the area; 0.8 keeps them off the edge.
        dist = 0.8 * self.radius_m * math.sqrt(rng.random())
        return _destination(self.middle[0], self.middle[1], rng.uniform(0.0, 360.0), dist)


class _Box:
    def __init__(self, bbox: BBox) -> None:
        self.bbox = bbox
        self.width = bbox.max_lon - bbox.min_lon
        if self.width < 0:  # across the antimeridian
            self.width += 360.0
        self.middle = ((bbox.min_lat + bbox.max_lat) / 2, self._lon(0.5))
        height_m = math.radians(bbox.max_lat - bbox.min_lat) * EARTH_RADIUS_M
        width_m = math.radians(self.width) * EARTH_RADIUS_M * math.cos(math.radians(self.middle[0]))
        self.size_m = max(0.0, min(height_m, width_m))

    def _lon(self, fraction: float) -> float:
        lon = self.bbox.min_lon + fraction * self.width
        return lon - 360.0 if lon > 180.0 else lon

    def contains(self, lat: float, lon: float) -> bool:
        return self.bbox.contains(lon, lat)

    def random_point(self, rng: random.Random) -> tuple[float, float]:
        b = self.bbox
        lat = b.min_lat + rng.uniform(0.1, 0.9) * (b.max_lat - b.min_lat)
        return min(max(lat, b.min_lat), b.max_lat), self._lon(rng.uniform(0.1, 0.9))


class _Mover:
    """The state of one mover between fixes."""

    def __init__(self, motion: Motion, region: _Region, rng: random.Random) -> None:
        self.motion = motion
        self.region = region
        self.rng = rng
        self.lat, self.lon = region.random_point(rng)
        self.heading = rng.uniform(0.0, 360.0)
        self.target = self._cruise()
        self.speed = self.target
        self.turn_left = 0.0  # of a deliberate turn, degrees (negative: to the left)
        self.stop_left = 0.0  # seconds
        self.alt = _BASE_ALT + rng.uniform(-5.0, 15.0)
        self.acc = rng.uniform(3.0, 6.0)

    def _cruise(self) -> float:
        m = self.motion
        return min(m.max_speed, max(0.3 * m.cruise, self.rng.gauss(m.cruise, m.spread)))

    def advance(self, seconds: float) -> None:
        steps = max(1, math.ceil(seconds))
        for _ in range(steps):
            self._step(seconds / steps)

    def _step(self, h: float) -> None:
        m, rng = self.motion, self.rng
        if self.stop_left > 0:
            self.stop_left -= h
            if self.stop_left <= 0:
                self.target = self._cruise()
            target = 0.0
        else:
            if rng.random() < h / m.stop_every:
                self.stop_left = rng.uniform(*m.stop_s)
            elif rng.random() < h / m.retarget_every:
                self.target = self._cruise()
            if rng.random() < h / m.turn_every:
                self.turn_left += rng.choice((-1.0, 1.0)) * rng.uniform(*m.turn)
            target = 0.0 if self.stop_left > 0 else self.target
        if abs(self.turn_left) > 20.0:
            target = min(target, m.corner_speed)
        v0 = self.speed
        v1 = v0 + max(-m.brake * h, min(m.accel * h, target - v0))
        if v1 > 0:
            turn = max(-m.turn_rate * h, min(m.turn_rate * h, self.turn_left))
            self.turn_left -= turn
            self.heading = (self.heading + turn + rng.gauss(0.0, m.drift * math.sqrt(h))) % 360.0
        dist = (v0 + v1) / 2 * h
        if dist > 0:
            self._look_ahead(v1)
            dist = self._move(dist)
            self.alt += rng.gauss(0.0, 0.05 * math.sqrt(dist)) - 0.001 * (self.alt - _BASE_ALT)
            if dist == 0:
                v1 = 0.0
        self.speed = v1

    def _look_ahead(self, speed: float) -> None:
        """Start turning back towards the middle when the way ahead leaves the region."""
        reach = min(max(20.0, 10.0 * speed), 0.3 * self.region.size_m)
        if self.region.contains(*_destination(self.lat, self.lon, self.heading, reach)):
            return
        home = _bearing(self.lat, self.lon, *self.region.middle)
        self.turn_left = _wrap180(home + self.rng.gauss(0.0, 20.0) - self.heading)

    def _move(self, dist: float) -> float:
        """Move up to dist metres without leaving the region; returns the distance moved."""
        lat, lon = _destination(self.lat, self.lon, self.heading, dist)
        if self.region.contains(lat, lon):
            self.lat, self.lon = lat, lon
            return dist
        home = _bearing(self.lat, self.lon, *self.region.middle)
        self.turn_left = 0.0
        for d in (dist, dist / 4, dist / 16):
            for detour in _DETOURS:
                heading = (home + detour) % 360.0
                lat, lon = _destination(self.lat, self.lon, heading, d)
                if self.region.contains(lat, lon):
                    self.lat, self.lon, self.heading = lat, lon, heading
                    return d
        return 0.0

    def fix(self, device: str, ts_ms: int) -> Position:
        self.acc = min(25.0, max(1.5, self.acc + self.rng.gauss(0.0, 0.4) + 0.2 * (4.0 - self.acc)))
        heading = round(self.heading, 1)
        lat, lon = self._reported_place()
        # Rounded to what a GPS fix means: 1e-7 degrees (about 1 cm), mm/s, 0.1 degree,
        # 0.1 m. The mover keeps its exact state; only what it reports is rounded.
        return Position(
            device=device,
            lat=lat,
            lon=lon,
            ts=ms_to_ts(ts_ms),
            speed=round(self.speed, 3),
            heading=heading if heading < 360.0 else 0.0,
            alt=round(self.alt, 1),
            acc=round(self.acc, 1),
        )

    def _reported_place(self) -> tuple[float, float]:
        """The place rounded to 1e-7 degrees, and still inside the region.

        Rounding moves a point by up to 5e-8 degrees, which can take a mover at the edge
        out of its region: then the neighbouring grid point inside it is reported (or, for
        a region too small to hold one, the exact place).
        """
        lat, lon = round(self.lat, 7), round(self.lon, 7)
        if self.region.contains(lat, lon):
            return lat, lon
        for la in (math.floor(self.lat * 1e7) / 1e7, math.ceil(self.lat * 1e7) / 1e7):
            for lo in (math.floor(self.lon * 1e7) / 1e7, math.ceil(self.lon * 1e7) / 1e7):
                if self.region.contains(la, lo):
                    return la, lo
        return self.lat, self.lon


class Simulation:
    """A number of movers of one profile that report fixes at a steady rate.

    The region is ``bbox``, or the disc of ``radius_m`` around ``center`` (lat, lon), or
    that disc around :data:`DEFAULT_CENTER` when neither is given. Device ids are
    ``{prefix}-0001`` onwards. Everything is drawn from ``seed`` (a random one, kept in
    ``self.seed``, when None): the same seed and parameters give the same positions, and
    every mover's track depends only on the seed and its own number. ``start_ms`` (Unix
    milliseconds) defaults to the time of construction. ``rate`` is at most 1000 so that
    a mover's fixes have distinct millisecond timestamps.
    """

    def __init__(
        self,
        movers: int = 1,
        rate: float = 1.0,
        *,
        bbox: BBox | None = None,
        center: tuple[float, float] | None = None,
        radius_m: float = 2000.0,
        prefix: str = "sim",
        seed: int | None = None,
        profile: Profile = "walk",
        start_ms: int | None = None,
    ) -> None:
        if movers < 1:
            raise InvalidParameter("movers", f"must be at least 1, got {movers}")
        if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
            raise InvalidParameter("rate", f"must be above 0 and at most {MAX_RATE:g} per second")
        if profile not in PROFILES:
            raise InvalidParameter("profile", f"use one of: {', '.join(PROFILES)}")
        last = f"{prefix}-{movers:04d}"
        if not re.match(DEVICE_PATTERN, last):
            raise InvalidParameter(
                "prefix", f"device ids like {last!r} must be 1-64 characters of A-Z a-z 0-9 . _ : -"
            )
        region: _Region
        if bbox is not None:
            if center is not None:
                raise InvalidParameter("center", "give either a bbox or a center, not both")
            region = _Box(bbox)
        else:
            lat, lon = DEFAULT_CENTER if center is None else center
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise InvalidParameter("center", f"not a (lat, lon) on Earth: {center}")
            if not (math.isfinite(radius_m) and radius_m > 0):
                raise InvalidParameter("radius", f"must be a positive distance, got {radius_m}")
            region = _Disc(lat, lon, radius_m)
        self.movers = movers
        self.rate = rate
        self._region = region
        self.prefix = prefix
        self.profile = profile
        self.motion = PROFILES[profile]
        self.seed = random.SystemRandom().getrandbits(32) if seed is None else seed
        self.start_ms = int(time.time() * 1000) if start_ms is None else start_ms

    def device(self, index: int) -> str:
        """The device id of mover ``index`` (0-based): ``sim-0001`` for 0."""
        return f"{self.prefix}-{index + 1:04d}"

    def positions(
        self, count: int | None = None, duration_s: float | None = None
    ) -> Iterator[tuple[float, Position]]:
        """Yield ``(offset_s, position)`` in offset order, every mover in turn, from scratch.

        Mover ``m``'s fix ``i`` is at ``(i + m / movers) / rate`` seconds, and its ``ts`` is
        ``start_ms`` plus that offset rounded to the millisecond. Stops after ``count``
        positions in all or before the first offset reaching ``duration_s``, whichever
        comes first; runs forever when both are None.
        """
        if count is not None and count < 0:
            raise InvalidParameter("count", f"must not be negative, got {count}")
        if duration_s is not None and not duration_s >= 0:
            raise InvalidParameter("duration", f"must be a non-negative time, got {duration_s}")
        motion, region = self.motion, self._region
        movers = [
            _Mover(motion, region, random.Random(f"{self.seed}:{m}")) for m in range(self.movers)
        ]
        devices = [self.device(m) for m in range(self.movers)]
        per_second = self.movers * self.rate
        dt = 1.0 / self.rate
        n = 0
        for i in itertools.count():
            for m, mover in enumerate(movers):
                if count is not None and n >= count:
                    return
                k = i * self.movers + m
                offset = k / per_second
                if duration_s is not None and offset >= duration_s:
                    return
                if i:
                    mover.advance(dt)
                ts_ms = self.start_ms + math.floor(k * 1000 / per_second + 0.5)
                yield offset, mover.fix(devices[m], ts_ms)
                n += 1
