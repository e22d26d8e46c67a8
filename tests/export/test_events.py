"""Event export: the NDJSON and CSV writers, and ``geotrack export --events`` on a real
SQLite file in a real process."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from geotrack.errors import InvalidParameter
from geotrack.export.events import EVENTS_HEADER, export_events
from geotrack.schema import Event, ms_to_ts
from geotrack.store import open_store
from tests.cli_helpers import geotrack, only_error
from tests.factories import T0_S


def event(i: int, kind: str = "enter", device: str = "van", fence: str = "depot") -> Event:
    return Event(kind, device, fence, ms_to_ts((T0_S + i) * 1000), 52.5, 13.4 + i / 1000)  # type: ignore[arg-type]


EVENTS = [event(0), event(1, fence='yard "north", gate'), event(2, "exit")]


def test_ndjson_lines_are_what_events_sends() -> None:
    out = io.StringIO()
    assert export_events("ndjson", iter(EVENTS), out) == 3
    lines = out.getvalue().split("\n")
    assert lines[-1] == ""
    assert json.loads(lines[1]) == {
        "type": "enter",
        "device": "van",
        "fence": 'yard "north", gate',
        "ts": "2025-11-25T12:00:01.000Z",
        "lat": 52.5,
        "lon": 13.401,
    }


def test_csv_quotes_and_round_trips() -> None:
    out = io.StringIO(newline="")
    assert export_events("csv", EVENTS, out) == 3
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert tuple(rows[0]) == EVENTS_HEADER
    assert [Event(r[0], r[1], r[2], r[3], float(r[4]), float(r[5])) for r in rows[1:]] == EVENTS  # type: ignore[arg-type]
    assert out.getvalue().endswith("\r\n")


def test_nothing_and_bad_formats() -> None:
    out = io.StringIO()
    assert export_events("ndjson", [], out) == 0 and out.getvalue() == ""
    assert (
        export_events("csv", [], out) == 0 and out.getvalue() == "type,device,fence,ts,lat,lon\r\n"
    )
    with pytest.raises(
        InvalidParameter, match="--format: events export as ndjson or csv, not 'gpx'"
    ):
        export_events("gpx", EVENTS, io.StringIO())


def test_cli_exports_events_by_time_device_and_fence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracks.db'}"
    with open_store(url) as store:
        store.write_events([event(5, device="bus"), *EVENTS, event(9, "exit", fence="yard")])
    result = geotrack("export", "--events", "--store", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["ts"][17:19] for x in result.stdout.splitlines()] == [
        "00", "01", "02", "05", "09"
    ]  # fmt: skip

    out = tmp_path / "depot.csv"
    args = ("--events", "--store", url, "--fence", "depot", "--device", "van")
    result = geotrack("export", *args, "--until", str(T0_S + 1), "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"exported 1 event to {out} (csv)\n"
    assert (
        out.read_text()
        == "type,device,fence,ts,lat,lon\nenter,van,depot,2025-11-25T12:00:00.000Z,52.5,13.4\n"
    )

    result = geotrack("export", "--events", "--store", url, "--fence", "none", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "0 events matched\n")

    line = only_error(geotrack("export", "--events", "--store", url, "-o", "x.gpx", cwd=tmp_path))
    assert line == "Error: --format: events export as ndjson or csv, not 'gpx'"
    assert not (tmp_path / "x.gpx").exists()
