"""Reading TCX: Garmin activities and courses, sensor fields, bad and truncated files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from geotrack.errors import SourceError
from geotrack.schema import Position
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped
from geotrack.sources.formats import detect, formats
from geotrack.sources.tcx import FORMAT
from geotrack.sources.timing import SHARED_TIME

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "tcx"
TCX_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<TrainingCenterDatabase xmlns="http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2"'
    ' xmlns:ns3="http://www.garmin.com/xmlschemas/ActivityExtension/v2">'
)


def tcx(*activities: str) -> str:
    return f"{TCX_OPEN}<Activities>{''.join(activities)}</Activities></TrainingCenterDatabase>\n"


def activity(*laps: str, start: str = "2024-06-01T07:00:00Z") -> str:
    return f'<Activity Sport="Biking"><Id>{start}</Id>{"".join(laps)}</Activity>'


def lap(*points: str) -> str:
    return f'<Lap StartTime="x"><Track>{"".join(points)}</Track></Lap>'


def trackpoint(time: str | None, lat: float | None, lon: float | None = 11.5, **more: Any) -> str:
    parts = [f"<Time>{time}</Time>" if time else ""]
    if lat is not None:
        parts.append(
            f"<Position><LatitudeDegrees>{lat}</LatitudeDegrees>"
            f"<LongitudeDegrees>{lon}</LongitudeDegrees></Position>"
        )
    if "alt" in more:
        parts.append(f"<AltitudeMeters>{more['alt']}</AltitudeMeters>")
    if "hr" in more:
        parts.append(f"<HeartRateBpm><Value>{more['hr']}</Value></HeartRateBpm>")
    if "cad" in more:
        parts.append(f"<Cadence>{more['cad']}</Cadence>")
    if "speed" in more or "watts" in more:
        parts.append("<Extensions><ns3:TPX>")
        if "speed" in more:
            parts.append(f"<ns3:Speed>{more['speed']}</ns3:Speed>")
        if "watts" in more:
            parts.append(f"<ns3:Watts>{more['watts']}</ns3:Watts>")
        parts.append("</ns3:TPX></Extensions>")
    return f"<Trackpoint>{''.join(parts)}</Trackpoint>"


def write(tmp_path: Path, text: str, name: str = "ride.tcx") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def items_of(path: Path, **options: Any) -> list[Item]:
    return list(FORMAT.read(path, ReadOptions(**options)))


def kinds(items: list[Item]) -> tuple[list[Position], list[Skipped], list[str]]:
    return (
        [i for i in items if isinstance(i, Position)],
        [i for i in items if isinstance(i, Skipped)],
        [i.text for i in items if isinstance(i, Notice)],
    )


# --- real-world files (placemark/togeojson's test data, BSD-2-Clause) ------------------------


def test_garmin_activity_sample() -> None:
    positions, skips, notices = kinds(items_of(SAMPLES / "sample.tcx"))
    assert (len(positions), skips) == (17, [])
    assert notices == ["2 trackpoints without a position skipped (sensor readings only)"]
    first, last = positions[0], positions[-1]
    assert (first.device, first.lat, first.lon, first.alt) == (
        "sample",
        37.8959665,
        -122.4896709,
        3.982666,
    )
    assert first.ts == "2007-08-07T02:42:41.000Z"
    assert (first.speed, first.attrs) == (6.008999824523926, {"power": 118})
    assert (last.lat, last.lon, last.ts) == (37.8926397, -122.4841908, "2007-08-07T03:06:32.000Z")


def test_course_sample_is_named_after_the_course() -> None:
    positions, skips, notices = kinds(items_of(SAMPLES / "tcx-courses.tcx"))
    assert (len(positions), skips, notices) == (30, [], [])
    assert {p.device for p in positions} == {"Test-TCX-Route"}
    assert {(p.attrs or {}).get("track") for p in positions} == {"Test TCX Route"}
    assert positions[0].ts == "2021-08-02T18:28:31.000Z"
    assert positions[-1].ts == "2021-08-02T18:32:21.000Z"


# --- fields, laps, activities ----------------------------------------------------------------


def test_every_field_of_a_trackpoint(tmp_path: Path) -> None:
    text = tcx(
        activity(
            lap(
                trackpoint("2024-06-01T07:00:00Z", 48.1, alt=520.5, hr=120, cad=80, speed=5.5),
                trackpoint("2024-06-01T07:00:01.5Z", 48.1001, alt=521, hr=121, watts=250),
            ),
            lap(trackpoint("2024-06-01T09:00:02+02:00", 48.1002, hr="120.5")),
        )
    )
    positions, skips, notices = kinds(items_of(write(tmp_path, text)))
    assert (skips, notices) == ([], [])
    assert [(p.lat, p.lon, p.alt, p.ts) for p in positions] == [
        (48.1, 11.5, 520.5, "2024-06-01T07:00:00.000Z"),
        (48.1001, 11.5, 521.0, "2024-06-01T07:00:01.500Z"),
        (48.1002, 11.5, None, "2024-06-01T07:00:02.000Z"),
    ]
    assert [p.speed for p in positions] == [5.5, None, None]
    assert [p.attrs for p in positions] == [
        {"hr": 120, "cad": 80},
        {"hr": 121, "power": 250},
        {"hr": 120.5},
    ]
    assert all(p.device == "ride" for p in positions)


def test_activities_are_devices_and_device_option(tmp_path: Path) -> None:
    one = activity(lap(trackpoint("2024-06-01T07:00:00Z", 48.1)))
    two = activity(lap(trackpoint("2024-06-02T07:00:00Z", 48.2)))
    path = write(tmp_path, tcx(one, two))
    assert [p.device for p in kinds(items_of(path))[0]] == ["ride", "ride-2"]
    assert [p.device for p in kinds(items_of(path, device="w"))[0]] == ["w", "w-2"]


def test_shared_times_are_refused_and_retime_fixes_them(tmp_path: Path) -> None:
    points = [trackpoint("2024-06-01T07:00:00Z", 48.1 + i * 1e-3) for i in range(3)]
    path = write(tmp_path, tcx(activity(lap(*points))))
    positions, skips, notices = kinds(items_of(path))
    assert (len(positions), [s.reason for s in skips]) == (1, [SHARED_TIME] * 2)
    assert skips[0].where == "activity 1 point 2"
    assert notices[0].startswith("activity 1: 2 of 3 points have the same time")
    positions, skips, _ = kinds(items_of(path, retime_kmh=10.0))
    assert (len(positions), skips) == (3, [])


def test_bad_values_are_skipped_with_reasons(tmp_path: Path) -> None:
    text = tcx(
        activity(
            lap(
                trackpoint("2024-06-01T07:00:00Z", 48.1),
                trackpoint("soon", 48.2),
                trackpoint("2024-06-01T07:00:02Z", 91.0),
                trackpoint("2024-06-01T07:00:03Z", 48.3, lon="east"),
            )
        )
    )
    positions, skips, _ = kinds(items_of(write(tmp_path, text)))
    assert len(positions) == 1
    assert [(s.reason, s.where) for s in skips] == [
        ("time: not a date and time: 'soon'", "activity 1 point 2"),
        ("lat: expected `float` <= 90.0", "activity 1 point 3"),
        ("lon: expected `float`, got `str`", "activity 1 point 4"),
    ]


def test_untimed_course_is_walked_from_the_activity_start_or_file(tmp_path: Path) -> None:
    course = (
        "<Courses><Course><Name>Plan</Name><Lap/><Track>"
        + trackpoint(None, 48.1)
        + trackpoint(None, 48.101)
        + "</Track></Course></Courses>"
    )
    path = write(tmp_path, f"{TCX_OPEN}{course}</TrainingCenterDatabase>")
    positions, skips, notices = kinds(items_of(path))
    assert (len(positions), skips) == (2, [])
    assert positions[-1].ts_ms == path.stat().st_mtime_ns // 1_000_000
    assert "course 'Plan': no point has a time" in notices[0]


# --- detection and bad files -----------------------------------------------------------------


def test_sniff_and_registration() -> None:
    assert FORMAT.sniff((SAMPLES / "sample.tcx").read_bytes())
    assert not FORMAT.sniff(b'<?xml version="1.0"?><gpx version="1.1">')
    assert formats()["tcx"] is FORMAT
    assert detect(SAMPLES / "tcx-courses.tcx") is FORMAT


def refused(path: Path) -> str:
    with pytest.raises(SourceError) as info:
        items_of(path)
    assert "\n" not in info.value.reason
    return info.value.reason


def test_truncated_file_keeps_the_points_before_the_cut(tmp_path: Path) -> None:
    text = (SAMPLES / "sample.tcx").read_text(encoding="utf-8")
    cut = text.index("<Trackpoint>", len(text) // 2)
    path = write(tmp_path, text[:cut])
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"ride\.tcx: truncated or broken at line \d+"):
        got.extend(FORMAT.read(path, ReadOptions()))
    positions = kinds(got)[0]
    assert 0 < len(positions) < 17
    assert positions == kinds(items_of(SAMPLES / "sample.tcx", device="ride"))[0][: len(positions)]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "truncated or broken at line 1"),
        (b"<gpx/>", "not a TCX file: its root element is <gpx>"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><TrainingCenterDatabase/>', "refused: it declares"),
    ],
)
def test_wrong_files_get_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.tcx"
    path.write_bytes(content)
    assert refused(path).startswith(reason)
