"""Times of track files, end to end: ``geotrack import`` of GPX, KML and TCX into SQLite.

The rules live in geotrack/sources/timing.py; these tests run the real CLI on real files
and check what the store holds and the exit code the user sees.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from geotrack.sources.timing import SHARED_TIME, Anchor, RawPoint, place_track
from tests.cli_helpers import geotrack
from tests.conftest import free_port
from tests.factories import stored
from tests.relay_helpers import relay_process

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
GPX_OPEN = '<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'


def stuck_clock_gpx(path: Path, n: int = 184) -> Path:
    """Issue 12's real file, made small: ``n`` points at 1901-12-13T20:45:52.207Z."""
    points = "".join(
        f'<trkpt lat="{47 + i * 1e-4}" lon="8"><time>1901-12-13T20:45:52.207Z</time></trkpt>'
        for i in range(n)
    )
    path.write_text(
        f"{GPX_OPEN}<trk><name>Ride</name><trkseg>{points}</trkseg></trk></gpx>", encoding="utf-8"
    )
    return path


def test_points_at_one_time_exit_1_and_retime_stores_them(tmp_path: Path) -> None:
    stuck_clock_gpx(tmp_path / "ride.gpx")
    result = geotrack("import", "ride.gpx", "--store", "sqlite:///db", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "track 'Ride': 183 of 184 points have the same time" in result.stderr
    assert "--retime KMH" in result.stderr
    assert SHARED_TIME in result.stderr
    assert len(stored(tmp_path / "db")) == 1

    result = geotrack(
        "import", "ride.gpx", "--retime", "15", "--store", "sqlite:///db2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    positions = stored(tmp_path / "db2")
    assert len(positions) == 184
    assert positions[0].ts == "1901-12-13T20:45:52.207Z"
    assert {(p.attrs or {}).get("track") for p in positions} == {"Ride"}


def test_publishing_points_at_one_time_exits_non_zero_and_twice_stores_once(
    tmp_path: Path,
) -> None:
    stuck_clock_gpx(tmp_path / "ride.gpx", n=20)
    shutil.copy(SAMPLES / "no_times.gpx", tmp_path / "planned.gpx")
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    with relay_process("sqlite:///relay.db", port, cwd=tmp_path):
        stuck = geotrack("publish", "--url", url, "ride.gpx", "--speed", "0", cwd=tmp_path)
        first = geotrack("publish", "--url", url, "planned.gpx", "--speed", "0", cwd=tmp_path)
        again = geotrack("publish", "--url", url, "planned.gpx", "--speed", "0", cwd=tmp_path)
    assert stuck.returncode != 0, stuck.stderr
    assert "track 'Ride': 19 of 20 points have the same time" in stuck.stderr
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    devices = [p.device for p in stored(tmp_path / "relay.db")]
    assert (devices.count("ride"), devices.count("planned")) == (1, 60)


@pytest.mark.parametrize(
    "sample", ["no_times.gpx", "kml/linestring.kml", "tcx/tcx-courses.tcx", "kml/gxtrack.kml"]
)
def test_importing_a_file_twice_stores_nothing_new(tmp_path: Path, sample: str) -> None:
    path = tmp_path / Path(sample).name
    shutil.copy(SAMPLES / sample, path)
    first = geotrack("import", path.name, "--store", "sqlite:///db", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = stored(tmp_path / "db")
    assert before
    again = geotrack("import", path.name, "--store", "sqlite:///db", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert stored(tmp_path / "db") == before


def test_a_mixed_file_names_the_untimed_track_and_stays_in_the_past(tmp_path: Path) -> None:
    timed = "".join(
        f'<trkpt lat="{50 + i * 1e-3}" lon="1"><time>2024-05-01T09:00:{i:02}Z</time></trkpt>'
        for i in range(5)
    )
    untimed = "".join(f'<trkpt lat="{52 + i * 1e-3}" lon="1"/>' for i in range(4))
    (tmp_path / "day.gpx").write_text(
        f"{GPX_OPEN}<trk><name>Ride</name><trkseg>{timed}</trkseg></trk>"
        f"<trk><name>Planned</name><trkseg>{untimed}</trkseg></trk></gpx>",
        encoding="utf-8",
    )
    result = geotrack("import", "day.gpx", "--store", "sqlite:///db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "track 'Planned': no point has a time: walked at 5 km/h from " in result.stderr
    assert "2024-05-01T09:00:00.000Z (the file's earliest time)" in result.stderr
    positions = stored(tmp_path / "db")
    assert len(positions) == 9
    assert max(p.ts for p in positions) < "2024-05-01T10:00:00Z"


# --- place_track on its own ------------------------------------------------------------------


def test_a_point_that_fails_validation_does_not_claim_its_time() -> None:
    points = [
        RawPoint(95.0, 1.0, 1000, {"lat": 95.0, "lon": 1.0}),
        RawPoint(1.0, 1.0, 1000, {"lat": 1.0, "lon": 1.0}),
    ]
    items = list(place_track(points, "d", "track 1", Anchor(0, "x")))
    reasons = [getattr(i, "reason", None) for i in items]
    assert reasons.count("lat: expected `float` <= 90.0") == 1
    assert SHARED_TIME not in reasons


def test_an_empty_track_gives_nothing() -> None:
    assert list(place_track([], "d", "track 1", Anchor(0, "x"))) == []
