"""The JSON readers' shared parts: streaming elements, times, device ids, skips."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from geotrack.errors import InvalidParameter, InvalidPosition, SourceError
from geotrack.sources.base import Skipped
from geotrack.sources.jsonstream import as_device, file_time, skip, stem_device, stream_items


@pytest.mark.parametrize(
    ("value", "ts"),
    [
        ("2015-10-01T08:00:00-0700", "2015-10-01T15:00:00.000Z"),  # Overland's offsets
        ("2024-01-01T00:00:00.000+01:00", "2023-12-31T23:00:00.000Z"),
        ("2019-01-01 10:00:00Z", "2019-01-01T10:00:00.000Z"),
        ("1440395361", "2015-08-24T05:49:21.000Z"),  # seconds, as text
        ("1544011286907", "2018-12-05T12:01:26.907Z"),  # Google's timestampMs
        (1544011286907, "2018-12-05T12:01:26.907Z"),
        (1440395361.5, "2015-08-24T05:49:21.500Z"),
    ],
)
def test_file_times(value: object, ts: str) -> None:
    assert file_time(value, "time") == ts


def test_times_without_offset_need_a_zone() -> None:
    with pytest.raises(InvalidParameter, match=r"^time: a time without a UTC offset \(give --tz\)"):
        file_time("2025-07-01T12:00:00", "time")
    assert file_time("2025-07-01T12:00:00", "time", ZoneInfo("Europe/Berlin")) == (
        "2025-07-01T10:00:00.000Z"
    )


@pytest.mark.parametrize("value", ["noon", True, None, [1], float("nan"), 1e300])
def test_bad_times_name_the_field(value: object) -> None:
    with pytest.raises(InvalidParameter, match=r"^when: "):
        file_time(value, "when")


def test_device_ids_from_files() -> None:
    assert as_device("bike-7", "device") == "bike-7"
    assert as_device("Jane's  phone", "device") == "Jane-s_phone"
    assert as_device(42, "device_id") == "42"
    assert len(as_device("x" * 100, "device")) == 64
    with pytest.raises(InvalidParameter, match=r"^device_id: "):
        as_device(["a"], "device_id")
    assert stem_device(Path("/x/my phone (2).json"), "f") == "my-phone--2-"
    assert stem_device(Path("/x/.json"), "fallback") == ".json"


def test_skip_reasons_start_with_the_field_lower_case() -> None:
    assert skip(InvalidParameter("lat", "required"), "line 3") == Skipped("lat: required", "line 3")
    assert skip(InvalidPosition("Bad thing"), "x").reason == "bad thing"
    assert skip(ValueError("ts: out of range"), "y") == Skipped("ts: out of range", "y")


def test_elements_stream_from_plain_and_gzip_files(tmp_path: Path) -> None:
    document = {"locations": [{"i": i, "x": i / 2} for i in range(1000)], "after": 1}
    plain = tmp_path / "a.json"
    plain.write_text(json.dumps(document), encoding="utf-8")
    packed = tmp_path / "a.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        got = list(stream_items(path, "locations.item"))
        assert got == document["locations"]
        assert type(got[1]["x"]) is float and type(got[1]["i"]) is int


def test_integers_beyond_64_bits_are_read_too(tmp_path: Path) -> None:
    """yajl (the C parser) fails on -2**63 and on wider integers; the Python one takes over."""
    path = tmp_path / "big.json"
    values = [{"n": 1}, {"n": -(2**63)}, {"n": 2**70, "f": 0.5}]
    path.write_text(json.dumps({"items": values}), encoding="utf-8")
    assert list(stream_items(path, "items.item")) == values


def test_damage_is_one_line_after_the_whole_elements(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('{"a": [1, 2, {"b": 3}, {"b": ', encoding="utf-8")
    got: list[object] = []
    with pytest.raises(SourceError, match=r"cut\.json: the JSON ends early \(is the file"):
        got.extend(stream_items(path, "a.item"))
    assert got == [1, 2, {"b": 3}]
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": [1, 2,, 3]}', encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad\.json: not valid JSON") as caught:
        list(stream_items(bad, "a.item"))
    assert "\n" not in str(caught.value)
    with pytest.raises(SourceError, match=r"missing\.json: "):
        list(stream_items(tmp_path / "missing.json", "a.item"))
