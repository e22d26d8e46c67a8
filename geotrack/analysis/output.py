"""Trips and stops written out: CSV, JSON and GeoJSON, streamed as they are decided.

One record shape for every format (:func:`record`): times in RFC 3339 UTC, distances in
metres, durations in seconds, speeds in metres per second (as a position's ``speed``),
coordinates to 7 decimals (about a centimetre). A writer takes trips or stops in the order
:func:`~geotrack.analysis.trips.analyze` gives them, writes each at once, never closes
``out``, and returns how many it wrote.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, Final, Literal, TextIO

import msgspec

from geotrack.analysis.model import Stop, Trip
from geotrack.errors import InvalidParameter

__all__ = ["CONTENT_TYPES", "FORMATS", "STOP_FIELDS", "TRIP_FIELDS", "Kind", "record", "write"]

Kind = Literal["trips", "stops"]

#: Formats a writer knows (the CLI adds ``table``, for a terminal).
FORMATS: Final = ("csv", "json", "geojson")
CONTENT_TYPES: Final[dict[str, str]] = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "geojson": "application/geo+json",
}
TRIP_FIELDS: Final = (
    "device",
    "start",
    "start_lat",
    "start_lon",
    "end",
    "end_lat",
    "end_lon",
    "distance_m",
    "duration_s",
    "avg_speed",
    "max_speed",
    "fixes",
)
STOP_FIELDS: Final = ("device", "lat", "lon", "arrival", "departure", "duration_s", "fixes")

_encode: Final = msgspec.json.Encoder().encode


def record(item: Trip | Stop) -> dict[str, Any]:
    """The fields of a trip (:data:`TRIP_FIELDS`) or a stop (:data:`STOP_FIELDS`)."""
    if isinstance(item, Trip):
        return {
            "device": item.device,
            "start": item.start,
            "start_lat": round(item.start_lat, 7),
            "start_lon": round(item.start_lon, 7),
            "end": item.end,
            "end_lat": round(item.end_lat, 7),
            "end_lon": round(item.end_lon, 7),
            "distance_m": round(item.distance_m, 1),
            "duration_s": item.duration_s,
            "avg_speed": round(item.avg_speed, 2),
            "max_speed": round(item.max_speed, 2),
            "fixes": item.fixes,
        }
    return {
        "device": item.device,
        "lat": round(item.lat, 7),
        "lon": round(item.lon, 7),
        "arrival": item.arrival,
        "departure": item.departure,
        "duration_s": item.duration_s,
        "fixes": item.fixes,
    }


def write(fmt: str, kind: Kind, items: Iterable[Trip | Stop], out: TextIO) -> int:
    """Write ``items`` as ``fmt`` (csv, json or geojson); returns how many.

    CSV has a header row even when nothing follows; JSON is an array of records; GeoJSON a
    FeatureCollection of LineStrings (a trip's path when it has one, else its two ends)
    and Points (stops), each with its record as properties.
    """
    if fmt == "csv":
        return _write_csv(kind, items, out)
    if fmt == "json":
        return _write_array(items, out, b"[", b"]", _json_item)
    if fmt == "geojson":
        head = b'{"type":"FeatureCollection","features":['
        return _write_array(items, out, head, b"]}", _feature)
    raise InvalidParameter("format", f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")


def _write_csv(kind: Kind, items: Iterable[Trip | Stop], out: TextIO) -> int:
    writer = csv.writer(out)
    fields = TRIP_FIELDS if kind == "trips" else STOP_FIELDS
    writer.writerow(fields)
    count = 0
    for item in items:
        row = record(item)
        writer.writerow([row[name] for name in fields])
        count += 1
    return count


def _json_item(item: Trip | Stop) -> bytes:
    return _encode(record(item))


def _feature(item: Trip | Stop) -> bytes:
    geometry: dict[str, Any]
    if isinstance(item, Trip):
        path = item.path or ((item.start_lon, item.start_lat), (item.end_lon, item.end_lat))
        coordinates = [[round(lon, 7), round(lat, 7)] for lon, lat in path]
        geometry = {"type": "LineString", "coordinates": coordinates}
    else:
        geometry = {"type": "Point", "coordinates": [round(item.lon, 7), round(item.lat, 7)]}
    return _encode({"type": "Feature", "geometry": geometry, "properties": record(item)})


def _write_array(
    items: Iterable[Trip | Stop], out: TextIO, head: bytes, tail: bytes, encode: Any
) -> int:
    out.write(head.decode() + "\n")
    count = 0
    for item in items:
        out.write(("," if count else "") + encode(item).decode() + "\n")
        count += 1
    out.write(tail.decode() + "\n")
    return count
