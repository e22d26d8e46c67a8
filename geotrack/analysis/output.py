"""Trips and stops written out: CSV, JSON and GeoJSON, streamed as they are decided.

One record shape for every format (:func:`record`): times in RFC 3339 UTC, distances in
metres, durations in seconds, speeds in metres per second (as a position's ``speed``),
coordinates to 7 decimals (about a centimetre). A writer takes trips or stops in the order
:func:`~geotrack.analysis.trips.analyze` gives them, writes each at once, never closes
``out``, and returns how many it wrote.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any, Final, Literal, TextIO

import msgspec

from geotrack.analysis.model import Stop, Trip
from geotrack.errors import InvalidParameter

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "STOP_FIELDS",
    "TRIP_FIELDS",
    "Kind",
    "pieces",
    "record",
    "write",
]

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
    count = 0

    def counted() -> Iterator[Trip | Stop]:
        nonlocal count
        for item in items:
            count += 1
            yield item

    for text in pieces(fmt, kind, counted()):
        out.write(text)
    return count


def pieces(fmt: str, kind: Kind, items: Iterable[Trip | Stop]) -> Iterator[str]:
    """The text :func:`write` writes, a piece at a time (the head, each record, the tail).

    For a caller that hands the text on in chunks as it is made (the HTTP listener).
    InvalidParameter for an unknown format, before anything is made.
    """
    if fmt not in FORMATS:
        raise InvalidParameter(
            "format", f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})"
        )
    return _pieces(fmt, kind, items)


def _pieces(fmt: str, kind: Kind, items: Iterable[Trip | Stop]) -> Iterator[str]:
    if fmt == "csv":
        fields = TRIP_FIELDS if kind == "trips" else STOP_FIELDS
        yield _csv_row(fields)
        for item in items:
            row = record(item)
            yield _csv_row([row[name] for name in fields])
        return
    if fmt == "json":
        head, tail, encode = "[", "]", _json_item
    else:
        head, tail, encode = '{"type":"FeatureCollection","features":[', "]}", _feature
    yield head + "\n"
    first = True
    for item in items:
        yield ("" if first else ",") + encode(item).decode() + "\n"
        first = False
    yield tail + "\n"


def _csv_row(cells: Iterable[Any]) -> str:
    """One row as the csv module writes it (minimal quoting, ``\\r\\n``)."""
    text = io.StringIO()
    csv.writer(text).writerow(cells)
    return text.getvalue()


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
