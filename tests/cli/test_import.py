"""`geotrack import` as a real subprocess on a real SQLite file."""

from __future__ import annotations

import gzip
import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geotrack.cli import app
from geotrack.cli import import_ as import_cli
from geotrack.export.csv import write_csv
from geotrack.export.ndjson import write_ndjson
from tests.cli_helpers import env, geotrack, only_error
from tests.factories import pos, stored

TRACK = [pos(i=i, alt=30.5, attrs={"bat": 90 - i}) for i in range(40)]
OTHER = [pos("bus-3", i, speed=4.5) for i in range(10)]


def write_files(tmp_path: Path) -> tuple[Path, Path]:
    out = io.StringIO()
    write_ndjson(TRACK, out)
    ndjson = tmp_path / "walk.ndjson"
    ndjson.write_text(out.getvalue())
    out = io.StringIO(newline="")
    write_csv(OTHER, out)
    packed = tmp_path / "bus.csv.gz"
    packed.write_bytes(gzip.compress(out.getvalue().encode()))
    return ndjson, packed


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_import_then_reimport_stores_nothing_new(tmp_path: Path) -> None:
    ndjson, packed = write_files(tmp_path)
    first = geotrack("import", ndjson, packed, "--store", "sqlite:///g.db", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert lines(first.stderr) == [
        f"{ndjson} (ndjson): read 40, stored 40, 0 duplicates",
        f"{packed} (csv): read 10, stored 10, 0 duplicates",
        "total: 2 files, read 50, stored 50",
    ]
    assert stored(tmp_path / "g.db", sort=True) == sorted(TRACK + OTHER, key=lambda p: p.key)
    again = geotrack("import", ndjson, "--store", "sqlite:///g.db", cwd=tmp_path)
    assert again.returncode == 0
    assert lines(again.stderr) == [f"{ndjson} (ndjson): read 40, stored 0, 40 duplicates"]
    assert len(stored(tmp_path / "g.db")) == 50


def test_default_store_is_created(tmp_path: Path) -> None:
    ndjson, _ = write_files(tmp_path)
    result = geotrack("import", ndjson, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(stored(tmp_path / "geotrack.db")) == 40


def test_skipped_rows_and_truncated_files_exit_1_keeping_the_rest(tmp_path: Path) -> None:
    ndjson, _ = write_files(tmp_path)
    cut = tmp_path / "cut.ndjson"
    cut.write_text(ndjson.read_text()[:-25])
    result = geotrack("import", cut, "--store", "sqlite:///g.db", cwd=tmp_path)
    assert result.returncode == 1
    assert lines(result.stderr) == [
        f"{cut} (ndjson): read 39, stored 39, 0 duplicates, "
        "1 skipped: 1 truncated last line (first at line 40)"
    ]
    assert stored(tmp_path / "g.db") == TRACK[:39]


def test_a_file_it_cannot_read_says_what_it_looked_like(tmp_path: Path) -> None:
    ndjson, _ = write_files(tmp_path)
    page = tmp_path / "track.gpx"
    page.write_text("<!doctype html><html><title>Log in</title></html>")
    result = geotrack("import", page, ndjson, "--store", "sqlite:///g.db", cwd=tmp_path)
    assert result.returncode == 1
    first, second, total = lines(result.stderr)
    assert first.startswith(
        f"{page}: not imported: not a file geotrack can import: it looks like HTML"
    )
    assert "expected one of: " in first
    assert second == f"{ndjson} (ndjson): read 40, stored 40, 0 duplicates"
    assert total == "total: 2 files, read 40, stored 40"


def test_other_tools_csv_with_tz_device_and_start(tmp_path: Path) -> None:
    path = tmp_path / "logger.csv"
    path.write_text(
        "Date;Time;Lat;Lon\n2025-11-25;13:00:00;52,5;13,4\n2025-11-25;13:00:05;52,6;13,5\n"
    )
    no_zone = geotrack("import", path, "--store", "sqlite:///g.db", cwd=tmp_path)
    assert no_zone.returncode == 1
    assert "2 skipped: 2 local time without a zone (give --tz) (first at line 2)" in no_zone.stderr
    result = geotrack(
        "import", path, "--tz", "Europe/Berlin", "--device", "logger-7",
        "--start", "2030-01-01T00:00:00Z", "--store", "sqlite:///g.db", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [(p.device, p.time, p.lat) for p in stored(tmp_path / "g.db")] == [
        ("logger-7", "2030-01-01T00:00:00.000Z", 52.5),
        ("logger-7", "2030-01-01T00:00:05.000Z", 52.6),
    ]


def test_bad_options_are_one_error_line_before_anything_is_stored(tmp_path: Path) -> None:
    ndjson, _ = write_files(tmp_path)
    for args, message in (
        (["--format", "xls"], "--format: unknown format 'xls' (use one of: auto, "),
        (["--tz", "Mars/Olympus"], "--tz: unknown time zone 'Mars/Olympus'"),
        (["--start", "soon"], "--start: expected an RFC 3339 time"),
        (["--retime", "-3"], "--retime: must be a speed above 0 km/h"),
    ):
        result = geotrack("import", ndjson, *args, "--store", "sqlite:///g.db", cwd=tmp_path)
        assert result.returncode == 1
        assert only_error(result).startswith(f"Error: {message}")
    missing = geotrack("import", "nope.csv", "--store", "sqlite:///g.db", cwd=tmp_path)
    assert only_error(missing) == "Error: FILE: no such file: nope.csv"
    assert not (tmp_path / "g.db").exists()


def test_format_option_forces_a_reader(tmp_path: Path) -> None:
    ndjson, _ = write_files(tmp_path)
    result = geotrack(
        "import", ndjson, "--format", "csv", "--store", "sqlite:///g.db", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "cannot map the CSV columns to positions: found" in result.stderr


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal: a bar with the file, positions and positions/s, then the summary."""
    path = tmp_path / "big.ndjson"
    with open(path, "w") as out:
        write_ndjson((pos(f"d{i % 10}", i) for i in range(150_000)), out)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "geotrack", "import", path, "--store", "sqlite:///g.db"],
        cwd=tmp_path,
        env=env() | {"TERM": "xterm-256color", "COLUMNS": "150"},
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert re.search(r"big\.ndjson.*[\d,]+ positions, [\d,]+/s", text), text[-2000:]
    assert f"{path} (ndjson): read 150,000, stored 150,000, 0 duplicates" in text


def test_plain_progress_lines_where_stderr_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elsewhere than a terminal (a log): a plain progress line now and then, no bar."""
    ndjson, _ = write_files(tmp_path)
    monkeypatch.setattr(import_cli, "_PLAIN_EVERY_S", 0.0)  # a line at every batch
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["import", str(ndjson), "--store", "sqlite:///g.db"])
    assert result.exit_code == 0, result.output
    first = lines(result.output)[0]
    assert re.fullmatch(rf"{re.escape(str(ndjson))}: 40 positions, 100% \([\d,]+/s\)", first)
    assert lines(result.output)[-1] == f"{ndjson} (ndjson): read 40, stored 40, 0 duplicates"
