"""Overland batches: the mapping, batch parsing (sans-I/O) and the file reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from geotrack.errors import InvalidParameter, SourceError
from geotrack.schema import Position
from geotrack.sources.base import Item, ReadOptions, Skipped
from geotrack.sources.formats import formats
from geotrack.sources.overland import parse_location, parse_overland, read_overland
from tests.conftest import SAMPLES

README_BATCH = SAMPLES / "overland" / "readme-batch.json"


def feature(i: int = 0, **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [13.4 + i * 1e-4, 52.5 + i * 1e-4]},
        "properties": {"timestamp": f"2025-06-01T12:00:{i:02d}Z", "device_id": "phone"}
        | properties,
    }


def read(path: Path, **options: Any) -> list[Item]:
    return list(read_overland(path, ReadOptions(**options)))


def test_mapping_of_the_properties() -> None:
    p = parse_location(
        feature(
            altitude=-3.5,
            speed=-1,
            course=-1,
            horizontal_accuracy=-1,
            battery_level=0.5,
            motion=[],
            wifi="home",
            pauses=False,
            timestamp="2025-06-01T14:00:00+0200",
        )
    )
    # Core Location's -1 means unknown: left out, not stored as a number.
    assert p == Position(
        device="phone",
        lat=52.5,
        lon=13.4,
        ts="2025-06-01T12:00:00.000Z",
        alt=-3.5,
        attrs={"batt": 50, "wifi": "home", "pauses": False},
    )
    assert parse_location(feature(course=360)).heading == 0
    extras = parse_location(feature(beacons=[{"id": "a"}], steps={"today": 12}))
    assert extras.attrs == {"beacons": '[{"id":"a"}]', "steps": '{"today":12}'}
    assert parse_location(feature(), device="given").device == "given"


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("not a feature", "location: expected a GeoJSON feature"),
        ({"type": "Feature", "properties": {}}, "geometry.coordinates: expected [lon, lat]"),
        (feature(device_id=""), "device_id: empty: set a Device ID"),
        (feature(timestamp=None), "timestamp: required"),
        (feature(timestamp="noon"), "time"),
        (feature(speed="fast"), "speed: expected a number"),
    ],
)
def test_bad_locations_name_the_field(bad: Any, error: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_location(bad)
    assert str(caught.value).startswith(error)


def test_a_batch_keeps_its_good_locations_and_its_current_one() -> None:
    body = {
        "locations": [feature(0), feature(1, timestamp="noon"), feature(2)],
        "current": feature(9),
        "trip": {"mode": "bicycle"},
    }
    positions, refused = parse_overland(body)
    assert [p.ts for p in positions] == [
        "2025-06-01T12:00:00.000Z",
        "2025-06-01T12:00:02.000Z",
        "2025-06-01T12:00:09.000Z",
    ]
    assert [where for where, _ in refused] == ["locations[1]"]
    with pytest.raises(InvalidParameter, match="locations: expected"):
        parse_overland([feature(0)])


def test_the_readme_batch_file() -> None:
    """The request body Overland's README documents, as a file: its device_id is empty."""
    [p] = read(README_BATCH)
    assert isinstance(p, Position)
    assert (p.device, p.ts, p.lat, p.lon) == (
        "readme-batch",
        "2015-10-01T15:00:00.000Z",
        37.3318,
        -122.030581,
    )
    assert p.attrs is not None and p.attrs["motion"] == "driving,stationary"
    assert [x.device for x in read(README_BATCH, device="me")] == ["me"]  # type: ignore[union-attr]
    head = README_BATCH.read_bytes()
    # An Overland batch is GeoJSON too: the more specific format is found first.
    assert next(name for name, fmt in formats().items() if fmt.sniff(head)) == "overland"
    assert formats()["geojson"].sniff(head)


def test_a_batch_file_with_a_bad_location_and_a_cut(tmp_path: Path) -> None:
    body = {"locations": [feature(i) for i in range(20)]}
    body["locations"][3]["properties"]["timestamp"] = "later"
    text = json.dumps(body)
    whole = tmp_path / "batch.json"
    whole.write_text(text, encoding="utf-8")
    items = read(whole)
    assert len([i for i in items if isinstance(i, Position)]) == 19
    [skipped] = [i for i in items if isinstance(i, Skipped)]
    assert skipped.where == "location 4" and skipped.reason.startswith("timestamp: ")

    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2], encoding="utf-8")
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"cut\.json: the JSON ends early"):
        got.extend(read_overland(cut, ReadOptions()))
    assert 7 <= len(got) < 11
    assert got == items[: len(got)]
