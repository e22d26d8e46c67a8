"""``geotrack watch`` as a person sees it: a real process in a real pseudo-terminal.

The command runs with a pty as its controlling terminal (so Ctrl-C is the byte 0x03,
turned into SIGINT by the terminal, as when typed); the test reads what it draws. It draws
on the alternate screen, each frame from the top-left corner (ESC [H), so the last
complete frame is what the screen shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import signal
import ssl
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from geotrack.client import Publisher
from geotrack.schema import Position
from geotrack.store import open_store
from tests.cli_helpers import env, geotrack, only_error
from tests.conftest import free_port
from tests.factories import PUB, SUB, token_file
from tests.relay_helpers import relay_process

# The child makes the pty its controlling terminal, then becomes `geotrack`.
_BOOT = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'geotrack', *sys.argv[1:]])"
)
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_HOME = b"\x1b[H"


class Terminal:
    """``geotrack ARGS`` on a ``rows`` x ``cols`` pseudo-terminal."""

    def __init__(self, args: list[str], cwd: Path, rows: int = 24, cols: int = 110) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        child_env = {
            k: v
            for k, v in env().items()
            if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM")
        }
        child_env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=child_env,
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self._out = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed its end
                data = b""
            with self._changed:
                if not data:
                    self._changed.notify_all()
                    return
                self._out.extend(data)
                self._changed.notify_all()

    @property
    def output(self) -> bytes:
        with self._changed:
            return bytes(self._out)

    def frames(self) -> list[bytes]:
        """The complete frames drawn so far (raw, with their styles)."""
        return self.output.split(_HOME)[1:-1]

    def last_frame(self) -> bytes:
        frames = self.frames()
        return frames[-1] if frames else b""

    def wait_for(self, until: Callable[[str], bool], timeout: float = 20) -> bytes:
        """The last complete frame (raw), once ``until`` holds for its text."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                frame = self.last_frame()
                if until(plain(frame)) or self.proc.poll() is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.2))
        assert until(plain(frame)), (
            f"gave up waiting; the screen:\n{plain(frame)}\noutput tail:\n{self.output[-600:]!r}"
        )
        return frame

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        os.close(self.fd)


@contextmanager
def terminal(*args: str, cwd: Path, rows: int = 24) -> Iterator[Terminal]:
    term = Terminal(list(args), cwd, rows=rows)
    try:
        yield term
    finally:
        term.close()


def plain(frame: bytes) -> str:
    return _ANSI.sub(b"", frame).decode("utf-8", "replace").replace("\r", "")


def row(frame: bytes, device: str) -> bytes:
    """The raw line of ``device`` in a frame (its styles kept)."""
    (line,) = [x for x in frame.split(b"\n") if plain(x).startswith(device + " ")]
    return line


def publish(port: int, *positions: Position) -> None:
    async def send() -> None:
        async with Publisher(f"ws://127.0.0.1:{port}") as publisher:
            await (await publisher.send(positions))

    asyncio.run(asyncio.wait_for(send(), 20))


def fix(device: str, **extra: float) -> Position:
    """A fix taken now."""
    return Position(device=device, lat=52.52, lon=13.405, ts=time.time(), **extra)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[int]:
    """A relay process on a free port, storing in tmp_path/g.db; yields the port."""
    port = free_port()
    with relay_process(f"sqlite:///{tmp_path / 'g.db'}", port):
        yield port


def test_a_device_appears_then_goes_stale_and_ctrl_c_exits_0(tmp_path: Path, relay: int) -> None:
    with terminal(
        "watch", "--url", f"ws://127.0.0.1:{relay}/subscribe", "--stale", "2s", cwd=tmp_path
    ) as term:
        screen = plain(term.wait_for(lambda s: "waiting for positions" in s))
        assert screen.startswith("0 devices · 0 fixes")
        assert f"ws://127.0.0.1:{relay}/subscribe  stale after 2s · q or Ctrl-C to quit" in screen

        publish(relay, fix("bike-7", speed=5.0, heading=90.0))
        frame = term.wait_for(lambda s: "bike-7" in s and "1 live" in s)
        assert plain(frame).startswith("1 device (1 live, 0 stale) · 1 fix")
        line = plain(row(frame, "bike-7"))
        assert re.search(r"52\.52000\s+13\.40500\s+18\s+90° E\s+1\s+1\s*$", line), line
        assert not row(frame, "bike-7").startswith(b"\x1b[2m")

        # Nothing more arrives: two seconds later it is stale, and dimmed.
        frame = term.wait_for(lambda s: "(0 live, 1 stale)" in s)
        assert row(frame, "bike-7").startswith(b"\x1b[2m")

        term.type(b"\x03")  # Ctrl-C, as typed
        assert term.wait() == 0
        tail = term.output.rsplit(b"\x1b[?1049l", 1)
        assert len(tail) == 2, "the screen is given back"
        assert b"Traceback" not in term.output and b"Error" not in tail[1]


def test_what_is_stored_before_the_subscription_opens_is_shown(tmp_path: Path, relay: int) -> None:
    """The first frame is drawn before the subscription is open: a fix stored then counts."""
    with terminal("watch", "--url", f"ws://127.0.0.1:{relay}", cwd=tmp_path) as term:
        term.wait_for(lambda s: "waiting for positions" in s)
        # Held still right after its first frame: it has not subscribed yet (it imports
        # the client then), and the fix is stored meanwhile.
        term.proc.send_signal(signal.SIGSTOP)
        try:
            publish(relay, fix("early"))
        finally:
            term.proc.send_signal(signal.SIGCONT)
        term.wait_for(lambda s: "early" in s, timeout=10)
        term.type(b"\x03")
        assert term.wait() == 0


def test_q_quits_and_the_terminal_is_given_back_as_it_was(tmp_path: Path, relay: int) -> None:
    with terminal("watch", "--url", f"ws://127.0.0.1:{relay}", cwd=tmp_path) as term:
        term.wait_for(lambda s: "waiting for positions" in s)
        lflags = termios.tcgetattr(term.fd)[3]
        assert not lflags & termios.ECHO, "keys typed are not echoed over the table"
        term.type(b"x")  # any other key does nothing
        term.wait_for(lambda s: "waiting for positions" in s)
        assert term.proc.poll() is None
        term.type(b"q")
        assert term.wait() == 0
        assert termios.tcgetattr(term.fd)[3] & termios.ECHO
        assert termios.tcgetattr(term.fd)[3] & termios.ICANON


def test_most_recent_first_and_only_the_devices_asked_for(tmp_path: Path, relay: int) -> None:
    with terminal(
        "watch", "--url", f"ws://127.0.0.1:{relay}", "-d", "bus-1", "-d", "bus-2", cwd=tmp_path
    ) as term:
        term.wait_for(lambda s: "waiting for positions" in s)
        now = time.time()
        publish(
            relay,
            Position(device="bus-1", lat=52.5, lon=13.4, ts=now - 30),
            Position(device="tram-9", lat=52.5, lon=13.4, ts=now - 5),
            Position(device="bus-2", lat=52.5, lon=13.4, ts=now - 10),
        )
        screen = plain(term.wait_for(lambda s: "2 devices" in s))
        assert "tram-9" not in screen
        assert screen.index("bus-2") < screen.index("bus-1")
        term.proc.send_signal(signal.SIGTERM)
        assert term.wait() == 0


def test_the_store_shows_last_fixes_then_follows_its_change_feed(
    tmp_path: Path, relay: int
) -> None:
    publish(relay, fix("parked"), fix("elsewhere"))
    store = f"sqlite:///{tmp_path / 'g.db'}"
    with terminal("watch", "--store", store, "-d", "parked", "-d", "moving", cwd=tmp_path) as term:
        screen = plain(term.wait_for(lambda s: "parked" in s))
        assert screen.startswith("1 device (1 live, 0 stale) · 0 fixes")  # known, not heard
        publish(relay, fix("moving", speed=1.0), fix("other"))
        screen = plain(term.wait_for(lambda s: "moving" in s))
        assert screen.startswith("2 devices (2 live, 0 stale) · 1 fix")
        assert "elsewhere" not in screen and "other" not in screen
        term.type(b"\x03")
        assert term.wait() == 0


def test_rows_are_cut_to_the_terminal_height(tmp_path: Path, relay: int) -> None:
    with terminal("watch", "--url", f"ws://127.0.0.1:{relay}", cwd=tmp_path, rows=12) as term:
        term.wait_for(lambda s: "waiting" in s)
        publish(relay, *(fix(f"d{k:02}") for k in range(30)))
        screen = plain(term.wait_for(lambda s: "30 devices" in s))
        lines = screen.rstrip().splitlines()
        assert len(lines) <= 12
        assert lines[-1].strip() == "… 23 more devices"  # 12 - title, status, header, rule, more
        term.type(b"\x03")
        assert term.wait() == 0


def test_a_relay_with_auth_takes_a_subscribe_token(tmp_path: Path) -> None:
    port = free_port()
    tokens = token_file(tmp_path / "tokens.toml")
    with relay_process(f"sqlite:///{tmp_path / 'g.db'}", port, "--auth", str(tokens)):
        url = f"ws://127.0.0.1:{port}"
        wrong = "wrong-token-0123456789"
        with terminal("watch", "--url", url, "--token", wrong, "-d", "a", cwd=tmp_path) as t:
            assert t.wait() == 1
            after = plain(t.output.rsplit(b"\x1b[?1049l", 1)[-1]).strip()
            assert after.startswith(f"Error: {url}/subscribe?device=a refused the connection: ")
            assert "HTTP 401" in after and "\n" not in after, after
            assert "wrong-token" not in after
        with terminal("watch", "--url", url, "--token", SUB, cwd=tmp_path) as term:
            term.wait_for(lambda s: "waiting for positions" in s)

            async def send() -> None:
                async with Publisher(url, token=PUB) as publisher:
                    await (await publisher.send([fix("bus-12")]))

            asyncio.run(asyncio.wait_for(send(), 20))
            term.wait_for(lambda s: "bus-12" in s)
            term.type(b"\x03")
            assert term.wait() == 0


def test_a_wss_relay_with_the_ca_in_cafile(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    port = free_port()
    tls = ("--certfile", str(certfile), "--keyfile", str(keyfile))
    with relay_process(f"sqlite:///{tmp_path / 'g.db'}", port, *tls):
        url = f"wss://127.0.0.1:{port}"
        with terminal("watch", "--url", url, "--cafile", str(cafile), cwd=tmp_path) as term:
            term.wait_for(lambda s: "waiting for positions" in s)

            async def send() -> None:
                context = ssl.create_default_context(cafile=str(cafile))
                async with Publisher(url, ssl_context=context) as publisher:
                    await (await publisher.send([fix("secure-1")]))

            asyncio.run(asyncio.wait_for(send(), 20))
            term.wait_for(lambda s: "secure-1" in s)
            term.type(b"\x03")
            assert term.wait() == 0


def test_a_restarted_relay_is_resubscribed_to_missing_nothing(tmp_path: Path) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path / 'g.db'}"
    first = contextlib.ExitStack()
    first.enter_context(relay_process(store, port))
    with first, terminal("watch", "--url", f"ws://127.0.0.1:{port}", cwd=tmp_path) as term:
        term.wait_for(lambda s: "waiting for positions" in s)
        publish(port, fix("before"))
        term.wait_for(lambda s: "before" in s)
        first.close()  # the relay is killed: the connection drops
        frame = term.wait_for(lambda s: "resubscribing" in s)
        assert re.search(r"\d\d:\d\d:\d\d: subscription lost", plain(frame))
        with relay_process(store, port):
            # Stored at once, most likely before watch is back: the resubscription's
            # since= brings it.
            publish(port, fix("after"))
            screen = plain(term.wait_for(lambda s: "after" in s))
            assert screen.startswith("2 devices (2 live, 0 stale) · 2 fixes")
            assert "resubscribing" not in screen
            term.type(b"\x03")
            assert term.wait() == 0


def test_an_unreachable_relay_is_one_error_line(tmp_path: Path) -> None:
    with terminal("watch", "--url", f"ws://127.0.0.1:{free_port()}", cwd=tmp_path) as term:
        assert term.wait() == 1
        after = plain(term.output.rsplit(b"\x1b[?1049l", 1)[-1]).strip()
        assert re.fullmatch(
            r"Error: cannot reach relay at ws://127\.0\.0\.1:\d+/subscribe: .+", after
        )


def test_not_a_terminal_says_what_to_use_instead(tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path / 'g.db'}").close()
    error = only_error(geotrack("watch", "--store", f"sqlite:///{tmp_path / 'g.db'}", cwd=tmp_path))
    assert "stdout is not one" in error and "--once" in error and "geotrack tail" in error


def test_once_prints_the_last_fix_of_each_device(tmp_path: Path, relay: int) -> None:
    publish(relay, fix("a", speed=10.0), fix("b"))
    result = geotrack("watch", "--once", "--store", f"sqlite:///{tmp_path / 'g.db'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 devices (2 live, 0 stale) · ")
    assert re.search(
        r"^a\s+\d\d:\d\d:\d\d\s+\d+s\s+52\.52000\s+13\.40500\s+36\s*$", result.stdout, re.M
    )
    assert "\x1b[" not in result.stdout


def test_a_store_that_does_not_exist_is_refused_and_not_created(tmp_path: Path) -> None:
    error = only_error(geotrack("watch", "--once", "--store", "sqlite:///nope.db", cwd=tmp_path))
    assert error.startswith("Error: no store at")
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--url", "http://127.0.0.1:8765"], "Error: --url: must start with ws:// or wss://"),
        (["--url", "ws://x", "--store", "sqlite:///x.db"], "Error: --url: follow a relay"),
        (["--stale", "soon"], "Error: --stale: expected a duration"),
        (["--stale", "0"], "Error: --stale: must be more than 0"),
        (["--once", "--url", "ws://127.0.0.1:1"], "Error: --once: prints what the store holds"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    assert only_error(geotrack("watch", *args, cwd=tmp_path)).startswith(says)


def test_help_has_an_example_and_says_the_defaults(tmp_path: Path) -> None:
    result = geotrack("watch", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "geotrack watch --url ws://" in text
    assert "(default 2m)" in text and "--once" in text and "Ctrl-C quits (exit code 0)" in text
    assert not re.search(r"<[a-zA-Z\[\]]+>", result.stdout)
