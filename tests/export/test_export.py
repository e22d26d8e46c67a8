"""Export formats: every field read back from the output, empty input, streaming memory."""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from xml.etree import ElementTree

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geotrack.errors import InvalidParameter
from geotrack.export import EXTENSIONS, FORMATS, export, format_for_path
from geotrack.export.csv import HEADER, write_csv
from geotrack.export.geojson import write_geojson
from geotrack.export.ndjson import write_ndjson
from geotrack.schema import Position, ms_to_ts

T0 = 1_780_000_000_000

ODD_ATTRS: dict[str, Any] = {
    "quote": 'he said "hi", then left',
    "lines": "one\ntwo\r\nthree",
    "comma,key": "a,b;c\tt",
    "unicode": "Grüße 🚲 東京",
    "backslash": "C:\\path\\",
    "int": -(2**63),
    "float": 0.1,
    "bool": True,
    "nothing": None,
    "": "",
}


def _p(device: str, i: int, **fields: Any) -> Position:
    base: dict[str, Any] = {"lat": 52.5 + i * 1e-4, "lon": 13.4 - i * 1e-4, "ts": ms_to_ts(T0 + i)}
    return Position(device=device, **(base | fields))


# Several devices, in export order: "alt-all" has altitude everywhere, "mixed" lacks it once,
# "none" never has it, "single" has one fix.
SAMPLE = [
    _p("alt-all", 0, alt=34.5, speed=1.25, heading=0.0, acc=3.0, attrs=ODD_ATTRS),
    _p("alt-all", 1, alt=-0.5, speed=0.0, heading=359.9, acc=12.5),
    _p("alt-all", 2, alt=1e-9, attrs={}),
    _p("mixed", 3, alt=100.0),
    _p("mixed", 4),
    _p("mixed", 5, alt=101.25),
    _p("none", 6, speed=3.0),
    _p("none", 7, attrs={"k": "v"}),
    _p("single", 8, alt=7.0, heading=180.0),
]

_finite = st.floats(allow_nan=False, allow_infinity=False)
_attr_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    _finite,
    st.text(max_size=12),
)
_position = st.builds(
    Position,
    device=st.sampled_from(["a", "B-1", "x.y:z_9", "007"]),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    ts=st.integers(-62135596800000, 253402300799999).map(ms_to_ts),
    speed=st.none() | st.floats(0, 1e6),
    heading=st.none() | st.floats(0, 360, exclude_max=True),
    alt=st.none() | _finite,
    acc=st.none() | st.floats(0, 1e6),
    attrs=st.none() | st.dictionaries(st.text(max_size=8), _attr_value, max_size=4),
)
# Ordered as the store hands them to an exporter: by device, then time.
_positions = st.lists(_position, max_size=25).map(
    lambda ps: sorted(ps, key=lambda p: (p.device, p.time))
)


def _typed(value: Any) -> Any:
    """A value with the types of its parts, so that True and 1 (or 1.0) compare unequal."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def _run(writer: Callable[[Iterable[Position], io.StringIO], int], ps: list[Position]) -> str:
    out = io.StringIO()
    assert writer(ps, out) == len(ps)
    return out.getvalue()


# --- GeoJSON ---------------------------------------------------------------------------


def _check_geojson(text: str, ps: list[Position]) -> None:
    doc = json.loads(text)
    assert doc["type"] == "FeatureCollection"
    assert set(doc) == {"type", "features"}
    groups = [list(g) for _, g in itertools.groupby(ps, key=lambda p: p.device)]
    assert len(doc["features"]) == len(groups)
    for feature, group in zip(doc["features"], groups, strict=True):
        assert feature["type"] == "Feature"
        three_d = all(p.alt is not None for p in group)
        coords = [[p.lon, p.lat, p.alt] if three_d else [p.lon, p.lat] for p in group]
        geometry = feature["geometry"]
        if len(group) == 1:
            assert geometry == {"type": "Point", "coordinates": coords[0]}
        else:
            assert geometry == {"type": "LineString", "coordinates": coords}
        properties = dict(feature["properties"])
        extras = properties.pop("coordinateProperties", {})
        assert properties == {
            "device": group[0].device,
            "start": group[0].time,
            "end": group[-1].time,
            "count": len(group),
            "times": [p.time for p in group],
        }
        # Every other field, parallel to the coordinates, for each field any fix has.
        names = ["speed", "heading", "acc", "attrs"] + ([] if three_d else ["alt"])
        expected = {
            n: [getattr(p, n) for p in group]
            for n in names
            if any(getattr(p, n) is not None for p in group)
        }
        assert _typed(extras) == _typed(expected)


def test_geojson_sample() -> None:
    text = _run(write_geojson, SAMPLE)
    _check_geojson(text, SAMPLE)
    features = {f["properties"]["device"]: f["geometry"] for f in json.loads(text)["features"]}
    assert features["alt-all"]["coordinates"][1] == [13.4 - 1e-4, 52.5 + 1e-4, -0.5]
    assert all(len(c) == 2 for c in features["mixed"]["coordinates"])
    assert features["single"] == {"type": "Point", "coordinates": [13.4 - 8e-4, 52.5 + 8e-4, 7.0]}


@settings(max_examples=200)
@given(_positions)
def test_geojson_round_trip(ps: list[Position]) -> None:
    _check_geojson(_run(write_geojson, ps), ps)


def test_geojson_empty() -> None:
    assert json.loads(_run(write_geojson, [])) == {"type": "FeatureCollection", "features": []}


def test_geojson_long_device_crosses_spool_and_batch_sizes() -> None:
    # 10,000 fixes make more than two read batches and a spool that rolls over to disk.
    ps = [_p("long", i, alt=float(i)) for i in range(10_000)] + [_p("next", 10_000)]
    _check_geojson(_run(write_geojson, ps), ps)


def test_geojson_device_seen_again_is_a_second_feature() -> None:
    ps = [_p("a", 0), _p("b", 1), _p("a", 2)]
    doc = json.loads(_run(write_geojson, ps))
    assert [f["properties"]["device"] for f in doc["features"]] == ["a", "b", "a"]


# --- CSV --------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _check_csv(text: str, ps: list[Position]) -> None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(HEADER)
    assert len(rows) == len(ps) + 1
    for row, p in zip(rows[1:], ps, strict=True):
        record = dict(zip(HEADER, row, strict=True))
        assert record["device"] == p.device
        assert record["ts"] == p.time
        for name in ("lat", "lon", "alt", "speed", "heading", "acc"):
            value = getattr(p, name)
            # repr is the shortest string that reads back as the same float.
            assert record[name] == _cell(value), name
            assert (float(record[name]) if record[name] else None) == value
        if p.attrs is None:
            assert record["attrs"] == ""
        else:
            assert _typed(json.loads(record["attrs"])) == _typed(p.attrs)


def test_csv_sample() -> None:
    text = _run(write_csv, SAMPLE)
    _check_csv(text, SAMPLE)
    assert text.startswith("device,ts,lat,lon,alt,speed,heading,acc,attrs\r\n")
    first = next(itertools.islice(csv.reader(io.StringIO(text, newline="")), 1, None))
    assert json.loads(first[-1]) == ODD_ATTRS
    # Compact JSON: no space after separators.
    assert first[-1].startswith('{"quote":"he said \\"hi\\", then left","lines":')
    empty_attrs = next(itertools.islice(csv.reader(io.StringIO(text, newline="")), 3, None))
    assert empty_attrs[-1] == "{}"


@settings(max_examples=200)
@given(_positions)
def test_csv_round_trip(ps: list[Position]) -> None:
    _check_csv(_run(write_csv, ps), ps)


def test_csv_empty_is_header_only() -> None:
    assert _run(write_csv, []) == ",".join(HEADER) + "\r\n"


# --- NDJSON -----------------------------------------------------------------------------


def _check_ndjson(text: str, ps: list[Position]) -> None:
    assert text.endswith("\n") if ps else text == ""
    # NDJSON lines end at "\n" only: str.splitlines would also split at U+0085 or U+2028,
    # which JSON strings may hold unescaped.
    lines = text.split("\n")[:-1]
    assert len(lines) == len(ps)
    for line, p in zip(lines, ps, strict=True):
        assert msgspec.json.decode(line, type=Position) == p
        plain = json.loads(line)
        assert plain["ts"] == p.time
        assert _typed(plain.get("attrs")) == _typed(p.attrs)


def test_ndjson_sample() -> None:
    text = _run(write_ndjson, SAMPLE)
    _check_ndjson(text, SAMPLE)
    assert "\n" not in text.rstrip("\n").split("\n")[0]


@settings(max_examples=200)
@given(_positions)
def test_ndjson_round_trip(ps: list[Position]) -> None:
    _check_ndjson(_run(write_ndjson, ps), ps)


def test_ndjson_more_than_a_batch() -> None:
    ps = [_p("d", i) for i in range(2500)]
    _check_ndjson(_run(write_ndjson, ps), ps)


def test_ndjson_empty() -> None:
    assert _run(write_ndjson, []) == ""


# --- the front --------------------------------------------------------------------------

_CHECKS: dict[str, Callable[[str, list[Position]], None]] = {
    "geojson": _check_geojson,
    "csv": _check_csv,
    "ndjson": _check_ndjson,
}


@pytest.mark.parametrize("fmt", sorted(_CHECKS))
def test_export_dispatches(fmt: str) -> None:
    out = io.StringIO()
    assert export(fmt, iter(SAMPLE), out) == len(SAMPLE)
    _CHECKS[fmt](out.getvalue(), SAMPLE)


def test_export_gpx_passes_the_gap_on() -> None:
    # The GPX writer has its own tests; this checks the dispatch and its gap_s.
    ps = [_p("a", 0), _p("a", 120_000), _p("a", 3_600_000), _p("b", 0)]
    for gap_s, segments in ((600.0, 3), (60.0, 4), (0.0, 2)):
        out = io.StringIO()
        assert export("gpx", ps, out, gap_s=gap_s) == len(ps)
        root = ElementTree.fromstring(out.getvalue())
        ns = {"g": "http://www.topografix.com/GPX/1/1"}
        assert root.get("creator") == "geotrack"
        assert len(root.findall("g:trk", ns)) == 2
        assert len(root.findall("g:trk/g:trkseg", ns)) == segments
        assert len(root.findall(".//g:trkpt", ns)) == len(ps)


def test_unknown_format() -> None:
    out = io.StringIO()
    with pytest.raises(InvalidParameter) as info:
        export("shp", SAMPLE, out)
    assert info.value.name == "format"
    for fmt in FORMATS:
        assert fmt in info.value.reason
    assert out.getvalue() == ""


def test_formats_and_extensions_agree() -> None:
    assert set(FORMATS) == set(EXTENSIONS) == {"gpx", "geojson", "csv", "ndjson", "kml"}
    assert all(FORMATS.values())
    for fmt, suffix in EXTENSIONS.items():
        assert format_for_path(f"out/track{suffix}") == fmt


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("a.gpx", "gpx"),
        ("A.GPX", "gpx"),
        ("dir.v2/a.geojson", "geojson"),
        ("a.json", "geojson"),
        ("a.csv", "csv"),
        ("a.ndjson", "ndjson"),
        ("a.jsonl", "ndjson"),
        ("a.kml", "kml"),
        ("a.txt", None),
        ("csv", None),
        ("dir.csv/a", None),
        ("", None),
    ],
)
def test_format_for_path(path: str, fmt: str | None) -> None:
    assert format_for_path(path) == fmt


# --- streaming ----------------------------------------------------------------------------

_MANY = 200_000
# A writer that kept every position (or every coordinate or time) of the big device would
# hold tens of megabytes; streaming ones stay within their spools and batches.
_PEAK_LIMIT = 6_000_000


class _Sink(io.StringIO):
    """A text stream that counts characters and keeps none."""

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        return len(s)


def _many() -> Iterator[Position]:
    """200,000 fresh positions: 150,000 of one device, then ten small devices."""
    # Copying a validated prototype skips re-validating each one, which under tracemalloc
    # would make the test slow; every position is still a distinct object.
    proto = Position("big", 52.0, 13.0, ms_to_ts(T0), alt=30.5, speed=1.5, heading=90.0, acc=4.0)
    for i in range(_MANY):
        p = copy.copy(proto)
        if i >= 150_000:
            p.device = f"small-{i // 5000:02d}"
        day, s = divmod(i, 86400)
        p.ts = f"2026-07-{day + 1:02d}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.000Z"
        p.lat = 52.0 + i * 1e-7
        p.lon = 13.0 - i * 1e-7
        if i == 190_000:
            p.alt = None
        p.attrs = {"i": i, "note": 'x,"y"'}
        yield p


@pytest.mark.parametrize("fmt", sorted(_CHECKS))
def test_memory_is_flat_in_the_number_of_positions(fmt: str) -> None:
    sink = _Sink()
    tracemalloc.start()
    try:
        written = export(fmt, _many(), sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == _MANY
    assert sink.chars > _MANY * 20
    assert peak < _PEAK_LIMIT, f"{fmt}: peak {peak / 1e6:.1f} MB"


# --- faster paths, same bytes --------------------------------------------------------------


def _csv_module(ps: list[Position]) -> str:
    """What the CSV export wrote when csv.writer formatted every row."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for p in ps:
        attrs = "" if p.attrs is None else msgspec.json.encode(p.attrs).decode()
        writer.writerow((p.device, p.time, p.lat, p.lon, p.alt, p.speed, p.heading, p.acc, attrs))
    return out.getvalue()


# Where repr and msgspec write a float differently (exponents), and its neighbours.
_EDGE_FLOATS = [0.0, -0.0, 1e-4, 9.99e-5, 1e-5, -1.5e-7, 5e-324, 1e15, 1e16, -1e16, 1.7e308]


@settings(max_examples=300)
@given(
    _positions,
    st.lists(st.sampled_from(_EDGE_FLOATS) | _finite, min_size=6, max_size=6),
    st.sampled_from(["plain", "with,comma", 'q"uote', "line\nend", "", " space"]),
)
def test_csv_bytes_match_csv_writer(ps: list[Position], numbers: list[float], odd: str) -> None:
    ps = [copy.copy(p) for p in ps]
    if ps:
        edge = ps[0]
        edge.lat, edge.lon, edge.alt, edge.speed, edge.heading, edge.acc = numbers
        ps[-1].device = odd  # devices only built without validation hold such names
    assert _run(write_csv, ps) == _csv_module(ps)


def test_csv_bytes_match_csv_writer_across_batches() -> None:
    ps = [_p("a", i, alt=float(i) * 1e-6, attrs={"i": i} if i % 3 else None) for i in range(3000)]
    ps += [_p("b", i, speed=1e20 if i == 5 else 1.0, attrs={}) for i in range(1500)]
    assert _run(write_csv, ps) == _csv_module(ps)


def _validated(p: Position) -> Position:
    """The same fields through the validating constructor, as the store once read rows."""
    return Position(**msgspec.structs.asdict(p))


@settings(max_examples=50, deadline=None)
@given(st.lists(_position, max_size=25))
def test_stored_positions_equal_validated_ones(tmp_path_factory: Any, ps: list[Position]) -> None:
    """The SQLite store builds the rows it reads without validating them again."""
    from geotrack.store.sqlite import SQLiteStore

    first: dict[tuple[str, str], Position] = {}
    for p in ps:
        first.setdefault(p.key, p)  # a duplicate is not stored
    stored = sorted(first.values(), key=lambda p: p.key)
    store = SQLiteStore(tmp_path_factory.mktemp("store") / "t.db", synchronous="normal")
    try:
        store.write(ps)
        some = {"a", "007"}
        for got, want in (
            (list(store.query()), stored),  # the sorter's plan
            (list(store.query(devices=some)), [p for p in stored if p.device in some]),  # index
            (store.latest(), [[*g][-1] for _, g in itertools.groupby(stored, lambda p: p.device)]),
        ):
            assert got == want
            for g, w in zip(got, want, strict=True):
                assert type(g) is Position
                assert _typed(msgspec.structs.asdict(g)) == _typed(msgspec.structs.asdict(w))
                assert _typed(msgspec.structs.asdict(g)) == _typed(
                    msgspec.structs.asdict(_validated(g))
                )
    finally:
        store.close()
