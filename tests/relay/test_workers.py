"""``geotrack serve --workers 2`` as a real process on free ports, hurt for real.

Which worker holds a connection is read from the log (``worker N: publisher PEER
connected``), so every test knows it has clients on both workers instead of hoping the
kernel spread them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from geotrack.errors import InvalidParameter
from geotrack.relay.config import RelayConfig
from geotrack.relay.workers import Supervisor, parse_workers, usable_cores
from geotrack.schema import ms_to_ts
from tests.factories import PUB, SUB, T0, stored, token_file
from tests.mongo_servers import fresh_database, nx27017_server
from tests.mqtt_broker import needs_mosquitto, running_broker, subscription
from tests.relay_helpers import Lines, collect, fix, within
from tests.test_faults import (
    CLIENT_SUBSCRIBER,
    COUNT,
    assert_exactly_the_simulation,
    child,
    cli_publish,
    finished,
    output,
    summary,
    wait_lines,
    wait_stored,
)

PORTS = re.compile(r"(\d+) workers \(pids ([\d, ]+)\) share port (\d+)")
PUBLISHER = re.compile(r"worker (\d+): publisher \S+ connected")
HTTP = re.compile(r"HTTP on https?://[^:]+:(\d+)")


@dataclass
class Workers:
    """A running ``serve --workers`` and what its log told."""

    proc: subprocess.Popen[str]
    log: Lines
    port: int
    http_port: int | None
    pids: list[int]
    scheme: str = "ws"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def worker_of(self, ws: ClientConnection, role: str) -> int:
        """The index of the worker holding ``ws`` (a publisher or subscriber), from the log."""
        host, port = ws.local_address[:2]
        peer = f"{host}:{port}"
        line = re.compile(rf"worker (\d+): {role} {re.escape(peer)} connected")
        lines = self.log.wait(lambda lines: any(line.search(x) for x in lines), 10)
        return next(int(m.group(1)) for x in lines if (m := line.search(x)))

    def pid_of(self, index: int) -> int:
        """Worker ``index``'s pid now (after restarts, the last one logged)."""
        restarted = re.compile(rf"worker {index} restarted \(pid (\d+)\)")
        pids = [int(m.group(1)) for x in self.log.lines if (m := restarted.search(x))]
        return pids[-1] if pids else self.pids[index]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.join()
        return code


@contextlib.contextmanager
def serve_workers(
    db: Path | str, *extra: str, count: int = 2, http: bool = True
) -> Iterator[Workers]:
    """``geotrack serve --workers COUNT --port 0`` (and ``--http-port 0``), once all listen.

    ``db``: a SQLite file, or a store URL.
    """
    args = [sys.executable, "-m", "geotrack", "serve", "--workers", str(count), "--port", "0"]
    store = db if isinstance(db, str) else f"sqlite:///{db}"
    args += ["--store", store, "--stats-interval", "0", *extra]
    if http:
        args += ["--http-port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    log = Lines(proc.stdout)
    try:
        lines = log.wait(lambda lines: any(PORTS.search(x) for x in lines), 30)
        m = next(m for x in lines if (m := PORTS.search(x)))
        assert int(m.group(1)) == count
        http_ports = {int(h.group(1)) for x in lines if (h := HTTP.search(x))}
        assert len(http_ports) == (1 if http else 0), lines  # one port for every worker
        pids = [int(p) for p in m.group(2).split(", ")]
        yield Workers(proc, log, int(m.group(3)), next(iter(http_ports), None), pids)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.join()
        proc.stdout.close()


async def on_both(workers: Workers, path: str, role: str, **kwargs: Any) -> list[ClientConnection]:
    """Connections to ``path`` until both workers hold one (at least two)."""
    conns: list[ClientConnection] = []
    held: set[int] = set()
    while len(held) < 2 or len(conns) < 2:
        assert len(conns) < 40, "the kernel never gave the second worker a connection"
        ws = await connect(workers.url + path, open_timeout=5, max_size=None, **kwargs)
        conns.append(ws)
        held.add(workers.worker_of(ws, role))
    return conns


async def publish_all(ws: ClientConnection, device: str, fixes: range) -> None:
    """Fixes ``fixes`` of ``device`` in single-position frames, pipelined, each acked as stored."""
    for i in fixes:
        await ws.send(json.dumps(fix(device, i)))
    for _ in fixes:
        ack = json.loads(await within(ws.recv()))
        assert ack["stored"] == 1, ack


async def metrics(workers: Workers) -> str:
    assert workers.http_port is not None
    url = f"http://127.0.0.1:{workers.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a /metrics text; fails when it is not there."""
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in metric for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no {name} {labels} in /metrics:\n{text}")


def keys(positions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(p["device"], p["ts"]) for p in positions]


@pytest.mark.timeout(90)
def test_every_subscriber_gets_every_position_once_whichever_worker_stored_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "geotrack.db"
    half = 100

    async def main(workers: Workers) -> None:
        subscribers = await on_both(workers, "/subscribe", "subscriber")
        publishers = await on_both(workers, "/publish", "publisher")
        devices = [f"car-{n}" for n in range(len(publishers))]
        rounds = [range(half), range(half, 2 * half)]
        sends = [publish_all(ws, d, rounds[0]) for ws, d in zip(publishers, devices, strict=True)]
        await within(asyncio.gather(*sends), 30)
        # A late subscriber replays what both workers stored and goes on live across the
        # seam, with nothing twice.
        late = await connect(workers.url + "/subscribe?since=sqlite:0", max_size=None)
        workers.worker_of(late, "subscriber")  # connected (replay and live under way)
        sends = [publish_all(ws, d, rounds[1]) for ws, d in zip(publishers, devices, strict=True)]
        await within(asyncio.gather(*sends), 30)
        expected = {(d, ms_to_ts(T0 + i * 1000)) for d in devices for i in range(2 * half)}
        for ws in [*subscribers, late]:
            got = keys(await collect(ws, len(expected), 20))
            assert len(got) == len(expected)
            assert set(got) == expected
            with pytest.raises(TimeoutError):  # and nothing more
                await asyncio.wait_for(ws.recv(), 0.3)
        await asyncio.sleep(1.2)  # a sibling's metrics are written once a second
        text = await metrics(workers)
        for index in ("0", "1"):
            labels = {"worker": index, "transport": "websocket", "result": "stored"}
            assert sample(text, "geotrack_positions_total", **labels) > 0
            assert sample(text, "geotrack_from_peers_total", worker=index) > 0
            handed = {"worker": index, "path": "handed"}
            assert sample(text, "geotrack_handover_positions_total", **handed) > 0
            assert sample(text, "geotrack_connections", worker=index, role="subscriber") >= 1
        assert sample(text, "geotrack_workers") == 2
        assert sample(text, "geotrack_worker_restarts_total") == 0
        for ws in [*subscribers, *publishers, late]:
            await ws.close()

    with serve_workers(db) as workers:
        asyncio.run(asyncio.wait_for(main(workers), 80))
        assert workers.stop() == 0
    assert "all 2 workers stopped" in workers.log.text
    assert len(stored(db)) == 2 * half * len({p.device for p in stored(db)})


@pytest.mark.timeout(120)
def test_kill_9_of_a_worker_loses_nothing_acked_and_it_is_restarted(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"
    subscribed = re.compile(r"worker (\d+): subscriber \S+ connected")
    with contextlib.ExitStack() as stack:
        workers = stack.enter_context(serve_workers(db))
        outs: list[Path] = []
        held: set[int] = set()
        while len(held) < 2:  # subscribers on both workers: the killed one holds some
            assert len(outs) < 12, "the kernel never gave the second worker a subscriber"
            outs.append(tmp_path / f"sub{len(outs)}")
            stack.enter_context(
                child([sys.executable, "-c", CLIENT_SUBSCRIBER, workers.url, "100"], outs[-1])
            )
            lines = workers.log.wait(
                lambda ls: len([x for x in ls if subscribed.search(x)]) == len(outs)
            )
            held = {int(m[1]) for x in lines if (m := subscribed.search(x))}
        out = tmp_path / "publish"
        with child(cli_publish(workers.url, speed=10.0), out) as pub:
            lines = workers.log.wait(lambda ls: any(PUBLISHER.search(x) for x in ls))
            index = next(int(m[1]) for x in lines if (m := PUBLISHER.search(x)))
            wait_stored(db, COUNT // 4, pub)
            os.kill(workers.pids[index], signal.SIGKILL)
            workers.log.wait(lambda ls: any(f"worker {index} restarted" in x for x in ls))
            err = finished(pub, out, timeout=90)
        assert err.count("reconnecting") == 1  # the kill cut the publisher's connection
        sent, stored_, duplicates, rejected = summary(err)
        assert (sent, stored_ + duplicates, rejected) == (COUNT, COUNT, 0)
        assert_exactly_the_simulation(stored(db, sort=True))
        keys = {(p.device, p.time) for p in stored(db)}
        for sub in outs:
            wait_lines(sub, lambda ls: len(ls) >= COUNT)
        time.sleep(1)  # anything sent twice would arrive now
        for sub in outs:  # each subscriber, on either worker: everything, once
            received = [tuple(line.split(" ")) for line in output(sub)]
            assert len(received) == len(set(received)) == COUNT
            assert set(received) == keys
        text = asyncio.run(metrics(workers))
        assert sample(text, "geotrack_worker_restarts_total") == 1
        assert workers.stop() == 0
    log = workers.log.text
    assert re.search(rf"worker {index} \(pid \d+\) died \(killed by signal 9\)", log), log
    assert "Traceback" not in log


def test_sigterm_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    with serve_workers(tmp_path / "geotrack.db", http=False) as workers:
        assert workers.stop() == 0
    log = workers.log.text
    for index in (0, 1):
        assert re.search(rf"worker {index}: stopped: 0 stored", log), log
    assert "all 2 workers stopped" in log
    for pid in workers.pids:
        with pytest.raises(ProcessLookupError):  # none left behind
            os.kill(pid, 0)


def test_a_port_in_use_is_one_error_line_and_no_worker_is_left(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = f"sqlite:///{tmp_path / 'geotrack.db'}"
        args = ["serve", "--workers", "2", "--port", str(port), "--store", store]
        result = subprocess.run(
            [sys.executable, "-m", "geotrack", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: port {port} on 127.0.0.1 is already in use (the relay)"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "error"),
    [("0", "must be within 1..256, got 0"), ("two", "expected a number or 'auto', got 'two'")],
)
def test_bad_worker_counts_are_refused(value: str, error: str) -> None:
    with pytest.raises(InvalidParameter, match=re.escape(f"--workers: {error}")):
        parse_workers(value)


def test_auto_is_the_usable_cores() -> None:
    assert parse_workers("auto") == usable_cores() >= 1
    assert parse_workers("3") == 3


def test_what_runs_once_runs_in_worker_0_and_connections_are_shared_out() -> None:
    config = RelayConfig(port=0, retain=3600.0, max_connections=5)
    supervisor = Supervisor(lambda: None, config, 2)
    first, second = supervisor.worker_config(0), supervisor.worker_config(1)
    assert first.reuse_port and second.reuse_port
    assert first.max_connections == second.max_connections == 3  # 5 in all, rounded up
    assert first.retain == 3600.0
    assert second.retain is None


@pytest.fixture
def tls(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, certfile, keyfile


@pytest.mark.timeout(60)
def test_auth_and_tls_hold_on_every_worker(
    tmp_path: Path, tls: tuple[trustme.CA, Path, Path]
) -> None:
    ca, certfile, keyfile = tls
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tokens = token_file(tmp_path / "tokens.toml")
    extra = ("--auth", str(tokens), "--certfile", str(certfile), "--keyfile", str(keyfile))

    async def main(workers: Workers) -> None:
        workers.scheme = "wss"
        subs = await on_both(workers, f"/subscribe?token={SUB}", "subscriber", ssl=context)
        pubs = await on_both(workers, f"/publish?token={PUB}", "publisher", ssl=context)
        for n, ws in enumerate(pubs):
            await publish_all(ws, f"car-{n}", range(5))
        for ws in subs:
            assert len(await collect(ws, 5 * len(pubs))) == 5 * len(pubs)
        for ws in [*subs, *pubs]:
            await ws.close()
        for _ in range(6):  # without a token: refused, whichever worker answers
            with pytest.raises(InvalidStatus) as refused:
                await connect(workers.url + "/subscribe", ssl=context, open_timeout=5)
            assert refused.value.response.status_code == 401

    with serve_workers(tmp_path / "geotrack.db", *extra) as workers:
        asyncio.run(asyncio.wait_for(main(workers), 50))
        assert workers.stop() == 0


def test_workers_stop_cleanly_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with serve_workers(tmp_path / "geotrack.db", http=False) as workers:
        workers.proc.send_signal(signal.SIGKILL)
        workers.proc.wait(timeout=10)
        stopped = re.compile(r"worker (\d+): stopped: 0 stored")
        workers.log.wait(lambda ls: len({m[1] for x in ls if (m := stopped.search(x))}) == 2)
    deadline = time.monotonic() + 20
    for pid in workers.pids:  # none left behind, and the port is free again
        while _running(pid):
            assert time.monotonic() < deadline, f"worker {pid} still runs"
            time.sleep(0.05)
    with socket.socket() as again:
        again.bind(("127.0.0.1", workers.port))
    assert not re.search(r"Traceback", workers.log.text)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(90)
def test_on_mongodb_every_subscriber_gets_every_position_once(
    request: pytest.FixtureRequest,
) -> None:
    # The followers wake on the change stream: no sibling wake-up is needed, nor used.
    server = nx27017_server(request)
    database = fresh_database()
    request.addfinalizer(lambda: server.drop_database(database))

    async def main(workers: Workers) -> None:
        subscribers = await on_both(workers, "/subscribe", "subscriber")
        publishers = await on_both(workers, "/publish", "publisher")
        devices = [f"car-{n}" for n in range(len(publishers))]
        sends = [publish_all(ws, d, range(50)) for ws, d in zip(publishers, devices, strict=True)]
        await within(asyncio.gather(*sends), 30)
        expected = {(d, ms_to_ts(T0 + i * 1000)) for d in devices for i in range(50)}
        for ws in subscribers:
            got = keys(await collect(ws, len(expected), 20))
            assert len(got) == len(expected)
            assert set(got) == expected
            with pytest.raises(TimeoutError):  # and nothing more
                await asyncio.wait_for(ws.recv(), 0.5)
        for ws in [*subscribers, *publishers]:
            await ws.close()

    with serve_workers(server.url(database), http=False) as workers:
        asyncio.run(asyncio.wait_for(main(workers), 80))
        assert workers.stop() == 0


@pytest.mark.timeout(60)
def test_fences_run_once_on_every_workers_positions(tmp_path: Path) -> None:
    # The fence engine runs in worker 0 only, fed by its own commits and, through the
    # change feed, by its sibling's: the fixes worker 1 stored are evaluated too.
    fences = tmp_path / "fences.geojson"
    circle = {"name": "depot", "radius": 500}
    feature = {"type": "Feature", "properties": circle, "geometry": {}}
    feature["geometry"] = {"type": "Point", "coordinates": [13.4, 52.5]}
    fences.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    db = tmp_path / "geotrack.db"

    async def main(workers: Workers) -> list[str]:
        publishers = await on_both(workers, "/publish", "publisher")
        devices = [f"van-{n}" for n in range(len(publishers))]
        for ws, device in zip(publishers, devices, strict=True):
            for i, (lat, lon) in enumerate([(52.5, 13.4), (52.6, 13.6)]):  # in, then out
                await ws.send(json.dumps(fix(device, i, lat=lat, lon=lon)))
                assert json.loads(await within(ws.recv()))["stored"] == 1
        for ws in publishers:
            await ws.close()
        return devices

    with serve_workers(db, "--fences", str(fences), http=False) as workers:
        devices = asyncio.run(asyncio.wait_for(main(workers), 40))
        deadline = time.monotonic() + 20
        while len(events := fence_events(db)) < 2 * len(devices):
            assert time.monotonic() < deadline, events
            time.sleep(0.1)
        assert workers.stop() == 0
    assert sorted(fence_events(db)) == sorted(
        (d, kind) for d in devices for kind in ("enter", "exit")
    )


def fence_events(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return [(d, t) for d, t in conn.execute("SELECT device, type FROM events")]


@needs_mosquitto
@pytest.mark.timeout(60)
def test_mqtt_publish_forwards_what_either_worker_stored_once(tmp_path: Path) -> None:
    # One broker session (worker 0's) forwards its own positions and its sibling's.
    with running_broker(tmp_path / "broker") as broker:
        extra = ("--mqtt", broker.url(), "--mqtt-publish", "geotrack/{device}")
        with serve_workers(tmp_path / "geotrack.db", *extra, http=False) as workers:

            async def main() -> list[str]:
                publishers = await on_both(workers, "/publish", "publisher")
                devices = [f"car-{n}" for n in range(len(publishers))]
                for ws, device in zip(publishers, devices, strict=True):
                    await publish_all(ws, device, range(3))
                for ws in publishers:
                    await ws.close()
                return devices

            count = 0
            with subscription(broker, "geotrack/#", 100) as seen:
                devices = asyncio.run(asyncio.wait_for(main(), 40))
                count = 3 * len(devices)
                got = seen.wait(lambda ls: len(forwarded(ls)) >= count, 20)
                time.sleep(1)  # a position forwarded twice would arrive now
                got = seen.wait(lambda ls: True)
            assert workers.stop() == 0
    topics = sorted(topic for topic, _ in forwarded(got))
    assert topics == sorted(f"geotrack/{d}" for d in devices for _ in range(3))


def forwarded(lines: list[str]) -> list[tuple[str, str]]:
    """(topic, payload) of the geotrack/ messages ``mosquitto_sub -v`` printed."""
    pairs = (line.partition(" ") for line in lines)
    return [(topic, payload) for topic, _, payload in pairs if topic.startswith("geotrack/")]
