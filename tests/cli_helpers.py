"""Running the ``geotrack`` command in tests, and what it reads and prints.

To completion, in the background, or against a fake relay; the sample tracks; its summary
line, its errors and its ``--json`` output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection, serve

from geotrack.schema import Position
from geotrack.sources.gpx import read_gpx
from tests.conftest import SAMPLES
from tests.relay_helpers import Lines, arun

#: 120 points 5 s apart, with <ele> and Garmin extensions.
WALK = SAMPLES / "walk.gpx"
#: 200 points 2 s apart at .250 s, speed, heading, acc, attrs.
DRIVE = SAMPLES / "drive.gpx"
#: The summary line of ``geotrack publish``: sent, stored, duplicates, rejected, seconds.
SUMMARY = re.compile(
    r"^(\d+) sent, (\d+) stored, (\d+) duplicates?, (\d+) rejected in (\d+\.\d) s$", re.M
)


def env() -> dict[str, str]:
    """The environment of a child ``geotrack``: no ``GEOTRACK_*`` options, unbuffered."""
    # Options must come from the command line here, not from the developer's shell.
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("GEOTRACK_")}
    child_env["PYTHONUNBUFFERED"] = "1"
    return child_env


def default_sigint() -> None:
    """Give the calling process the default SIGINT handler back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# A child inherits an ignored SIGINT (pytest started in the background by a script): give
# the children the default back, or Ctrl-C could not be tested.
#: The ``preexec_fn`` of a child that must see Ctrl-C (None when SIGINT is not ignored).
PREEXEC = default_sigint if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else None


def geotrack(*args: str | Path, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``geotrack ARGS`` to completion (killed after ``timeout`` seconds)."""
    return subprocess.run(
        [sys.executable, "-m", "geotrack", *map(str, args)],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Child:
    """A ``geotrack`` command running in the background."""

    proc: subprocess.Popen[str]
    out: Lines  # its stdout, line by line
    err_path: Path  # where its stderr goes

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> str:
        """Send ``sig``, wait for the exit; returns what the process wrote to stderr."""
        self.proc.send_signal(sig)
        return self.stderr(timeout)

    def stderr(self, timeout: float = 15) -> str:
        """What the process wrote to stderr, once it has exited."""
        self.proc.wait(timeout=timeout)
        return self.err_path.read_text(encoding="utf-8")


@contextlib.contextmanager
def background(*args: str | Path, cwd: Path) -> Iterator[Child]:
    """``geotrack ARGS`` started in ``cwd``; killed on the way out if still running."""
    err_path = cwd / f"stderr-{time.monotonic_ns()}.txt"
    with open(err_path, "w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "geotrack", *map(str, args)],
            cwd=cwd,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=PREEXEC,  # noqa: PLW1509 - only when SIGINT is ignored
        )
    assert proc.stdout is not None
    child = Child(proc, Lines(proc.stdout), err_path)
    try:
        yield child
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        child.out.join()
        proc.stdout.close()


def positions(line_list: list[str]) -> list[Position]:
    """The positions of ``geotrack tail --json`` output lines."""
    return [msgspec.json.decode(line, type=Position) for line in line_list]


def only_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error:`` line of a failed command (which must show no traceback)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def short_gpx(path: Path, points: int = 26, step_s: int = 2) -> Path:
    """A small GPX track, ``points`` fixes ``step_s`` apart, with elevations."""
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    rows = "\n".join(
        f'<trkpt lat="{48.85 + i * 1e-4:.7f}" lon="{2.35 + i * 1e-4:.7f}"><ele>{30 + i}</ele>'
        f"<time>{(start + timedelta(seconds=i * step_s)).isoformat()}</time></trkpt>"
        for i in range(points)
    )
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><name>short</name><trkseg>\n{rows}\n</trkseg></trk></gpx>\n",
        encoding="utf-8",
    )
    return path


def source(path: Path) -> list[Position]:
    """The positions of the one track in the GPX file ``path``."""
    (track,) = read_gpx(path)
    return track.positions


def fake_relay_publish(
    tmp_path: Path, answer: Callable[[int], dict[str, Any]], *args: str | Path
) -> subprocess.CompletedProcess[str]:
    """``geotrack publish ARGS`` against a relay that answers each frame with ``answer(n)``."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            frame = json.loads(message)
            await ws.send(json.dumps(answer(len(frame) if isinstance(frame, list) else 1)))

    async def main() -> subprocess.CompletedProcess[str]:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "geotrack",
                "publish",
                "--url",
                f"ws://127.0.0.1:{port}",
                *map(str, args),
                cwd=tmp_path,
                env=env(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode is not None
            return subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode())

    return arun(main(), timeout=60)
