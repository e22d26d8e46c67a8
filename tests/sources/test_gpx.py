"""Reading GPX: samples, a real Garmin export, bad files, invented times, schedule()."""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geotrack.errors import InvalidParameter, SourceError
from geotrack.schema import DEVICE_PATTERN, Position, ms_to_ts, ts_to_ms
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped
from geotrack.sources.formats import formats
from geotrack.sources.gpx import FORMAT, Track, read_gpx, schedule
from geotrack.sources.timing import SHARED_TIME

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# The shared data sits beside the repository, whatever the repository's directory is called.
SHARED_GPX = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpx"
GARMIN = SHARED_GPX / "garmin_gpxtpx.gpx"
needs_garmin = pytest.mark.skipif(
    not GARMIN.exists(), reason=f"real-world GPX not found at {GARMIN} (shared/ not beside repo)"
)

T0 = 1_780_000_000_000
GPX11_OPEN = (
    '<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1"'
    ' xmlns:gt="https://geotrack.dev/gpx/1">'
)


def gpx11(body: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{GPX11_OPEN}{body}</gpx>\n'


def trk(*points: str) -> str:
    return "<trk><trkseg>" + "".join(points) + "</trkseg></trk>"


def pt(lat: float, lon: float, time: str | None = None, inner: str = "") -> str:
    t = f"<time>{time}</time>" if time else ""
    return f'<trkpt lat="{lat}" lon="{lon}">{t}{inner}</trkpt>'


def write(tmp_path: Path, text: str, name: str = "t.gpx") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def haversine_m(a: Position, b: Position) -> float:
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b.lon - a.lon) / 2) ** 2
    )
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def gaps_ms(track: Track) -> list[int]:
    return [b.ts_ms - a.ts_ms for a, b in itertools.pairwise(track.positions)]


# --- samples -----------------------------------------------------------------------------


def test_walk_sample() -> None:
    [track] = read_gpx(SAMPLES / "walk.gpx")
    assert (track.device, track.name) == ("walk", "Unter den Linden walk")
    assert len(track.positions) == 120
    assert set(gaps_ms(track)) == {5000}
    assert track.positions[0].ts == "2026-03-14T09:00:00.000Z"
    assert all(p.alt is not None and 30 < p.alt < 40 for p in track.positions)
    # Garmin TrackPointExtension v2 (the Garmin sample below is v1): numbers stay numbers.
    attrs = [p.attrs or {} for p in track.positions]
    assert all(type(a["hr"]) is int and type(a["cad"]) is int for a in attrs)
    assert (track.warnings, track.skipped) == ([], 0)


def test_drive_sample_reads_hdop_and_gt_extensions() -> None:
    [track] = read_gpx(SAMPLES / "drive.gpx")
    ps = track.positions
    assert len(ps) == 200
    assert set(gaps_ms(track)) == {2000}
    assert all(p.time.endswith(".250Z") for p in ps)
    assert all(p.speed is not None and 0 <= p.speed < 12 for p in ps)
    assert max(p.speed or 0 for p in ps) > 10  # it does reach city speed
    assert sum(1 for p in ps if p.speed == 0) > 20  # and stands at red lights
    assert all(p.acc is not None and 3 <= p.acc <= 9 for p in ps)
    assert all(p.attrs and p.attrs["ignition"] is True for p in ps)
    assert all(p.attrs and isinstance(p.attrs["hdop"], float) for p in ps)
    moving = [p for p in ps if (p.speed or 0) > 0.5]
    # North-north-east on Madison Ave, then east-south-east on 42nd Street.
    assert all(
        p.heading is not None and (15 < p.heading < 40 or 105 < p.heading < 135) for p in moving
    )


def test_multi_segment_sample_is_one_device_per_track() -> None:
    run, dog = read_gpx(SAMPLES / "multi_segment.gpx")
    assert (run.device, run.name) == ("multi_segment-1", "Morning run")
    assert (dog.device, dog.name) == ("multi_segment-2", "Dog walk")
    assert (len(run.positions), len(dog.positions)) == (115, 50)
    pauses = [g for g in gaps_ms(run) if g > 3000]
    assert pauses == [243_000, 363_000]
    assert {p.device for p in run.positions} == {"multi_segment-1"}


def test_no_times_sample_walks_at_kmh_from_start(tmp_path: Path) -> None:
    [track] = read_gpx(SAMPLES / "no_times.gpx", kmh=10.0, start_ms=T0)
    ps = track.positions
    assert len(ps) == 60
    assert ps[0].ts == ms_to_ts(T0)
    total_m = sum(haversine_m(a, b) for a, b in itertools.pairwise(ps))
    assert ps[-1].ts_ms - T0 == pytest.approx(total_m / (10 / 3.6) * 1000, abs=2)
    assert all(g > 0 for g in gaps_ms(track))
    assert "10 km/h" in track.warnings[0]


def test_no_times_walk_ends_at_the_files_mtime_every_time(tmp_path: Path) -> None:
    path = tmp_path / "planned.gpx"
    shutil.copy(SAMPLES / "no_times.gpx", path)
    mtime_ms = T0 - 86_400_000
    os.utime(path, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))
    [track] = read_gpx(path)
    assert track.positions[-1].ts_ms == mtime_ms
    assert "modification time" in track.warnings[0]
    [again] = read_gpx(path)
    assert again.positions == track.positions  # a second import stores nothing new


def test_gpx10_route_sample_uses_the_route() -> None:
    # Waypoints and an empty <trkseg> do not count: the route stands in for a track.
    [track] = read_gpx(SAMPLES / "gpx10_route.gpx")
    assert (track.device, track.name) == ("gpx10_route", "Louvre to Etoile by bike")
    assert len(track.positions) == 16
    assert track.positions[0].ts == "2026-03-16T16:00:00.000Z"
    assert track.positions[-1].ts == "2026-03-16T16:15:00.000Z"


# --- the real Garmin export ----------------------------------------------------------------


@needs_garmin
def test_garmin_trackpointextension_lands_in_attrs() -> None:
    [track] = read_gpx(GARMIN)
    [p] = track.positions
    assert (track.device, track.name) == ("garmin_gpxtpx", "roadbiking test track")
    assert (p.lat, p.lon) == (43.12346, 8.74548)
    assert p.alt == 218.399993896484375
    assert p.ts == "2017-11-19T11:23:07.000Z"
    assert p.attrs == {
        "atemp": 15.0,
        "wtemp": 15.0,
        "cad": 15.0,
        "depth": 113,
        "hr": 113,
        "track": "roadbiking test track",
    }
    assert type(p.attrs["hr"]) is int
    assert type(p.attrs["cad"]) is float


@needs_garmin
@pytest.mark.parametrize("ms", ["001", "123", "999", "500"])
def test_garmin_milliseconds_are_exact(tmp_path: Path, ms: str) -> None:
    # .123 read through float seconds comes out as .122; the real file's layout, other ms.
    text = GARMIN.read_text(encoding="utf-8").replace("11:23:07.000Z", f"11:23:07.{ms}Z")
    [track] = read_gpx(write(tmp_path, text))
    assert track.positions[0].ts == f"2017-11-19T11:23:07.{ms}Z"


@given(st.integers(ts_to_ms("0001-01-01T00:00:00Z"), ts_to_ms("9999-12-31T23:59:59.999Z")))
def test_any_millisecond_time_reads_back_exactly(ms: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        [track] = read_gpx(write(Path(d), gpx11(trk(pt(1.0, 2.0, ms_to_ts(ms))))))
    assert track.positions[0].ts_ms == ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-11-19T13:23:07.123+02:00", "2017-11-19T11:23:07.123Z"),
        ("2017-11-19T11:23:07.123", "2017-11-19T11:23:07.123Z"),  # no offset: UTC
        ("2017-11-19T11:23:07.123999Z", "2017-11-19T11:23:07.123Z"),  # truncated, not rounded
        ("2017-11-19T11:23:07.1Z", "2017-11-19T11:23:07.100Z"),
        ("2017-11-19T11:23:07Z", "2017-11-19T11:23:07.000Z"),
    ],
)
def test_time_forms(tmp_path: Path, text: str, expected: str) -> None:
    [track] = read_gpx(write(tmp_path, gpx11(trk(pt(1.0, 2.0, text)))))
    assert track.positions[0].ts == expected


# --- fields --------------------------------------------------------------------------------


def test_gpx10_speed_and_course(tmp_path: Path) -> None:
    def p10(course: float) -> str:
        return (
            f'<trkpt lat="1" lon="2"><time>2020-01-01T00:00:0{int(course) % 7}Z</time>'
            f"<course>{course}</course><speed>3.5</speed></trkpt>"
        )

    text = (
        '<?xml version="1.0"?><gpx version="1.0" xmlns="http://www.topografix.com/GPX/1/0">'
        f"<trk><trkseg>{p10(370)}{p10(-90)}{p10(360)}</trkseg></trk></gpx>"
    )
    ps = read_gpx(write(tmp_path, text))[0].positions
    assert sorted(p.heading for p in ps if p.heading is not None) == [0.0, 10.0, 270.0]
    assert {p.speed for p in ps} == {3.5}


def test_hdop_and_foreign_extensions(tmp_path: Path) -> None:
    inner = (
        "<hdop>1.5</hdop><extensions>"
        '<power xmlns="http://www.example.com/power">210</power>'
        '<x:TrackPointExtension xmlns:x="http://www.garmin.com/xmlschemas/TrackPointExtension/v9">'
        "<x:hr>140</x:hr><x:note>left knee</x:note><x:cad>-3</x:cad><x:bad>NaN</x:bad>"
        "</x:TrackPointExtension></extensions>"
    )
    [track] = read_gpx(write(tmp_path, gpx11(trk(pt(1, 2, "2020-01-01T00:00:00Z", inner)))))
    assert track.positions[0].attrs == {
        "hdop": 1.5,
        "power": 210,
        "hr": 140,
        "note": "left knee",
        "cad": -3,
        "bad": "NaN",  # a non-finite number is kept as text rather than losing the point
    }


def test_gt_extensions_all_types(tmp_path: Path) -> None:
    inner = (
        "<extensions><gt:speed>1.25</gt:speed><gt:heading>359.5</gt:heading><gt:acc>4</gt:acc>"
        '<gt:attr name="s" type="str">  two  words </gt:attr>'
        '<gt:attr name="empty" type="str"></gt:attr>'
        '<gt:attr name="i" type="int">-9223372036854775808</gt:attr>'
        '<gt:attr name="f" type="float">1e-300</gt:attr>'
        '<gt:attr name="b" type="bool">false</gt:attr>'
        '<gt:attr name="n" type="null"/>'
        '<gt:attr type="json">["ctl\\u0001", "nul\\u0000"]</gt:attr>'
        "<gt:future>ignored</gt:future></extensions>"
    )
    [track] = read_gpx(write(tmp_path, gpx11(trk(pt(1, 2, "2020-01-01T00:00:00Z", inner)))))
    p = track.positions[0]
    assert (p.speed, p.heading, p.acc) == (1.25, 359.5, 4.0)
    assert p.attrs == {
        "s": "  two  words ",
        "empty": "",
        "i": -(2**63),
        "f": 1e-300,
        "b": False,
        "n": None,
        "ctl\x01": "nul\x00",
    }


def test_invalid_points_are_skipped_and_counted(tmp_path: Path) -> None:
    t = "2020-01-01T00:00:0{}Z".format
    body = trk(
        pt(1, 2, t(1)),
        pt(95, 2, t(2)),  # lat out of range
        pt(1, 200, t(3)),  # lon out of range
        pt(1, 2, t(4), "<extensions><gt:speed>fast</gt:speed></extensions>"),
        pt(1, 2, t(5), "<extensions><gt:acc>-1</gt:acc></extensions>"),
        pt(1, 2, t(6), '<extensions><gt:attr name="k" type="bool">yes</gt:attr></extensions>'),
        pt(3, 4, t(7)),
    )
    [track] = read_gpx(write(tmp_path, gpx11(body)))
    assert [(p.lat, p.ts) for p in track.positions] == [
        (1.0, t(1)[:-1] + ".000Z"),
        (3.0, t(7)[:-1] + ".000Z"),
    ]
    assert track.skipped == 5
    [warning] = track.warnings
    assert warning.startswith("skipped 5 of 7 points (track 1 point 2: lat")
    assert "track 1 point 3: lon" in warning


def test_track_whose_points_are_all_invalid_keeps_its_warning(tmp_path: Path) -> None:
    body = trk(pt(95, 2, "2020-01-01T00:00:00Z")) + trk(pt(1, 2, "2020-01-01T00:00:00Z"))
    bad, good = read_gpx(write(tmp_path, gpx11(body)))
    assert (bad.positions, bad.skipped) == ([], 1)
    assert len(good.positions) == 1


def test_positions_are_sorted_and_shared_times_refused(tmp_path: Path) -> None:
    t = "2020-01-01T00:00:0{}Z".format
    body = trk(pt(1, 1, t(3)), pt(2, 2, t(1)), pt(3, 3, t(2)), pt(4, 4, t(2)))
    [track] = read_gpx(write(tmp_path, gpx11(body)))
    # The fourth point is at the third one's time elsewhere: a store could keep only one.
    assert [p.lat for p in track.positions] == [2, 3, 1]
    assert track.skipped == 1
    order, skipped = track.warnings
    assert "1 of 4 points have the same time as the point before and 1 of 4 points go" in order
    assert "--retime KMH" in order
    assert skipped == f"skipped 1 of 4 points (track 1 point 4: {SHARED_TIME})"


# --- partial times -------------------------------------------------------------------------


def meridian(n: int, step: float = 0.001) -> list[tuple[float, float]]:
    """Points due north, equally spaced (so distance fractions are exact enough)."""
    return [(round(i * step, 6), 0.0) for i in range(n)]


def test_partial_times_interpolated_by_distance(tmp_path: Path) -> None:
    coords = meridian(5)
    points = [
        pt(*c, ms_to_ts(T0) if i == 0 else ms_to_ts(T0 + 40_000) if i == 4 else None)
        for i, c in enumerate(coords)
    ]
    [track] = read_gpx(write(tmp_path, gpx11(trk(*points))))
    assert [p.ts_ms - T0 for p in track.positions] == pytest.approx(
        [0, 10_000, 20_000, 30_000, 40_000], abs=1
    )
    [warning] = track.warnings
    assert warning.startswith("track 1: 3 of 5 points have no time: interpolated by distance")


def test_partial_times_repeated_spot_interpolated_by_index(tmp_path: Path) -> None:
    times = [ms_to_ts(T0), None, None, ms_to_ts(T0 + 3000)]
    [track] = read_gpx(write(tmp_path, gpx11(trk(*(pt(1, 1, t) for t in times)))))
    assert [p.ts_ms - T0 for p in track.positions] == [0, 1000, 2000, 3000]


def test_partial_times_ends_at_the_tracks_own_speed(tmp_path: Path) -> None:
    coords = meridian(4)
    times = [None, ms_to_ts(T0), ms_to_ts(T0 + 100_000), None]
    [track] = read_gpx(
        write(tmp_path, gpx11(trk(*(pt(*c, t) for c, t in zip(coords, times, strict=True)))))
    )
    assert [p.ts_ms - T0 for p in track.positions] == pytest.approx(
        [-100_000, 0, 100_000, 200_000], abs=2
    )
    # 111 m in 100 s is 4 km/h; the default kmh (5) would have given other times.
    assert "4.0 km/h" in track.warnings[0]


def test_partial_times_single_timed_point_uses_kmh(tmp_path: Path) -> None:
    coords = meridian(3)
    times = [None, ms_to_ts(T0), None]
    path = write(tmp_path, gpx11(trk(*(pt(*c, t) for c, t in zip(coords, times, strict=True)))))
    [track] = read_gpx(path, kmh=36.0)
    step_m = haversine_m(track.positions[0], track.positions[1])
    assert [p.ts_ms - T0 for p in track.positions] == pytest.approx(
        [-step_m * 100, 0, step_m * 100], abs=2
    )


# --- device ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("my walk (1)", "my-walk--1-"),
        ("Müller:run_2.v1", "M-ller:run_2.v1"),
        ("x" * 80, "x" * 64),
    ],
)
def test_device_id_from_stem(tmp_path: Path, stem: str, expected: str) -> None:
    path = tmp_path / f"{stem}.gpx"
    shutil.copy(SAMPLES / "walk.gpx", path)
    assert read_gpx(path)[0].device == expected


def test_device_ids_of_a_long_stem_with_many_tracks_stay_valid(tmp_path: Path) -> None:
    path = tmp_path / f"{'y' * 70}.gpx"
    body = "".join(trk(pt(1, 1, "2020-01-01T00:00:00Z")) for _ in range(12))
    path.write_text(gpx11(body), encoding="utf-8")
    devices = [t.device for t in read_gpx(path)]
    assert devices[0] == "y" * 61 + "-1"
    assert devices[-1] == "y" * 61 + "-12"
    assert all(len(d) <= 64 for d in devices)


def test_device_given(tmp_path: Path) -> None:
    assert [t.device for t in read_gpx(SAMPLES / "walk.gpx", device="me")] == ["me"]
    multi = read_gpx(SAMPLES / "multi_segment.gpx", device="bike:7")
    assert [t.device for t in multi] == ["bike:7-1", "bike:7-2"]
    assert {p.device for t in multi for p in t.positions} == {"bike:7-1", "bike:7-2"}


@pytest.mark.parametrize("device", ["", "has space", "x" * 65, "é"])
def test_bad_device_refused(device: str) -> None:
    with pytest.raises(InvalidParameter, match="device"):
        read_gpx(SAMPLES / "walk.gpx", device=device)


def test_device_too_long_to_number(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="too long"):
        read_gpx(SAMPLES / "multi_segment.gpx", device="d" * 64)


@pytest.mark.parametrize("kmh", [0.0, -5.0, math.nan, math.inf])
def test_bad_kmh_refused(kmh: float) -> None:
    with pytest.raises(InvalidParameter, match="kmh"):
        read_gpx(SAMPLES / "walk.gpx", kmh=kmh)


def test_device_ids_match_the_schema_pattern(tmp_path: Path) -> None:
    path = tmp_path / "a b#c.gpx"
    shutil.copy(SAMPLES / "multi_segment.gpx", path)
    assert all(re.fullmatch(DEVICE_PATTERN, t.device) for t in read_gpx(path))


# --- bad files -----------------------------------------------------------------------------


def refused(path: Path) -> str:
    with pytest.raises(SourceError) as info:
        read_gpx(path)
    error = info.value
    assert error.path == str(path)
    assert "\n" not in str(error)
    # The user sees our one line, not a chained gpxpy or parser traceback.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error.reason


def test_missing_file(tmp_path: Path) -> None:
    assert refused(tmp_path / "nope.gpx").startswith("cannot read")


def test_directory(tmp_path: Path) -> None:
    assert refused(tmp_path).startswith("cannot read")


@pytest.mark.parametrize(
    "content",
    [b"", b"lat,lon\n1,2\n", b"\x89PNG\r\n\x1a\n\x00\x00", b"<gpx><trk>", b"   \n"],
)
def test_not_xml(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gpx"
    path.write_bytes(content)
    reason = refused(path)
    # Truncated XML gets past the root check: a GPX file, but broken (where is said).
    assert reason.startswith(("not an XML file", "not a text file", "truncated or broken at"))


def test_xml_but_not_gpx(tmp_path: Path) -> None:
    reason = refused(write(tmp_path, "<html><body><p>hi</p></body></html>"))
    assert reason == "not a GPX file: its root element is <html>, not <gpx>"


def test_gpx_with_unreadable_point(tmp_path: Path) -> None:
    reason = refused(write(tmp_path, gpx11(trk('<trkpt lat="north" lon="2"/>'))))
    assert reason.startswith("not a valid GPX file")


def test_waypoints_only(tmp_path: Path) -> None:
    body = '<wpt lat="1" lon="2"><name>a</name></wpt><trk><trkseg/></trk><rte/>'
    assert refused(write(tmp_path, gpx11(body))) == "has only waypoints, no track or route"


@pytest.mark.parametrize("body", ["", "<trk/>", "<trk><trkseg/><trkseg/></trk><rte></rte>"])
def test_no_points(tmp_path: Path, body: str) -> None:
    assert refused(write(tmp_path, gpx11(body))) == "has no track or route points"


def test_empty_segments_skipped(tmp_path: Path) -> None:
    body = "<trk><trkseg/><trkseg>" + pt(1, 2, "2020-01-01T00:00:00Z") + "</trkseg><trkseg/></trk>"
    [track] = read_gpx(write(tmp_path, gpx11(body)))
    assert len(track.positions) == 1


def test_routes_ignored_when_there_are_tracks(tmp_path: Path) -> None:
    body = '<rte><rtept lat="5" lon="5"/></rte>' + trk(pt(1, 2, "2020-01-01T00:00:00Z"))
    [track] = read_gpx(write(tmp_path, gpx11(body)))
    assert track.positions[0].lat == 1.0


def test_declared_latin1_encoding_and_utf8_bom(tmp_path: Path) -> None:
    body = "<trk><name>Müller</name><trkseg>" + pt(1, 2, "2020-01-01T00:00:00Z") + "</trkseg></trk>"
    latin = f'<?xml version="1.0" encoding="ISO-8859-1"?>\n{GPX11_OPEN}{body}</gpx>'
    (tmp_path / "latin.gpx").write_bytes(latin.encode("latin-1"))
    (tmp_path / "bom.gpx").write_bytes(b"\xef\xbb\xbf" + gpx11(body).encode("utf-8"))
    assert read_gpx(tmp_path / "latin.gpx")[0].name == "Müller"
    assert read_gpx(tmp_path / "bom.gpx")[0].name == "Müller"


# --- schedule ------------------------------------------------------------------------------


def make_track(device: str, start_ms: int, gaps_s: list[float]) -> Track:
    times = [start_ms, *(start_ms + round(sum(gaps_s[: i + 1]) * 1000) for i in range(len(gaps_s)))]
    return Track(
        device, None, [Position(device=device, lat=1.0, lon=2.0, ts=ms_to_ts(t)) for t in times]
    )


def test_schedule_merges_tracks_from_their_own_start() -> None:
    a = make_track("a", T0, [1, 1, 3])
    b = make_track("b", T0 - 86_400_000, [0.5, 2])  # a day earlier: still starts at 0
    out = list(schedule([a, b]))
    assert [(off, p.device) for off, p in out] == [
        (0.0, "a"),
        (0.0, "b"),
        (0.5, "b"),
        (1.0, "a"),
        (2.0, "a"),
        (2.5, "b"),
        (5.0, "a"),
    ]
    assert [p for _, p in out if p.device == "a"] == a.positions


def test_schedule_of_samples_is_ordered_and_complete() -> None:
    tracks = read_gpx(SAMPLES / "multi_segment.gpx") + read_gpx(SAMPLES / "drive.gpx")
    out = list(schedule(tracks))
    offsets = [off for off, _ in out]
    assert offsets == sorted(offsets)
    assert len(out) == sum(len(t.positions) for t in tracks)
    for track in tracks:
        mine = [(off, p) for off, p in out if p.device == track.device]
        first = track.positions[0].ts_ms
        assert [p for _, p in mine] == track.positions
        assert all(off == (p.ts_ms - first) / 1000 for off, p in mine)


def test_schedule_loop_shifts_by_duration_plus_interval() -> None:
    a = make_track("a", T0, [5, 5, 10])  # 20 s long, median gap 5 s: period 25 s
    b = make_track("b", T0, [])  # one point: period 1 s
    out = list(itertools.takewhile(lambda item: item[0] <= 60, schedule([a, b], loop=True)))
    a_out = [(off, p.ts_ms - T0) for off, p in out if p.device == "a"]
    assert a_out[:8] == [
        (0.0, 0),
        (5.0, 5000),
        (10.0, 10000),
        (20.0, 20000),
        (25.0, 25000),
        (30.0, 30000),
        (35.0, 35000),
        (45.0, 45000),
    ]
    b_out = [(off, p.ts_ms - T0) for off, p in out if p.device == "b"]
    assert b_out[:3] == [(0.0, 0), (1.0, 1000), (2.0, 2000)]
    offsets = [off for off, _ in out]
    assert offsets == sorted(offsets)


def test_schedule_loop_never_repeats_a_device_and_time() -> None:
    tracks = read_gpx(SAMPLES / "walk.gpx") + read_gpx(SAMPLES / "multi_segment.gpx")
    n = sum(len(t.positions) for t in tracks)
    looped = list(itertools.islice(schedule(tracks, loop=True), 3 * n))
    keys = [p.key for _, p in looped]
    assert len(set(keys)) == len(keys)
    # The longest track runs about three times while the others run more often.
    walk = [p for _, p in looped if p.device == "walk"]
    assert walk[120].ts_ms - walk[0].ts_ms == 600_000  # 595 s long + 5 s interval


def test_schedule_skips_empty_tracks_and_empty_input() -> None:
    assert list(schedule([])) == []
    assert list(schedule([Track("e", None, [])], loop=True)) == []


def test_schedule_loop_memory_is_flat() -> None:
    [track] = read_gpx(SAMPLES / "walk.gpx")
    stream = schedule([track], loop=True)
    next(stream)
    tracemalloc.start()
    try:
        for _ in itertools.islice(stream, 20_000):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000  # 20,000 kept positions would take megabytes


# --- the generic reader (FORMAT) and issue 12's real files -----------------------------------


def items_of(path: Path, **options: Any) -> list[Item]:
    return list(FORMAT.read(path, ReadOptions(**options)))


def kinds(items: list[Item]) -> tuple[list[Position], list[Skipped], list[str]]:
    return (
        [i for i in items if isinstance(i, Position)],
        [i for i in items if isinstance(i, Skipped)],
        [i.text for i in items if isinstance(i, Notice)],
    )


def test_format_sniffs_gpx_and_is_registered() -> None:
    assert FORMAT.sniff((SAMPLES / "walk.gpx").read_bytes()[:4096])
    assert FORMAT.sniff(b'<?xml version="1.0"?>\n<gpx:gpx xmlns:gpx="x">')
    assert not FORMAT.sniff(b'<?xml version="1.0"?><kml xmlns="http://www.opengis.net/kml/2.2">')
    assert not FORMAT.sniff(b'{"lat": 1, "lon": 2}')
    assert formats()["gpx"] is FORMAT


def test_format_reads_every_sample_as_read_gpx_does() -> None:
    for sample in ("walk.gpx", "drive.gpx", "multi_segment.gpx", "gpx10_route.gpx"):
        positions, skips, _ = kinds(items_of(SAMPLES / sample))
        assert positions == [p for t in read_gpx(SAMPLES / sample) for p in t.positions]
        assert skips == []


def test_track_names_are_kept_in_attrs() -> None:
    positions, _, _ = kinds(items_of(SAMPLES / "multi_segment.gpx", device="me"))
    names = {(p.device, (p.attrs or {}).get("track")) for p in positions}
    assert names == {("me-1", "Morning run"), ("me-2", "Dog walk")}


def all_at_one_time(n: int, name: str = "Ride") -> str:
    """The real file of issue 12: n points, all at 1901-12-13T20:45:52.207Z (a zeroed clock)."""
    when = "1901-12-13T20:45:52.207Z"
    points = "".join(pt(47.0 + i * 1e-4, 8.0, when) for i in range(n))
    return gpx11(f"<trk><name>{name}</name><trkseg>{points}</trkseg></trk>")


def test_points_sharing_a_time_are_refused_and_counted_by_track(tmp_path: Path) -> None:
    path = write(tmp_path, all_at_one_time(184))
    positions, skips, notices = kinds(items_of(path))
    assert len(positions) == 1
    assert len(skips) == 183
    assert {s.reason for s in skips} == {SHARED_TIME}
    assert skips[0].where == "track 'Ride' point 2"
    [notice] = notices
    assert notice.startswith("track 'Ride': 183 of 184 points have the same time")
    assert "--retime KMH" in notice


def test_retime_gives_every_point_a_time_from_the_distance(tmp_path: Path) -> None:
    path = write(tmp_path, all_at_one_time(184))
    positions, skips, notices = kinds(items_of(path, retime_kmh=18.0))
    assert (len(positions), skips) == (184, [])
    assert positions[0].ts == "1901-12-13T20:45:52.207Z"
    # 1e-4 degrees of latitude is 11.1 m: 2.2 s at 18 km/h (5 m/s).
    assert [b.ts_ms - a.ts_ms for a, b in itertools.pairwise(positions[:4])] == [2224] * 3
    assert notices == ["track 'Ride': 184 points retimed at 18 km/h from 1901-12-13T20:45:52.207Z"]


def test_a_point_repeated_exactly_is_left_to_deduplication(tmp_path: Path) -> None:
    t = "2020-01-01T00:00:00Z"
    path = write(tmp_path, gpx11(trk(pt(1, 1, t), pt(1, 1, t))))
    positions, skips, notices = kinds(items_of(path))
    assert (len(positions), skips) == (2, [])
    assert positions[0] == positions[1]
    assert "1 of 2 points have the same time" in notices[0]


def test_times_going_backwards_are_counted_but_kept(tmp_path: Path) -> None:
    t = "2020-01-01T00:00:0{}Z".format
    path = write(tmp_path, gpx11(trk(pt(1, 1, t(5)), pt(2, 2, t(3)), pt(3, 3, t(4)))))
    positions, skips, notices = kinds(items_of(path))
    assert ([p.lat for p in positions], skips) == ([2, 3, 1], [])
    assert notices[0].startswith("track 1: 1 of 3 points go back in time: --retime KMH")


MIXED_META = "2024-05-01T08:00:00Z"


def mixed_file(metadata: str | None) -> str:
    """Two timed tracks and an untimed one (the real file of issue 12, made small)."""
    t = "2024-05-01T09:00:{:02}Z".format
    timed = "".join(pt(50 + i * 1e-3, 1, t(i)) for i in range(5))
    other = "".join(pt(51 + i * 1e-3, 1, t(10 + i)) for i in range(3))
    untimed = "".join(pt(52 + i * 1e-3, 1) for i in range(4))
    meta = f"<metadata><time>{metadata}</time></metadata>" if metadata else ""
    return gpx11(
        f"{meta}<trk><name>Morning</name><trkseg>{timed}</trkseg></trk>"
        f"<trk><name>Noon</name><trkseg>{other}</trkseg></trk>"
        f"<trk><name>Planned</name><trkseg>{untimed}</trkseg></trk>"
    )


def test_a_mixed_file_names_its_untimed_track_and_anchors_it(tmp_path: Path) -> None:
    path = write(tmp_path, mixed_file(MIXED_META))
    positions, skips, notices = kinds(items_of(path))
    assert (len(positions), skips) == (12, [])
    [notice] = notices
    assert notice.startswith("track 'Planned': no point has a time: walked at 5 km/h from ")
    assert "2024-05-01T08:00:00.000Z (the file's metadata time)" in notice
    planned = [p for p in positions if p.device == "t-3"]
    assert planned[0].ts == "2024-05-01T08:00:00.000Z"
    assert planned[-1].ts_ms < time.time_ns() // 1_000_000


def test_without_metadata_the_earliest_time_anchors(tmp_path: Path) -> None:
    path = write(tmp_path, mixed_file(None))
    positions, _, notices = kinds(items_of(path))
    planned = [p for p in positions if p.device == "t-3"]
    assert planned[0].ts == "2024-05-01T09:00:00.000Z"
    assert "(the file's earliest time)" in notices[0]


def test_invented_times_never_run_into_the_future(tmp_path: Path) -> None:
    now = ms_to_ts(time.time_ns() // 1_000_000)
    untimed = "".join(pt(52 + i * 1e-2, 1) for i in range(20))  # 21 km: 4 h at 5 km/h
    path = write(tmp_path, gpx11(f"<metadata><time>{now}</time></metadata>{trk(untimed)}"))
    before = time.time_ns() // 1_000_000
    positions, _, _ = kinds(items_of(path))
    after = time.time_ns() // 1_000_000
    assert before - 5 * 3_600_000 < positions[0].ts_ms
    assert positions[-1].ts_ms <= after


def test_an_untimed_file_read_twice_gives_the_same_positions(tmp_path: Path) -> None:
    path = tmp_path / "planned.gpx"
    shutil.copy(SAMPLES / "no_times.gpx", path)
    first = kinds(items_of(path))[0]
    time.sleep(0.01)
    assert kinds(items_of(path))[0] == first
    assert first[-1].ts_ms == path.stat().st_mtime_ns // 1_000_000


def test_truncated_file_gives_its_points_then_one_clear_error(tmp_path: Path) -> None:
    text = (SAMPLES / "multi_segment.gpx").read_text(encoding="utf-8")
    cut = text.index("<trkpt", text.index("Dog walk")) + 500
    path = write(tmp_path, text[:cut])
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"t\.gpx: truncated or broken at line \d+, column \d+"):
        got.extend(FORMAT.read(path, ReadOptions()))
    positions, _, _ = kinds(got)
    whole = [p for t in read_gpx(SAMPLES / "multi_segment.gpx", device="t") for p in t.positions]
    assert 115 < len(positions) < len(whole)
    assert positions == whole[: len(positions)]
    with pytest.raises(SourceError, match="truncated or broken"):
        read_gpx(path)  # publish --gpx: nothing half-sent


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE gpx [<!ENTITY x SYSTEM "file:///etc/hostname">]>',
        '<!-- a comment --><!DOCTYPE gpx [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>',
    ],
)
def test_document_type_declarations_are_refused(tmp_path: Path, doctype: str) -> None:
    body = trk(pt(1, 2, "2020-01-01T00:00:00Z")).replace("<trk>", "<trk><name>&x;</name>")
    path = write(tmp_path, f'<?xml version="1.0"?>\n{doctype}\n{GPX11_OPEN}{body}</gpx>')
    with pytest.raises(SourceError, match="refused: it declares a document type"):
        items_of(path)
