"""`geotrack serve` as a real process: options -> RelayConfig -> geotrack.relay.serve()."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from geotrack.relay import RelayConfig, serve
from geotrack.store import open_store
from tests.conftest import free_port
from tests.relay_helpers import Lines, arun, relay_process, wait_listening

WRONG = "wrong-token-that-must-never-be-logged"


def geotrack_serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geotrack", "serve", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--max-batch", "0"], "Error: --max-batch: must be within 1..1000, got 0"),
        (["--max-rate", "0"], "Error: --max-rate: must be within 0.001..inf, got 0.0"),
        (["--http-port", "70000"], "Error: --http-port: must be within 0..65535, got 70000"),
        (["--keyfile", "key.pem"], "Error: --keyfile: give --certfile too"),
        (["--auth", "missing.toml"], "Error: --auth: cannot read missing.toml"),
    ],
)
def test_bad_options_are_one_error_line_naming_the_option(
    tmp_path: Path, args: list[str], error: str
) -> None:
    result = geotrack_serve("--port", "0", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(error), result.stderr
    assert not list(tmp_path.iterdir())  # nothing was opened, not even the store


def test_an_http_port_in_use_is_one_error_line_and_nothing_keeps_running(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = geotrack_serve("--port", "0", "--http-port", str(port), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Error: port {port} on 127.0.0.1 is already in use (the HTTP listener)" in (
        result.stderr
    )


def test_serve_warns_logs_refusals_paces_http_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    with relay_process(
        "sqlite:///geotrack.db",
        port,
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--http-host",
        "0.0.0.0",
        "--max-rate",
        "1",
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None
        log = Lines(proc.stdout)
        wait_listening(http_port, proc)

        async def refused() -> int:
            with pytest.raises(InvalidStatus) as info:
                await connect(f"ws://127.0.0.1:{port}/nowhere?token={WRONG}", open_timeout=5)
            return info.value.response.status_code

        assert arun(refused()) == 404
        url = f"http://127.0.0.1:{http_port}/?id=phone&lat=52.5&lon=13.4&timestamp="
        answers = []
        for i in range(4):
            try:
                with urllib.request.urlopen(url + str(1_764_072_000 + i), data=b"") as answer:
                    answers.append((answer.status, None))
            except urllib.error.HTTPError as exc:
                answers.append((exc.code, exc.headers["Retry-After"]))
        assert answers == [(200, None), (200, None), (429, "1"), (429, "1")]
        log.wait(lambda lines: any("refused handshake" in line for line in lines))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        text = "\n".join(log.join())
    assert "Traceback" not in text and WRONG not in text
    for expected in (
        "listening on 0.0.0.0 without --auth: anyone who can reach it may publish",
        f"geotrack relay listening on ws://127.0.0.1:{port} (store sqlite:",
        f"HTTP on http://0.0.0.0:{http_port}: devices at / and /owntracks",
        "refused handshake from 127.0.0.1:",
        "404 no such endpoint '/nowhere'",
        "stopping: storing and acking what is in flight",
        "stopped: 2 stored, 0 duplicates, 0 rejected",
    ):
        assert expected in text, (expected, text)
    assert "127.0.0.1 without --auth" not in text  # loopback is not a warning


def test_the_library_call_runs_relay_and_http_until_stopped(tmp_path: Path) -> None:
    """What `geotrack serve` does, from Python: RelayConfig and one call."""
    port, http_port = free_port(), free_port()
    config = RelayConfig(port=port, http_port=http_port, stats_interval=0)

    async def main() -> None:
        stop = asyncio.Event()
        with open_store(f"sqlite:///{tmp_path / 'db'}") as store:
            running = asyncio.create_task(serve(store, config, stop))
            for _ in range(100):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", http_port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            async with connect(f"ws://127.0.0.1:{port}/publish", open_timeout=5) as ws:
                await ws.send('{"device": "car-1", "lat": 1, "lon": 2, "ts": 1764072000}')
                assert '"stored":1' in await asyncio.wait_for(ws.recv(), 5)
            stop.set()
            counters = await asyncio.wait_for(running, 20)
        assert counters.stored == 1

    arun(main())
