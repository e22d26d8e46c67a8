"""Writing GPX: GPX 1.1 structure, segment splits, escaping, and reading every field back."""

from __future__ import annotations

import io
import math
import re
import tempfile
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gpxpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geotrack.export.gpx import TPX_NAMESPACE, write_gpx
from geotrack.schema import MAX_ATTRS, Position, ms_to_ts, ts_to_ms
from geotrack.sources.gpx import GT_NAMESPACE, Track, read_gpx

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
T0 = 1_780_000_000_000
GPX = "{http://www.topografix.com/GPX/1/1}"
GT = "{" + GT_NAMESPACE + "}"
TPX = "{" + TPX_NAMESPACE + "}"
# The children GPX 1.1 allows, in the order its schema fixes (gpx.xsd, wptType and others).
ORDER = {
    "gpx": ["metadata", "wpt", "rte", "trk", "extensions"],
    "trk": ["name", "cmt", "desc", "src", "link", "number", "type", "extensions", "trkseg"],
    "trkseg": ["trkpt", "extensions"],
    "trkpt": [
        "ele", "time", "magvar", "geoidheight", "name", "cmt", "desc", "src", "link", "sym",
        "type", "fix", "sat", "hdop", "vdop", "pdop", "ageofdgpsdata", "dgpsid", "extensions",
    ],
}  # fmt: skip
DECIMAL = re.compile(r"-?\d+(\.\d+)?")
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


def check_gpx11(text: str) -> ET.Element:
    """Fail unless ``text`` is GPX 1.1 as its schema wants it (what we write of it)."""
    assert text.isascii()
    assert f'xmlns:gt="{GT_NAMESPACE}"' in text.split(">", 2)[1]
    root = ET.fromstring(text)
    assert root.tag == f"{GPX}gpx"
    assert root.get("version") == "1.1"
    assert root.get("creator")

    def walk(element: ET.Element, kind: str) -> None:
        names = [c.tag.removeprefix(GPX) for c in element]
        allowed = ORDER[kind]
        assert all(n in allowed for n in names), names
        assert [allowed.index(n) for n in names] == sorted(allowed.index(n) for n in names)
        for child, name in zip(element, names, strict=True):
            if name in ORDER and name != kind:
                walk(child, name)

    walk(root, "gpx")
    for trk in root.iter(f"{GPX}trk"):
        assert trk.findall(f"{GPX}trkseg"), "a trk without segments"
        for seg in trk.iter(f"{GPX}trkseg"):
            assert seg.findall(f"{GPX}trkpt"), "an empty trkseg"
    for point in root.iter(f"{GPX}trkpt"):
        lat, lon = point.get("lat", ""), point.get("lon", "")
        assert DECIMAL.fullmatch(lat), lat
        assert DECIMAL.fullmatch(lon), lon
        assert -90 <= float(lat) <= 90
        assert -180 <= float(lon) <= 180
        ele = point.find(f"{GPX}ele")
        assert ele is None or DECIMAL.fullmatch(ele.text or ""), ele.text
        assert DATETIME.fullmatch(point.findtext(f"{GPX}time") or "")
        for extensions in point.iter(f"{GPX}extensions"):
            assert all(child.tag.startswith((GT, TPX)) for child in extensions)
    return root


def export(positions: Sequence[Position], **kwargs: Any) -> str:
    out = io.StringIO()
    assert write_gpx(positions, out, **kwargs) == len(positions)
    return out.getvalue()


def pos(device: str, s: float, **fields: Any) -> Position:
    return Position(device=device, lat=52.5, lon=13.4, ts=ms_to_ts(T0 + round(s * 1000)), **fields)


def same_position(a: Position, b: Position) -> None:
    """Equal in every field but device (a file's stem names its devices)."""
    assert abs(a.lat - b.lat) <= 1e-7
    assert abs(a.lon - b.lon) <= 1e-7
    assert (a.ts, a.alt, a.speed, a.heading, a.acc) == (b.ts, b.alt, b.speed, b.heading, b.acc)
    assert (a.attrs or None) == b.attrs


def read_back(text: str, directory: Path) -> dict[str, Track]:
    """The tracks of an exported file, keyed by their device (one track each)."""
    path = directory / "export.gpx"
    path.write_text(text, encoding="utf-8")
    tracks = read_gpx(path)
    assert all(t.warnings == [] for t in tracks), [t.warnings for t in tracks]
    assert len({t.device for t in tracks}) == len(tracks)
    return {t.device: t for t in tracks}


def by_device_then_time(tracks: list[Track]) -> list[Position]:
    return sorted((p for t in tracks for p in t.positions), key=lambda p: (p.device, p.ts_ms))


# --- structure -----------------------------------------------------------------------------


def test_empty_input_is_an_empty_gpx() -> None:
    text = export([])
    root = check_gpx11(text)
    assert list(root) == []


def test_one_trk_per_device_named_after_it() -> None:
    positions = [pos("a", 0), pos("a", 1), pos("b:2", 0), pos("c", 5)]
    root = check_gpx11(export(positions))
    names = [trk.findtext(f"{GPX}name") for trk in root.iter(f"{GPX}trk")]
    assert names == ["a", "b:2", "c"]
    points = [len(trk.findall(f".//{GPX}trkpt")) for trk in root.iter(f"{GPX}trk")]
    assert points == [2, 1, 1]


def test_device_coming_back_starts_another_trk() -> None:
    root = check_gpx11(export([pos("a", 0), pos("b", 0), pos("a", 1)]))
    assert [t.findtext(f"{GPX}name") for t in root.iter(f"{GPX}trk")] == ["a", "b", "a"]


@pytest.mark.parametrize(
    ("gap_s", "segments"),
    [
        (600.0, [3, 2, 1]),
        (1000.0, [5, 1]),
        (0.0, [6]),
        (-1.0, [6]),
        (math.inf, [6]),
        (0.5, [1] * 6),
    ],
)
def test_new_segment_when_the_gap_exceeds_gap_s(gap_s: float, segments: list[int]) -> None:
    # Gaps: 1, 1, 698, 1, 1299 s. Exactly gap_s apart does not split (600 is not > 600).
    times = [0, 1, 2, 700, 701, 2000]
    root = check_gpx11(export([pos("a", s) for s in times], gap_s=gap_s))
    sizes = [len(seg.findall(f"{GPX}trkpt")) for seg in root.iter(f"{GPX}trkseg")]
    assert sizes == segments


def test_gap_of_exactly_gap_s_stays_in_the_segment() -> None:
    root = check_gpx11(export([pos("a", 0), pos("a", 600), pos("a", 1200.001)]))
    assert [len(seg) for seg in root.iter(f"{GPX}trkseg")] == [2, 1]


def test_segments_split_per_device_not_across_devices() -> None:
    root = check_gpx11(export([pos("a", 0), pos("b", 5000), pos("b", 5001)]))
    assert [len(seg) for seg in root.iter(f"{GPX}trkseg")] == [1, 2]


def test_element_order_with_every_field() -> None:
    p = pos("a", 0, alt=3.5, speed=1.0, heading=2.0, acc=3.0, attrs={"k": 1})
    root = check_gpx11(export([p]))
    [point] = root.iter(f"{GPX}trkpt")
    assert [c.tag.removeprefix(GPX) for c in point] == ["ele", "time", "extensions"]
    [extensions] = point.iter(f"{GPX}extensions")
    assert [c.tag.removeprefix(GT) for c in extensions] == ["speed", "heading", "acc", "attr"]


def test_numbers_are_plain_decimals_with_every_digit() -> None:
    # repr() writes 1e-05 and 1e+16, which xsd:decimal does not allow.
    p = Position(device="a", lat=1e-05, lon=-1.2345678901234567e-7, ts=ms_to_ts(T0), alt=1e16)
    text = export([p])
    check_gpx11(text)
    assert 'lat="0.00001"' in text
    assert "<ele>10000000000000000</ele>" in text
    with tempfile.TemporaryDirectory() as d:
        [back] = read_back(text, Path(d))["a"].positions
    assert (back.lat, back.lon, back.alt) == (p.lat, p.lon, p.alt)


def test_creator_is_escaped() -> None:
    root = check_gpx11(export([pos("a", 0)], creator='me & "you" <3\x00'))
    assert root.get("creator") == 'me & "you" <3'


def test_gpxpy_reads_the_output() -> None:
    run = read_gpx(SAMPLES / "multi_segment.gpx")[0]
    text = export(run.positions, gap_s=60)
    [trk] = gpxpy.parse(text).tracks
    assert trk.name == "Morning run"
    # The run's pauses of 4 and 6 minutes split it again where the file had its segments.
    assert [len(seg.points) for seg in trk.segments] == [40, 35, 40]
    points = [p for seg in trk.segments for p in seg.points]
    assert [(p.latitude, p.longitude, p.elevation) for p in points] == [
        (q.lat, q.lon, q.alt) for q in run.positions
    ]
    assert [ts_to_ms(p.time.isoformat()) for p in points if p.time] == [
        q.ts_ms for q in run.positions
    ]


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample", ["walk.gpx", "drive.gpx", "multi_segment.gpx", "no_times.gpx", "gpx10_route.gpx"]
)
def test_samples_round_trip(tmp_path: Path, sample: str) -> None:
    tracks = read_gpx(SAMPLES / sample, start_ms=T0)
    original = by_device_then_time(tracks)
    back = read_back(export(original), tmp_path)
    assert sorted(back) == sorted(t.device for t in tracks)
    for track in tracks:
        again = back[track.device].positions
        assert len(again) == len(track.positions)
        for a, b in zip(track.positions, again, strict=True):
            same_position(a, b)


def test_drive_round_trip_keeps_extension_fields(tmp_path: Path) -> None:
    [track] = read_gpx(SAMPLES / "drive.gpx")
    [again] = read_back(export(track.positions), tmp_path).values()
    assert [p.speed for p in again.positions] == [p.speed for p in track.positions]
    assert [p.attrs for p in again.positions] == [p.attrs for p in track.positions]
    assert any(p.heading is None for p in again.positions)  # absent stays absent


ODD_STRINGS = [
    "quote \" apostrophe ' amp & lt < gt > ]]>",
    "  leading and trailing  ",
    "lines\none\r\ntwo\rthree\ttab",
    "ünïcödé ✓ 𝄞",
    "control \x00 \x01 \x1f \ufffe",
    ' xmlns:evil="http://example.com/" xmlns="x"',
    "",
]


@pytest.mark.parametrize("value", ODD_STRINGS)
def test_odd_strings_round_trip(tmp_path: Path, value: str) -> None:
    attrs: dict[str, Any] = {value: value, "v": value, "n": None, "t": True, "i": 2**63 - 1}
    p = pos("a", 0, attrs=attrs)
    text = export([p])
    check_gpx11(text)
    [again] = read_back(text, tmp_path)["a"].positions
    assert again.attrs == attrs


def test_memory_stays_flat() -> None:
    class Sink(io.StringIO):  # keeps nothing
        def write(self, s: str) -> int:
            return len(s)

    def positions(n: int) -> Iterator[Position]:
        for i in range(n):
            yield Position(
                device=f"d{i // 10_000}",
                lat=52.5 + i * 1e-6,
                lon=13.4,
                ts=ms_to_ts(T0 + i * 1000),
                alt=30.5,
                speed=1.5,
                attrs={"hr": 100},
            )

    tracemalloc.start()
    try:
        assert write_gpx(positions(30_000), Sink(), gap_s=0.5) == 30_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000  # 30,000 positions or their XML held at once would be megabytes


# --- random positions ----------------------------------------------------------------------

# Any text a Position accepts: every character but lone surrogates (Cs), which no store holds.
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
attr_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | any_text
    | st.floats(allow_nan=False, allow_infinity=False)
)
finite = st.floats(allow_nan=False, allow_infinity=False)
positions = st.builds(
    Position,
    device=st.sampled_from(["a", "b.2", "c:d_e-f"]),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    ts=st.integers(ts_to_ms("0001-01-01T00:00:00Z"), ts_to_ms("9999-12-31T23:59:59.999Z")).map(
        ms_to_ts
    ),
    speed=st.none() | st.floats(min_value=0, allow_infinity=False),
    heading=st.none() | st.floats(0, 360, exclude_max=True),
    alt=st.none() | finite,
    acc=st.none() | st.floats(min_value=0, allow_infinity=False),
    attrs=st.none() | st.dictionaries(any_text, attr_values, min_size=1, max_size=MAX_ATTRS),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(positions, max_size=12), st.floats(-1, 1e6))
def test_random_positions_round_trip(items: list[Position], gap_s: float) -> None:
    # As a store holds them: one position per device and time.
    unique = {(p.device, p.ts_ms): p for p in items}
    ordered = sorted(unique.values(), key=lambda p: (p.device, p.ts_ms))
    text = export(ordered, gap_s=gap_s)
    check_gpx11(text)
    if not ordered:
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "export.gpx"
        path.write_text(text, encoding="utf-8")
        tracks = read_gpx(path)
    for device in {p.device for p in ordered}:
        mine = [p for p in ordered if p.device == device]
        again = [p for t in tracks if t.device == device for p in t.positions]
        assert len(again) == len(mine)
        for a, b in zip(mine, again, strict=True):
            same_position(a, b)


# --- what other tools read: Garmin's TrackPointExtension, track names ----------------------

TPX_ORDER = ["atemp", "wtemp", "depth", "hr", "cad"]


def test_heart_rate_cadence_temperature_go_to_garmins_extension() -> None:
    p = pos("a", 0, attrs={"cad": 80, "hr": 120, "atemp": 21.5, "power": 200, "depth": 3})
    root = check_gpx11(export([p]))
    [point] = root.iter(f"{GPX}trkpt")
    [tpx] = point.iter(f"{TPX}TrackPointExtension")
    assert [(c.tag.removeprefix(TPX), c.text) for c in tpx] == [
        ("atemp", "21.5"),
        ("depth", "3"),
        ("hr", "120"),
        ("cad", "80"),
    ]
    gt_attrs = [a.get("name") for a in point.iter(f"{GT}attr")]
    assert gt_attrs == ["power"]


def test_gpxpy_reads_garmins_extension_back() -> None:
    p = pos("a", 0, attrs={"hr": 131, "cad": 92, "atemp": 18.0})
    [trk] = gpxpy.parse(export([p])).tracks
    [point] = trk.segments[0].points
    [tpx] = point.extensions
    values = {child.tag.rpartition("}")[2]: child.text for child in tpx}
    assert tpx.tag == f"{TPX}TrackPointExtension"
    assert values == {"atemp": "18.0", "hr": "131", "cad": "92"}


@pytest.mark.parametrize(
    "attrs",
    [
        {"hr": 120.5},  # not a whole number: the schema's unsignedByte cannot hold it
        {"hr": 300, "cad": -1},
        {"hr": 0, "cad": 255},
        {"hr": True},
        {"hr": "120"},
        {"atemp": None},
    ],
)
def test_values_garmins_schema_cannot_hold_stay_gt_attrs(tmp_path: Path, attrs: Any) -> None:
    text = export([pos("a", 0, attrs=attrs)])
    assert "TrackPointExtension>" not in text
    [again] = read_back(text, tmp_path)["a"].positions
    assert again.attrs == attrs


def test_garmin_sample_round_trips_through_the_extension(tmp_path: Path) -> None:
    garmin = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpx" / "garmin_gpxtpx.gpx"
    if not garmin.exists():
        pytest.skip(f"real-world GPX not found at {garmin}")
    [track] = read_gpx(garmin)
    text = export(track.positions)
    assert "<gpxtpx:atemp>15.0</gpxtpx:atemp>" in text
    assert "<gpxtpx:hr>113</gpxtpx:hr>" in text
    [again] = read_back(text, tmp_path).values()
    assert again.positions == track.positions
    assert again.name == "roadbiking test track"


def test_track_names_become_trk_names_and_come_back(tmp_path: Path) -> None:
    positions = [
        pos("me", 0, attrs={"track": "Morning run", "hr": 100}),
        pos("me", 1, attrs={"track": "Morning run"}),
        pos("me", 9000, attrs={"track": "Evening walk"}),
        pos("me", 9001),
        pos("you", 0, attrs={"track": "you"}),  # named after its device: kept as an attr
    ]
    text = export(positions)
    root = check_gpx11(text)
    trks = list(root.iter(f"{GPX}trk"))
    assert [t.findtext(f"{GPX}name") for t in trks] == ["Morning run", "Evening walk", "me", "you"]
    assert [t.findtext(f"{GPX}extensions/{GT}device") for t in trks] == ["me", "me", "me", "you"]
    path = tmp_path / "export.gpx"
    path.write_text(text, encoding="utf-8")
    tracks = read_gpx(path)
    assert [p for t in tracks for p in t.positions] == positions
    assert [(t.device, t.name) for t in tracks] == [
        ("me", "Morning run"),
        ("me", "Evening walk"),
        ("me", "me"),
        ("you", "you"),
    ]
