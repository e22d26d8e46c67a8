"""``geotrack publish`` end to end: TLS trust, waiting for a relay, Ctrl-C, what it prints."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import msgspec
import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve

from geotrack.schema import Position, ms_to_ts
from geotrack.store import open_store
from tests.cli_helpers import (
    SUMMARY,
    WALK,
    background,
    env,
    fake_relay_publish,
    geotrack,
    short_gpx,
    source,
)
from tests.conftest import free_port
from tests.factories import T0, pos, stored
from tests.relay_helpers import Lines, relay_process


def _numbers(err: str) -> tuple[int, int, int, int]:
    m = SUMMARY.search(err)
    assert m is not None, err
    sent, stored_, dups, rejected = (int(g) for g in m.groups()[:4])
    return sent, stored_, dups, rejected


# -- TLS: the system's trust store by default ------------------------------------------------


@pytest.fixture
def tls_relay(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    """A CA, and the server certificate and key it issued for 127.0.0.1 (as PEM files)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    for blob in cert.cert_chain_pems:
        with certfile.open("ab") as f:
            f.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, certfile, keyfile


def test_wss_without_cafile_trusts_ssl_cert_file(
    tmp_path: Path, tls_relay: tuple[trustme.CA, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 1: `--url wss://...` without --cafile ended in `ValueError: ssl=None ...`."""
    ca, certfile, keyfile = tls_relay
    trust = tmp_path / "trust.pem"
    ca.cert_pem.write_to_path(str(trust))
    monkeypatch.setenv("SSL_CERT_FILE", str(trust))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    path = short_gpx(tmp_path / "short.gpx", points=5)
    port = free_port()
    tls = ("--certfile", str(certfile), "--keyfile", str(keyfile))
    with relay_process("sqlite:///geotrack.db", port, *tls, cwd=tmp_path):
        url = f"wss://127.0.0.1:{port}"
        result = geotrack("publish", "--url", url, path, "--speed", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert _numbers(result.stderr) == (5, 5, 0, 0)
    assert stored(tmp_path / "geotrack.db") == source(path)


def test_wss_with_an_unknown_ca_says_how_to_trust_it(
    tmp_path: Path, tls_relay: tuple[trustme.CA, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _ca, certfile, keyfile = tls_relay
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    port = free_port()
    tls = ("--certfile", str(certfile), "--keyfile", str(keyfile))
    with relay_process("sqlite:///geotrack.db", port, *tls, cwd=tmp_path):
        url = f"wss://127.0.0.1:{port}"
        result = geotrack("publish", "--url", url, WALK, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: cannot reach relay at wss://127.0.0.1:"), line
    assert "certificate not trusted" in line and "--cafile or SSL_CERT_FILE" in line, line


def test_a_name_mismatch_names_both_names_and_not_cafile(tmp_path: Path) -> None:
    """Bug 6: with --cafile given, a name mismatch still said `give the CA with --cafile`."""
    ca = trustme.CA()
    cert = ca.issue_cert("relay.example")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    port = free_port()
    tls = ("--certfile", str(certfile), "--keyfile", str(keyfile))
    with relay_process("sqlite:///geotrack.db", port, *tls, cwd=tmp_path):
        url = f"wss://127.0.0.1:{port}"
        result = geotrack("publish", "--url", url, "--cafile", cafile, WALK, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert "the certificate is for relay.example, not 127.0.0.1" in line, line
    assert "--cafile" not in line, line


# -- a relay that is not up yet ----------------------------------------------------------------


def test_publisher_waits_for_a_relay_that_starts_later(tmp_path: Path) -> None:
    """Bug 9: a publisher started before its relay exited at once with `Connection refused`."""
    path = short_gpx(tmp_path / "short.gpx", points=12)
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    with background("publish", "--url", url, path, "--speed", "0", cwd=tmp_path) as publisher:
        waiting = (
            f"waiting for the relay at {url}/publish: connection refused; retrying for up to 5m"
        )
        deadline = time.monotonic() + 20
        while waiting not in publisher.err_path.read_text(encoding="utf-8"):
            assert publisher.proc.poll() is None, publisher.err_path.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, "the publisher never said it was waiting"
            time.sleep(0.05)
        with relay_process("sqlite:///geotrack.db", port, cwd=tmp_path):
            err = publisher.stderr(timeout=60)
    assert publisher.returncode == 0, err
    assert "Traceback" not in err
    assert _numbers(err) == (12, 12, 0, 0)
    assert stored(tmp_path / "geotrack.db") == source(path)


# -- Ctrl-C ------------------------------------------------------------------------------------


def _count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM positions").fetchone()
    return int(n)


def test_ctrl_c_reports_exactly_what_the_store_holds(tmp_path: Path) -> None:
    """Bug 8: after Ctrl-C, positions the store held were reported as unacknowledged.

    As fast as acks allow, with many small frames in flight, so that the interrupt always
    finds frames that the relay has read but whose acks the publisher has not.
    """
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    db = tmp_path / "geotrack.db"
    args = ("--simulate", "50", "--count", "5000000", "--rate", "10", "--seed", "3")
    with relay_process("sqlite:///geotrack.db", port, cwd=tmp_path) as relay:
        assert relay.stdout is not None
        log = Lines(relay.stdout)
        with background(
            "publish", "--url", url, *args, "--speed", "0", "--batch", "20", "--window", "64",
            cwd=tmp_path,
        ) as publisher:  # fmt: skip
            log.wait(lambda ls: any("publisher" in line and "connected" in line for line in ls))
            deadline = time.monotonic() + 30
            while _count(db) < 5000:
                assert time.monotonic() < deadline and publisher.proc.poll() is None
                time.sleep(0.1)
            err = publisher.stop(signal.SIGINT, timeout=30)
        assert publisher.returncode == 130, err
    assert "Traceback" not in err
    m = re.search(r"^interrupted: " + SUMMARY.pattern[1:], err, re.M)
    assert m is not None, err
    sent, stored_, dups, rejected = (int(g) for g in m.groups()[:4])
    assert (dups, rejected) == (0, 0)
    unacked = re.search(r"^(\d+) positions? (?:was|were) not acknowledged$", err, re.M)
    not_acked = int(unacked.group(1)) if unacked else 0
    in_store = _count(db)
    # Every position reported stored is there, and "not acknowledged" is what is missing.
    assert in_store == stored_, err
    assert not_acked == sent - in_store, err


def test_a_second_ctrl_c_stops_waiting_for_acks(tmp_path: Path) -> None:
    """A relay that never acks: the first Ctrl-C waits for acks, the second stops waiting."""

    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async def main() -> tuple[int | None, str]:
        async with serve(silent, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            url = f"ws://127.0.0.1:{port}"
            loop = asyncio.get_running_loop()

            def run() -> tuple[int | None, str]:
                with background(
                    "publish", "--url", url, WALK, "--speed", "0", "--batch", "10", cwd=tmp_path
                ) as publisher:
                    _wait_for(publisher.err_path, "")  # started
                    time.sleep(1.5)  # its window fills; no ack comes
                    publisher.proc.send_signal(signal.SIGINT)
                    _wait_for(publisher.err_path, "Ctrl-C again to stop waiting")
                    publisher.proc.send_signal(signal.SIGINT)
                    # Well before the 5 s the first Ctrl-C would have waited.
                    err = publisher.stderr(timeout=4)
                return publisher.returncode, err

            return await loop.run_in_executor(None, run)

    code, err = asyncio.run(asyncio.wait_for(main(), 60))
    assert code == 130, err
    assert "Traceback" not in err
    assert re.search(r"^interrupted: waiting up to 5 s for the acks of 120 positions", err, re.M)
    assert re.search(r"^interrupted: 120 sent, 0 stored, 0 duplicates, 0 rejected", err, re.M)
    assert re.search(r"^120 positions were not acknowledged$", err, re.M), err


def _wait_for(path: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(encoding="utf-8") or not path.exists():
        assert time.monotonic() < deadline, f"no {text!r} in {path.read_text(encoding='utf-8')}"
        time.sleep(0.05)


# -- what it prints ----------------------------------------------------------------------------


def test_rejection_summary_counts_what_it_does_not_show(tmp_path: Path) -> None:
    """Bug 7: 120 rejections showed 20 lines and silently dropped the other 100."""

    def answer(n: int) -> dict[str, Any]:
        rejected = [{"index": i, "error": "lat: not here"} for i in range(n)]
        return {"type": "ack", "stored": 0, "duplicates": 0, "rejected": rejected}

    result = fake_relay_publish(tmp_path, answer, WALK, "--speed", "0", "--batch", "10")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert _numbers(lines[0]) == (120, 0, 0, 120)
    walk = source(WALK)
    assert lines[1:21] == [f"  walk at {walk[i].time}: lat: not here" for i in range(20)]
    assert lines[21:] == ["  … and 100 more"]


def test_progress_is_labelled_with_a_readable_rate_and_plurals(tmp_path: Path) -> None:
    """Bug 10: `1 tracks`, unlabelled elapsed/ETA columns, `0/s` at real-time speed."""
    path = short_gpx(tmp_path / "short.gpx", points=3, step_s=2)
    port = free_port()
    with relay_process("sqlite:///geotrack.db", port, cwd=tmp_path):
        url = f"ws://127.0.0.1:{port}"
        result = _with_env(
            {"GEOTRACK_PROGRESS": "1", "COLUMNS": "200"},
            "publish", "--url", url, path, "--speed", "1", cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bar = next(line for line in result.stderr.splitlines() if "publishing" in line)
    assert "publishing short.gpx" in bar, bar
    assert re.search(r"elapsed \d+:\d\d:\d\d", bar), bar
    assert re.search(r"ETA (\d+:\d\d:\d\d|-:--:--)", bar), bar
    # 3 fixes over 4 s: about 0.75 a second, not "0/s" or "1/s".
    assert re.search(r"\b0\.\d/s", bar), bar


def test_lines_are_not_wrapped_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Bug 10: rich cut warnings at 80 columns in logs and pipes."""
    path = tmp_path / "a-file-with-a-rather-long-name-so-that-its-lines-run-past-80.ndjson"
    path.write_text(_ndjson([_at(0), _at(1)]) + '{"device": "x", "lat": 95, "lon": 1, "ts": 1}\n')
    with relay_process("sqlite:///geotrack.db", (port := free_port()), cwd=tmp_path):
        url = f"ws://127.0.0.1:{port}"
        result = geotrack("publish", "--url", url, path, "--speed", "0", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"{path}: read 2, 1 skipped: 1 lat: "), lines[0]
    assert lines[0].endswith("(first at line 3)") and len(lines[0]) > 100, lines[0]
    assert SUMMARY.match(lines[1]), lines[1]


def _with_env(extra_env: dict[str, str], *args: str | Path, cwd: Path) -> CompletedProcess[str]:
    """``geotrack ARGS`` with these environment variables set."""
    return subprocess.run(
        [sys.executable, "-m", "geotrack", *map(str, args)],
        cwd=cwd,
        env={**env(), **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- every source replays --------------------------------------------------------------------


def _at(i: int, device: str = "car-1", step_ms: int = 1000) -> Position:
    return pos(device, i, ts=ms_to_ts(T0 + i * step_ms))


def _ndjson(positions: list[Position]) -> str:
    return "".join(msgspec.json.encode(p).decode() + "\n" for p in positions)


def _publish(
    tmp_path: Path, *args: str | Path, store: str = "sqlite:///geotrack.db"
) -> CompletedProcess[str]:
    port = free_port()
    with relay_process(store, port, cwd=tmp_path):
        return geotrack(
            "publish", "--url", f"ws://127.0.0.1:{port}", *args, cwd=tmp_path, timeout=60
        )


def test_any_format_is_recognised_by_its_content_and_replayed(tmp_path: Path) -> None:
    """An NDJSON file without the suffix: read by content, every position stored as it was."""
    sent = [_at(i, d) for d in ("bus-1", "bus-2") for i in range(20)]
    path = tmp_path / "history.txt"
    path.write_text(_ndjson(sent), encoding="utf-8")
    result = _publish(tmp_path, path, "--speed", "0")
    assert result.returncode == 0, result.stderr
    assert _numbers(result.stderr) == (40, 40, 0, 0)
    assert stored(tmp_path / "geotrack.db") == sent
    again = _publish(tmp_path, "--format", "ndjson", path, "--speed", "0")
    assert _numbers(again.stderr) == (40, 0, 40, 0), again.stderr  # duplicates are harmless
    assert again.returncode == 0, again.stderr


def test_skipped_points_are_counted_with_reasons_the_rest_stored_and_exit_1(tmp_path: Path) -> None:
    good = [_at(i) for i in range(5)]
    lines = _ndjson(good).splitlines()
    lines.insert(2, '{"device": "car-1", "lat": 95.0, "lon": 13.4, "ts": 1764072000.5}')
    lines.insert(4, "not json at all")
    (tmp_path / "odd.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _publish(tmp_path, "odd.ndjson", "--speed", "0")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert _numbers(result.stderr) == (5, 5, 0, 0)
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("odd.ndjson:")]
    assert line.startswith("odd.ndjson: read 5, 2 skipped: 1 "), line
    assert "first at line 3" in line and "first at line 5" in line, line
    assert stored(tmp_path / "geotrack.db") == good


def test_points_sharing_a_time_exit_1_and_retime_stores_them_all(tmp_path: Path) -> None:
    """Real-file bug: 184 points with one time stored 1 and exited 0."""
    when = "<time>1901-12-13T20:45:52.207Z</time>"
    rows = "".join(
        f'<trkpt lat="{52.5 + i * 1e-4:.7f}" lon="13.4">{when}</trkpt>' for i in range(184)
    )
    path = tmp_path / "same.gpx"
    path.write_text(
        '<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><name>Frozen clock</name><trkseg>{rows}</trkseg></trk></gpx>",
        encoding="utf-8",
    )
    result = _publish(tmp_path, path, "--speed", "0")
    assert result.returncode == 1, result.stderr
    assert "--retime" in result.stderr, result.stderr
    assert "same.gpx: read 1, 183 skipped: 183 " in result.stderr, result.stderr
    assert len(stored(tmp_path / "geotrack.db")) == 1
    retimed = _publish(tmp_path, path, "--speed", "0", "--retime", "5")
    assert retimed.returncode == 0, retimed.stderr
    assert len(stored(tmp_path / "geotrack.db")) == 184


def test_an_untimed_file_published_twice_is_stored_once(tmp_path: Path) -> None:
    """Real-file bug: invented times came from the clock, so a resend stored it again."""
    rows = "".join(f'<trkpt lat="{52.5 + i * 1e-3:.7f}" lon="13.4"/>' for i in range(10))
    path = tmp_path / "untimed.gpx"
    path.write_text(
        '<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><trkseg>{rows}</trkseg></trk></gpx>",
        encoding="utf-8",
    )
    first = _publish(tmp_path, path, "--speed", "0")
    assert first.returncode == 0, first.stderr
    assert _numbers(first.stderr) == (10, 10, 0, 0)
    second = _publish(tmp_path, path, "--speed", "0")
    assert second.returncode == 0, second.stderr
    assert _numbers(second.stderr) == (10, 0, 10, 0)
    assert len(stored(tmp_path / "geotrack.db")) == 10


def _fleet(db: Path) -> list[Position]:
    positions = [_at(i, d, 2000) for d in ("bus-1", "bus-2", "car-1") for i in range(40)]
    with open_store(f"sqlite:///{db}") as store:
        store.write(positions)
    return positions


def test_a_store_replays_into_a_relay_on_another_store(tmp_path: Path) -> None:
    """Store A -> relay on store B: B holds the same positions; A is only read."""
    fleet = _fleet(tmp_path / "a.db")
    before = (tmp_path / "a.db").stat().st_mtime_ns
    result = _publish(
        tmp_path, "--from-store", "sqlite:///a.db", "--speed", "0", store="sqlite:///b.db"
    )
    assert result.returncode == 0, result.stderr
    assert _numbers(result.stderr) == (120, 120, 0, 0)
    assert (
        stored(tmp_path / "b.db") == stored(tmp_path / "a.db") == sorted(fleet, key=lambda p: p.key)
    )
    assert (tmp_path / "a.db").stat().st_mtime_ns == before


def test_a_store_replay_selects_devices_and_times(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path / "a.db")
    since, until = ms_to_ts(T0 + 10_000), ms_to_ts(T0 + 20_000)
    args = ("--device", "bus-2", "-d", "car-1", "--since", since, "--until", until)
    result = _publish(
        tmp_path, "--from-store", "sqlite:///a.db", *args, "--speed", "0", store="sqlite:///b.db"
    )
    assert result.returncode == 0, result.stderr
    want = [p for p in fleet if p.device != "bus-1" and T0 + 10_000 <= p.ts_ms <= T0 + 20_000]
    assert stored(tmp_path / "b.db") == want and len(want) == 12
    nothing = _publish(
        tmp_path, "--from-store", "sqlite:///a.db", "-d", "nobody", store="sqlite:///b.db"
    )
    assert nothing.returncode == 0, nothing.stderr
    assert (
        "0 positions matched in sqlite:///a.db: check --device, --since and --until"
        in nothing.stderr
    )


def test_start_moves_the_first_point_to_the_time_and_keeps_the_intervals(tmp_path: Path) -> None:
    _fleet(tmp_path / "a.db")
    start = "2030-01-01T00:00:00Z"
    result = _publish(
        tmp_path,
        "--from-store",
        "sqlite:///a.db",
        "--start",
        start,
        "--speed",
        "0",
        store="sqlite:///b.db",
    )
    assert result.returncode == 0, result.stderr
    got = stored(tmp_path / "b.db")
    start_ms = 1_893_456_000_000
    assert min(p.ts_ms for p in got) == start_ms
    # Stored history plays as recorded: every position keeps its distance from the first.
    assert sorted(p.ts_ms - start_ms for p in got) == sorted(
        p.ts_ms - T0 for p in stored(tmp_path / "a.db")
    )
    walk = _publish(tmp_path, WALK, "--start", "now", "--speed", "0", store="sqlite:///c.db")
    assert walk.returncode == 0, walk.stderr
    times = [p.ts_ms for p in stored(tmp_path / "c.db")]
    assert abs(times[0] - time.time() * 1000) < 120_000
    assert times == [times[0] + i * 5000 for i in range(120)]


def test_a_missing_store_is_one_error_line_and_creates_nothing(tmp_path: Path) -> None:
    result = geotrack("publish", "--from-store", "sqlite:///none.db", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: no store at"), line
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--since", "2h", "{walk}"], "--since: selects from --from-store only"),
        (["--format", "xls", "{walk}"], "--format: unknown format 'xls'"),
        (
            ["--from-store", "sqlite:///x.db", "{walk}"],
            "give either files or --from-store, not both",
        ),
        (["--retime", "0", "{walk}"], "--retime: "),
        (["--tz", "Mars/Olympus", "{walk}"], "--tz: unknown time zone"),
        (["--start", "soon", "{walk}"], "--start: "),
        (["-d", "a", "-d", "b", "{walk}"], "--device: give one id"),
    ],
)
def test_bad_options_are_one_error_line(tmp_path: Path, args: list[str], says: str) -> None:
    result = geotrack("publish", *(a.format(walk=WALK) for a in args), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and says in line, line
