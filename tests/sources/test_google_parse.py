"""Google location history elements as positions, without files (sans-I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from geotrack.errors import InvalidParameter
from geotrack.schema import Position
from geotrack.sources.base import Item, ReadOptions, Skipped
from geotrack.sources.google_parse import Parser, parse_point


def items(parse: Any, *args: Any) -> list[Item]:
    return list(parse(*args))


@pytest.mark.parametrize(
    ("text", "point"),
    [
        ("48.8583701°, 2.2944813°", (48.8583701, 2.2944813)),
        ("-27.4130260°, 153.5643862°", (-27.413026, 153.5643862)),
        ("geo:55.605487,24.764873", (55.605487, 24.764873)),
        ("geo:-1.5,-2", (-1.5, -2.0)),
        (" 1.5 , 2.5 ", (1.5, 2.5)),
        ({"latLng": "1°, 2°"}, (1.0, 2.0)),
        ({"LatLng": "3°, 4°"}, (3.0, 4.0)),
    ],
)
def test_timeline_points(text: object, point: tuple[float, float]) -> None:
    assert parse_point(text, "point") == point


@pytest.mark.parametrize("text", ["", "geo:", "48.85°", "north, south", None, 12, {"x": 1}])
def test_bad_timeline_points_name_the_field(text: object) -> None:
    with pytest.raises(InvalidParameter, match=r"^visit\.placeLocation: expected a point"):
        parse_point(text, "visit.placeLocation")


def test_e7_values_written_unsigned_are_corrected_exactly() -> None:
    parser = Parser("phone", ReadOptions())
    record = {
        "timestampMs": "1700000000000",
        "latitudeE7": 2**32 - 338688197,
        "longitudeE7": 2**32 - 1512092955,
    }
    [p] = items(parser.record, record, "locations 1")
    assert isinstance(p, Position)
    assert (p.lat, p.lon) == (-33.8688197, -151.2092955)


def test_unknown_values_of_records_are_left_out() -> None:
    # -1 is what Android writes for a velocity or heading it does not know.
    record = {
        "timestamp": "2020-01-01T00:00:00Z",
        "latitudeE7": 1,
        "longitudeE7": 2,
        "velocity": -1,
        "heading": -1,
        "accuracy": -1,
        "altitude": -3,
    }
    [p] = items(Parser("phone", ReadOptions()).record, record, "locations 1")
    assert isinstance(p, Position)
    assert (p.speed, p.heading, p.acc, p.alt) == (None, None, None, -3)


def test_once_drops_a_position_at_the_time_of_the_one_before() -> None:
    parser = Parser("phone", ReadOptions())
    a = Position(device="phone", lat=1, lon=2, ts="2020-01-01T00:00:00Z")
    b = Position(device="phone", lat=3, lon=4, ts="2020-01-01T00:00:00Z")
    c = Position(device="phone", lat=5, lon=6, ts="2020-01-01T00:00:01Z")
    skipped = Skipped("no time", "x")
    assert list(parser.once(iter([a, skipped, b, c]))) == [a, skipped, c]
    assert parser.shared == 1


def test_a_segment_without_times_is_skipped_whole() -> None:
    parser = Parser("phone", ReadOptions())
    segment = {"timelinePath": [{"point": "1°, 2°", "time": "2020-01-01T00:00:00Z"}]}
    assert items(parser.segment, segment, "segment 1") == [
        Skipped("startTime: required", "segment 1")
    ]
