"""CSV reader: geotrack's own export losslessly, and the CSVs other tools write."""

from __future__ import annotations

import io
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from geotrack.errors import SourceError
from geotrack.export.csv import write_csv
from geotrack.schema import Position, ms_to_ts
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped
from geotrack.sources.csv import read_csv, sniff
from tests.factories import T0, pos
from tests.sources.test_ndjson import varied


def read(path: Path, **options: object) -> list[Item]:
    return list(read_csv(path, ReadOptions(**options)))  # type: ignore[arg-type]


def positions(items: list[Item]) -> list[Position]:
    return [i for i in items if isinstance(i, Position)]


def export(items: list[Position], path: Path) -> Path:
    out = io.StringIO(newline="")
    write_csv(items, out)
    path.write_bytes(out.getvalue().encode("utf-8"))
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_own_export_round_trips_exactly(tmp_path: Path) -> None:
    extra = [pos("q", 9, attrs={"csv": 'a,"b"\nc', "k": 1.5})]
    assert read(export(varied() + extra, tmp_path / "t.csv")) == varied() + extra


def test_own_export_large_file(tmp_path: Path) -> None:
    many = [pos(f"d{i % 5}", i, attrs={"i": i} if i % 3 else None) for i in range(25_000)]
    many.sort(key=lambda p: p.key)
    assert read(export(many, tmp_path / "t.csv")) == many


def test_own_rows_that_fail_are_skipped_with_their_line(tmp_path: Path) -> None:
    lines = export([pos(i=i) for i in range(3)], tmp_path / "x").read_text().splitlines()
    lines[2:2] = [
        f"car-1,{ms_to_ts(T0 + 99_000)},95.0,13.4,,,,,",
        f"car-1,{ms_to_ts(T0 + 98_000)},abc,13.4,,,,,",
        "car-1,not-a-time,52.0,13.4,,,,,",
        "car-1,2025-11-25T12:00:00Z,52,13",
        f"car-1,{ms_to_ts(T0 + 97_000)},52.0,13.4,,,400,,",
    ]
    items = read(write(tmp_path / "t.csv", "\r\n".join(lines) + "\r\n"))
    assert positions(items) == [pos(i=i) for i in range(3)]
    skips = [i for i in items if isinstance(i, Skipped)]
    assert [s.where for s in skips] == ["line 3", "line 4", "line 5", "line 6", "line 7"]
    assert skips[0].reason.startswith("lat:")
    assert skips[1].reason.startswith("not a number")
    assert skips[2].reason.startswith("ts:")
    assert skips[3].reason == "expected 9 cells, found 4"
    assert skips[4].reason.startswith("heading:")


def test_own_truncated_last_line_is_a_skip(tmp_path: Path) -> None:
    text = export([pos(i=i) for i in range(3)], tmp_path / "x").read_text()
    items = read(write(tmp_path / "t.csv", text[:-20]))
    assert items == [pos(i=0), pos(i=1), Skipped("truncated last line", "line 4")]


def test_other_tools_seconds_and_milliseconds(tmp_path: Path) -> None:
    path = write(
        tmp_path / "phone.csv",
        "Latitude,Longitude,Timestamp,Speed (km/h),Course,Elevation,Accuracy,HDOP,Note\n"
        f"52.5,13.4,{T0 // 1000},36,90,34.5,5,1.2,start\n"
        f"52.6,13.5,{T0 + 1500},,,,,,\n",
    )
    items = read(path)
    assert items[0] == Notice("columns not imported: Note")
    first, second = positions(items)
    assert first == Position(
        device="phone", lat=52.5, lon=13.4, ts=ms_to_ts(T0), speed=10.0, heading=90.0,
        alt=34.5, acc=5.0, attrs={"hdop": 1.2},
    )  # fmt: skip
    assert second.ts == ms_to_ts(T0 + 1500) and second.speed is None


def test_semicolons_decimal_commas_bom_and_quoted_headers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "export.csv",
        '\ufeff"lat";"lng";"datetime";"device"\n'
        '52,5;13,4;2025-11-25T13:00:00+01:00;"Anna\'s phone"\n',
    )
    (p,) = positions(read(path))
    assert (p.lat, p.lon, p.time, p.device) == (52.5, 13.4, ms_to_ts(T0), "Anna-s-phone")


def test_local_times_need_a_zone(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "lat,lon,date,time\n52.5,13.4,2025-11-25,13:00:00\n")
    assert read(path) == [Skipped("local time without a zone (give --tz)", "line 2")]
    (p,) = positions(read(path, tz=ZoneInfo("Europe/Berlin")))
    assert p.time == ms_to_ts(T0)


def test_windows_1252_text_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv", "lat,lon,time,name\n1,2,2025-11-25T12:00:00Z,Müller\n", "cp1252"
    )
    (p,) = positions(read(path))
    assert p.device == "M-ller"


def test_unmapped_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "x,y,when\n1,2,3\n")
    with pytest.raises(SourceError, match="found 'x', 'y', 'when'"):
        read(path)


def test_no_time_column_needs_retime(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "lat,lon\n0,0\n0,0.009\n")
    with pytest.raises(SourceError, match="--retime"):
        read(path)
    items = read(path, retime_kmh=3.6)  # 1 m/s; 0.009 deg of longitude at the equator is ~1 km
    first, second = positions(items)
    assert first.ts_ms == 0 and 990_000 < second.ts_ms < 1_010_000
    assert any(isinstance(i, Notice) for i in items)


def test_sniff() -> None:
    assert sniff(b"device,ts,lat,lon,alt,speed,heading,acc,attrs\r\n")
    assert sniff(b'\xef\xbb\xbf"Latitude";"Longitude"\n')
    assert not sniff(b"name,x,y\n")
    assert not sniff(b'{"lat": 1}')
    assert not sniff(b"lat,lon\0\0\0")


def test_a_header_that_says_utc_needs_no_zone(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.tsv", "Latitude\tLongitude\tTime (UTC)\n52,5\t13,4\t2025-11-25 12:00:00\n"
    )
    (p,) = positions(read(path))
    assert (p.lat, p.time) == (52.5, ms_to_ts(T0))


def test_pipes_and_a_header_only_file(tmp_path: Path) -> None:
    path = write(tmp_path / "t.txt", "lat|lon|unix_time|timestamp\n")
    assert read(path) == [Notice("columns not imported: unix_time")]
