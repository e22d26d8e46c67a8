"""NDJSON reader: geotrack's own export read back losslessly; bad and cut lines skipped."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

from geotrack.export.ndjson import write_ndjson
from geotrack.schema import Position
from geotrack.sources.base import ReadOptions, Skipped
from geotrack.sources.ndjson import read_ndjson, sniff
from tests.factories import pos


def varied() -> list[Position]:
    """Positions with every field, absent fields, every kind of attr and awkward numbers."""
    return [
        pos("car-1", 0),
        pos("car-1", 1, speed=0.0, heading=359.999, alt=-12.5, acc=3.0),
        pos("car-1", 2, attrs={}),
        pos("car-1", 3, attrs={"bat": 80, "v": 3.7, "ok": True, "n": None, "s": 'a "q", ü'}),
        pos("bus.3:x_y", 0, lat=-90.0, lon=180.0, alt=1e-07, speed=1e16),
        pos("bus.3:x_y", 1, lat=0.1 + 0.2, lon=-179.99999999999997, ts="2025-11-25T12:00:01.5Z"),
    ]


def export(positions: list[Position], path: Path) -> Path:
    out = io.StringIO()
    write_ndjson(positions, out)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def test_export_round_trips_exactly(tmp_path: Path) -> None:
    positions = varied()
    read = list(read_ndjson(export(positions, tmp_path / "t.ndjson"), ReadOptions()))
    assert read == positions


def test_large_file_round_trips_across_blocks(tmp_path: Path) -> None:
    positions = [pos(f"d{i % 7}", i, attrs={"i": i}) for i in range(30_000)]  # > one block
    read = list(read_ndjson(export(positions, tmp_path / "t.ndjson"), ReadOptions()))
    assert read == positions


def test_bad_lines_are_skipped_by_line_number_and_the_rest_kept(tmp_path: Path) -> None:
    good = [pos(i=i) for i in range(4)]
    lines = export(good, tmp_path / "x").read_text().splitlines()
    lines.insert(1, '{"device":"car-1","lat":91,"lon":0,"ts":"2025-11-25T12:00:00Z"}')
    lines.insert(3, "")
    lines.insert(4, "not json")
    lines.insert(5, "[1, 2]")
    path = tmp_path / "t.ndjson"
    path.write_text("\n".join(lines) + "\n")
    items = list(read_ndjson(path, ReadOptions()))
    assert [i for i in items if isinstance(i, Position)] == good
    skips = [i for i in items if isinstance(i, Skipped)]
    assert [s.where for s in skips] == ["line 2", "line 5", "line 6"]
    assert skips[0].reason.startswith("lat:")
    assert skips[1].reason == "not valid JSON"
    assert skips[2].reason == "not a JSON object"


def test_a_truncated_last_line_is_a_skip(tmp_path: Path) -> None:
    text = export([pos(i=i) for i in range(3)], tmp_path / "x").read_text()
    path = tmp_path / "t.ndjson"
    path.write_text(text[:-30])  # the last line cut mid-object
    items = list(read_ndjson(path, ReadOptions()))
    assert items == [pos(i=0), pos(i=1), Skipped("truncated last line", "line 3")]


def test_a_complete_last_line_without_newline_is_read(tmp_path: Path) -> None:
    text = export([pos(i=i) for i in range(2)], tmp_path / "x").read_text()
    path = tmp_path / "t.ndjson"
    path.write_text(text.rstrip("\n"))
    assert list(read_ndjson(path, ReadOptions())) == [pos(i=0), pos(i=1)]


def test_device_option_and_lines_without_device(tmp_path: Path) -> None:
    path = tmp_path / "my phone.ndjson"
    path.write_text(
        '{"device":"car-1","lat":1,"lon":2,"ts":"2025-11-25T12:00:00Z"}\n'
        '{"lat":1,"lon":2,"ts":"2025-11-25T12:00:01Z"}\n'
    )
    assert [p.device for p in read_ndjson(path, ReadOptions())] == ["car-1", "my-phone"]  # type: ignore[union-attr]
    assert [p.device for p in read_ndjson(path, ReadOptions(device="bike"))] == ["bike", "bike"]  # type: ignore[union-attr]


def test_gzip_reads_like_the_plain_file(tmp_path: Path) -> None:
    plain = export(varied(), tmp_path / "t.ndjson")
    packed = tmp_path / "t.ndjson.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(read_ndjson(packed, ReadOptions())) == varied()


def test_sniff() -> None:
    assert sniff(b'\n{"device":"a","lat":1,"lon":2,"ts":1}\n')
    assert not sniff(b'{"type":"FeatureCollection","features":[]}')
    assert not sniff(b'{\n  "locations": [\n')
    assert not sniff(b"lat,lon\n1,2\n")
    assert not sniff(b"")


def test_retime_gives_lines_sharing_a_time_their_own(tmp_path: Path) -> None:
    same = [pos(i=i, ts="2025-11-25T12:00:00Z") for i in range(3)]
    items = list(read_ndjson(export(same, tmp_path / "t.ndjson"), ReadOptions(retime_kmh=50)))
    times = [p.ts_ms for p in items if isinstance(p, Position)]
    assert times[0] == same[0].ts_ms and times[0] < times[1] < times[2]


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = export([pos(i=0), pos(i=1)], tmp_path / "t.ndjson")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert sniff(path.read_bytes())
    assert list(read_ndjson(path, ReadOptions())) == [pos(i=0), pos(i=1)]
