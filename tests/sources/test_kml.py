"""Reading KML and KMZ: Google Earth and My Tracks files, timed lines and points, bad files."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path
from typing import Any

import pytest

from geotrack.errors import SourceError
from geotrack.schema import Position
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped
from geotrack.sources.formats import detect, formats
from geotrack.sources.kml import FORMAT
from geotrack.sources.timing import SHARED_TIME

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "kml"
KML_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<kml xmlns="http://www.opengis.net/kml/2.2" xmlns:gx="http://www.google.com/kml/ext/2.2">'
)


def kml(body: str) -> str:
    return f"{KML_OPEN}{body}</kml>\n"


def write(tmp_path: Path, text: str, name: str = "t.kml") -> Path:
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


def gx_track(
    name: str | None, points: list[tuple[str, float, float, float]], extra: str = ""
) -> str:
    whens = "".join(f"<when>{t}</when>" for t, *_ in points)
    coords = "".join(f"<gx:coord>{lon} {lat} {alt}</gx:coord>" for _, lat, lon, alt in points)
    named = f"<name>{name}</name>" if name else ""
    return f"<Placemark>{named}<gx:Track>{whens}{coords}{extra}</gx:Track></Placemark>"


RUN = [
    ("2024-06-01T07:00:00Z", 48.1, 11.5, 520.5),
    ("2024-06-01T07:00:05.250Z", 48.1001, 11.5002, 521.0),
    ("2024-06-01T09:00:10+02:00", 48.1002, 11.5004, 521.5),
]


# --- real-world files (placemark/togeojson's test data, BSD-2-Clause) ------------------------


def test_google_earth_gx_track() -> None:
    positions, skips, notices = kinds(items_of(SAMPLES / "gxtrack.kml"))
    assert (len(positions), skips, notices) == (7, [], [])
    first, last = positions[0], positions[-1]
    assert (first.device, first.lat, first.lon, first.alt) == (
        "gxtrack",
        37.371915,
        -122.207881,
        156.0,
    )
    assert first.ts == "2010-05-28T02:02:09.000Z"
    assert (last.lat, last.lon, last.alt, last.ts) == (
        37.374857,
        -122.203207,
        140.199997,
        "2010-05-28T02:02:56.000Z",
    )


def test_my_tracks_multitrack_is_one_device_named_after_the_placemark() -> None:
    positions, skips, notices = kinds(items_of(SAMPLES / "multitrack.kml"))
    assert (len(positions), skips) == (16, [])
    assert {p.device for p in positions} == {"8-8-2013-17:20"}
    assert {(p.attrs or {}).get("track") for p in positions} == {"8/8/2013 17:20"}
    assert notices == [
        "2 timed placemark points beside the file's tracks ignored (start, end and stop markers)"
    ]


def test_multitrack_whose_tracks_share_times_elsewhere_is_refused_in_part() -> None:
    # The test file repeats a track's 13 times with 5 points moved 1 degree west.
    positions, skips, notices = kinds(items_of(SAMPLES / "gxmultitrack.kml"))
    assert len(positions) == 21  # 13, and 8 exact repeats the store deduplicates
    assert len({(p.device, p.ts) for p in positions}) == 13
    assert [s.reason for s in skips] == [SHARED_TIME] * 5
    assert skips[0].where == "track '12/04/2014 11:24 AM' point 14"
    assert "13 of 26 points have the same time" not in notices[0]
    assert "--retime KMH" in notices[0]


def test_untimed_line_strings_are_walked_from_the_files_mtime(tmp_path: Path) -> None:
    positions, skips, notices = kinds(items_of(SAMPLES / "linestring.kml"))
    assert skips == []
    assert [p.device for p in positions] == ["unextruded"] * 2 + ["extruded"] * 2
    assert all("no point has a time" in n and "modification time" in n for n in notices)
    assert positions == kinds(items_of(SAMPLES / "linestring.kml"))[0]


# --- what the reader makes of each KML shape -------------------------------------------------


def test_gx_track_fields_arrays_and_nested_folders(tmp_path: Path) -> None:
    arrays = (
        '<ExtendedData><SchemaData schemaUrl="#s">'
        '<gx:SimpleArrayData name="heart_rate"><gx:value>120</gx:value><gx:value/>'
        "<gx:value>122</gx:value></gx:SimpleArrayData>"
        '<gx:SimpleArrayData name="cadence"><gx:value>80</gx:value><gx:value>81</gx:value>'
        "<gx:value>82</gx:value></gx:SimpleArrayData>"
        '<gx:SimpleArrayData name="speed"><gx:value>1.5</gx:value><gx:value>2</gx:value>'
        "<gx:value>2.5</gx:value></gx:SimpleArrayData>"
        '<gx:SimpleArrayData name="power"><gx:value>200</gx:value><gx:value>x</gx:value>'
        "<gx:value>210.5</gx:value></gx:SimpleArrayData>"
        "</SchemaData></ExtendedData>"
    )
    track = gx_track("Morning run", RUN, arrays)
    body = f"<Document><Folder><Folder>{track}</Folder></Folder></Document>"
    positions, skips, notices = kinds(items_of(write(tmp_path, kml(body))))
    assert (skips, notices) == ([], [])
    assert [(p.lat, p.lon, p.alt) for p in positions] == [
        (lat, lon, alt) for _, lat, lon, alt in RUN
    ]
    assert [p.ts for p in positions] == [
        "2024-06-01T07:00:00.000Z",
        "2024-06-01T07:00:05.250Z",
        "2024-06-01T07:00:10.000Z",
    ]
    assert {p.device for p in positions} == {"Morning-run"}
    assert [p.speed for p in positions] == [1.5, 2.0, 2.5]
    assert [p.attrs for p in positions] == [
        {"track": "Morning run", "hr": 120, "cad": 80, "power": 200},
        {"track": "Morning run", "cad": 81, "power": "x"},
        {"track": "Morning run", "hr": 122, "cad": 82, "power": 210.5},
    ]


def test_line_string_with_a_time_span_is_interpolated(tmp_path: Path) -> None:
    line = (
        "<Placemark><name>bus 7</name><TimeSpan><begin>2024-06-01T08:00:00Z</begin>"
        "<end>2024-06-01T08:00:30Z</end></TimeSpan><LineString><coordinates>"
        "13.0,52.0,30 13.0,52.001 13.0,52.002,31\n13.0,52.003,32"
        "</coordinates></LineString></Placemark>"
    )
    positions, skips, notices = kinds(items_of(write(tmp_path, kml(line))))
    assert skips == []
    assert [p.ts_ms - positions[0].ts_ms for p in positions] == pytest.approx(
        [0, 10_000, 20_000, 30_000], abs=1
    )
    assert positions[0].ts == "2024-06-01T08:00:00.000Z"
    assert [p.alt for p in positions] == [30.0, None, 31.0, 32.0]
    assert {p.device for p in positions} == {"bus-7"}
    assert notices == ["track 'bus 7': 2 of 4 points have no time: interpolated by distance"]


def test_timed_point_placemarks_make_one_track(tmp_path: Path) -> None:
    def point(when: str | None, lat: float) -> str:
        stamp = f"<TimeStamp><when>{when}</when></TimeStamp>" if when else ""
        return f"<Placemark>{stamp}<Point><coordinates>2.35,{lat}</coordinates></Point></Placemark>"

    body = point("2024-06-01T10:05:00Z", 48.86) + point(None, 48.0) + point("2024-06-01", 48.85)
    positions, skips, notices = kinds(
        items_of(write(tmp_path, kml(f"<Folder>{body}</Folder>"), "stops.kml"))
    )
    assert skips == []
    assert [(p.device, p.lat, p.ts) for p in positions] == [
        ("stops", 48.85, "2024-06-01T00:00:00.000Z"),
        ("stops", 48.86, "2024-06-01T10:05:00.000Z"),
    ]
    assert notices == ["1 placemark points without a time ignored (places, not positions)"]


def test_device_option_and_names_made_unique(tmp_path: Path) -> None:
    later = [(t.replace("07:", "08:"), lat, lon, alt) for t, lat, lon, alt in RUN]
    body = gx_track("Ride", RUN) + gx_track("Ride", later) + gx_track(None, later)
    path = write(tmp_path, kml(body), "my file.kml")
    devices = [p.device for p in kinds(items_of(path))[0]]
    assert devices == ["Ride"] * 3 + ["Ride-2"] * 3 + ["my-file"] * 3
    devices = [p.device for p in kinds(items_of(path, device="phone"))[0]]
    assert devices == ["phone"] * 3 + ["phone-2"] * 3 + ["phone-3"] * 3


def test_retime_and_shared_times(tmp_path: Path) -> None:
    same = [("2024-06-01T07:00:00Z", 48.1 + i * 1e-3, 11.5, 500.0) for i in range(4)]
    path = write(tmp_path, kml(gx_track("Stuck clock", same)))
    positions, skips, notices = kinds(items_of(path))
    assert (len(positions), len(skips)) == (1, 3)
    assert notices[0].startswith("track 'Stuck clock': 3 of 4 points have the same time")
    positions, skips, notices = kinds(items_of(path, retime_kmh=36.0))
    assert (len(positions), skips) == (4, [])
    # 1e-3 degrees of latitude is 111 m: 11.1 s at 36 km/h.
    assert positions[1].ts_ms - positions[0].ts_ms == pytest.approx(11_119, abs=2)


def test_bad_times_and_coordinates_are_skipped_with_reasons(tmp_path: Path) -> None:
    points = [*RUN, ("yesterday", 48.2, 11.6, 1.0), ("2024-06-01T07:01:00Z", 95.0, 11.6, 1.0)]
    positions, skips, _ = kinds(items_of(write(tmp_path, kml(gx_track("x", points)))))
    assert len(positions) == 3
    assert [(s.reason, s.where) for s in skips] == [
        ("time: not a date and time: 'yesterday'", "track 'x' point 4"),
        ("lat: expected `float` <= 90.0", "track 'x' point 5"),
    ]


# --- KMZ, gzip, detection ----------------------------------------------------------------------


def kmz(tmp_path: Path, members: dict[str, str], name: str = "t.kmz") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, text in members.items():
            z.writestr(member, text)
    return path


def test_kmz_reads_its_doc_kml(tmp_path: Path) -> None:
    text = (SAMPLES / "gxtrack.kml").read_text(encoding="utf-8")
    path = kmz(tmp_path, {"files/icon.png": "png", "doc.kml": text}, "gxtrack.kmz")
    assert items_of(path) == items_of(SAMPLES / "gxtrack.kml")
    assert detect(path) is FORMAT
    other = kmz(tmp_path, {"tracks/a.kml": text}, "gxtrack.kmz")
    assert items_of(other) == items_of(SAMPLES / "gxtrack.kml")


def test_gzipped_kml_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "gxtrack.kml.gz"
    path.write_bytes(gzip.compress((SAMPLES / "gxtrack.kml").read_bytes()))
    assert items_of(path) == items_of(SAMPLES / "gxtrack.kml")


def test_sniff_and_registration() -> None:
    assert FORMAT.sniff((SAMPLES / "multitrack.kml").read_bytes())
    assert FORMAT.sniff(b'<?xml version="1.0"?>\n<kml:kml xmlns:kml="x">')
    assert not FORMAT.sniff(b'<?xml version="1.0"?><gpx version="1.1">')
    assert not FORMAT.sniff(b"PK\x03\x04" + b"\x00" * 26 + b"word/document.xml")
    assert formats()["kml"] is FORMAT
    assert detect(SAMPLES / "gxtrack.kml") is FORMAT


# --- bad files -------------------------------------------------------------------------------


def refused(path: Path) -> str:
    with pytest.raises(SourceError) as info:
        items_of(path)
    assert info.value.path == str(path)
    assert "\n" not in info.value.reason
    return info.value.reason


def test_truncated_file_gives_its_whole_placemarks_then_one_error(tmp_path: Path) -> None:
    later = [(t.replace("07:", "08:"), lat, lon, alt) for t, lat, lon, alt in RUN]
    text = kml(gx_track("a", RUN) + gx_track("b", later))
    path = write(tmp_path, text[: text.index("<gx:coord>", text.index("<name>b")) + 15])
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"t\.kml: truncated or broken at line 2, column \d+"):
        got.extend(FORMAT.read(path, ReadOptions()))
    assert [p.device for p in kinds(got)[0]] == ["a"] * 3


def test_billion_laughs_and_external_entities_are_refused(tmp_path: Path) -> None:
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE kml [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        "<kml><Placemark><name>&c;</name></Placemark></kml>"
    )
    assert refused(write(tmp_path, laughs)).startswith("refused: it declares a document type")
    external = '<?xml version="1.0"?><!DOCTYPE kml SYSTEM "file:///etc/passwd"><kml/>'
    assert refused(write(tmp_path, external)).startswith("refused: it declares a document type")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "truncated or broken at line 1, column 1"),
        (b"<gpx/>", "not a KML file: its root element is <gpx>"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated or broken at line 1"),
        (b"PK\x03\x04broken", "a broken KMZ (ZIP) file"),
    ],
)
def test_wrong_files_get_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.kml"
    path.write_bytes(content)
    assert refused(path).startswith(reason)


def test_truncated_kmz_is_one_line(tmp_path: Path) -> None:
    text = (SAMPLES / "gxtrack.kml").read_text(encoding="utf-8")
    path = kmz(tmp_path, {"doc.kml": text})
    path.write_bytes(path.read_bytes()[:-30])
    assert refused(path).startswith("a broken KMZ (ZIP) file")


def test_kmz_with_its_kml_after_images_is_detected(tmp_path: Path) -> None:
    text = (SAMPLES / "gxtrack.kml").read_text(encoding="utf-8")
    path = kmz(tmp_path, {"images/a.png": "x" * 5000, "doc.kml": text}, "trip.zip")
    assert detect(path) is FORMAT


def test_kmz_without_kml(tmp_path: Path) -> None:
    assert refused(kmz(tmp_path, {"a.txt": "x"})) == "a ZIP archive without a .kml file: not a KMZ"


def test_missing_file(tmp_path: Path) -> None:
    assert refused(tmp_path / "nope.kml").startswith("cannot read")
