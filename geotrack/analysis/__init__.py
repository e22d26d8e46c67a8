"""Questions answered from stored tracks, after the fact: trips and stops (sans-I/O).

- :mod:`~geotrack.analysis.trips`: positions in, :class:`Trip` and :class:`Stop` out,
  streaming per device (the rules are in its docstring and docs/trips.md);
- :mod:`~geotrack.analysis.model`: :class:`Trip`, :class:`Stop` and :class:`Params`;
- :mod:`~geotrack.analysis.pieces`: what the detection is built from (fixes, distances,
  the stop window and its drift, a trip and a stop under way), private to the package;
- :mod:`~geotrack.analysis.output`: trips and stops as CSV, JSON or GeoJSON.
"""

from geotrack.analysis.model import Params, Stop, Trip
from geotrack.analysis.output import FORMATS, Kind, record, write
from geotrack.analysis.trips import analyze, stops, trips

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
