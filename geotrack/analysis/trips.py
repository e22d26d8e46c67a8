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
  half (by time) settled: fixes on the way in belong to the trip (what is left must still
  span ``stop_duration``, or it is no stop yet). The place is the centroid of the stop's
  fixes within half the radius of it (a fix farther counts to the stop but does not move
  it, so walking off does not drag the place along).
- **Staying and leaving.** A fix within ``stop_radius`` of the place belongs to the stop.
  Fixes outside are held: the device has left only when ``leave_fixes`` (3) fixes in a
  row, spanning ``leave_s`` (30 s), lie outside; a fix back inside before that makes them
  jitter (they are dropped, and the stop goes on). The departure is the stop's last fix in
  the core (or its last fix, when it stayed off the core but inside the radius for
  ``stop_duration``), never before the last fix of the window that made it a stop; the
  next trip starts there.
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
  geodesic (WGS 84) lengths between consecutive fixes, each at least ``min_step_m`` (10 m)
  from the one before it (a fix closer waits for the next, so that jitter between frequent
  fixes does not add up; the last fix always counts); average speed is distance over
  duration; top speed is the highest speed a fix reports (unless that is below the
  average: a device sending 0 for unknown), else the highest over any stretch of at least
  ``speed_span_s`` (10 s), so that one jittery fix does not make a record. A trip that
  never goes farther than ``stop_radius`` from where it starts is not a trip: before a
  stop whose place is within that radius of its start it joins the stop (the device was
  already there, jittering); at a gap or at the end of the data it is dropped.

Late fixes (not after the device's previous one) are skipped. A trip or stop that crosses
the first or last fix given (a ``--since``/``--until`` bound) is cut there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from geotrack.analysis.model import Params, Stop, Trip
from geotrack.analysis.pieces import (
    CORE,
    _distance,
    _Fix,
    _metres,
    _settled,
    _StopBuilder,
    _TripBuilder,
    _Window,
)
from geotrack.schema import Position

__all__ = ["Params", "Stop", "Trip", "analyze", "stops", "trips"]


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
        #: At least the distance (m) of the window's farthest fix from its first.
        self.reach = 0.0
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
        departure, after = stop.leaving()
        trip = _TripBuilder(departure, self.params, departed=True, path=self.paths)
        for fix in after:
            trip.add(fix)
        self.left = _Left(stop, stop.stop(self.device), len(after))
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
        if len(window) == 1:
            self.reach = 0.0
        else:
            distance = _metres(window[0], fix)
            if distance > self.radius:
                self._commit(window.popleft())
                self._compact()
            else:
                self.reach = max(self.reach, distance)
        duration_ms = self.params.stop_duration_s * 1000
        while len(window) > 1 and window[-1].t - window[0].t >= duration_ms:
            if window.drift() <= self.params.drift_speed:
                self._arrive()
                return
            self._slide()

    def _slide(self) -> None:
        """The window's first fix goes to the trip; the window stays within the radius."""
        window = self.window
        first = window.popleft()
        self._commit(first)
        if window:
            # Every fix was within ``reach`` of the old first, so within reach + step of
            # the new one: only when that could pass the radius is the window measured.
            step = _metres(first, window[0])
            if self.reach + step <= self.radius:
                self.reach += step
            else:
                self._compact()

    def _compact(self) -> None:
        """Slide the window until every fix in it lies within the radius of its first."""
        window = self.window
        while window:
            anchor = window[0]
            reach = max(_metres(anchor, fix) for fix in window)
            if reach <= self.radius or len(window) == 1:
                self.reach = reach
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
            if window[-1].t - window[0].t < self.params.stop_duration_s * 1000:
                # Settled, but not yet for ``stop_duration``: not a stop yet.
                self._compact()
                return
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
