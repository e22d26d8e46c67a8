"""``geotrack export`` end to end: real processes on a real SQLite file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from geotrack.store import open_store
from tests.cli_helpers import geotrack
from tests.factories import pos


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A directory whose default store holds walk (5 fixes) and bus (2 fixes)."""
    with open_store(f"sqlite:///{tmp_path / 'geotrack.db'}") as store:
        store.write([pos("walk", i) for i in range(5)] + [pos("bus", i) for i in range(2)])
    return tmp_path


def test_nothing_matched_is_said_on_stderr_with_what_the_store_holds(stored: Path) -> None:
    # An age counts back from now; these fixes are from 2025.
    result = geotrack("export", "--since", "2h", cwd=stored)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (
        f"0 positions matched (the latest fix stored is {pos('walk', 4).time}, from walk): "
        "check --since and --until\n"
    )
    result = geotrack("export", "--device", "bus", "--until", "2020-01-01T00:00:00Z", cwd=stored)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.startswith(
        f"0 positions matched (the latest fix of bus stored is {pos('bus', 1).time}"
    )
    result = geotrack("export", "-d", "nobody", "-d", "ghost", cwd=stored)
    assert result.returncode == 0
    assert result.stderr == (
        "0 positions matched: no device nobody or ghost in the store (it has bus, walk)\n"
    )
    # To a file: a valid empty document is written, and the same line is said.
    result = geotrack("export", "--since", "2h", "-o", "none.csv", cwd=stored)
    assert result.returncode == 0
    assert result.stderr.startswith("0 positions matched (")
    assert (
        stored / "none.csv"
    ).read_bytes() == b"device,ts,lat,lon,alt,speed,heading,acc,attrs\r\n"
    # --quiet is quiet.
    result = geotrack("export", "--since", "2h", "-q", cwd=stored)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_an_empty_store_says_so(tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path / 'geotrack.db'}").close()
    result = geotrack("export", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == "0 positions matched: the store is empty\n"


def test_a_match_still_says_how_many_and_only_to_a_file(stored: Path) -> None:
    result = geotrack("export", "-d", "bus", "-o", "bus.ndjson", cwd=stored)
    assert result.returncode == 0
    assert result.stderr == "exported 2 positions to bus.ndjson (ndjson)\n"
    result = geotrack("export", "-d", "bus", cwd=stored)
    assert result.stderr == "" and len(result.stdout.splitlines()) == 2
    result = geotrack(
        "export", "-d", "bus", "--until", pos("bus", 0).ts, "-o", "one.csv", cwd=stored
    )
    assert result.stderr == "exported 1 position to one.csv (csv)\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-o", "."], "Error: --output: . is a directory: give a file name in it"),
        (
            ["-o", "afile/x.gpx"],
            "Error: --output: cannot write afile/x.gpx: afile is not a directory",
        ),
        (
            ["--since", "2026-03-14T10:00:00Z", "--until", "2026-03-14T09:00:00Z"],
            "Error: --until: 2026-03-14T09:00:00Z is before --since 2026-03-14T10:00:00Z",
        ),
        (["--format", "shp"], "Error: --format: unknown format 'shp'"),
        (["--since", "yesterday"], "Error: --since: expected an RFC 3339"),
    ],
    ids=["output-dir", "output-under-a-file", "until-before-since", "format", "since"],
)
def test_bad_options_are_one_line_before_the_store_is_opened(
    tmp_path: Path, args: list[str], says: str
) -> None:
    (tmp_path / "afile").write_text("x")
    # No store here: each option error must come first, and nothing is created.
    result = geotrack("export", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(says), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


_NO_GPXPY = """
import sys
from geotrack.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "gpxpy")
print(loaded, file=sys.stderr)
sys.exit(1 if loaded else 0)
"""


@pytest.mark.parametrize("fmt", ["csv", "geojson", "ndjson", "gpx"])
def test_export_does_not_load_the_gpx_parser(stored: Path, fmt: str) -> None:
    # gpxpy is for reading GPX; writing any format (GPX too) must not pay for importing it.
    result = subprocess.run(
        [sys.executable, "-c", _NO_GPXPY, "export", "--format", fmt, "-o", f"out.{fmt}"],
        cwd=stored,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (stored / f"out.{fmt}").stat().st_size > 0


def test_a_reader_that_stops_early_is_not_an_error(tmp_path: Path) -> None:
    # Far more than a pipe holds, so the export is still writing when `head` goes away.
    with open_store(f"sqlite:///{tmp_path / 'geotrack.db'}") as store:
        store.write([pos("walk", i) for i in range(5000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "geotrack", "export", "--format", "gpx"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"<?xml")
    proc.stdout.close()  # what `geotrack export | head -1` does
    assert proc.wait(30) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()
