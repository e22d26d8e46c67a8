"""Trips and stops from stored positions, after the fact (sans-I/O).

Positions go in ordered by device, then time (as :meth:`Store.query` streams them); trips
and stops come out per device in time order, as soon as each is decided. Memory is one
device's current state: the fixes of the last ``stop_duration`` (the stop candidate), the
stop or trip being built (sums, not its fixes; a trip's path only when asked for).

The rules, with the defaults of :class:`Params` (docs/trips.md says why):

- **Stop.** A window of fixes that all lie within ``stop_radius`` (200 m) of its first fix
  (in a local plane: over a few kilometres the geodesic distance to 0.1 %), spans at least
  ``stop_duration`` (3 min) and does not drift is a stop. *Drift* is the least-squares
  velocity of the window's fixes (position against time, each fix weighted by the time
  it stands for): GPS jitter scatters fixes with no trend, a walker moves them steadily,
  so a window drifting faster than ``drift_speed`` (0.3 m/s, about 1 km/h) is movement
  however small its circle. A window that is not yet a stop
  slides: its first fix goes to the trip when a new fix lies outside the radius of it, or
  when the window spans ``stop_duration`` and drifts.
- **Arrival and place.** The stop's *core* is a third of the radius (67 m) around its
  place. The arrival is the window's first fix within the core of where the window's later
  half (by time) settled: fixes on the way in belong to the trip. The place is the
  centroid of the stop's fixes within half the radius of it (a fix farther counts to the
  stop but does not move it, so walking off does not drag the place along).
- **Staying and leaving.** A fix within ``stop_radius`` of the place belongs to the stop.
  Fixes outside are held: the device has left only when ``leave_fixes`` (3) fixes in a
  row, spanning ``leave_s`` (30 s), lie outside; a fix back inside before that makes them
  jitter (they are dropped, and the stop goes on). The departure is the stop's last fix in
  the core (or its last fix, when it stayed off the core but inside the radius for
  ``stop_duration``); the next trip starts there.
- **Excursion.** A trip that comes back within ``stop_radius`` of the place of the stop it
  left, settling there again in less than ``stop_duration`` after leaving, was no trip (a
  burst of jitter, a lap of the car park): the stop goes on, its fixes included. So a stop
  is reported only once the trip after it is known to be one.
- **Gap.** Fixes more than ``gap`` (1 h) apart end a trip. When the fix after the gap lies
  within ``stop_radius`` of the fix before it (of the stop's place, when stopped), the device
  stood still through the gap (a tracker that sleeps when parked): that is a stop, or the
  stop goes on; it arrived at the first of the fixes before the gap that do not drift.
  Otherwise the trip ends at the fix before the gap and a new one starts after.
- **Trip.** The fixes from a departure (or the first fix, or the first after a gap) to the
  next arrival (or the last fix, or the last before a gap). Its distance is the sum of the
  geodesic (WGS 84) lengths between consecutive fixes; average speed is distance over
  duration; top speed is the highest speed a fix reports, or, where no fix reports one, the
  highest over any stretch of at least ``speed_span_s`` (10 s), so that one jittery fix
  does not make a record. A trip that never goes farther than ``stop_radius`` from where it
  starts is not a trip: before a stop whose place is within that radius of its start it
  joins the stop (the device was already there, jittering); at a gap or at the end of the
  data it is dropped.

Late fixes (not after the device's previous one) are skipped. A trip or stop that crosses
the first or last fix given (a ``--since``/``--until`` bound) is cut there.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from pyproj import Geod

from geotrack.errors import InvalidParameter
from geotrack.schema import Position, ms_to_ts

__all__ = ["Params", "Stop", "Trip", "analyze", "stops", "trips"]

_GEOD: Final = Geod(ellps="WGS84")
#: Metres per degree of latitude on the mean Earth sphere, for the local plane in which
#: centroids and drift are computed (over a few hundred metres it is within 0.5 %).
_M_PER_DEG: Final = 6_371_008.8 * math.pi / 180
#: The core of a stop, as a fraction of its radius: arrival and departure are the first
#: and last fixes this close to its place.
CORE: Final = 1 / 3


@dataclass(frozen=True, slots=True)
class Params:
    """The parameters of trip and stop detection (module docstring; docs/trips.md)."""

    stop_radius_m: float = 200.0
    stop_duration_s: float = 180.0
    gap_s: float = 3600.0
    drift_speed: float = 0.3
    leave_fixes: int = 3
    leave_s: float = 30.0
    speed_span_s: float = 10.0

    def __post_init__(self) -> None:
        for option, value in (
            ("--stop-radius", self.stop_radius_m),
            ("--stop-duration", self.stop_duration_s),
            ("--gap", self.gap_s),
            ("drift_speed", self.drift_speed),
            ("leave_s", self.leave_s),
            ("speed_span_s", self.speed_span_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise InvalidParameter(option, f"must be a positive number, not {value!r}")
        if self.leave_fixes < 1:
            raise InvalidParameter("leave_fixes", "must be at least 1")


@dataclass(frozen=True, slots=True)
class Trip:
    """A device moving between two stops (or gaps, or the ends of the data)."""

    device: str
    start_ms: int
    start_lat: float
    start_lon: float
    end_ms: int
    end_lat: float
    end_lon: float
    distance_m: float
    #: Metres per second: the highest a fix reported, else over ``speed_span_s`` stretches.
    max_speed: float
    fixes: int
    #: (lon, lat) of every fix, in order, when asked for (``paths=True``); else empty.
    path: tuple[tuple[float, float], ...] = field(default=(), repr=False)

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000

    @property
    def avg_speed(self) -> float:
        """Metres per second over the whole trip (distance over duration)."""
        return self.distance_m / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def start(self) -> str:
        return ms_to_ts(self.start_ms)

    @property
    def end(self) -> str:
        return ms_to_ts(self.end_ms)


@dataclass(frozen=True, slots=True)
class Stop:
    """A device staying in one place: the centroid of its fixes there, arrival, departure."""

    device: str
    lat: float
    lon: float
    arrival_ms: int
    departure_ms: int
    fixes: int

    @property
    def duration_s(self) -> float:
        return (self.departure_ms - self.arrival_ms) / 1000

    @property
    def arrival(self) -> str:
        return ms_to_ts(self.arrival_ms)

    @property
    def departure(self) -> str:
        return ms_to_ts(self.departure_ms)


def analyze(
    positions: Iterable[Position], params: Params | None = None, *, paths: bool = False
) -> Iterator[Trip | Stop]:
    """Trips and stops of ``positions`` (ordered by device, then time), each when decided.

    Per device they come in time order; with ``paths`` every trip carries its fixes.
    """
    params = params or Params()
    state: _Device | None = None
    for position in positions:
        if state is None or position.device != state.device:
            if state is not None:
                yield from state.finish()
            state = _Device(position.device, params, paths)
        state.add(_Fix(position.ts_ms, position.lat, position.lon, position.speed))
        if state.out:
            yield from state.out
            state.out.clear()
    if state is not None:
        yield from state.finish()


def trips(
    positions: Iterable[Position], params: Params | None = None, *, paths: bool = False
) -> Iterator[Trip]:
    """Only the trips of :func:`analyze`."""
    for item in analyze(positions, params, paths=paths):
        if isinstance(item, Trip):
            yield item


def stops(positions: Iterable[Position], params: Params | None = None) -> Iterator[Stop]:
    """Only the stops of :func:`analyze`."""
    for item in analyze(positions, params):
        if isinstance(item, Stop):
            yield item


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
            fix.t - origin.t > self._REBASE_MS or not _near(origin, fix, self._REBASE_M)
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


def _near(a: _Fix, b: _Fix, metres: float) -> bool:
    """Whether ``b`` lies within ``metres`` of ``a`` (in the local plane: within a few
    kilometres it is the geodesic distance to better than 0.1 %, and far cheaper)."""
    x, y = _plane(a, b)
    return x * x + y * y <= metres * metres


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
    """A trip under way: distance, speeds and whether it left its start, fix by fix."""

    def __init__(self, first: _Fix, params: Params, *, departed: bool, path: bool) -> None:
        self.first = self.last = first
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
        self.distance += _distance(self.last, fix)
        self.last = fix
        self.fixes += 1
        if not self.left and _distance(self.first, fix) > self.params.stop_radius_m:
            self.left = True
        if fix.speed is not None:
            self.reported = max(self.reported or 0.0, fix.speed)
        span_ms = self.params.speed_span_s * 1000
        recent = self._recent
        recent.append((fix.t, self.distance))
        while len(recent) > 1 and fix.t - recent[1][0] >= span_ms:
            recent.popleft()
        t0, d0 = recent[0]
        if fix.t - t0 >= span_ms:
            self.computed = max(self.computed, (self.distance - d0) * 1000 / (fix.t - t0))
        if self.path is not None:
            self.path.append((fix.lon, fix.lat))

    def trip(self, device: str) -> Trip:
        duration_ms = self.last.t - self.first.t
        if self.reported is not None:
            top = self.reported
        else:
            # Shorter than one span: the trip's own average is all there is.
            average = self.distance * 1000 / duration_ms if duration_ms else 0.0
            top = max(self.computed, average)
        return Trip(
            device,
            self.first.t,
            self.first.lat,
            self.first.lon,
            self.last.t,
            self.last.lat,
            self.last.lon,
            self.distance,
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

    def stop(self, device: str) -> Stop:
        """The stop as it ends at its last fix in the core (or staying off it)."""
        place = self.place
        fixes = self.count + self.absorbed - len(self.off_core)
        return Stop(device, place.lat, place.lon, self.arrival.t, self.core_last.t, fixes)


class _Left(NamedTuple):
    """A stop the device left, held back while the trip after it may be an excursion."""

    builder: _StopBuilder
    stop: Stop
    #: Fixes the stop had off its core when it was left (the trip's first, after its start).
    off_core: int


class _Device:
    """One device's detection state (see the module docstring for the rules)."""

    def __init__(self, device: str, params: Params, paths: bool) -> None:
        self.device = device
        self.params = params
        self.paths = paths
        self.radius = params.stop_radius_m
        self.out: list[Trip | Stop] = []
        self.prev: _Fix | None = None
        #: Moving: the stop candidate, and the trip up to its first fix.
        self.window = _Window()
        self.trip: _TripBuilder | None = None
        #: Stopped: the stop, and the fixes outside it not yet a departure.
        self.stop: _StopBuilder | None = None
        self.outside: list[_Fix] = []
        #: Moving after a stop: that stop, not reported until the trip is known to be one
        #: (an excursion of jitter comes back to it in less than ``stop_duration``).
        self.left: _Left | None = None

    def add(self, fix: _Fix) -> None:
        prev = self.prev
        if prev is not None and fix.t <= prev.t:
            return  # a late fix: the store orders by time, so only a caller's mistake
        self.prev = fix
        if prev is not None and fix.t - prev.t > self.params.gap_s * 1000:
            self._after_gap(prev, fix)
        elif self.stop is not None:
            self._stopped(fix)
        else:
            self._moving(fix)

    def finish(self) -> list[Trip | Stop]:
        """Close what is under way at the end of the data; what is left to report."""
        if self.stop is not None:
            self._close_stop()  # fixes outside, not yet a departure, are jitter
        else:
            self._end_trip()
        self._report_left()
        out, self.out = self.out, []
        return out

    # -- stopped ----------------------------------------------------------------------

    def _stopped(self, fix: _Fix) -> None:
        stop = self.stop
        assert stop is not None
        distance = _distance(stop.place, fix)
        if distance <= self.radius:
            self.outside.clear()
            stop.add(fix, distance)
            return
        outside = self.outside
        outside.append(fix)
        if (
            len(outside) >= self.params.leave_fixes
            and outside[-1].t - outside[0].t >= self.params.leave_s * 1000
        ):
            self.trip = self._depart()
            moved = list(outside)
            outside.clear()
            for later in moved:  # one may be the start of the next stop already
                if self.stop is not None:
                    self._stopped(later)
                else:
                    self._moving(later)

    def _depart(self) -> _TripBuilder:
        """End the stop at its last fix in the core; the trip starts there.

        The stop is held back (:attr:`left`) until the trip is known to be a trip.
        """
        stop = self.stop
        assert stop is not None
        trip = _TripBuilder(stop.core_last, self.params, departed=True, path=self.paths)
        for fix in stop.off_core:
            trip.add(fix)
        self.left = _Left(stop, stop.stop(self.device), len(stop.off_core))
        self.stop = None
        return trip

    def _report_left(self) -> None:
        """The stop left last is final: report it (before the trip that followed it)."""
        if self.left is not None:
            self.out.append(self.left.stop)
            self.left = None

    def _back(self, settled: _Fix) -> bool:
        """Resume the stop left last when the trip was an excursion back to it.

        An excursion returns within the radius of the stop's place in less than
        ``stop_duration`` (a burst of jitter, or a lap of the car park): its fixes join
        the stop, and neither it nor a second stop is reported.
        """
        left, trip, window = self.left, self.trip, self.window
        if left is None or trip is None:
            return False
        if window[0].t - trip.first.t >= self.params.stop_duration_s * 1000:
            return False
        stop = left.builder
        if _distance(stop.place, settled) > self.radius:
            return False
        # The fixes it had off its core count again, and the trip's others with them.
        stop.off_core.clear()
        stop.absorbed += trip.fixes - 1 - left.off_core
        for fix in window:
            stop.add(fix, _distance(stop.place, fix))
        self.stop, self.left, self.trip = stop, None, None
        window.clear()
        return True

    def _close_stop(self) -> None:
        assert self.stop is not None
        self.out.append(self.stop.stop(self.device))
        self.stop = None

    # -- moving -----------------------------------------------------------------------

    def _moving(self, fix: _Fix) -> None:
        window = self.window
        window.append(fix)
        if not _near(window[0], fix, self.radius):
            self._commit(window.popleft())
            self._compact()
        duration_ms = self.params.stop_duration_s * 1000
        while len(window) > 1 and window[-1].t - window[0].t >= duration_ms:
            if window.drift() <= self.params.drift_speed:
                self._arrive()
                return
            self._commit(window.popleft())
            self._compact()

    def _compact(self) -> None:
        """Slide the window until every fix in it lies within the radius of its first."""
        window = self.window
        while len(window) > 1:
            anchor = window[0]
            if all(_near(anchor, fix, self.radius) for fix in window):
                return
            self._commit(window.popleft())

    def _commit(self, fix: _Fix) -> None:
        if self.trip is None:
            self.trip = _TripBuilder(fix, self.params, departed=False, path=self.paths)
        else:
            self.trip.add(fix)

    def _arrive(self, *, settle: bool = True) -> None:
        """The window is a stop: end the trip at its first fix (or absorb the trip).

        With ``settle``, fixes on the way in (inside the radius, but not yet where the
        device settled) are the trip's first.
        """
        window = self.window
        if settle:
            settled = _settled(window)
            if self._back(settled):
                return
            while len(window) > 1 and _distance(settled, window[0]) > self.radius * CORE:
                self._commit(window.popleft())
        self._report_left()
        arrival = window[0]
        stop = _StopBuilder(arrival, window, self.params)
        trip = self.trip
        if trip is not None:
            if trip.last is not arrival:
                trip.add(arrival)
            if not trip.left and _distance(trip.first, stop.place) <= self.radius:
                # It never went anywhere: the device was already here, jittering.
                stop.arrival = trip.first
                stop.absorbed = trip.fixes - 1
            elif trip.fixes > 1:
                self.out.append(trip.trip(self.device))
        self.trip = None
        window.clear()
        self.stop = stop

    def _end_trip(self) -> None:
        """The data ends or breaks off: the window's fixes end the trip."""
        for fix in self.window:
            self._commit(fix)
        self.window.clear()
        self._report_left()
        trip = self.trip
        if trip is not None and trip.fixes > 1 and trip.left:
            self.out.append(trip.trip(self.device))
        self.trip = None

    # -- gaps -------------------------------------------------------------------------

    def _after_gap(self, prev: _Fix, fix: _Fix) -> None:
        stop = self.stop
        if stop is not None:
            distance = _distance(stop.place, fix)
            if distance <= self.radius:
                self.outside.clear()  # parked through the gap: the stop goes on
                stop.add(fix, distance)
                stop.stayed()
                return
            # It left during the gap, or had started to before it.
            self.trip = self._depart()
            for moved in self.outside:
                self.trip.add(moved)
            self.outside.clear()
            self._end_trip()
            self._moving(fix)
            return
        if _distance(prev, fix) <= self.radius:
            # Standing still through the gap: a stop, from where it arrived before it.
            window = self.window
            if not window:
                window.append(prev)  # the trip's last fix, already counted there
            # It arrived where the fixes before the gap stopped drifting.
            while len(window) > 1 and window.drift() > self.params.drift_speed:
                self._commit(window.popleft())
            window.append(fix)
            self._compact()
            self._arrive(settle=False)
            assert self.stop is not None
            self.stop.stayed()
            return
        self._end_trip()
        self._moving(fix)
