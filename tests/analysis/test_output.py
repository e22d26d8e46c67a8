"""Trips and stops as CSV, JSON and GeoJSON: valid documents for none, one and several."""

from __future__ import annotations

import csv
import io
import json

import pytest

from geotrack.analysis import Stop, Trip, record, write
from geotrack.analysis.output import STOP_FIELDS, TRIP_FIELDS
from geotrack.errors import InvalidParameter
from tests.factories import T0

TRIP = Trip("car-1", T0, 52.52, 13.405, T0 + 600_000, 52.53, 13.42, 1500.04, 4.567, 121)
WALK = Trip("walk", T0, 1.0, 2.0, T0 + 10_000, 1.0, 2.001, 111.2, 11.12, 3, ((2.0, 1.0),) * 3)
STOP = Stop("car-1", 52.123456789, 13.987654321, T0, T0 + 600_000, 120)


def test_a_record_has_every_field_in_units() -> None:
    trip = record(TRIP)
    assert tuple(trip) == TRIP_FIELDS
    assert trip["start"] == "2025-11-25T12:00:00.000Z"
    assert (trip["distance_m"], trip["duration_s"]) == (1500.0, 600.0)
    assert (trip["avg_speed"], trip["max_speed"]) == (2.5, 4.57)
    stop = record(STOP)
    assert tuple(stop) == STOP_FIELDS
    assert (stop["lat"], stop["lon"]) == (52.1234568, 13.9876543)
    assert stop["duration_s"] == 600.0


@pytest.mark.parametrize("items", [[], [STOP], [STOP, STOP]])
def test_json_and_geojson_are_valid_for_any_count(items: list[Stop]) -> None:
    out = io.StringIO()
    assert write("json", "stops", items, out) == len(items)
    assert json.loads(out.getvalue()) == [record(s) for s in items]
    out = io.StringIO()
    assert write("geojson", "stops", items, out) == len(items)
    document = json.loads(out.getvalue())
    assert document["type"] == "FeatureCollection"
    assert [f["geometry"] for f in document["features"]] == [
        {"type": "Point", "coordinates": [13.9876543, 52.1234568]} for _ in items
    ]


def test_a_trip_is_its_path_or_its_two_ends() -> None:
    out = io.StringIO()
    write("geojson", "trips", [TRIP, WALK], out)
    ends, path = json.loads(out.getvalue())["features"]
    assert ends["geometry"]["coordinates"] == [[13.405, 52.52], [13.42, 52.53]]
    assert path["geometry"]["coordinates"] == [[2.0, 1.0]] * 3
    assert path["properties"] == record(WALK)


def test_csv_has_a_header_even_alone() -> None:
    out = io.StringIO()
    assert write("csv", "trips", [], out) == 0
    assert out.getvalue() == ",".join(TRIP_FIELDS) + "\r\n"
    out = io.StringIO()
    write("csv", "trips", [TRIP], out)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert row == {k: str(v) for k, v in record(TRIP).items()}


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidParameter, match=r"^format: unknown format 'xml'"):
        write("xml", "trips", [], io.StringIO())
