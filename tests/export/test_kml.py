"""Writing KML: the gx:Track structure Google Earth reads, and reading it back whole."""

from __future__ import annotations

import io
import shutil
import tempfile
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from geotrack.export import export
from geotrack.export.kml import DEVICE_DATA, write_kml
from geotrack.schema import Position, ms_to_ts, ts_to_ms
from geotrack.sources import kml as kml_reader
from geotrack.sources.base import ReadOptions
from geotrack.sources.gpx import read_gpx
from tests.cli_helpers import geotrack
from tests.factories import stored

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
T0 = 1_780_000_000_000
K = "{http://www.opengis.net/kml/2.2}"
GX = "{http://www.google.com/kml/ext/2.2}"


def pos(device: str, s: float, **fields: Any) -> Position:
    return Position(device=device, lat=52.5, lon=13.4, ts=ms_to_ts(T0 + round(s * 1000)), **fields)


def write(positions: list[Position]) -> str:
    out = io.StringIO()
    assert write_kml(positions, out) == len(positions)
    return out.getvalue()


def read_back(text: str) -> list[Position]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "export.kml"
        path.write_text(text, encoding="utf-8")
        items = list(kml_reader.read(path, ReadOptions()))
    assert all(isinstance(i, Position) for i in items), [
        i for i in items if not isinstance(i, Position)
    ]
    return [i for i in items if isinstance(i, Position)]


def test_one_gx_track_per_device_with_times_then_coordinates() -> None:
    positions = [pos("car-1", 0, alt=30.5), pos("car-1", 1.5, alt=31.0)]
    positions.append(Position(device="bus:7", lat=1.0, lon=2.0, ts=ms_to_ts(T0)))
    root = ET.fromstring(write(sorted(positions, key=lambda p: (p.device, p.ts_ms))))
    placemarks = root.findall(f"{K}Document/{K}Placemark")
    assert [p.findtext(f"{K}name") for p in placemarks] == ["bus:7", "car-1"]
    car = placemarks[1]
    data = car.find(f"{K}ExtendedData/{K}Data")
    assert data is not None
    assert (data.get("name"), data.findtext(f"{K}value")) == (DEVICE_DATA, "car-1")
    track = car.find(f"{GX}Track")
    assert track is not None
    tags = [c.tag for c in track]
    assert tags == [f"{K}altitudeMode", f"{K}when", f"{K}when", f"{GX}coord", f"{GX}coord"]
    assert [w.text for w in track.findall(f"{K}when")] == [
        "2026-05-28T20:26:40.000Z",
        "2026-05-28T20:26:41.500Z",
    ]
    assert [c.text for c in track.findall(f"{GX}coord")] == ["13.4 52.5 30.5", "13.4 52.5 31.0"]
    [bus_coord] = placemarks[0].iter(f"{GX}coord")
    assert bus_coord.text == "2.0 1.0"  # no altitude: none invented


def test_extended_data_arrays_have_a_value_per_point_and_a_schema() -> None:
    positions = [
        pos("w", 0, speed=1.5, attrs={"hr": 120}),
        pos("w", 1, attrs={"hr": 121, "cad": 80, "note": "ok", "flag": True}),
        pos("w", 2, heading=90.0, acc=4.0),
    ]
    root = ET.fromstring(write(positions))
    arrays = {
        a.get("name"): [v.text for v in a.findall(f"{GX}value")]
        for a in root.iter(f"{GX}SimpleArrayData")
    }
    assert arrays == {
        "speed": ["1.5", None, None],
        "hr": ["120", "121", None],
        "cad": [None, "80", None],
        "note": [None, "ok", None],
        "heading": [None, None, "90.0"],
        "acc": [None, None, "4.0"],
    }
    schemas = {
        s.get("id"): f.get("type")
        for s in root.iter(f"{K}Schema")
        for f in s.iter(f"{GX}SimpleArrayField")
    }
    assert schemas == {
        "speed": "float",
        "hr": "int",
        "cad": "int",
        "note": "string",
        "heading": "float",
        "acc": "float",
    }


def test_round_trip_through_the_kml_reader() -> None:
    positions = [
        pos("car-1", 0, alt=30.5, speed=1.5, heading=10.0, attrs={"hr": 120, "temp": 21.5}),
        pos("car-1", 1, alt=-2.25, acc=3.0, attrs={"hr": 121}),
        pos("car-1", 2),
        Position(device="z.9", lat=-33.5, lon=151.25, ts=ms_to_ts(T0), alt=1e-05),
    ]
    assert read_back(write(positions)) == positions


def test_track_names_are_placemark_names_and_come_back() -> None:
    positions = [
        pos("me", 0, attrs={"track": "Morning run"}),
        pos("me", 1, attrs={"track": "Morning run", "hr": 100}),
        pos("me", 500, attrs={"track": "Evening walk"}),
    ]
    root = ET.fromstring(write(positions))
    names = [p.findtext(f"{K}name") for p in root.iter(f"{K}Placemark")]
    assert names == ["Morning run", "Evening walk"]
    assert read_back(write(positions)) == positions


def test_samples_round_trip() -> None:
    for sample in ("walk.gpx", "drive.gpx", "multi_segment.gpx"):
        tracks = read_gpx(SAMPLES / sample)
        positions = sorted(
            (p for t in tracks for p in t.positions), key=lambda p: (p.device, p.ts_ms)
        )
        back = read_back(write(positions))
        assert len(back) == len(positions)
        for a, b in zip(positions, back, strict=True):
            assert (a.device, a.lat, a.lon, a.alt, a.ts) == (b.device, b.lat, b.lon, b.alt, b.ts)
            assert (a.speed, a.heading, a.acc) == (b.speed, b.heading, b.acc)
            numeric = {
                k: v
                for k, v in (a.attrs or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            assert numeric.items() <= (b.attrs or {}).items()


def test_export_dispatches_kml() -> None:
    out = io.StringIO()
    assert export("kml", [pos("a", 0)], out) == 1
    assert out.getvalue().startswith('<?xml version="1.0" encoding="UTF-8"?>\n<kml ')


def test_empty_input_is_an_empty_document() -> None:
    root = ET.fromstring(write([]))
    assert [c.tag for c in root] == [f"{K}Document"]
    assert root.findall(f".//{K}Placemark") == []


def test_names_are_escaped() -> None:
    p = pos("a", 0, attrs={"track": 'A & B <"x">'})
    root = ET.fromstring(write([p]))
    assert root.findtext(f".//{K}Placemark/{K}name") == 'A & B <"x">'


def test_memory_stays_flat() -> None:
    class Sink(io.StringIO):
        def write(self, s: str) -> int:
            return len(s)

    def positions(n: int) -> Iterator[Position]:
        for i in range(n):
            yield Position(
                device="d",
                lat=52.5 + i * 1e-6,
                lon=13.4,
                ts=ms_to_ts(T0 + i * 1000),
                alt=30.5,
                attrs={"hr": 100},
            )

    tracemalloc.start()
    try:
        assert write_kml(positions(30_000), Sink()) == 30_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3_500_000  # spools hold up to 1 MiB each before going to disk


positions_strategy = st.builds(
    Position,
    device=st.sampled_from(["a", "b.2", "c:d_e-f"]),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    ts=st.integers(ts_to_ms("0001-01-01T00:00:00Z"), ts_to_ms("9999-12-31T23:59:59.999Z")).map(
        ms_to_ts
    ),
    alt=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    speed=st.none() | st.floats(min_value=0, allow_infinity=False),
    attrs=st.none()
    | st.dictionaries(
        st.sampled_from(["hr", "cad", "power"]),
        st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False),
        min_size=1,
    ),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(positions_strategy, max_size=10))
def test_random_positions_round_trip(items: list[Position]) -> None:
    unique = {(p.device, p.ts_ms): p for p in items}
    ordered = sorted(unique.values(), key=lambda p: (p.device, p.ts_ms))
    back = read_back(write(ordered))
    assert sorted(back, key=lambda p: (p.device, p.ts_ms)) == ordered


def test_import_export_import_end_to_end(tmp_path: Path) -> None:
    """A real My Tracks KML, imported, exported as KML and imported again: nothing new."""
    shutil.copy(SAMPLES / "kml" / "multitrack.kml", tmp_path / "ride.kml")
    result = geotrack("import", "ride.kml", "--store", "sqlite:///db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before = stored(tmp_path / "db")
    assert len(before) == 16
    result = geotrack("export", "--store", "sqlite:///db", "-o", "out.kml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(kml)" in result.stderr
    result = geotrack("import", "out.kml", "--store", "sqlite:///db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stored 0, 16 duplicates" in result.stderr
    result = geotrack("import", "out.kml", "--store", "sqlite:///db2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stored(tmp_path / "db2") == before
