"""Trips, stops and the parameters that find them: the values :mod:`.trips` gives out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from geotrack.errors import InvalidParameter
from geotrack.schema import ms_to_ts

__all__ = ["Params", "Stop", "Trip"]


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
    min_step_m: float = 10.0

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
        if not (math.isfinite(self.min_step_m) and self.min_step_m >= 0):
            raise InvalidParameter("min_step_m", f"must be 0 or more, not {self.min_step_m!r}")
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
