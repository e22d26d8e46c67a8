"""Reading Google location history: Records.json, Semantic Location History, Timeline."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from geotrack.errors import SourceError
from geotrack.importing import import_files
from geotrack.schema import Position
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped
from geotrack.sources.formats import formats
from geotrack.sources.google import read_google
from geotrack.store import open_store
from tests.conftest import SAMPLES
from tests.factories import stored

GOOGLE = SAMPLES / "google"


def read(path: Path, **options: Any) -> list[Item]:
    return list(read_google(path, ReadOptions(**options)))


def positions(items: list[Item]) -> list[Position]:
    return [i for i in items if isinstance(i, Position)]


def skipped(items: list[Item]) -> list[Skipped]:
    return [i for i in items if isinstance(i, Skipped)]


def detect(path: Path) -> str:
    head = path.read_bytes()[: 1 << 16]
    return next(name for name, fmt in formats().items() if fmt.sniff(head))


def write(tmp_path: Path, document: Any, name: str = "Records.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


# --- Records.json ---------------------------------------------------------------------------


def test_records_json_every_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "locations": [
                {
                    "timestampMs": "1544011286907",
                    "latitudeE7": 524292885,
                    "longitudeE7": 135297695,
                    "accuracy": 65,
                    "altitude": 33,
                    "verticalAccuracy": 10,
                    "velocity": 4,
                    "heading": 270,
                    "activity": [
                        {
                            "timestampMs": "1544011280000",
                            "activity": [{"type": "ON_FOOT", "confidence": 80}],
                        }
                    ],
                },
                # The newer ISO timestamps, and E7 values written as unsigned 32-bit numbers.
                {
                    "timestamp": "2022-01-12T17:18:24.19Z",
                    "latitudeE7": 4294967296 - 338688197,
                    "longitudeE7": 1512092955,
                    "source": "WIFI",
                    "deviceTag": -1395553522,
                },
                {"timestampMs": "1544011290000", "latitudeE7": 524292885},
                {"timestamp": "2022-01-12T17:18:30Z", "latitudeE7": 1, "longitudeE7": 2},
            ]
        },
    )
    items = read(path)
    first, second, third = positions(items)
    assert first == Position(
        device="Records",
        lat=52.4292885,
        lon=13.5297695,
        ts="2018-12-05T12:01:26.907Z",
        speed=4,
        heading=270,
        alt=33,
        acc=65,
        attrs={"verticalAccuracy": 10, "activity": "ON_FOOT"},
    )
    assert (second.lat, second.lon, second.ts) == (
        -33.8688197,
        151.2092955,
        "2022-01-12T17:18:24.190Z",
    )
    assert second.attrs == {"source": "WIFI", "deviceTag": -1395553522}
    assert third.lat == 1e-7
    assert skipped(items) == [Skipped("longitudeE7: required", "locations 3")]
    assert detect(path) == "google"
    assert {p.device for p in positions(read(path, device="phone"))} == {"phone"}


def test_records_of_several_phones_are_several_devices(tmp_path: Path) -> None:
    def fix(i: int, tag: int) -> dict[str, Any]:
        return {
            "timestampMs": str(1_600_000_000_000 + i * 1000),
            "latitudeE7": 480000000 + i,
            "longitudeE7": 20000000,
            "deviceTag": tag,
        }

    path = write(tmp_path, {"locations": [fix(0, 7), fix(1, -99), fix(2, 7), fix(3, -99)]})
    items = read(path)
    assert [p.device for p in positions(items)] == ["Records", "Records--99"] * 2
    assert (
        Notice(
            "2 phones in the file (deviceTag), stored as Records, Records--99: give "
            "--device to store them as one"
        )
        in items
    )
    merged = read(path, device="phone")
    assert {p.device for p in positions(merged)} == {"phone"}
    assert not [i for i in merged if isinstance(i, Notice)]


def test_records_json_sample() -> None:
    """A real Records.json, randomized (reitti's test data)."""
    path = GOOGLE / "Records.json"
    expected = json.loads(path.read_text(encoding="utf-8"))["locations"]
    items = read(path)
    got = positions(items)
    assert len(got) == len(expected) == 95
    assert not skipped(items)
    assert [(p.lat, p.lon) for p in got] == [
        (r["latitudeE7"] / 1e7, r["longitudeE7"] / 1e7) for r in expected
    ]
    assert got[0].ts == "2013-04-15T06:31:26.860Z"
    assert detect(path) == "google"


def test_truncated_records_keep_what_came_before(tmp_path: Path) -> None:
    records = [
        {
            "timestampMs": str(1_700_000_000_000 + i * 1000),
            "latitudeE7": 500000000 + i,
            "longitudeE7": 100000000,
        }
        for i in range(100)
    ]
    text = json.dumps({"locations": records})
    path = tmp_path / "Records.json"
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"Records\.json: the JSON ends early"):
        got.extend(read_google(path, ReadOptions()))
    assert 40 <= len(got) < 50
    assert [p.ts_ms for p in positions(got)] == [
        1_700_000_000_000 + i * 1000 for i in range(len(got))
    ]


def test_a_large_records_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Memory while reading stays a small fraction of the file: one element at a time."""
    path = tmp_path / "Records.json"
    count = 60_000
    with path.open("w", encoding="utf-8") as out:
        out.write('{"locations": [\n')
        for i in range(count):
            out.write(
                f'{{"timestampMs": "{1_500_000_000_000 + i * 1000}", "latitudeE7": '
                f'{480000000 + i}, "longitudeE7": {23000000 + i}, "accuracy": 12, '
                f'"altitude": 40, "source": "GPS", "deviceTag": 12345}}'
                + (",\n" if i < count - 1 else "\n")
            )
        out.write("]}\n")
    size = path.stat().st_size
    assert size > 8_000_000
    tracemalloc.start()
    try:
        n = 0
        for item in read_google(path, ReadOptions()):
            n += isinstance(item, Position)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == count
    # json.load would hold every element (several times the file's size) at once.
    assert peak < size / 10, f"peak {peak} bytes reading a {size}-byte file"


# --- Semantic Location History ------------------------------------------------------------


def test_semantic_location_history(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "timelineObjects": [
                {
                    "placeVisit": {
                        "location": {
                            "latitudeE7": 374850711,
                            "longitudeE7": -1221474242,
                            "placeId": "ChIJGcSN",
                            "name": "Office",
                            "address": "1 Hacker Way",
                        },
                        "duration": {
                            "startTimestampMs": "1368062668883",
                            "endTimestampMs": "1368118516119",
                        },
                    }
                },
                {
                    "activitySegment": {
                        "startLocation": {"latitudeE7": 374850711, "longitudeE7": -1221474242},
                        "endLocation": {"latitudeE7": 374950711, "longitudeE7": -1221474242},
                        "duration": {
                            "startTimestamp": "2013-05-09T16:55:16.119Z",
                            "endTimestamp": "2013-05-09T17:05:16.119Z",
                        },
                        "activityType": "CYCLING",
                        "simplifiedRawPath": {
                            "points": [
                                {
                                    "latE7": 374900711,
                                    "lngE7": -1221474242,
                                    "timestampMs": "1368118816119",
                                    "accuracyMeters": 10,
                                }
                            ]
                        },
                        "waypointPath": {
                            "waypoints": [
                                {"latE7": 374850711, "lngE7": -1221474242},
                                {"latE7": 374875711, "lngE7": -1221474242},
                                {"latE7": 374950711, "lngE7": -1221474242},
                            ]
                        },
                    }
                },
                {"placeVisit": {"location": {"latitudeE7": 1, "longitudeE7": 2}}},
            ]
        },
        name="2013_MAY.json",
    )
    items = read(path)
    got = positions(items)
    visit = {"visit": True, "place": "Office", "address": "1 Hacker Way", "placeId": "ChIJGcSN"}
    assert [(p.ts, p.lat, p.attrs) for p in got[:2]] == [
        ("2013-05-09T01:24:28.883Z", 37.4850711, visit),
        ("2013-05-09T16:55:16.119Z", 37.4850711, visit),
    ]
    cycling = {"activity": "CYCLING"}
    # The ride starts when the visit ends: that time is read once, as the visit's end.
    assert [(p.ts, p.lat, p.acc, p.attrs) for p in got[2:]] == [
        ("2013-05-09T17:05:16.119Z", 37.4950711, None, cycling),
        ("2013-05-09T17:00:16.119Z", 37.4900711, 10, cycling),
        # A quarter of the way: a quarter of the ten minutes.
        ("2013-05-09T16:57:46.119Z", 37.4875711, None, {**cycling, "waypoint": True}),
    ]
    assert skipped(items) == [
        Skipped("duration: required", "timelineObjects 3 placeVisit"),
    ]
    shared = (
        "1 segment end at the time the next segment starts read once (the first of the two kept)"
    )
    assert Notice(shared) in items
    assert (
        Notice(
            "1 waypoint without a time got one along their segment's duration, in proportion "
            "to the distance"
        )
        in items
    )
    assert detect(path) == "google"


def test_semantic_location_history_sample() -> None:
    """The first 12 objects of a real monthly file (GPSBabel's test data): all read."""
    path = GOOGLE / "2013_MAY_first12.json"
    objects = json.loads(path.read_text(encoding="utf-8"))["timelineObjects"]
    expected = 0
    for obj in objects:
        kind, body = next(iter(obj.items()))
        expected += len(body.get("simplifiedRawPath", {}).get("points", []))
        if kind == "placeVisit":
            expected += 2
        else:
            expected += sum(bool(body.get(e)) for e in ("startLocation", "endLocation"))
            expected += max(0, len(body.get("waypointPath", {}).get("waypoints", [])) - 2)
    items = read(path)
    notices = [i.text for i in items if isinstance(i, Notice)]
    shared = sum(int(n.split()[0]) for n in notices if "segment end" in n)
    assert not skipped(items)
    assert len(positions(items)) + shared == expected > 40
    assert any(p.attrs and p.attrs.get("place") == "Facebook" for p in positions(items))
    assert detect(path) == "google"


# --- the on-device Timeline export ----------------------------------------------------------


def test_android_timeline_export(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "semanticSegments": [
                {
                    "startTime": "2024-05-02T11:40:00.000+02:00",
                    "endTime": "2024-05-02T13:40:00.000+02:00",
                    "timelinePath": [
                        {
                            "point": "48.8583701°, 2.2944813°",
                            "time": "2024-05-02T12:12:00.000+02:00",
                        },
                        {"point": "48.86°, 2.29", "time": "2024-05-02T12:13:00.000+02:00"},
                        {"point": "north pole", "time": "2024-05-02T12:14:00.000+02:00"},
                    ],
                },
                {
                    "startTime": "2024-05-02T14:00:00.000+02:00",
                    "endTime": "2024-05-02T15:00:00.000+02:00",
                    "visit": {
                        "topCandidate": {
                            "placeId": "ChIJ",
                            "semanticType": "HOME",
                            "placeLocation": {"latLng": "-27.4130260°, 153.5643862°"},
                        }
                    },
                },
                {
                    "startTime": "2024-05-02T15:00:00.000+02:00",
                    "endTime": "2024-05-02T15:30:00.000+02:00",
                    "activity": {
                        "start": {"latLng": "1.5°, 2.5°"},
                        "end": {"latLng": "1.6°, 2.6°"},
                        "topCandidate": {"type": "WALKING"},
                    },
                },
            ],
            "rawSignals": [
                {"wifiScan": {"deliveryTime": "2024-05-02T12:00:00Z", "devicesRecords": []}},
                {
                    "position": {
                        "LatLng": "48.1°, 11.5°",
                        "accuracyMeters": 12,
                        "altitudeMeters": 520.5,
                        "source": "GPS",
                        "timestamp": "2024-05-02T12:30:00.000+02:00",
                        "speedMetersPerSecond": 1.25,
                    }
                },
            ],
            "userLocationProfile": {},
        },
        name="Timeline.json",
    )
    items = read(path)
    got = positions(items)
    assert [(p.ts, p.lat, p.lon) for p in got] == [
        ("2024-05-02T10:12:00.000Z", 48.8583701, 2.2944813),
        ("2024-05-02T10:13:00.000Z", 48.86, 2.29),
        ("2024-05-02T12:00:00.000Z", -27.413026, 153.5643862),
        ("2024-05-02T13:00:00.000Z", -27.413026, 153.5643862),
        ("2024-05-02T13:30:00.000Z", 1.6, 2.6),
        ("2024-05-02T10:30:00.000Z", 48.1, 11.5),
    ]
    assert got[2].attrs == {"visit": True, "semanticType": "HOME", "placeId": "ChIJ"}
    assert got[4].attrs == {"activity": "WALKING"}  # its start was the visit's end
    raw = got[-1]
    assert (raw.acc, raw.alt, raw.speed, raw.attrs) == (12, 520.5, 1.25, {"source": "GPS"})
    [bad] = skipped(items)
    assert bad.where == "semanticSegments 1 timelinePath 3"
    assert bad.reason.startswith("point: expected a point like")
    assert detect(path) == "google"


def test_ios_timeline_export(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {
                "startTime": "2023-12-27T13:00:00+01:00",
                "endTime": "2023-12-27T15:00:00+01:00",
                "timelinePath": [
                    {
                        "point": "geo:55.596349,24.7405147",
                        "durationMinutesOffsetFromStartTime": "0",
                    },
                    {
                        "point": "geo:55.6054870,24.7648727",
                        "durationMinutesOffsetFromStartTime": "12",
                    },
                ],
            },
            {
                "startTime": "2023-12-27T15:00:00+01:00",
                "endTime": "2023-12-28T05:43:23+01:00",
                "visit": {
                    "topCandidate": {
                        "semanticType": "Home",
                        "placeID": "ChIJ46",
                        "placeLocation": "geo:55.605487,24.764873",
                    }
                },
            },
        ],
        name="location-history.json",
    )
    got = positions(read(path))
    assert [(p.ts, p.lat, p.lon) for p in got] == [
        ("2023-12-27T12:00:00.000Z", 55.596349, 24.7405147),
        ("2023-12-27T12:12:00.000Z", 55.605487, 24.7648727),
        ("2023-12-27T14:00:00.000Z", 55.605487, 24.764873),
        ("2023-12-28T04:43:23.000Z", 55.605487, 24.764873),
    ]
    assert got[2].attrs == {"visit": True, "semanticType": "Home", "placeId": "ChIJ46"}
    assert detect(path) == "google"


def _expected_timeline_points(segments: list[dict[str, Any]]) -> int:
    """Positions a Timeline export holds, counted independently of the reader."""
    count = 0
    for segment in segments:
        count += len(segment.get("timelinePath", []))
        if "visit" in segment:
            count += 1 if segment["startTime"] == segment["endTime"] else 2
        if "activity" in segment:
            count += 2
    return count


@pytest.mark.parametrize(
    "name", ["timeline_from_android_randomized.json", "timeline_from_ios_randomized.json"]
)
def test_timeline_samples(name: str) -> None:
    """Real Timeline exports, randomized (reitti's test data): every point is read."""
    path = GOOGLE / name
    document = json.loads(path.read_text(encoding="utf-8"))
    segments = document if isinstance(document, list) else document["semanticSegments"]
    raw = [s for s in ([] if isinstance(document, list) else document.get("rawSignals", []))]
    expected = _expected_timeline_points(segments) + sum("position" in s for s in raw)
    items = read(path)
    assert not skipped(items)
    # Where a segment ends as the next starts, the time is read once (a notice counts it).
    [shared] = [i.text for i in items if isinstance(i, Notice)]
    assert len(positions(items)) + int(shared.split()[0]) == expected > 50
    got = positions(items)
    assert all(a.ts != b.ts for a, b in itertools.pairwise(got))
    assert detect(path) == "google"


def test_not_google_at_all(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('"just a string"', encoding="utf-8")
    with pytest.raises(SourceError, match="not Google location history"):
        read(path)


@pytest.mark.parametrize(
    "name",
    [
        "Records.json",
        "2013_MAY_first12.json",
        "timeline_from_android_randomized.json",
        "timeline_from_ios_randomized.json",
    ],
)
def test_samples_import_into_sqlite_and_again_store_nothing(tmp_path: Path, name: str) -> None:
    """Positions in = positions out through a real SQLite file; a re-import adds nothing."""
    db = tmp_path / "g.db"
    path = GOOGLE / name
    read_back: dict[tuple[str, str], Position] = {}
    for p in positions(read(path)):
        read_back.setdefault(p.key, p)  # segments share their ends: the store keeps the first
    with open_store(f"sqlite:///{db}") as store:
        (first,) = import_files(store, [path])
        (again,) = import_files(store, [path])
    assert first.format == "google" and first.ok
    assert first.stored == len(read_back)
    assert (again.stored, again.duplicates) == (0, first.read)
    assert stored(db, sort=True) == sorted(read_back.values(), key=lambda p: p.key)
