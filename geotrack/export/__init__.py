"""Export formats: write stored positions out as GPX, GeoJSON, CSV, NDJSON or KML.

Every writer takes positions ordered by device, then time (the order the store's queries
return), streams them to a text stream with memory flat in the number of positions, and
returns how many it wrote. A writer never closes ``out``. CSV is written with the csv
module's ``\\r\\n`` line ends, so a file for it should be opened with ``newline=""``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import PurePath
from typing import Final, TextIO

from geotrack.errors import InvalidParameter
from geotrack.schema import Position

__all__ = ["EXTENSIONS", "FORMATS", "export", "format_for_path"]

FORMATS: Final[dict[str, str]] = {
    "gpx": "GPX 1.1: one track per device, a new segment after a gap",
    "geojson": "GeoJSON: one LineString (a Point for a single fix) per device, with times",
    "csv": "CSV with a header: device,ts,lat,lon,alt,speed,heading,acc,attrs",
    "ndjson": "newline-delimited JSON: one wire-format position per line",
    "kml": "KML for Google Earth: one gx:Track per device, with times",
}

EXTENSIONS: Final[dict[str, str]] = {
    "gpx": ".gpx",
    "geojson": ".geojson",
    "csv": ".csv",
    "ndjson": ".ndjson",
    "kml": ".kml",
}

_BY_SUFFIX: Final[dict[str, str]] = {
    ".gpx": "gpx",
    ".geojson": "geojson",
    ".json": "geojson",
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".kml": "kml",
}


def format_for_path(path: str | os.PathLike[str]) -> str | None:
    """The format a file name's suffix implies (case-insensitive), or None."""
    return _BY_SUFFIX.get(PurePath(path).suffix.lower())


def export(fmt: str, positions: Iterable[Position], out: TextIO, *, gap_s: float = 600.0) -> int:
    """Write positions to ``out`` in the format ``fmt``; returns how many were written.

    ``gap_s`` is used by GPX only: a pause longer than that between two fixes of a device
    starts a new track segment. Raises InvalidParameter("format") for a format not in
    FORMATS, before anything is written.
    """
    # Writers are imported on use: a command exporting CSV needs no XML machinery.
    if fmt == "gpx":
        from geotrack.export.gpx import write_gpx

        return write_gpx(positions, out, gap_s=gap_s, creator="geotrack")
    if fmt == "geojson":
        from geotrack.export.geojson import write_geojson

        return write_geojson(positions, out)
    if fmt == "csv":
        from geotrack.export.csv import write_csv

        return write_csv(positions, out)
    if fmt == "ndjson":
        from geotrack.export.ndjson import write_ndjson

        return write_ndjson(positions, out)
    if fmt == "kml":
        from geotrack.export.kml import write_kml

        return write_kml(positions, out)
    raise InvalidParameter("format", f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")
