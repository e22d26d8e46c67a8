"""A real MQTT broker for tests: Debian's mosquitto on a free loopback port, and its clients.

:func:`running_broker` writes a mosquitto.conf (optionally with a TLS listener made from
trustme certificates, a password file made by ``mosquitto_passwd`` and on-disk
persistence), starts ``mosquitto -c``, waits until it listens and stops it afterwards.
:func:`mqtt_publish` and :class:`Subscription` drive ``mosquitto_pub``/``mosquitto_sub``.
Tests using them skip (with the reason) only when the binaries are missing; CI installs
them (.ci/run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from tests.relay_helpers import Lines

# Debian installs the broker in /usr/sbin, which a non-root PATH may leave out.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
MOSQUITTO = shutil.which("mosquitto", path=_SEARCH)
MOSQUITTO_PUB = shutil.which("mosquitto_pub", path=_SEARCH)
MOSQUITTO_SUB = shutil.which("mosquitto_sub", path=_SEARCH)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd", path=_SEARCH)
_STDBUF = shutil.which("stdbuf")
_LINE_BUFFERED = [_STDBUF, "-oL"] if _STDBUF else []

needs_mosquitto = pytest.mark.skipif(
    None in (MOSQUITTO, MOSQUITTO_PUB, MOSQUITTO_SUB, MOSQUITTO_PASSWD),
    reason="mosquitto and mosquitto-clients are not installed "
    "(apt-get install mosquitto mosquitto-clients; .ci/run does it)",
)


@dataclass
class MosquittoBroker:
    """One mosquitto process (restartable on the same port and persistence directory)."""

    directory: Path
    port: int
    tls: bool = False
    user: str | None = None
    password: str | None = None
    persistence: bool = False
    cafile: Path | None = None
    proc: subprocess.Popen[str] | None = None
    lines: Lines | None = None
    logs: list[str] = field(default_factory=list)

    def url(self, topic_filter: str = "", *, credentials: bool = True) -> str:
        """The ``--mqtt`` URL of this broker (with its user and password)."""
        auth = f"{self.user}:{self.password}@" if credentials and self.user else ""
        host = "localhost" if self.tls else "127.0.0.1"
        path = f"/{topic_filter}" if topic_filter else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{host}:{self.port}{path}"

    def client_args(self) -> list[str]:
        """What mosquitto_pub/sub need to reach this broker."""
        args = ["-h", "localhost" if self.tls else "127.0.0.1", "-p", str(self.port)]
        if self.user:
            args += ["-u", self.user, "-P", self.password or ""]
        if self.cafile is not None:
            args += ["--cafile", str(self.cafile)]
        return args

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.lines = Lines(self.proc.stdout)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.lines.join()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise TimeoutError(f"mosquitto does not listen on {self.port}: {self.lines.text}")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), then wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.lines is not None:
            self.logs += self.lines.join()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_broker(
    directory: Path,
    *,
    tls: bool = False,
    user: str | None = None,
    password: str | None = None,
    persistence: bool = False,
) -> Iterator[MosquittoBroker]:
    """A started mosquitto on 127.0.0.1 and a free port, stopped afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    broker = MosquittoBroker(directory, _free_port(), tls, user, password, persistence)
    conf = [
        f"listener {broker.port} 127.0.0.1",
        # Run as root (CI), mosquitto would switch to its own user, who cannot read here.
        "user root",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        # Enough room for what tests queue while the relay is down (default 1000).
        "max_queued_messages 100000",
    ]
    if user is not None:
        assert MOSQUITTO_PASSWD is not None
        passwords = directory / "passwords"
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", "-c", str(passwords), user, password or ""],
            check=True,
            capture_output=True,
        )
        conf += ["allow_anonymous false", f"password_file {passwords}"]
    else:
        conf += ["allow_anonymous true"]
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        broker.cafile = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(broker.cafile))
        cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
        cert.private_key_pem.write_to_path(str(directory / "key.pem"))
        conf += [f"certfile {directory / 'cert.pem'}", f"keyfile {directory / 'key.pem'}"]
    if persistence:
        conf += ["persistence true", f"persistence_location {directory}/"]
    else:
        conf += ["persistence false"]
    (directory / "mosquitto.conf").write_text("\n".join(conf) + "\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def mqtt_publish(
    broker: MosquittoBroker,
    topic: str,
    payload: str,
    *,
    qos: int = 1,
    retain: bool = False,
    client_id: str | None = None,
) -> None:
    """Publish one message with ``mosquitto_pub`` (raises if it fails)."""
    assert MOSQUITTO_PUB is not None
    args = [MOSQUITTO_PUB, *broker.client_args(), "-t", topic, "-m", payload, "-q", str(qos)]
    if retain:
        args.append("-r")
    if client_id:
        args += ["-i", client_id]
    subprocess.run(args, check=True, capture_output=True, timeout=10)


def mqtt_publish_lines(broker: MosquittoBroker, topic: str, payloads: list[str]) -> None:
    """Publish many messages in one ``mosquitto_pub -l`` run (one per line, QoS 1)."""
    assert MOSQUITTO_PUB is not None
    args = [MOSQUITTO_PUB, *broker.client_args(), "-t", topic, "-l", "-q", "1"]
    subprocess.run(
        args, input="\n".join(payloads) + "\n", text=True, check=True, capture_output=True,
        timeout=30,
    )  # fmt: skip


def _sub_args(topic: str, count: int, session: str | None) -> list[str]:
    args = ["-t", topic, "-v", "-d", "-C", str(count)]
    if session is not None:  # a persistent QoS 1 session: the broker queues meanwhile
        args += ["-c", "-i", session, "-q", "1"]
    return args


@contextlib.contextmanager
def subscription(
    broker: MosquittoBroker, topic: str, count: int, *, session: str | None = None
) -> Iterator[Lines]:
    """``mosquitto_sub -v`` on ``topic`` until ``count`` messages, subscribed on return.

    Its lines come as they arrive: ``TOPIC PAYLOAD``, among debug lines (``-d`` tells when
    the broker confirmed the subscription) that start with ``Client``. With ``session``
    (a client id) it subscribes at QoS 1 in a persistent session, which the broker keeps
    (and queues for) after this subscriber is gone.
    """
    assert MOSQUITTO_SUB is not None
    args = _sub_args(topic, count, session)
    proc = subprocess.Popen(
        # Line-buffered (stdbuf): a pipe would hold the lines until mosquitto_sub exits.
        [*_LINE_BUFFERED, MOSQUITTO_SUB, *broker.client_args(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    try:
        # (A resumed session may get all its queued messages, and exit, before the SUBACK.)
        lines.wait(
            lambda got: any("SUBACK" in line for line in got) or lines.closed,
            timeout=10,
        )
        yield lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
