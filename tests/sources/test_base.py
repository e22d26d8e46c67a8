"""The reader contract's helpers: --start shifts, parse_start, open_binary and its meter."""

from __future__ import annotations

import gzip
from pathlib import Path

import msgspec
import pytest

from geotrack.errors import InvalidParameter
from geotrack.schema import Position, ms_to_ts
from geotrack.sources.base import (
    Item,
    Notice,
    Skipped,
    haversine_m,
    metered,
    open_binary,
    parse_start,
    retime,
    shift_to_start,
)
from tests.factories import T0, pos


def test_shift_to_start_moves_the_first_position_and_keeps_intervals() -> None:
    items: list[Item] = [
        pos(i=0),
        Skipped("no time", "line 3"),
        pos(i=5),
        Notice("n"),
        pos("bus-3", i=2),
    ]
    start = 1_800_000_000_123
    shifted = list(shift_to_start(items, start))
    assert shifted[1] == items[1] and shifted[3] == items[3]
    times = [p.ts_ms for p in shifted if not isinstance(p, Skipped | Notice)]
    assert times == [start, start + 5000, start + 2000]
    # Everything but the time is kept.
    assert shifted[2] == msgspec.structs.replace(pos(i=5), ts=ms_to_ts(start + 5000))
    assert shifted[4] == pos("bus-3", i=2, ts=ms_to_ts(start + 2000))


def test_shift_out_of_range_is_a_skip_not_a_crash() -> None:
    items = [pos(i=0), pos(i=-(10**9))]  # the second is 10^9 s before the first
    shifted = list(shift_to_start(items, -62_135_596_800_000 + 1000))
    assert shifted[1] == Skipped("time out of range after --start", items[1].time)


def test_parse_start() -> None:
    assert parse_start("now", T0) == T0
    assert parse_start(" NOW ", T0) == T0
    assert parse_start("2025-11-25T12:00:00Z", 0) == T0
    assert parse_start("2h", T0) == T0 - 7_200_000
    with pytest.raises(InvalidParameter, match="--start"):
        parse_start("yesterday-ish", T0)


def test_open_binary_reads_gzip_by_content_and_the_meter_follows(tmp_path: Path) -> None:
    data = b"".join(b"%d,%s\n" % (i, ms_to_ts(T0 + i).encode()) for i in range(20_000))
    plain = tmp_path / "a.csv"
    plain.write_bytes(data)
    packed = tmp_path / "a.bin"  # no .gz suffix: the content says gzip
    packed.write_bytes(gzip.compress(data))
    for path in (plain, packed):
        with metered() as meter:
            assert meter.done is None  # nothing opened yet
            with open_binary(path) as f:
                assert f.read(10) == data[:10]
                assert meter.size == path.stat().st_size
                assert meter.done is not None and 0 < meter.done <= meter.size
                assert f.read() == data[10:]
            assert meter.done == meter.size


def test_open_binary_outside_a_meter(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    with open_binary(path) as f:
        assert f.read() == b"abc"


def test_retime_makes_times_from_distance_per_device() -> None:
    # 0.009 degrees of latitude is 1,000.756 m: at 3.6 km/h (1 m/s), 1,000.756 s.
    items: list[Item] = [
        pos(lat=0.0, lon=0.0, ts=ms_to_ts(T0)),
        pos("bus-3", lat=10.0, lon=10.0, ts=ms_to_ts(T0 + 5)),
        pos(lat=0.009, lon=0.0, ts=ms_to_ts(T0)),  # the same time as the one before
        Skipped("no time", "line 4"),
        pos(lat=0.009, lon=0.0, ts=ms_to_ts(T0)),  # no distance: the same time again
    ]
    out = list(retime(items, 3.6))
    times = [i.ts_ms - T0 for i in out if isinstance(i, Position)]
    assert times == [0, 5, 1_000_756, 1_000_756]
    assert out[3] == items[3]


def test_haversine() -> None:
    assert haversine_m(0, 0, 0, 0) == 0
    # A degree of a great circle is R * pi / 180, whichever way.
    assert haversine_m(0, 0, 0, 1) == pytest.approx(111_195.08, abs=0.01)
    assert haversine_m(10, 20, 11, 20) == pytest.approx(111_195.08, abs=0.01)
