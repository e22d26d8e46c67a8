"""The ``geotrack`` command end to end: real processes, real relays on loopback, real files."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gpxpy
import msgspec
import pytest
from websockets.asyncio.client import connect

from geotrack.client import Publisher
from geotrack.export.csv import HEADER
from geotrack.schema import Position
from geotrack.sources.gpx import Track, read_gpx
from geotrack.store import open_store
from tests.cli_helpers import (
    DRIVE,
    SUMMARY,
    WALK,
    background,
    fake_relay_publish,
    geotrack,
    only_error,
    positions,
    short_gpx,
    source,
)
from tests.conftest import free_port
from tests.factories import stored
from tests.relay_helpers import Lines, arun, relay_process

RESUME = re.compile(r"^resume with: geotrack tail (?:\S+ )*--since (sqlite:\d+)$", re.M)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- a relay to publish to ------------------------------------------------------------------


@contextlib.contextmanager
def relay(tmp_path: Path, store: str = "sqlite:///geotrack.db") -> Iterator[tuple[str, Lines]]:
    """``geotrack serve`` on a free port (store relative to tmp_path): its URL and log."""
    port = free_port()
    with relay_process(store, port, cwd=tmp_path) as proc:
        assert proc.stdout is not None
        yield f"ws://127.0.0.1:{port}", Lines(proc.stdout)


def publish(url: str, *args: str | Path, cwd: Path) -> tuple[int, ...]:
    """Run ``geotrack publish``, check that it succeeded; the numbers of its summary line."""
    result = geotrack("publish", "--url", url, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    m = SUMMARY.search(result.stderr)
    assert m is not None, result.stderr
    sent, stored, dups, rejected = (int(g) for g in m.groups()[:4])
    return sent, stored, dups, rejected


# -- the README flow: serve, tail, publish ------------------------------------------------------


def test_serve_tail_publish_and_resume(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"  # the default store, as cwd is tmp_path
    walk = source(WALK)
    short_path = short_gpx(tmp_path / "short.gpx")
    short = source(short_path)
    with relay(tmp_path) as (url, _log), background("tail", "--json", cwd=tmp_path) as tail:
        out = tail.out
        # tail starts at the end of the store: write probes straight to the store until
        # it shows one, so nothing published afterwards can be missed.
        probes = 0
        with open_store(f"sqlite:///{db}") as store:
            deadline = time.monotonic() + 20
            while not out.lines:
                assert time.monotonic() < deadline, "tail printed nothing"
                store.write([Position("probe", 0.0, 0.0, probes)])
                probes += 1
                time.sleep(0.1)
        last_probe = Position("probe", 0.0, 0.0, probes - 1)
        seen = out.wait(lambda ls: bool(ls) and positions(ls[-1:]) == [last_probe])
        shown = len(seen)

        assert publish(url, "--gpx", WALK, "--speed", "0", cwd=tmp_path) == (120, 120, 0, 0)
        lines = out.wait(lambda ls: len(ls) >= shown + 120)
        assert positions(lines[:shown]) == [
            Position("probe", 0.0, 0.0, i) for i in range(probes - shown, probes)
        ]
        assert positions(lines[shown:]) == walk  # every point, in order, as NDJSON
        assert all(json.loads(line)["ts"].endswith("Z") for line in lines)

        err = tail.stop(signal.SIGINT)
        assert tail.returncode == 0, err
        assert "Traceback" not in err
        m = RESUME.search(err)
        assert m is not None, err
        cursor = m.group(1)
        assert cursor == f"sqlite:{probes + 120}"

        # A real-time replay, 50 times faster: 26 fixes over 50 s take about a second.
        started = time.monotonic()
        sent, stored_, _, _ = publish(url, short_path, "--speed", "50", cwd=tmp_path)
        assert (sent, stored_) == (26, 26)
        assert 1.0 <= time.monotonic() - started < 15

        with background("tail", "--json", "--since", cursor, cwd=tmp_path) as again:
            out2 = again.out
            lines = out2.wait(lambda ls: len(ls) >= 26)
            time.sleep(0.5)  # anything else would show up by now
            assert positions(out2.lines) == short  # only what came after the cursor
            err = again.stop(signal.SIGINT)
            assert again.returncode == 0, err
            assert f"resume with: geotrack tail --json --since sqlite:{probes + 146}" in err

        # Text lines for people, narrowed to one device, replayed from a cursor.
        tail_short = ("tail", "--since", "sqlite:0", "--device", "short")
        with background(*tail_short, cwd=tmp_path) as text:
            out3 = text.out
            lines = out3.wait(lambda ls: len(ls) >= 26)
            time.sleep(0.3)
            assert len(out3.lines) == 26
            for line, p in zip(lines, short, strict=True):
                assert line.startswith(f"{p.time}  short ")
                assert f"{p.lat:.7f}" in line and f"alt {p.alt:.1f} m" in line
            err = text.stop(signal.SIGINT)
            assert text.returncode == 0
            assert err.splitlines()[0] == "following sqlite:///geotrack.db (Ctrl-C to stop)"
            assert RESUME.search(err)

    assert len(stored(db)) == probes + 146


def test_publishing_again_stores_nothing_twice(tmp_path: Path) -> None:
    with relay(tmp_path) as (url, _log):
        assert publish(url, WALK, "--speed", "0", "--batch", "7", cwd=tmp_path) == (120, 120, 0, 0)
        assert publish(url, WALK, "--speed", "0", cwd=tmp_path) == (120, 0, 120, 0)
    assert stored(tmp_path / "geotrack.db") == source(WALK)


def test_simulated_movers(tmp_path: Path) -> None:
    with relay(tmp_path) as (url, _log):
        args = ("--simulate", "5", "--rate", "10", "--count", "200", "--speed", "0")
        assert publish(url, *args, cwd=tmp_path) == (200, 200, 0, 0)
    ps = stored(tmp_path / "geotrack.db")
    assert len(ps) == 200
    by_device: dict[str, int] = {}
    for p in ps:
        by_device[p.device] = by_device.get(p.device, 0) + 1
    assert len(by_device) == 5 and set(by_device.values()) == {40}


def test_gpx_points_that_fail_validation_are_skipped_with_a_warning(tmp_path: Path) -> None:
    # The reader validates, so such points never reach the relay: counted, and exit 1.
    path = short_gpx(tmp_path / "odd.gpx", points=5)
    path.write_text(path.read_text().replace('lat="48.8502000"', 'lat="98.8502000"'))
    with relay(tmp_path) as (url, _log):
        result = geotrack("publish", "--url", url, path, "--speed", "0", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{path}: read 4, 1 skipped: 1 lat: " in result.stderr
    assert "(first at track 'short' point 3)" in result.stderr
    m = SUMMARY.search(result.stderr)
    assert m is not None and m.groups()[:4] == ("4", "4", "0", "0")


# -- rejections ------------------------------------------------------------------------------


def test_rejections_through_the_publisher_api(tmp_path: Path) -> None:
    # GPX files and simulations are validated before they are sent, so the CLI cannot make
    # a real relay reject anything; a Position built directly skips validation and can.
    good = [Position("car-1", 52.5, 13.4, 1_764_072_000 + i) for i in range(3)]
    bad = Position("car-1", 91.0, 13.4, 1_764_072_010)

    async def main(url: str) -> Any:
        async with Publisher(url) as publisher:
            ack = await (await publisher.send([good[0], bad, good[1]]))
            await publisher.send([good[2], good[0]])
        return ack, publisher.stats

    with relay(tmp_path) as (url, _log):
        ack, stats = arun(main(url), timeout=30)
    assert (ack.stored, ack.duplicates, [r.index for r in ack.rejected]) == (2, 0, [1])
    assert (stats.sent, stats.stored, stats.duplicates, stats.rejected) == (5, 3, 1, 1)
    assert stats.rejections == ["car-1 at 2025-11-25T12:00:10.000Z: lat: expected `float` <= 90.0"]
    assert len(stored(tmp_path / "geotrack.db")) == 3


def test_publish_exits_1_with_a_summary_when_positions_are_rejected(tmp_path: Path) -> None:
    # A relay that rejects the first position of every frame (as a relay with a stricter
    # schema would): the CLI must report it, whatever our own relay accepts.
    def answer(n: int) -> dict[str, Any]:
        rejected = [{"index": 0, "error": "lat: too far north for this relay"}]
        return {"type": "ack", "stored": n - 1, "duplicates": 0, "rejected": rejected}

    result = fake_relay_publish(tmp_path, answer, WALK, "--speed", "0", "--batch", "10")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    m = SUMMARY.match(lines[0])
    assert m is not None and m.groups()[:4] == ("120", "108", "0", "12"), lines[0]
    walk = source(WALK)
    assert lines[1:] == [
        f"  walk at {walk[i].time}: lat: too far north for this relay" for i in range(0, 120, 10)
    ]


def test_publish_exits_1_when_the_relay_answers_error_frames(tmp_path: Path) -> None:
    def answer(n: int) -> dict[str, Any]:
        return {"type": "error", "error": "frame is not valid JSON: pretend"}

    result = fake_relay_publish(tmp_path, answer, WALK, "--speed", "0", "--batch", "60")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    m = SUMMARY.match(lines[0])
    assert m is not None and m.groups()[:4] == ("120", "0", "0", "120"), lines[0]
    assert lines[1:] == ["  frame is not valid JSON: pretend"] * 2


# -- export round trips --------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose geotrack.db holds walk.gpx and drive.gpx, published via a relay."""
    tmp_path = tmp_path_factory.mktemp("exported")
    with relay(tmp_path) as (url, _log):
        assert publish(url, WALK, DRIVE, "--speed", "0", cwd=tmp_path) == (320, 320, 0, 0)
    return tmp_path


def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _same(got: Position, want: Position) -> None:
    assert got.device == want.device
    assert abs(got.lat - want.lat) <= 1e-7 and abs(got.lon - want.lon) <= 1e-7
    assert got.alt == want.alt
    assert got.ts == want.ts  # to the millisecond


def test_export_gpx_round_trip(exported: Path) -> None:
    result = geotrack("export", "--format", "gpx", "-o", "out.gpx", cwd=exported)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "exported 320 positions to out.gpx (gpx)"
    assert result.stdout == ""
    assert not list(exported.glob("*.partial"))

    tracks: dict[str | None, Track] = {t.device: t for t in read_gpx(exported / "out.gpx")}
    assert sorted(tracks, key=str) == ["drive", "walk"]
    for name, path in (("walk", WALK), ("drive", DRIVE)):
        want = source(path)
        got = tracks[name].positions
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _same(msgspec.structs.replace(g, device=w.device), w)
            # What GPX has no element for travels in extensions and comes back whole.
            assert (g.speed, g.heading, g.acc, g.attrs) == (w.speed, w.heading, w.acc, w.attrs)

    # Another reader agrees.
    doc = gpxpy.parse((exported / "out.gpx").read_text(encoding="utf-8"))
    by_name = {t.name: [p for s in t.segments for p in s.points] for t in doc.tracks}
    for path in (WALK, DRIVE):
        want = source(path)
        points = by_name[read_gpx(path)[0].name]  # the track's own name, kept
        assert len(points) == len(want)
        for pt, w in zip(points, want, strict=True):
            assert abs(pt.latitude - w.lat) <= 1e-7 and abs(pt.longitude - w.lon) <= 1e-7
            assert pt.elevation == w.alt
            assert pt.time is not None and _ms(pt.time) == w.ts_ms


def test_export_geojson_from_the_suffix(exported: Path) -> None:
    result = geotrack("export", "-o", "out.geojson", "--device", "drive", cwd=exported)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "exported 200 positions to out.geojson (geojson)"
    doc = json.loads((exported / "out.geojson").read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection"
    (feature,) = doc["features"]
    props, geometry = feature["properties"], feature["geometry"]
    want = source(DRIVE)
    assert props["device"] == "drive" and props["count"] == 200
    assert props["times"] == [p.ts for p in want]
    assert geometry["type"] == "LineString"
    for (lon, lat, *alt), w in zip(geometry["coordinates"], want, strict=True):
        assert abs(lat - w.lat) <= 1e-7 and abs(lon - w.lon) <= 1e-7
        assert alt == ([w.alt] if w.alt is not None else [])
    assert not list(exported.glob("*.partial"))


def test_export_csv_to_stdout(exported: Path) -> None:
    result = geotrack("export", "--format", "csv", cwd=exported)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing but the data when writing to stdout
    rows = list(csv.reader(io.StringIO(result.stdout, newline="")))
    assert tuple(rows[0]) == HEADER
    want = sorted(source(WALK) + source(DRIVE), key=lambda p: (p.device, p.ts))
    assert len(rows) == 1 + len(want)
    for row, w in zip(rows[1:], want, strict=True):
        assert row[:2] == [w.device, w.ts]
        assert abs(float(row[2]) - w.lat) <= 1e-7 and abs(float(row[3]) - w.lon) <= 1e-7
        assert (float(row[4]) if row[4] else None) == w.alt


def test_export_narrowed_by_device_and_time(exported: Path) -> None:
    drive = source(DRIVE)
    since, until = drive[10].time, drive[20].time
    result = geotrack("export", "--since", since, "--until", until, cwd=exported)
    assert result.returncode == 0, result.stderr
    assert positions(result.stdout.splitlines()) == drive[10:21]  # both ends included

    # Unix seconds work too, and --device picks one of the devices.
    walk = source(WALK)
    first, last = walk[0].ts_ms // 1000, walk[-1].ts_ms // 1000
    result = geotrack(
        "export", "-d", "walk", "--since", str(first), "--until", str(last), cwd=exported
    )
    assert positions(result.stdout.splitlines()) == walk
    result = geotrack("export", "-d", "nobody", cwd=exported)
    assert (result.returncode, result.stdout) == (0, "")


def test_failed_export_leaves_the_old_file_and_no_partial(exported: Path) -> None:
    target = exported / "keep.gpx"
    target.write_text("old", encoding="utf-8")
    result = geotrack("export", "--format", "xml", "-o", target, cwd=exported)
    assert "unknown format 'xml'" in only_error(result)
    assert target.read_text(encoding="utf-8") == "old"
    assert not list(exported.glob("*.partial"))

    result = geotrack("export", "-o", exported / "no-such-dir" / "out.gpx", cwd=exported)
    assert "cannot write" in only_error(result)
    assert not (exported / "no-such-dir").exists()


# -- serve shutdown --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    fix = {"device": "car-1", "lat": 52.5, "lon": 13.4, "ts": 1_764_072_000}
    with relay_process("sqlite:///geotrack.db", port, cwd=tmp_path) as proc:
        assert proc.stdout is not None
        log = Lines(proc.stdout)

        async def clients() -> tuple[Any, ...]:
            sub = await connect(f"{url}/subscribe", open_timeout=5)
            log.wait(lambda ls: any("subscriber" in line for line in ls))
            pub = await connect(f"{url}/publish", open_timeout=5)
            await pub.send(json.dumps(fix))
            ack = json.loads(await asyncio.wait_for(pub.recv(), 10))
            pushed = json.loads(await asyncio.wait_for(sub.recv(), 10))
            proc.send_signal(sig)
            for ws in (pub, sub):
                await asyncio.wait_for(ws.wait_closed(), 20)
            return (
                ack,
                pushed,
                (pub.close_code, pub.close_reason),
                (
                    sub.close_code,
                    sub.close_reason,
                ),
            )

        ack, pushed, pub_closed, sub_closed = arun(clients(), timeout=60)
        assert ack == {"type": "ack", "stored": 1, "duplicates": 0, "rejected": []}
        assert [p["device"] for p in pushed] == ["car-1"]
        assert pub_closed == sub_closed == (1001, "relay shutting down")
        assert proc.wait(timeout=20) == 0
        text = "\n".join(log.join())

    assert "Traceback" not in text
    peer = r"127\.0\.0\.1:\d+"
    for pattern in (
        rf"subscriber {peer} connected \(0 publishers, 1 subscribers\)",
        rf"publisher {peer} connected \(1 publishers, 1 subscribers\)",
        r"stopping: storing and acking what is in flight",
        rf"publisher {peer} disconnected \(code 1001: relay shutting down\): 1 stored",
        rf"subscriber {peer} disconnected \(code 1001: relay shutting down\): 1 delivered",
        r"stopped: 1 stored, 0 duplicates, 0 rejected",
    ):
        assert re.search(pattern, text), (pattern, text)
    assert [p.device for p in stored(tmp_path / "geotrack.db")] == ["car-1"]


def test_publish_rides_out_a_relay_restart(tmp_path: Path) -> None:
    # 26 fixes over 50 s at --speed 10: five seconds, with the relay gone for one of them.
    path = short_gpx(tmp_path / "short.gpx")
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    publish = ("publish", "--url", url, path, "--speed", "10")
    with (
        relay_process("sqlite:///geotrack.db", port, cwd=tmp_path) as first,
        background(*publish, cwd=tmp_path) as publisher,
    ):
        assert first.stdout is not None
        log = Lines(first.stdout)
        log.wait(lambda ls: any("publisher" in line and "connected" in line for line in ls))
        time.sleep(1)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
        time.sleep(1)
        with relay_process("sqlite:///geotrack.db", port, cwd=tmp_path):
            err = publisher.stderr(timeout=60)
    assert publisher.returncode == 0, err
    assert "Traceback" not in err
    assert "relay shutting down" in err and "reconnecting" in err
    m = SUMMARY.search(err)
    assert m is not None, err
    sent, stored_, dups, rejected = (int(g) for g in m.groups()[:4])
    assert (sent, stored_ + dups, rejected) == (26, 26, 0)
    assert stored(tmp_path / "geotrack.db") == source(path)


# -- errors: one line, no traceback ----------------------------------------------------------

_ERRORS: list[tuple[str, list[str], str]] = [
    ("gpx-not-xml", ["publish", "--gpx", "{tmp}/bad.gpx", "--url", "{closed}"], "not an XML file"),
    ("not-a-format", ["publish", "{tmp}/bad.gpx"], "not a file geotrack can import"),
    ("gpx-waypoints", ["publish", "--gpx", "{tmp}/wpt.gpx"], "has only waypoints"),
    ("gpx-missing", ["publish", "--gpx", "{tmp}/missing.gpx"], "cannot read"),
    (
        "store-under-a-file",
        ["serve", "--port", "{free}", "--store", "sqlite:///afile/x.db"],
        "cannot open",
    ),
    ("store-in-proc", ["export", "--store", "sqlite:////proc/geotrack.db"], "no store at"),
    ("store-not-a-db", ["tail", "--store", "sqlite:///afile"], "file is not a database"),
    ("store-scheme", ["export", "--store", "redis://localhost/0"], "unsupported store URL"),
    ("store-no-scheme", ["tail", "--store", "geotrack.db"], "unsupported store URL"),
    ("port-in-use", ["serve", "--port", "{busy}"], "already in use"),
    (
        "relay-unreachable",
        ["publish", "{walk}", "--url", "{closed}", "--retry-for", "0"],
        "cannot reach relay",
    ),
    ("relay-not-ws", ["publish", "{walk}", "--url", "http://127.0.0.1:1"], "ws:// or wss://"),
    ("tail-since", ["tail", "--since", "last tuesday"], "--since: expected an RFC 3339"),
    ("tail-since-date", ["tail", "--since", "2026-02-30T00:00:00Z"], "--since: "),
    ("tail-cursor", ["tail", "--since", "sqlite:abc"], "is not a SQLite cursor"),
    ("export-since", ["export", "--since", "soon"], "--since: "),
    ("export-until", ["export", "--until", "12:00"], "--until: "),
    ("bbox-three", ["publish", "--simulate", "2", "--bbox", "1,2,3"], "--bbox: "),
    ("bbox-lat", ["publish", "--simulate", "2", "--bbox", "0,95,1,96"], "--bbox: latitudes"),
    ("export-format", ["export", "--format", "shp"], "unknown format 'shp'"),
    ("speed-negative", ["publish", "{walk}", "--speed", "-1"], "--speed: "),
    ("no-source", ["publish"], "give GPX files"),
    ("both-sources", ["publish", "{walk}", "--simulate", "1"], "not both"),
    ("gap", ["export", "--gap", "soon"], "--gap: "),
]


@pytest.mark.parametrize(("args", "says"), [c[1:] for c in _ERRORS], ids=[c[0] for c in _ERRORS])
def test_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "bad.gpx").write_text("this is not XML", encoding="utf-8")
    (tmp_path / "wpt.gpx").write_text(
        '<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
        '<wpt lat="52.5" lon="13.4"><name>here</name></wpt></gpx>',
        encoding="utf-8",
    )
    (tmp_path / "afile").write_text("not a directory, not a database\n", encoding="utf-8")
    with contextlib.ExitStack() as stack:
        values = {"tmp": str(tmp_path), "walk": str(WALK), "free": str(free_port())}
        values["closed"] = f"ws://127.0.0.1:{free_port()}"
        if "{busy}" in args:
            busy = stack.enter_context(socket.socket())
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            values["busy"] = str(busy.getsockname()[1])
        result = geotrack(*(a.format(**values) for a in args), cwd=tmp_path)
    line = only_error(result)
    assert says in line, line
    assert result.stdout == ""


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "publish", "tail", "export"])
def test_every_command_has_an_example_in_its_help(tmp_path: Path, command: str) -> None:
    result = geotrack(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    assert f"geotrack {command} " in result.stdout


def test_top_level_help_lists_the_commands(tmp_path: Path) -> None:
    result = geotrack("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "publish", "tail", "export"):
        assert re.search(rf"^\W*{command}\s+\w", result.stdout, re.M), command
    version = geotrack("--version", cwd=tmp_path)
    assert re.fullmatch(r"geotrack \d+\.\d+\.\d+\S*\n", version.stdout)
