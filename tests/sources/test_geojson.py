"""Reading GeoJSON: geotrack's own export back, timed Point features, lines with times."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from geotrack.errors import SourceError
from geotrack.export.geojson import write_geojson
from geotrack.importing import import_files
from geotrack.schema import Position
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped
from geotrack.sources.formats import formats
from geotrack.sources.geojson import read_geojson
from geotrack.store import open_store
from tests.conftest import SAMPLES
from tests.factories import pos, stored


def read(path: Path, **options: Any) -> list[Item]:
    return list(read_geojson(path, ReadOptions(**options)))


def positions(items: list[Item]) -> list[Position]:
    return [i for i in items if isinstance(i, Position)]


def detect(path: Path) -> str:
    head = path.read_bytes()[: 1 << 16]
    return next(name for name, fmt in formats().items() if fmt.sniff(head))


def write(tmp_path: Path, document: Any, name: str = "t.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def test_own_export_reads_back_exactly(tmp_path: Path) -> None:
    """Every field and attr of every position, whatever each fix has or lacks."""
    odd = {"quote": 'say "hi"', "unicode": "Grüße 🚲", "int": -(2**63), "none": None, "b": True}
    walk = [
        pos("walk", i, alt=30.5 + i / 10, speed=i / 4, heading=i * 7.5 % 360, acc=3.0)
        for i in range(50)
    ]
    # One fix without altitude: the exporter writes 2D coordinates and the altitudes apart.
    car = [
        pos("car-1", i, lat=-33.8 + i * 1e-5, lon=151.2 - i * 1e-5, alt=None if i == 3 else 9.0)
        for i in range(20)
    ]
    car[5] = pos("car-1", 5, attrs=odd)
    single = [pos("lone", 3, alt=-12.25, attrs={"hr": 71})]
    out = io.StringIO()
    write_geojson([*walk, *car, *single], out)
    path = tmp_path / "export.geojson"
    path.write_text(out.getvalue(), encoding="utf-8")

    items = read(path)
    assert items == [*walk, *car, *single]
    assert detect(path) == "geojson"


def test_point_features_with_a_time_property(tmp_path: Path) -> None:
    point = {"type": "Point", "coordinates": [13.4, 52.5, 34.0]}
    path = write(
        tmp_path,
        collection(
            feature(point, time="2025-01-02T03:04:05.678Z", speed=3.5, course=90, name="a"),
            feature(point, timestamp=1735787045, accuracy=5, battery=80),
            feature(point, datetime="2025-01-02T05:04:07+02:00", device="bike 7"),
            feature(point, ts=1735787048123, tags=["x", "y"]),
            feature(point, name="no time here"),
        ),
        name="points.json",
    )
    items = read(path)
    got = positions(items)
    assert [p.ts for p in got] == [
        "2025-01-02T03:04:05.678Z",
        "2025-01-02T03:04:05.000Z",
        "2025-01-02T03:04:07.000Z",
        "2025-01-02T03:04:08.123Z",
    ]
    assert [p.device for p in got] == ["points", "points", "bike_7", "points"]
    assert (got[0].speed, got[0].heading, got[0].alt, got[0].attrs) == (
        3.5,
        90,
        34.0,
        {"name": "a"},
    )
    assert (got[1].acc, got[1].attrs) == (5, {"battery": 80})
    assert got[3].attrs == {"tags": '["x","y"]'}
    assert [i for i in items if isinstance(i, Skipped)] == [Skipped("no time", "feature 5")]
    # --device wins over the properties.
    assert {p.device for p in positions(read(path, device="mine"))} == {"mine"}


def test_lines_with_parallel_times_every_convention(tmp_path: Path) -> None:
    coords = [[13.4, 52.5, 30], [13.401, 52.501, 31], [13.402, 52.502, 32]]
    times = ["2025-03-01T10:00:00Z", "2025-03-01T10:00:05Z", "2025-03-01T10:00:10Z"]
    line = {"type": "LineString", "coordinates": coords}
    path = write(
        tmp_path,
        collection(
            feature(line, device="togeojson-old", coordTimes=times),
            feature(line, device="togeojson-new", coordinateProperties={"times": times}),
            {**feature(line, device="top-level"), "coordinateProperties": {"times": times}},
            feature(
                {"type": "MultiLineString", "coordinates": [coords[:2], coords[2:]]},
                device="multi",
                coordTimes=[times[:2], times[2:]],
            ),
            feature(
                line,
                device="extras",
                coordinateProperties={"times": times, "heart": [100, 101, 102], "speed": [1, 2, 3]},
            ),
        ),
    )
    got = positions(read(path))
    for device in ("togeojson-old", "togeojson-new", "top-level", "multi", "extras"):
        track = [p for p in got if p.device == device]
        assert [(p.lon, p.lat, p.alt) for p in track] == [tuple(c) for c in coords]
        assert [p.ts for p in track] == [t.replace("Z", ".000Z") for t in times]
    extras = [p for p in got if p.device == "extras"]
    # togeojson's "heart" is what GPX (and so geotrack everywhere) calls "hr".
    assert [(p.speed, p.attrs) for p in extras] == [
        (1, {"hr": 100}),
        (2, {"hr": 101}),
        (3, {"hr": 102}),
    ]


def test_a_line_without_times_and_bad_points_are_skipped_not_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        collection(
            feature({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}),
            feature({"type": "Point", "coordinates": [13.4, 95.0]}, time="2025-01-01T00:00:00Z"),
            feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 1], [0, 0]]]}),
            feature({"type": "Point", "coordinates": [13.4, 52.5]}, time="2025-01-01T00:00:00"),
            feature({"type": "Point", "coordinates": [13.4, 52.5]}, time="2025-01-01T00:00:01Z"),
        ),
    )
    items = read(path)
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [s.where for s in skipped] == [
        "feature 1 (2 points)",
        "feature 2",
        "feature 3",
        "feature 4",
    ]
    assert skipped[0].reason == "no times"
    assert skipped[1].reason.startswith("lat:")
    assert skipped[2].reason == "a Polygon geometry has no track"
    assert "offset" in skipped[3].reason and "--tz" in skipped[3].reason
    [kept] = positions(items)
    assert kept.ts == "2025-01-01T00:00:01.000Z"


def test_times_without_offset_take_the_tz_option(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    path = write(
        tmp_path,
        feature({"type": "Point", "coordinates": [13.4, 52.5]}, time="2025-07-01 12:00:00"),
    )
    [p] = read(path, tz=ZoneInfo("Europe/Berlin"))
    assert isinstance(p, Position) and p.ts == "2025-07-01T10:00:00.000Z"


def test_single_feature_and_bare_geometry_and_empty_collection(tmp_path: Path) -> None:
    one = write(
        tmp_path,
        feature({"type": "Point", "coordinates": [1.5, 2.5]}, time="2025-01-01T00:00:00Z"),
        name="one.geojson",
    )
    assert [(p.lon, p.lat) for p in positions(read(one))] == [(1.5, 2.5)]
    empty = write(tmp_path, collection(), name="empty.geojson")
    assert read(empty) == [Notice("the FeatureCollection has no features")]


def test_truncated_file_keeps_the_features_before_the_cut(tmp_path: Path) -> None:
    points = [pos("cut", i) for i in range(10)]
    features = [
        feature({"type": "Point", "coordinates": [p.lon, p.lat]}, time=p.ts) for p in points
    ]
    text = json.dumps(collection(*features))
    path = tmp_path / "cut.geojson"
    path.write_text(text[: text.index('"Feature"', len(text) // 2) - 10], encoding="utf-8")
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"cut\.geojson: the JSON ends early"):
        got.extend(read_geojson(path, ReadOptions()))
    assert 3 <= len(got) < 10
    assert got == points[: len(got)]


def test_not_json_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [}', encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad\.geojson: not valid JSON") as caught:
        read(path)
    assert "\n" not in str(caught.value)


def test_export_import_round_trip_through_sqlite(tmp_path: Path) -> None:
    """Stored, exported as GeoJSON, imported into another store: the same positions."""
    source, copy = tmp_path / "a.db", tmp_path / "b.db"
    positions_in = [
        pos("walk", i, alt=30.0 + i, speed=1.5, heading=45.0, acc=4.0, attrs={"hr": 90 + i})
        for i in range(30)
    ] + [pos("car-1", i, attrs={"note": "ünïcode"} if i % 2 else None) for i in range(30)]
    with open_store(f"sqlite:///{source}") as store:
        store.write(positions_in)
    path = tmp_path / "all.geojson"
    with open_store(f"sqlite:///{source}") as store, path.open("w", encoding="utf-8") as out:
        write_geojson(store.query(), out)
    with open_store(f"sqlite:///{copy}") as store:
        (first,) = import_files(store, [path])
        (again,) = import_files(store, [path])
    assert (first.format, first.stored, first.ok) == ("geojson", 60, True)
    assert (again.stored, again.duplicates) == (0, 60)
    assert stored(copy, sort=True) == stored(source, sort=True)
    assert stored(copy, sort=True) == sorted(positions_in, key=lambda p: p.key)


@pytest.mark.parametrize("name", ["walk", "multi_segment"])
def test_what_togeojson_makes_of_a_gpx_reads_as_the_gpx_does(name: str) -> None:
    """togeojson's output (samples/geojson, made from samples/*.gpx): the same positions.

    Coordinates, elevations, times, heart rate and cadence (togeojson's ``heart`` and
    ``cads``) and the track's name all come out as the GPX reader gives them.
    """
    path = SAMPLES / "geojson" / f"{name}.togeojson.json"
    from_gpx = list(formats()["gpx"].read(SAMPLES / f"{name}.gpx", ReadOptions(device="x")))
    from_geojson = read(path, device="x")
    assert len(from_geojson) > 100
    if name == "walk":
        assert from_geojson == from_gpx
    else:
        # GPX names several tracks' devices x-1, x-2: compare all but the device.
        assert [msgspec.structs.replace(p, device="x") for p in positions(from_gpx)] == (
            positions(from_geojson)
        )
    assert detect(path) == "geojson"


def test_a_file_of_another_kind_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    path = write(tmp_path, {"locations": [{"latitudeE7": 1, "longitudeE7": 2}] * 100})
    with pytest.raises(
        SourceError, match=r't\.geojson: not GeoJSON: expected an object with a "type"'
    ):
        read(path)
