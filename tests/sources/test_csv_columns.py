"""Mapping other tools' CSV headers to position fields, and their rows to positions."""

from __future__ import annotations

from pathlib import Path

import pytest

from geotrack.errors import SourceError
from geotrack.schema import Position, ms_to_ts
from geotrack.sources.base import ReadOptions, Skipped
from geotrack.sources.csv_columns import columns, device_id, other_rows, validated
from tests.factories import T0


def test_names_case_spaces_and_units_are_mapped() -> None:
    mapped = columns(
        ["GPS Latitude", "Longitude (deg)", "Date", "Time (UTC)", "Speed [mph]", "Bearing",
         "ele", "Horizontal Accuracy", "Device ID", "Sats", "comment", "lat"]
    )  # fmt: skip
    assert mapped.roles == {
        "lat": 0, "lon": 1, "date": 2, "time": 3, "speed": 4, "heading": 5, "alt": 6,
        "acc": 7, "device": 8,
    }  # fmt: skip
    assert mapped.attrs == {"sats": 9}
    assert mapped.ignored == ["comment", "lat"]  # a second latitude is not guessed at
    assert mapped.speed_factor == 0.44704 and mapped.utc


@pytest.mark.parametrize(
    ("header", "factor"),
    [("speed", 1.0), ("speed_kmh", 1 / 3.6), ("Speed (km/h)", 1 / 3.6), ("speed knots", 0.514444)],
)
def test_speed_units(header: str, factor: float) -> None:
    assert columns(["lat", "lon", header]).speed_factor == factor


def test_device_ids_from_names() -> None:
    assert device_id("car-1") == "car-1"
    assert device_id("  Anna's phone ") == "Anna-s-phone"
    assert device_id("🚗") == "device"
    assert len(device_id("x" * 100)) == 64


class Rows:
    """What csv.reader gives other_rows: rows, and the line number of the last."""

    def __init__(self, rows: list[list[str]]) -> None:
        self.rows = rows
        self.line_num = 0

    def __iter__(self) -> Rows:
        return self

    def __next__(self) -> list[str]:
        if self.line_num >= len(self.rows):
            raise StopIteration
        self.line_num += 1
        return self.rows[self.line_num - 1]


def test_rows_become_validated_positions_in_order_with_skips() -> None:
    header = ["lat", "lon", "ts", "heading"]
    rows = Rows([
        ["1", "2", str(T0), "-90"],  # milliseconds; a heading of -90 is 270
        ["91", "2", str(T0 // 1000)],  # latitude out of range (the empty cell left out)
        ["1", "2"],  # too few cells
        ["", "", ""],  # blank: ignored
        ["1.5", "2.5", "2025-11-25T12:00:01Z", ""],
    ])  # fmt: skip
    items = list(validated(other_rows(rows, columns(header), ",", ReadOptions(), Path("g.csv"))))
    assert items[0] == Position(device="g", lat=1.0, lon=2.0, ts=ms_to_ts(T0), heading=270.0)
    assert isinstance(items[1], Skipped) and items[1].where == "line 3"
    assert items[1].reason.startswith("lat:")
    assert items[2] == Skipped("too few cells", "line 4")
    assert items[3] == Position(device="g", lat=1.5, lon=2.5, ts=ms_to_ts(T0 + 1000))
    assert len(items) == 4


def test_no_time_column_without_retime_is_refused() -> None:
    with pytest.raises(SourceError, match="no time column"):
        list(other_rows(Rows([]), columns(["lat", "lon"]), ",", ReadOptions(), Path("g.csv")))
