"""``geotrack trips`` and ``geotrack stops`` end to end: real processes on a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from geotrack.store import open_store
from tests.analysis.test_trips import Track
from tests.cli_helpers import geotrack
from tests.factories import T0


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A directory whose default store holds a drive with a 10-minute stop, and a walker."""
    car = Track("car-1").move(600, 15, 90).stand(600, jitter=10).move(600, 15, 0)
    walker = Track("walker").move(1800, 0.8, 30, jitter=3)
    with open_store(f"sqlite:///{tmp_path / 'geotrack.db'}") as store:
        store.write(car.fixes + walker.fixes)
    return tmp_path


def test_trips_as_csv_when_piped(stored: Path) -> None:
    result = geotrack("trips", cwd=stored)
    assert (result.returncode, result.stderr) == (0, "")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["device"] for r in rows] == ["car-1", "car-1", "walker"]
    first = rows[0]
    assert first["start"] == "2025-11-25T12:00:00.000Z"
    assert float(first["distance_m"]) == pytest.approx(9000, rel=0.02)
    assert float(first["avg_speed"]) == pytest.approx(15, rel=0.02)
    assert int(first["fixes"]) > 100


def test_stops_as_json_geojson_and_table(stored: Path) -> None:
    result = geotrack("stops", "--format", "json", cwd=stored)
    assert result.returncode == 0, result.stderr
    (stop,) = json.loads(result.stdout)
    assert stop["device"] == "car-1"
    assert stop["arrival"] == "2025-11-25T12:10:00.000Z"
    assert 570 <= stop["duration_s"] <= 630
    result = geotrack("stops", "-o", "stops.geojson", cwd=stored)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "wrote 1 stop to stops.geojson (geojson)\n"
    collection = json.loads((stored / "stops.geojson").read_text())
    (feature,) = collection["features"]
    assert feature["geometry"]["type"] == "Point"
    assert feature["properties"]["fixes"] == stop["fixes"]
    result = geotrack("trips", "--format", "table", "--device", "walker", cwd=stored)
    assert result.returncode == 0, result.stderr
    header, row, caption = result.stdout.splitlines()
    columns = ["device", "start", "end", "duration", "km", "avg", "top", "from", "to"]
    assert header.split() == columns
    assert row.split()[:3] == ["walker", "2025-11-25", "12:00:00"]
    assert caption.strip() == "times UTC, speeds km/h"


def test_the_options_change_the_answer(stored: Path) -> None:
    # Without the stop, one trip; with a longer stop duration, no stop.
    result = geotrack("trips", "-d", "car-1", "--stop-duration", "15m", cwd=stored)
    assert result.stdout.count("\ncar-1,") == 1
    result = geotrack("stops", "--stop-radius", "5", cwd=stored)
    assert result.stdout.count("\ncar-1,") == 0  # jitter of 10 m leaves a 5 m circle
    # --until before the stop: one trip, cut there.
    until = "2025-11-25T12:05:00Z"
    result = geotrack("trips", "-d", "car-1", "--until", until, "-f", "json", cwd=stored)
    (trip,) = json.loads(result.stdout)
    assert trip["end"] == "2025-11-25T12:05:00.000Z"
    # A gap option shorter than the fixes' spacing makes every fix its own piece: no trips.
    result = geotrack("trips", "--gap", "1s", "-f", "json", cwd=stored)
    assert json.loads(result.stdout) == []
    assert result.stderr.startswith("0 trips found in ")


def test_nothing_found_is_said_on_stderr(stored: Path) -> None:
    result = geotrack("stops", "--since", "2h", cwd=stored)
    assert result.returncode == 0
    assert result.stdout == "device,lat,lon,arrival,departure,duration_s,fixes\n"
    assert result.stderr == "0 stops found in 0 positions: check --device, --since and --until\n"
    result = geotrack("stops", "--since", "2h", "-q", cwd=stored)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "Error: --format: unknown format 'xml'"),
        (["--stop-radius", "0"], "Error: --stop-radius: must be a positive number"),
        (["--stop-duration", "soon"], "Error: --stop-duration: expected a duration"),
        (["--gap", "-1h"], "Error: --gap:"),
        (["--since", "2026-01-02T00:00:00Z", "--until", "2026-01-01T00:00:00Z"], "Error: --until"),
        (["-o", "trips.txt"], "Error: --format: cannot tell the format from 'trips.txt'"),
    ],
)
def test_bad_options_are_one_line_before_the_store_is_opened(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = geotrack("trips", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no store created, no file written


def test_the_store_is_only_read(tmp_path: Path) -> None:
    result = geotrack("stops", "--store", f"sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no store at ")
    assert list(tmp_path.iterdir()) == []


def test_a_parked_device_is_one_stop_through_the_cli(tmp_path: Path) -> None:
    parked = Track("parked").stand(3600, every=10, jitter=30)
    with open_store(f"sqlite:///{tmp_path / 'geotrack.db'}") as store:
        store.write(parked.fixes)
    result = geotrack("trips", "-f", "json", cwd=tmp_path)
    assert json.loads(result.stdout) == []
    result = geotrack("stops", "-f", "json", cwd=tmp_path)
    (stop,) = json.loads(result.stdout)
    assert stop["duration_s"] == (parked.fixes[-1].ts_ms - T0) / 1000


def test_the_same_answer_from_a_mongodb_store(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """pymongo over the wire to nx-27017: the store is read, never created."""
    from tests.mongo_servers import fresh_database, nx27017_server

    server = nx27017_server(request)
    url = server.url(fresh_database())
    car = Track("car-1").move(600, 15, 90).stand(600, jitter=10).move(600, 15, 0)
    with open_store(url) as store:
        store.write(car.fixes)
    result = geotrack("stops", "--store", url, "-f", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (stop,) = json.loads(result.stdout)
    assert stop["arrival"] == "2025-11-25T12:10:00.000Z"
    result = geotrack("trips", "--store", url, "-f", "csv", cwd=tmp_path)
    assert result.stdout.count("\ncar-1,") == 2
    missing = server.url(fresh_database())
    result = geotrack("trips", "--store", missing, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no store at ")
