"""The sans-I/O schema: frames, positions, timestamps, filters and times, with no sockets."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from geotrack.errors import FrameError, InvalidParameter, InvalidPosition
from geotrack.schema import (
    MAX_ATTRS,
    MAX_BATCH,
    Ack,
    BBox,
    ParsedFrame,
    Position,
    Rejection,
    SubscribeFilter,
    decode_ack,
    decode_frame,
    encode_ack,
    encode_batch,
    encode_error,
    encode_position,
    ms_to_ts,
    parse_duration,
    parse_time,
    parse_ts,
    ts_to_ms,
    validate,
)
from geotrack.schema.frames import _decode_slow

TS = "2026-11-25T12:00:00.123Z"
TS_MS = 1_795_608_000_123
MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
FIELDS = ("device", "lat", "lon", "ts", "speed", "heading", "alt", "acc", "attrs")


def fix(**fields: Any) -> dict[str, Any]:
    """A valid position as a JSON object; ``None`` values remove the field."""
    base: dict[str, Any] = {"device": "car-1", "lat": 52.52, "lon": 13.405, "ts": TS}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def frame(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def one(value: dict[str, Any]) -> Position:
    """The position a one-object frame holds; fails the test when it is rejected."""
    parsed = decode_frame(frame(value))
    assert parsed.rejected == [], parsed.rejected
    (position,) = parsed.positions
    return position


def rejection(value: dict[str, Any]) -> str:
    """The reason a one-object frame's position is rejected; fails when it is accepted."""
    parsed = decode_frame(frame(value))
    assert parsed.positions == [], parsed.positions
    assert parsed.count == 1 and parsed.indexes == []
    (r,) = parsed.rejected
    assert r.index == 0
    return r.error


def accounted(parsed: ParsedFrame) -> None:
    """Every element of the frame is either a stored position or a rejection, once."""
    assert len(parsed.positions) == len(parsed.indexes)
    places = sorted([*parsed.indexes, *(r.index for r in parsed.rejected)])
    assert places == list(range(parsed.count))


# -- fast path and slow path ----------------------------------------------------------------

VALID_FRAMES: list[Any] = [
    fix(),
    fix(ts=1_764_072_000),
    fix(ts=1_764_072_000.5, lat=1, lon=-1),
    fix(speed=0, heading=0, alt=-12.5, acc=0, attrs={}),
    fix(attrs={"batt": 80, "ign": True, "name": "bus", "none": None, "volt": 12.6}),
    fix(ts="2026-11-25t13:30:00.123456+01:30"),
    [fix(device=f"d{i}", ts=1_764_072_000 + i) for i in range(5)],
    [fix()],
    [fix(), fix()],  # a repeat is the store's business (a duplicate), not the schema's
    [fix(device="x" * 64, lat=-90, lon=180, heading=359.999)] * MAX_BATCH,
]


@pytest.mark.parametrize("value", VALID_FRAMES, ids=range(len(VALID_FRAMES)))
@pytest.mark.parametrize("as_text", [False, True])
def test_fast_and_slow_paths_agree_on_valid_frames(value: Any, as_text: bool) -> None:
    data: bytes | str = frame(value).decode() if as_text else frame(value)
    fast = decode_frame(data)
    slow = _decode_slow(data, MAX_BATCH)
    assert fast == slow
    assert fast.rejected == []
    assert fast.count == (1 if isinstance(value, dict) else len(value))
    assert fast.indexes == list(range(fast.count))


def test_one_bad_position_sends_the_frame_down_the_slow_path_and_keeps_the_rest() -> None:
    parsed = decode_frame(frame([fix(ts=1), fix(lat=91), fix(ts=3), 7]))
    assert [p.ts for p in parsed.positions] == [ms_to_ts(1000), ms_to_ts(3000)]
    assert parsed.indexes == [0, 2]
    assert [r.index for r in parsed.rejected] == [1, 3]
    assert parsed.rejected[0].error.startswith("lat: ")
    assert parsed.rejected[1].error == "position: must be a JSON object"
    assert parsed.count == 4


# -- frame-level errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[]", "empty array"),
        (b"null", "not null"),
        (b"true", "not a boolean"),
        (b"3.5", "not a number"),
        (b'"x"', "not a string"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_unusable_frames_raise_frame_error(data: bytes, says: str) -> None:
    with pytest.raises(FrameError, match=says):
        decode_frame(data)


def test_batch_limits() -> None:
    assert decode_frame(frame([fix(ts=i) for i in range(MAX_BATCH)])).count == MAX_BATCH
    with pytest.raises(FrameError, match=f"1 to {MAX_BATCH} positions; got {MAX_BATCH + 1}"):
        decode_frame(frame([fix(ts=i) for i in range(MAX_BATCH + 1)]))
    # Too large is too large however bad the elements are (the slow path says the same).
    with pytest.raises(FrameError, match="got 1001"):
        decode_frame(frame([None] * (MAX_BATCH + 1)))


def test_a_smaller_batch_limit_holds_on_both_paths() -> None:
    assert decode_frame(frame([fix(ts=1), fix(ts=2)]), max_batch=2).count == 2
    with pytest.raises(FrameError, match="1 to 2 positions; got 3"):
        decode_frame(frame([fix(ts=1), fix(ts=2), fix(ts=3)]), max_batch=2)
    with pytest.raises(FrameError, match="1 to 2 positions; got 3"):
        decode_frame(frame([fix(ts=1), fix(lat=91), fix(ts=3)]), max_batch=2)
    with pytest.raises(FrameError, match="1 to 2 positions; got an empty array"):
        decode_frame(b"[]", max_batch=2)
    assert decode_frame(frame(fix()), max_batch=1).count == 1


def test_nesting_a_position_deeply_costs_only_that_position() -> None:
    deep = '{"device":"x","lat":1,"lon":1,"ts":1,"attrs":{"a":' + "[" * 500 + "]" * 500
    parsed = decode_frame("[" + deep + "}}," + json.dumps(fix()) + "]")
    accounted(parsed)
    assert parsed.indexes == [1]
    assert parsed.rejected[0].index == 0
    assert parsed.rejected[0].error.startswith("attrs")


# -- field bounds ---------------------------------------------------------------------------

BOUNDS: list[tuple[str, Any, bool]] = [
    ("lat", 90, True),
    ("lat", -90, True),
    ("lat", 90.000001, False),
    ("lat", -90.000001, False),
    ("lon", 180, True),
    ("lon", -180, True),
    ("lon", 180.0000001, False),
    ("lon", -180.0000001, False),
    ("heading", 0, True),
    ("heading", 359.9999, True),
    ("heading", 360, False),
    ("heading", -0.0001, False),
    ("speed", 0, True),
    ("speed", 1e6, True),
    ("speed", -0.001, False),
    ("acc", 0, True),
    ("acc", -1, False),
    ("alt", -430.5, True),
    ("alt", 1e5, True),
    ("device", "x" * 64, True),
    ("device", "x" * 65, False),
    ("device", "A-Za-z0-9._:-", True),
    ("device", "", False),
    ("device", "bus 12", False),
    ("device", "bus/12", False),
    ("device", "bäckerei", False),
    ("attrs", {f"k{i}": i for i in range(MAX_ATTRS)}, True),
    ("attrs", {f"k{i}": i for i in range(MAX_ATTRS + 1)}, False),
    ("attrs", {"big": 2**63 - 1, "small": -(2**63)}, True),
    ("attrs", {"big": 2**63}, False),
    ("attrs", {"nested": {"a": 1}}, False),
    ("attrs", {"list": [1]}, False),
    ("attrs", [], False),
]


@pytest.mark.parametrize(("name", "value", "ok"), BOUNDS)
def test_field_bounds(name: str, value: Any, ok: bool) -> None:
    if ok:
        assert getattr(one(fix(**{name: value})), name) == value
    else:
        assert rejection(fix(**{name: value})).startswith(f"{name}: ")


@pytest.mark.parametrize(
    ("name", "value"),
    [(n, v) for n in ("lat", "lon", "speed", "heading", "alt", "acc") for v in (True, "1", [1])]
    + [("device", 7), ("device", None), ("ts", True), ("ts", [1]), ("ts", None)],
)
def test_wrong_types_are_rejected_naming_the_field(name: str, value: Any) -> None:
    obj = fix()
    obj[name] = value  # fix() would drop a None
    assert rejection(obj).startswith(f"{name}: ")


@pytest.mark.parametrize("name", ["device", "lat", "lon", "ts"])
def test_missing_required_field_is_named(name: str) -> None:
    assert rejection(fix(**{name: None})) == f"{name}: required field is missing"


def test_unknown_field_is_named() -> None:
    assert rejection(fix(colour="red")) == "colour: unknown field"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("name", ["lat", "lon", "speed", "heading", "alt", "acc", "ts"])
def test_nan_and_infinity_literals_are_rejected_naming_the_field(literal: str, name: str) -> None:
    obj = json.dumps(fix(**{name: 0 if name != "ts" else 1}))
    data = obj.replace(f'"{name}": {0 if name != "ts" else 1}', f'"{name}": {literal}')
    assert literal in data
    assert rejection(json.loads(data)).startswith(f"{name}: ")
    # Straight from the bytes, as the relay sees them.
    parsed = decode_frame(data)
    assert parsed.positions == [] and parsed.rejected[0].error.startswith(f"{name}: ")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_attrs_names_the_key(literal: str) -> None:
    data = '{"device":"x","lat":1,"lon":1,"ts":1,"attrs":{"volt":' + literal + "}}"
    (r,) = decode_frame(data).rejected
    assert r.error == "attrs.volt: must be a finite number"


def test_nan_next_to_valid_positions_costs_only_its_own() -> None:
    data = "[" + json.dumps(fix(ts=1)) + ',{"device":"x","lat":NaN,"lon":1,"ts":2}]'
    parsed = decode_frame(data)
    assert parsed.indexes == [0] and [r.index for r in parsed.rejected] == [1]


# -- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "canonical"),
    [
        ("2026-11-25T12:00:00Z", "2026-11-25T12:00:00.000Z"),
        ("2026-11-25T12:00:00z", "2026-11-25T12:00:00.000Z"),
        ("2026-11-25t12:00:00Z", "2026-11-25T12:00:00.000Z"),
        ("2026-11-25 12:00:00Z", "2026-11-25T12:00:00.000Z"),
        ("2026-11-25T13:00:00+01:00", "2026-11-25T12:00:00.000Z"),
        ("2026-11-25T06:30:00-05:30", "2026-11-25T12:00:00.000Z"),
        ("2026-11-25T12:00:00-00:00", "2026-11-25T12:00:00.000Z"),
        ("2026-11-26T00:30:00+12:30", "2026-11-25T12:00:00.000Z"),
        ("2026-01-01T00:30:00+01:00", "2025-12-31T23:30:00.000Z"),  # across a year
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00.000Z"),  # leap day
        ("2026-11-25T12:00:00.1Z", "2026-11-25T12:00:00.100Z"),
        ("2026-11-25T12:00:00.12Z", "2026-11-25T12:00:00.120Z"),
        ("2026-11-25T12:00:00.123Z", "2026-11-25T12:00:00.123Z"),
        ("2026-11-25T12:00:00.1239Z", "2026-11-25T12:00:00.123Z"),
        ("2026-11-25T12:00:00.12399Z", "2026-11-25T12:00:00.123Z"),
        ("2026-11-25T12:00:00.123999Z", "2026-11-25T12:00:00.123Z"),
        ("2026-11-25T12:00:00.1239999Z", "2026-11-25T12:00:00.123Z"),
        ("2026-11-25T12:00:00.12399999Z", "2026-11-25T12:00:00.123Z"),
        ("2026-11-25T12:00:00.999999999Z", "2026-11-25T12:00:00.999Z"),  # truncated, not rounded
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
        ("1969-12-31T23:59:59.9995Z", "1969-12-31T23:59:59.999Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (1_764_072_000, "2025-11-25T12:00:00.000Z"),
        (1_764_072_000.5, "2025-11-25T12:00:00.500Z"),
        (1_764_072_000.0009, "2025-11-25T12:00:00.000Z"),  # truncated to the millisecond
        (-1, "1969-12-31T23:59:59.000Z"),
        (-0.5, "1969-12-31T23:59:59.500Z"),
        (-1.0005, "1969-12-31T23:59:58.999Z"),  # toward the past, as strings are
        (-62_135_596_800, "0001-01-01T00:00:00.000Z"),
    ],
)
def test_ts_forms_become_canonical(ts: str | float, canonical: str) -> None:
    assert parse_ts(ts) == canonical
    assert one(fix(ts=ts)).ts == canonical
    assert json.loads(encode_position(one(fix(ts=ts))))["ts"] == canonical


@pytest.mark.parametrize(
    "ts",
    [
        "2026-02-30T12:00:00Z",  # no such day
        "2025-02-29T12:00:00Z",  # not a leap year
        "2026-13-01T12:00:00Z",
        "2026-11-25T24:00:00Z",
        "2026-11-25T12:60:00Z",
        "2016-12-31T23:59:60Z",  # leap second: not representable, rejected
        "2026-11-25T12:00:00",  # no offset
        "2026-11-25T12:00:00+0100",  # offset without colon
        "2026-11-25T12:00:00.Z",  # a dot without digits
        "2026-11-25",
        "12:00:00Z",
        "2026-1-25T12:00:00Z",
        "26-11-25T12:00:00Z",
        " 2026-11-25T12:00:00Z",
        "yesterday",
        "",
        "0000-12-31T23:59:59Z",
        "0001-01-01T00:30:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59.999-01:00",  # after year 9999 in UTC
        -62_135_596_801,
        253_402_300_800,
        1e300,
        "2026-11-25T12:00:00+24:00",
        "2026-11-25T12:00:00+01:99",
        "2026-11-25T12:00:00Z\n",
        "\uff12\uff10\uff12\uff16-11-25T12:00:00Z",
    ],
)
def test_bad_ts_is_rejected_naming_ts(ts: str | float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the reason is checked below
        parse_ts(ts)
    assert rejection(fix(ts=ts)).startswith("ts: ")


def test_float_seconds_keep_the_millisecond_they_spell() -> None:
    assert parse_ts(1_093_077_386.909) == ms_to_ts(1_093_077_386_909)
    assert parse_ts(1.001) == "1970-01-01T00:00:01.001Z"


def test_canonical_form() -> None:
    p = one(fix(ts=1_764_072_000.25, speed=1.5))
    assert isinstance(p.ts, str) and p.ts == p.time == "2025-11-25T12:00:00.250Z"
    assert p.ts_ms == 1_764_072_000_250
    assert p.key == ("car-1", "2025-11-25T12:00:00.250Z")
    # Absent fields are left out; field order is the schema's.
    assert encode_position(p) == (
        b'{"device":"car-1","lat":52.52,"lon":13.405,"ts":"2025-11-25T12:00:00.250Z","speed":1.5}'
    )
    assert ms_to_ts(TS_MS) == TS and ts_to_ms(TS) == TS_MS
    assert ms_to_ts(MIN_MS) == "0001-01-01T00:00:00.000Z"
    assert ms_to_ts(MAX_MS) == "9999-12-31T23:59:59.999Z"
    assert ms_to_ts(-1) == "1969-12-31T23:59:59.999Z"


def test_constructing_a_position_normalizes_ts() -> None:
    assert Position("x", 1.0, 2.0, 1.5).ts == "1970-01-01T00:00:01.500Z"
    with pytest.raises(ValueError, match=r"^ts: "):
        Position("x", 1.0, 2.0, "2026-02-30T00:00:00Z")
    with pytest.raises(ValueError, match=r"^alt: must be a finite number"):
        Position("x", 1.0, 2.0, 0, alt=math.inf)


# -- validate and errors ------------------------------------------------------------------


def test_validate_raises_invalid_position_with_the_field() -> None:
    assert validate(fix()).device == "car-1"
    with pytest.raises(InvalidPosition) as info:
        validate(fix(heading=360))
    assert info.value.field == "heading"
    assert str(info.value).startswith("heading: ")
    with pytest.raises(InvalidPosition) as info:
        validate(fix(ts="2026-02-30T00:00:00Z"))
    assert info.value.field == "ts"


# -- acks and errors on the wire --------------------------------------------------------------


def test_ack_and_error_frames() -> None:
    ack = Ack(2, 1, [Rejection(3, "lat: too far north")])
    data = encode_ack(ack)
    assert json.loads(data) == {
        "type": "ack",
        "stored": 2,
        "duplicates": 1,
        "rejected": [{"index": 3, "error": "lat: too far north"}],
    }
    assert decode_ack(data) == ack
    assert json.loads(encode_error("bad")) == {"type": "error", "error": "bad"}
    with pytest.raises(FrameError, match=r"^bad$"):
        decode_ack(encode_error("bad"))
    positions = [one(fix(ts=i)) for i in range(3)]
    batch = encode_batch(encode_position(p) for p in positions)
    assert decode_frame(batch).positions == positions


# -- subscription filters -----------------------------------------------------------------


def test_subscribe_filter_leaves_the_callers_parameters_alone() -> None:
    flt = SubscribeFilter.from_query({"since": ["sqlite:5"], "token": ["t"], "device": ["a"]})
    assert flt.devices == {"a"} and flt.bbox is None
    with pytest.raises(InvalidParameter) as info:
        SubscribeFilter.from_query({"since": ["sqlite:5"]}, others=())
    assert info.value.name == "since"


def test_subscribe_filter_from_query() -> None:
    everything = SubscribeFilter.from_query({})
    assert everything.everything and everything.matches(one(fix()))
    flt = SubscribeFilter.from_query({"device": ["a", "b"], "bbox": ["13,52,14,53"]})
    assert flt.devices == {"a", "b"} and flt.bbox == BBox(13, 52, 14, 53)
    assert not flt.everything
    assert flt.matches(one(fix(device="a", lat=52.5, lon=13.5)))
    assert not flt.matches(one(fix(device="c", lat=52.5, lon=13.5)))
    assert not flt.matches(one(fix(device="a", lat=51.5, lon=13.5)))


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"devices": ["a"]}, "devices"),  # a typo must not widen the subscription
        ({"device": ["a b"]}, "device"),
        ({"device": [""]}, "device"),
        ({"device": ["x" * 65]}, "device"),
        ({"bbox": ["1,2,3"]}, "bbox"),
        ({"bbox": ["1,2,3,4", "1,2,3,4"]}, "bbox"),
        ({"bbox": [""]}, "bbox"),
        ({"device": ["abc\n"]}, "device"),
    ],
)
def test_subscribe_filter_rejects(query: dict[str, list[str]], name: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        SubscribeFilter.from_query(query)
    assert info.value.name == name


def test_bbox_parse_and_contains() -> None:
    box = BBox.parse("13.0,52.0,14.0,53.0")
    assert str(box) == "13.0,52.0,14.0,53.0"
    assert BBox.parse(str(box)) == box
    for lon, lat in [(13, 52), (14, 53), (13.5, 52.5)]:  # edges included
        assert box.contains(lon, lat)
    for lon, lat in [(12.99, 52.5), (14.01, 52.5), (13.5, 51.99), (13.5, 53.01)]:
        assert not box.contains(lon, lat)


def test_bbox_across_the_antimeridian() -> None:
    box = BBox.parse("170,-10,-170,10")
    for inside in (170, 175, 180, -180, -175, -170):
        assert box.contains(inside, 0), inside
    for outside in (169.9, 0, -169.9, 90):
        assert not box.contains(outside, 0), outside
    assert not box.contains(175, 10.5)


@pytest.mark.parametrize(
    "text",
    [
        "1,2,3",
        "1,2,3,4,5",
        "a,b,c,d",
        "nan,0,1,1",
        "0,0,inf,1",
        "-181,0,0,1",
        "0,0,181,1",
        "0,-91,1,0",
        "0,0,1,91",
        "0,10,1,5",  # minLat > maxLat
        "",
    ],
)
def test_bbox_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        BBox.parse(text, "--bbox")
    assert info.value.name == "--bbox"
    assert str(info.value).startswith("--bbox: ")


# -- times and durations on the command line -------------------------------------------------

NOW = 1_795_608_000_000  # 2026-11-25T12:00:00Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-11-25T11:00:00Z", NOW - 3_600_000),
        ("2026-11-25T12:00:00.5+01:00", NOW - 3_600_000 + 500),
        ("1795608000", NOW),
        ("1795608000.25", NOW + 250),
        ("0", 0),
        ("-1", -1000),
        ("15m", NOW - 15 * 60_000),
        ("90s", NOW - 90_000),
        ("2h", NOW - 7_200_000),
        ("1d", NOW - 86_400_000),
        ("250ms", NOW - 250),
        ("1.5h", NOW - 5_400_000),
        ("0s", NOW),
        ("  15m  ", NOW - 15 * 60_000),
    ],
)
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text, NOW) == ms


@pytest.mark.parametrize(
    "text", ["yesterday", "", "15 m", "15M", "-15m", "nan", "inf", "2026-02-30T00:00:00Z", "1e300"]
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_time(text, NOW, "--since")
    assert info.value.name == "--since"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("250ms", 0.25),
        ("0.5m", 30),
        ("42", 42),
        ("1.5", 1.5),
        ("0", 0),
        (" 5m ", 300),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "5 minutes", "5x", "-5s", "-1", "nan", "inf", "1e999"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_duration(text, "--duration")
    assert info.value.name == "--duration"


# -- holes found and closed, kept as regressions --------------------------------------


def test_device_with_a_trailing_newline_is_rejected() -> None:
    assert rejection(fix(device="bus-12\n")).startswith("device: ")


@pytest.mark.parametrize("where", ["value", "key"])
def test_lone_surrogates_are_rejected_not_stored(where: str) -> None:
    attrs = '{"a":"\\ud800"}' if where == "value" else '{"\\ud800":1}'
    data = '{"device":"x","lat":1,"lon":1,"ts":1,"attrs":' + attrs + "}"
    parsed = decode_frame(data)
    for p in parsed.positions:
        encode_position(p)  # whatever is accepted must be writable
    assert parsed.positions == [] and parsed.rejected[0].error.startswith("attrs")


@pytest.mark.parametrize("field", ["lat", "device", "ts", "speed"])
def test_lone_surrogate_in_any_field_rejects_that_position_only(field: str) -> None:
    bad = json.dumps({**fix(), field: "HERE"}).replace('"HERE"', '"\\ud800"')
    parsed = decode_frame(f"[{bad}, {json.dumps(fix())}]")
    assert len(parsed.positions) == 1 and parsed.indexes == [1]
    assert parsed.rejected[0].index == 0
    assert parsed.rejected[0].error.startswith(f"{field}: ")


def test_unknown_field_with_a_newline_is_named() -> None:
    assert rejection(fix(**{"a\nb": 1})) == "a\nb: unknown field"


# -- properties -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
# Keys without a newline: an unknown field named with one is a known hole (see
# test_unknown_field_with_a_newline_is_named), kept out so the properties test the rest.
keys = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)

devices = st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z")
finite = st.floats(allow_nan=False, allow_infinity=False)
ts_values = st.one_of(
    st.integers(MIN_MS, MAX_MS).map(ms_to_ts),
    st.integers(MIN_MS // 1000 + 1, MAX_MS // 1000 - 1),
    st.floats(MIN_MS / 1000 + 1, MAX_MS / 1000 - 1),
)
attr_values = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=20)
)
valid_objects = st.fixed_dictionaries(
    {
        "device": devices,
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "ts": ts_values,
    },
    optional={
        "speed": st.floats(min_value=0, allow_infinity=False),
        "heading": st.floats(0, 360, exclude_max=True),
        "alt": finite,
        "acc": st.floats(min_value=0, allow_infinity=False),
        "attrs": st.dictionaries(st.text(max_size=10), attr_values, max_size=MAX_ATTRS),
    },
)


REQUIRED = ("device", "lat", "lon", "ts")

# Values that no field accepts whatever its bounds: a boolean (msgspec is strict, so not a
# number), an array, and an object (except for attrs, which is one).
_not_scalars = st.booleans() | st.lists(json_scalars, max_size=3)
_objects = st.dictionaries(keys, json_scalars, max_size=3)
_non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
_text = st.text(max_size=10)
# For each field, JSON values it must reject: the wrong type, out of range, not finite.
INVALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "device": _not_scalars
    | _objects
    | st.none()
    | st.integers()
    | finite
    | st.sampled_from(["", "a b", "x" * 65, "car-1\n", "bus/7", "caf\u00e9"]),
    "lat": _not_scalars
    | _objects
    | st.none()
    | _text
    | _non_finite
    | st.floats(min_value=90, exclude_min=True)
    | st.floats(max_value=-90, exclude_max=True),
    "lon": _not_scalars
    | _objects
    | st.none()
    | _text
    | _non_finite
    | st.floats(min_value=180, exclude_min=True)
    | st.floats(max_value=-180, exclude_max=True),
    "ts": _not_scalars
    | _objects
    | st.none()
    | _non_finite
    | st.floats(min_value=MAX_MS / 1000 + 1)
    | st.floats(max_value=MIN_MS / 1000 - 1)
    | st.sampled_from(
        ["", "yesterday", "2026-11-25", "2026-11-25T12:00:00", "2026-02-30T00:00:00Z"]
    ),
    "speed": _not_scalars
    | _objects
    | _text
    | _non_finite
    | st.floats(max_value=0, exclude_max=True),
    "heading": _not_scalars
    | _objects
    | _text
    | _non_finite
    | st.floats(max_value=0, exclude_max=True)
    | st.floats(min_value=360),
    "alt": _not_scalars | _objects | _text | _non_finite,
    "acc": _not_scalars | _objects | _text | _non_finite | st.floats(max_value=0, exclude_max=True),
    "attrs": _not_scalars
    | _text
    | finite
    | st.dictionaries(keys, st.lists(json_scalars) | _objects, min_size=1, max_size=3)
    | st.just({"k" * 65: 1})
    | st.just({f"k{i}": i for i in range(MAX_ATTRS + 1)})
    | st.just({"batt": math.nan}),
}


@st.composite
def mutated_objects(draw: st.DrawFn) -> tuple[dict[str, Any], str | None, bool | None]:
    """A valid position with one field broken, dropped or added; that field's name; and
    whether it must be rejected (True), must be accepted (False) or may be either (None)."""
    obj = draw(valid_objects)
    how = draw(st.sampled_from(["break", "replace", "drop", "add", "none"]))
    must_reject: bool | None
    if how == "break":  # a value the field cannot take
        name = draw(st.sampled_from(FIELDS))
        obj[name] = draw(INVALID_VALUES[name])
        must_reject = True
    elif how == "replace":  # any JSON value: valid or not, by chance
        name = draw(st.sampled_from(FIELDS))
        obj[name] = draw(json_values)
        must_reject = None
    elif how == "drop":
        name = draw(st.sampled_from(sorted(obj)))
        del obj[name]
        must_reject = name in REQUIRED
    elif how == "add":
        name = draw(keys.filter(lambda k: k not in FIELDS))
        obj[name] = draw(json_values)
        must_reject = True
    else:
        name = None
        must_reject = False
    return obj, name, must_reject


frames = st.one_of(
    json_values,
    valid_objects,
    mutated_objects().map(lambda m: m[0]),
    st.lists(st.one_of(valid_objects, mutated_objects().map(lambda m: m[0]), json_values)),
)


def check_any(data: bytes | str, value: Any = None) -> None:
    try:
        parsed = decode_frame(data)
    except FrameError:
        return
    assert isinstance(parsed, ParsedFrame)
    accounted(parsed)
    if isinstance(value, dict):
        assert parsed.count == 1
    elif isinstance(value, list):
        assert parsed.count == len(value)
    for r in parsed.rejected:
        _name, sep, reason = r.error.partition(": ")
        assert sep and reason, r.error


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_any_json_is_a_frame_error_or_fully_accounted_for(value: Any) -> None:
    data = json.dumps(value, allow_nan=True)
    check_any(data, value)
    check_any(data.encode(), value)


# Bytes spliced into the string values of a valid frame: raw bytes, text, JSON escapes
# (lone surrogates among them) and quotes that cut a string short. Random bytes alone are
# almost never JSON, so they would test only the frame-level errors; these mostly stay
# JSON and reach the per-position validation (see the share checked below).
_json_text = st.text(min_size=1, max_size=6)
_splice_pieces = st.one_of(
    # What stays JSON (twice: most frames should), as escapes and as raw UTF-8 ...
    _json_text.map(lambda t: json.dumps(t)[1:-1].encode()),
    _json_text.map(lambda t: json.dumps(t, ensure_ascii=False)[1:-1].encode()),
    st.sampled_from([rb"\u0000", rb"\ud800", rb"\udfff", rb"\u00e9", rb"\n", rb"\"", rb"\\"]),
    # ... and what may not: any bytes, a string cut short, broken or surrogate UTF-8.
    st.binary(min_size=1, max_size=6),
    st.sampled_from([b'"', b'","x":"', b'"}', b"\\", b"\xff", b"\xed\xa0\x80"]),
)


@st.composite
def spliced_frames(draw: st.DrawFn) -> bytes:
    """A valid frame's bytes with a few pieces spliced into its string values."""
    objects = draw(st.lists(valid_objects, min_size=1, max_size=5))
    in_attrs = draw(st.booleans())
    if in_attrs:  # where what is let through may hold it: an attrs string
        objects[0]["attrs"] = {"note": "<here>"}
    data = frame(objects if len(objects) > 1 or draw(st.booleans()) else objects[0])
    for _ in range(draw(st.integers(1, 3))):
        # Inside a JSON string (keys included: a broken key is an unknown field), or a few
        # bytes past its start, which may be past its end.
        inside = [m.start() + 1 for m in re.finditer(rb"<here>", data)] if in_attrs else []
        inside = inside or [m.start() + 1 for m in re.finditer(rb'"(?:[^"\\]|\\.)*"', data)]
        at = draw(st.sampled_from(inside))
        offset = draw(st.integers(0, 3))
        at = min(at + offset, len(data))
        data = data[:at] + draw(_splice_pieces) + data[at:]
    return data


def check_spliced(data: bytes) -> str:
    """What decode_frame made of spliced bytes, after checking that it holds together."""
    try:
        parsed = decode_frame(data)
    except FrameError:
        return "frame error"
    accounted(parsed)
    for position in parsed.positions:
        # Whatever was let through is a position every store and subscriber can take.
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", position.device)
        assert validate(msgspec.to_builtins(position)) == position
        assert decode_frame(encode_position(position)).positions == [position]
    for r in parsed.rejected:
        name, sep, reason = r.error.partition(": ")
        assert name and sep and reason, r.error
    return "rejected positions" if parsed.rejected else "all valid"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(spliced_frames(), st.binary(max_size=200)))
def test_any_bytes_are_a_frame_error_or_fully_accounted_for(data: bytes) -> None:
    event(check_spliced(data))


def test_spliced_bytes_reach_the_per_position_validation() -> None:
    """Many spliced frames stay JSON: the property above tests positions, not only frames."""
    outcomes: Counter[str] = Counter()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(spliced_frames())
    def run(data: bytes) -> None:
        outcomes[check_spliced(data)] += 1

    run()
    total = sum(outcomes.values())
    assert outcomes["rejected positions"] >= total // 8, outcomes
    assert outcomes["all valid"] + outcomes["frame error"] >= total // 10, outcomes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_objects())
def test_a_rejection_names_the_broken_field(
    mutated: tuple[dict[str, Any], str | None, bool | None],
) -> None:
    obj, name, must_reject = mutated
    parsed = decode_frame(frame(obj))
    accounted(parsed)
    if must_reject is not None:
        assert bool(parsed.rejected) == must_reject, (obj, parsed)
    event("rejected" if parsed.rejected else "accepted")
    if not parsed.rejected:
        return
    (r,) = parsed.rejected
    named = r.error.partition(": ")[0]
    if name in FIELDS:
        assert named.split(".")[0] == name, (name, r.error)
    else:  # an added field
        assert r.error == f"{name}: unknown field"


@settings(max_examples=300, deadline=None)
@given(valid_objects)
def test_valid_objects_are_accepted_by_both_paths_alike(obj: dict[str, Any]) -> None:
    data = frame([obj, obj])
    fast = decode_frame(data)
    assert fast.rejected == [] and len(fast.positions) == 2
    assert fast == _decode_slow(data, MAX_BATCH)


@settings(max_examples=300, deadline=None)
@given(valid_objects)
def test_a_position_survives_encode_and_decode(obj: dict[str, Any]) -> None:
    position = validate(obj)
    data = encode_position(position)
    (again,) = decode_frame(data).positions
    assert again == position
    assert encode_position(again) == data
    # And as Python builds it, not only as the decoder does.
    assert Position(**{k: getattr(position, k) for k in FIELDS}) == position


@settings(max_examples=300)
@given(st.integers(MIN_MS, MAX_MS), st.integers(MIN_MS, MAX_MS))
def test_canonical_ts_sorts_like_its_milliseconds(a: int, b: int) -> None:
    ta, tb = ms_to_ts(a), ms_to_ts(b)
    assert len(ta) == len(tb) == 24
    assert (ta < tb) == (a < b) and (ta == tb) == (a == b)
    assert ts_to_ms(ta) == a and parse_ts(ta) == ta


@settings(max_examples=200)
@given(st.integers(MIN_MS // 1000, MAX_MS // 1000), st.integers(0, 999))
def test_integer_seconds_and_strings_agree(seconds: int, ms: int) -> None:
    assume(MIN_MS <= seconds * 1000 + ms <= MAX_MS)
    assert parse_ts(seconds) == ms_to_ts(seconds * 1000)
    text = ms_to_ts(seconds * 1000 + ms)
    assert parse_ts(text.replace("Z", "+00:00")) == text
