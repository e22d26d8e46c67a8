"""Questions answered from stored tracks, after the fact: trips and stops (sans-I/O).

- :mod:`~geotrack.analysis.trips`: positions in, :class:`Trip` and :class:`Stop` out,
  streaming per device (the rules are in its docstring and docs/trips.md);
- :mod:`~geotrack.analysis.output`: trips and stops as CSV, JSON or GeoJSON.
"""

from geotrack.analysis.output import FORMATS, Kind, record, write
from geotrack.analysis.trips import Params, Stop, Trip, analyze, stops, trips

__all__ = [
    "FORMATS",
    "Kind",
    "Params",
    "Stop",
    "Trip",
    "analyze",
    "record",
    "stops",
    "trips",
    "write",
]
