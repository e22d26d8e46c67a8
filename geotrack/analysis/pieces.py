"""What the detection in :mod:`.trips` is built from (private to this package).

Fixes and distances (geodesic through pyproj's Geod; a local plane for centroids, drift
and radius checks), the stop candidate with its running drift, and a trip and a stop
under way.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Final, NamedTuple

from pyproj import Geod

from geotrack.analysis.model import Params, Stop, Trip

__all__ = ["CORE"]

_GEOD: Final = Geod(ellps="WGS84")
#: Metres per degree of latitude on the mean Earth sphere, for the local plane in which
#: centroids and drift are computed (over a few hundred metres it is within 0.5 %).
_M_PER_DEG: Final = 6_371_008.8 * math.pi / 180
#: The core of a stop, as a fraction of its radius: arrival and departure are the first
#: and last fixes this close to its place.
CORE: Final = 1 / 3


class _Fix(NamedTuple):
    t: int  # Unix milliseconds
    lat: float
    lon: float
    speed: float | None


def _distance(a: _Fix, b: _Fix) -> float:
    return float(_GEOD.inv(a.lon, a.lat, b.lon, b.lat)[2])


def _plane(origin: _Fix, fix: _Fix) -> tuple[float, float]:
    """``fix`` in metres east and north of ``origin`` (across the antimeridian too)."""
    dlon = (fix.lon - origin.lon + 540.0) % 360.0 - 180.0
    return (
        dlon * math.cos(math.radians(origin.lat)) * _M_PER_DEG,
        (fix.lat - origin.lat) * _M_PER_DEG,
    )


def _unplane(origin: _Fix, x: float, y: float) -> tuple[float, float]:
    lat = origin.lat + y / _M_PER_DEG
    coslat = math.cos(math.radians(origin.lat))
    lon = origin.lon + (x / (coslat * _M_PER_DEG) if coslat > 1e-9 else 0.0)
    lon = (lon + 540.0) % 360.0 - 180.0
    return max(-90.0, min(90.0, lat)), lon


class _Window(deque[_Fix]):
    """The stop candidate: its fixes, and the sums their drift is computed from.

    Drift is the speed of the weighted least-squares line through the fixes' positions
    (in a local plane) against time. Each fix weighs the time it stands for, half the
    intervals either side of it, so a tracker that reports often while moving and seldom
    while still is judged by where it spent its time, not by how many fixes it sent from
    where. The sums follow appends and pops (each interval gives half its length to each
    of its two fixes), so a window sliding along a walker costs the same per fix however
    many fixes it holds; they are recomputed around a new origin every hour or 5 km.
    """

    _REBASE_MS: Final = 3_600_000
    _REBASE_M: Final = 5_000.0

    def __init__(self) -> None:
        super().__init__()
        self._origin: _Fix | None = None
        self._sums = [0.0] * 7

    def _weigh(self, fix: _Fix, weight: float) -> None:
        origin = self._origin
        assert origin is not None
        t = (fix.t - origin.t) / 1000
        x, y = _plane(origin, fix)
        sums = self._sums
        sums[0] += weight
        sums[1] += weight * t
        sums[2] += weight * x
        sums[3] += weight * y
        sums[4] += weight * t * t
        sums[5] += weight * t * x
        sums[6] += weight * t * y

    def _rebase(self, origin: _Fix | None) -> None:
        self._origin = origin
        self._sums = [0.0] * 7
        for before, after in zip(self, list(self)[1:], strict=False):
            half = (after.t - before.t) / 2000
            self._weigh(before, half)
            self._weigh(after, half)

    def append(self, fix: _Fix) -> None:
        origin = self._origin
        if not self:
            self._origin = fix
        elif origin is None or (
            fix.t - origin.t > self._REBASE_MS or _metres(origin, fix) > self._REBASE_M
        ):
            self._rebase(self[0])
        if self:
            last = self[-1]
            half = (fix.t - last.t) / 2000
            super().append(fix)
            self._weigh(last, half)
            self._weigh(fix, half)
        else:
            super().append(fix)

    def popleft(self) -> _Fix:
        first = super().popleft()
        if self:
            half = (self[0].t - first.t) / 2000
            self._weigh(first, -half)
            self._weigh(self[0], -half)
        else:
            self._rebase(None)
        return first

    def clear(self) -> None:
        super().clear()
        self._rebase(None)

    def drift(self) -> float:
        """The speed (m/s) of the weighted least-squares line through the fixes."""
        sw, swt, swx, swy, swtt, swtx, swty = self._sums
        if len(self) < 2 or sw <= 0:
            return 0.0
        vt = swtt - swt * swt / sw
        if vt <= 0:
            return 0.0
        return math.hypot(swtx - swt * swx / sw, swty - swt * swy / sw) / vt


def _metres(a: _Fix, b: _Fix) -> float:
    """How far ``b`` is from ``a`` in the local plane: within a few kilometres the geodesic
    distance to better than 0.1 %, and far cheaper."""
    x, y = _plane(a, b)
    return math.hypot(x, y)


def _settled(window: deque[_Fix]) -> _Fix:
    """Where the window's later half (by time) is: the centroid of its fixes."""
    origin = window[-1]
    middle = (window[0].t + origin.t) / 2
    later = [_plane(origin, f) for f in window if f.t >= middle]
    lat, lon = _unplane(
        origin, sum(p[0] for p in later) / len(later), sum(p[1] for p in later) / len(later)
    )
    return _Fix(origin.t, lat, lon, None)


class _TripBuilder:
    """A trip under way: distance, speeds and whether it left its start, fix by fix.

    The distance grows by steps of at least ``min_step_m``: a fix closer than that to the
    last one counted waits for the next, so jitter between frequent fixes of a slow device
    does not add up to distance it never went; the trip's last fix always counts.
    """

    def __init__(self, first: _Fix, params: Params, *, departed: bool, path: bool) -> None:
        self.first = self.last = self.counted = first
        self.params = params
        self.fixes = 1
        self.distance = 0.0
        #: Went farther than the stop radius from its start (a departure always has).
        self.left = departed
        self.reported: float | None = first.speed
        self.computed = 0.0
        # (time, distance so far): the latest entry at least speed_span_s old stays first.
        self._recent: deque[tuple[int, float]] = deque([(first.t, 0.0)])
        self.path: list[tuple[float, float]] | None = [(first.lon, first.lat)] if path else None

    def add(self, fix: _Fix) -> None:
        step = _distance(self.counted, fix)
        if step >= self.params.min_step_m:
            self.distance += step
            self.counted = fix
            self._speed(fix.t)
        self.last = fix
        self.fixes += 1
        if not self.left and _distance(self.first, fix) > self.params.stop_radius_m:
            self.left = True
        if fix.speed is not None:
            self.reported = max(self.reported or 0.0, fix.speed)
        if self.path is not None:
            self.path.append((fix.lon, fix.lat))

    def _speed(self, t: int) -> None:
        """The top speed so far, between counted fixes at least ``speed_span_s`` apart."""
        span_ms = self.params.speed_span_s * 1000
        recent = self._recent
        recent.append((t, self.distance))
        while len(recent) > 1 and t - recent[1][0] >= span_ms:
            recent.popleft()
        t0, d0 = recent[0]
        if t - t0 >= span_ms:
            self.computed = max(self.computed, (self.distance - d0) * 1000 / (t - t0))

    def trip(self, device: str) -> Trip:
        duration_ms = self.last.t - self.first.t
        distance = self.distance
        if self.counted is not self.last:
            distance += _distance(self.counted, self.last)
        average = distance * 1000 / duration_ms if duration_ms else 0.0
        if self.reported is not None and self.reported >= average:
            top = self.reported
        else:
            # No speeds reported, or only ones below the average (a device that sends 0
            # for unknown); shorter than one span, the trip's own average is all there is.
            top = max(self.computed, average)
        return Trip(
            device,
            self.first.t,
            self.first.lat,
            self.first.lon,
            self.last.t,
            self.last.lat,
            self.last.lon,
            distance,
            top,
            self.fixes,
            tuple(self.path or ()),
        )


class _StopBuilder:
    """A stop under way: where it is, and the fixes since the device was last at its core.

    Its place is the centroid of its fixes within half the radius of it (those farther
    count to the stop but do not move it, so a device walking off does not drag it along).
    """

    def __init__(
        self, arrival: _Fix, fixes: Iterable[_Fix], params: Params, absorbed: int = 0
    ) -> None:
        self.arrival = self.last = self.core_last = arrival
        self.origin = arrival
        self.radius = params.stop_radius_m
        self.hold_ms = params.stop_duration_s * 1000
        self.sx = self.sy = 0.0
        self.weight = 0
        self.count = 0
        self.absorbed = absorbed
        #: Fixes inside the radius but outside the core since the last one in the core
        #: (at most ``stop_duration`` of them: staying there that long is staying).
        self.off_core: list[_Fix] = []
        self.place = arrival
        for fix in fixes:
            self.add(fix, _distance(self.place, fix) if self.count else 0.0)
        #: The last fix of the window that made it a stop: it lasts at least until then.
        self.confirmed = self.last

    def add(self, fix: _Fix, distance: float) -> None:
        """Add a fix ``distance`` metres from the place (within the radius)."""
        self.count += 1
        self.last = fix
        if distance <= self.radius / 2:
            x, y = _plane(self.origin, fix)
            self.sx += x
            self.sy += y
            self.weight += 1
            lat, lon = _unplane(self.origin, self.sx / self.weight, self.sy / self.weight)
            self.place = _Fix(fix.t, lat, lon, None)
        if distance <= self.radius * CORE:
            self.core_last = fix
            self.off_core.clear()
        else:
            self.off_core.append(fix)
            if fix.t - self.off_core[0].t >= self.hold_ms:
                self.core_last = fix
                self.off_core.clear()

    def stayed(self) -> None:
        """The device is taken to have stayed until its last fix (it slept through a gap)."""
        self.core_last = self.last
        self.off_core.clear()

    def leaving(self) -> tuple[_Fix, list[_Fix]]:
        """The departure, if the device left now, and the stop's fixes after it.

        The departure is the last fix in the core, or the last of the window that made it
        a stop if that is later: a stop lasts at least ``stop_duration``.
        """
        if self.core_last.t >= self.confirmed.t:
            return self.core_last, list(self.off_core)
        return self.confirmed, [f for f in self.off_core if f.t > self.confirmed.t]

    def stop(self, device: str) -> Stop:
        """The stop as it ends at its departure (:meth:`leaving`)."""
        place = self.place
        departure, after = self.leaving()
        fixes = self.count + self.absorbed - len(after)
        return Stop(device, place.lat, place.lon, self.arrival.t, departure.t, fixes)
