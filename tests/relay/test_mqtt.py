"""MQTT ingestion against a real broker (mosquitto) and real clients (mosquitto_pub/sub).

Each test starts mosquitto on a free loopback port with a generated configuration
(tests/mqtt_broker.py) and a relay, in-process through :func:`geotrack.relay.runner.serve`
or as a ``geotrack serve`` process for the crash tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from websockets.asyncio.client import connect

from geotrack.errors import InvalidParameter, StoreError
from geotrack.relay import RelayConfig
from geotrack.relay.runner import serve
from geotrack.schema import Position
from geotrack.store import open_store
from geotrack.store.sqlite import SQLiteStore
from tests.cli_helpers import geotrack, only_error
from tests.conftest import free_port
from tests.factories import T0_S, stored
from tests.mqtt_broker import (
    MosquittoBroker,
    mqtt_publish,
    mqtt_publish_lines,
    needs_mosquitto,
    running_broker,
    subscription,
)
from tests.relay_helpers import Lines, arun, collect, fix, relay_process, roundtrip, within


def owntracks(i: int, **extra: Any) -> str:
    """The ``i``-th OwnTracks location message (one second after the one before)."""
    message = {"_type": "location", "lat": 52.5 + i * 1e-4, "lon": 13.4, "tst": T0_S + i}
    return json.dumps(message | {"tid": "ph"} | extra)


@dataclass
class Served:
    ws: str
    http: str
    session: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.http + path) as response:
            return response.status, await response.text()

    async def metric(self, line_start: str) -> float:
        _, text = await self.get("/metrics")
        values = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line_start)]
        assert len(values) == 1, f"{line_start!r} in:\n{text}"
        return values[0]

    async def wait_metric(self, line_start: str, value: float, seconds: float = 15) -> None:
        for _ in range(int(seconds / 0.05)):
            if await self.metric(line_start) >= value:
                break
            await asyncio.sleep(0.05)
        assert await self.metric(line_start) == value

    async def wait_health(self, text: str, seconds: float = 15) -> str:
        deadline = time.monotonic() + seconds
        while True:
            _, body = await self.get("/healthz")
            if text in body or time.monotonic() > deadline:
                assert text in body, body
                return body
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(
    store: Any, *mqtt: str, until: str = ": connected", **config: Any
) -> AsyncIterator[Served]:
    """``geotrack serve`` in-process (runner.serve) with --mqtt and an HTTP listener.

    It is handed over once /healthz says ``until`` (by default: connected).
    """
    port, http_port = free_port(), free_port()
    settings = RelayConfig(
        port=port, http_port=http_port, stats_interval=0, mqtt=tuple(mqtt), **config
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(store, settings, stop))
    async with aiohttp.ClientSession() as session:
        served = Served(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", session)
        try:
            await within(_until_up(served, task), 15)
            await served.wait_health(until)
            yield served
        finally:
            stop.set()
            await within(task, 30)


async def _until_up(served: Served, task: asyncio.Task[Any]) -> None:
    while True:
        if task.done():
            task.result()
        with contextlib.suppress(aiohttp.ClientError):
            await served.get("/healthz")
            return
        await asyncio.sleep(0.05)


async def wait_stored(db: Path, count: int, seconds: float = 20) -> list[Position]:
    deadline = time.monotonic() + seconds
    while True:
        positions = await asyncio.to_thread(stored, db)
        if len(positions) >= count or time.monotonic() > deadline:
            assert len(positions) == count, f"{len(positions)} stored, expected {count}"
            return positions
        await asyncio.sleep(0.05)


def wait_stored_sync(db: Path, count: int, seconds: float = 30) -> int:
    """How many positions the SQLite file holds, once at least ``count`` (or time is up).

    Counted with one cheap query, polled often: the crash tests stop the relay as soon
    as a stream is under way.
    """
    deadline = time.monotonic() + seconds
    while True:
        n = 0
        if db.exists():
            with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
                n = conn.execute("SELECT count(*) FROM positions").fetchone()[0]
        if n >= count or time.monotonic() > deadline:
            return int(n)
        time.sleep(0.01)


# -- ingestion ---------------------------------------------------------------------------


@needs_mosquitto
def test_owntracks_messages_are_stored_delivered_and_counted(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def main() -> None:
        with running_broker(tmp_path / "broker") as broker, open_store(f"sqlite:///{db}") as store:
            # Retained before the relay subscribes: the broker replays it, stale.
            mqtt_publish(broker, "owntracks/bob/tablet", owntracks(0), retain=True)
            async with serving(store, broker.url()) as served:
                async with connect(served.ws + "/subscribe", open_timeout=5) as sub:
                    await asyncio.sleep(0.1)
                    mqtt_publish(broker, "owntracks/alice/phone", owntracks(1, vel=36, batt=80))
                    mqtt_publish(
                        broker,
                        "owntracks/alice/phone/event",
                        '{"_type": "transition", "event": "enter", "tst": 1}',
                    )
                    mqtt_publish(broker, "owntracks/alice/phone", '{"_type": "encrypted"}')
                    mqtt_publish(broker, "owntracks/alice/phone", "not json")
                    [got] = await collect(sub, 1)
                assert got["device"] == "alice:phone"
                assert got["speed"] == 10.0 and got["attrs"] == {"tid": "ph", "batt": 80}
                rejected = 'geotrack_positions_total{transport="mqtt",result="rejected"}'
                await served.wait_metric(rejected, 2)
                counted = 'geotrack_mqtt_messages_total{broker="%s",outcome="%s"}'
                for outcome, count in [
                    ("positions", 1),
                    ("ignored", 1),
                    ("retained", 1),
                    ("rejected", 2),
                ]:
                    label = f"{broker.url()}/owntracks/#"
                    assert await served.metric(counted % (label, outcome)) == count
                stored_ = 'geotrack_positions_total{transport="mqtt",result="stored"}'
                assert await served.metric(stored_) == 1
                assert await served.metric("geotrack_mqtt_connected{") == 1
                status, body = await served.get("/healthz")
                assert (status, body) == (200, f"ok; mqtt {broker.url()}/owntracks/#: connected\n")
        [position] = stored(db)
        assert position.device == "alice:phone" and position.ts.startswith("2025-11-25T12:00:01")

    arun(main())


@needs_mosquitto
def test_retained_messages_are_stored_with_the_option(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def main() -> None:
        with running_broker(tmp_path / "broker") as broker, open_store(f"sqlite:///{db}") as store:
            mqtt_publish(broker, "owntracks/bob/tablet", owntracks(0), retain=True)
            async with serving(store, broker.url(), mqtt_retained=True):
                await wait_stored(db, 1)

    arun(main())


@needs_mosquitto
def test_geotrack_json_is_read_on_its_own_filter(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def main() -> None:
        with running_broker(tmp_path / "broker") as broker, open_store(f"sqlite:///{db}") as store:
            async with serving(
                store, broker.url("owntracks/+/+"), mqtt_json_filter="geotrack/in/#"
            ) as served:
                frame = [fix("bus-1", 0), fix("bus-1", 1), fix("bus-1", 2, lat=95)]
                mqtt_publish(broker, "geotrack/in/bus-1", json.dumps(frame))
                mqtt_publish(broker, "geotrack/in/bus-2", json.dumps(fix("bus-2", 0)))
                mqtt_publish(broker, "owntracks/a/b", owntracks(0))
                positions = await wait_stored(db, 4)
                rejected = 'geotrack_positions_total{transport="mqtt",result="rejected"}'
                assert await served.metric(rejected) == 1
        assert sorted(p.device for p in positions) == ["a:b", "bus-1", "bus-1", "bus-2"]

    arun(main())


@needs_mosquitto
def test_stored_positions_are_forwarded_to_the_broker(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def main() -> None:
        with running_broker(tmp_path / "broker") as broker, open_store(f"sqlite:///{db}") as store:
            async with serving(store, broker.url(), mqtt_publish="geotrack/{device}") as served:
                with subscription(broker, "geotrack/#", 2) as seen:
                    # From a WebSocket publisher, and from MQTT itself.
                    async with connect(served.ws + "/publish", open_timeout=5) as pub:
                        ack = await roundtrip(pub, [fix("car-1", 0), fix("car-1", 0)])
                        assert (ack["stored"], ack["duplicates"]) == (1, 1)
                    mqtt_publish(broker, "owntracks/alice/phone", owntracks(3))
                    lines = await asyncio.to_thread(
                        seen.wait, lambda got: len(_messages(got)) >= 2, 15
                    )
                queued = 'geotrack_mqtt_forwarded_total{broker="%s/owntracks/#",result="queued"}'
                assert await served.metric(queued % broker.url()) == 2
        messages = _messages(lines)
        assert sorted(topic for topic, _ in messages) == ["geotrack/alice:phone", "geotrack/car-1"]
        for topic, payload in messages:
            assert json.loads(payload)["device"] == topic.removeprefix("geotrack/")

    arun(main())


@needs_mosquitto
def test_positions_stored_while_the_broker_is_down_are_forwarded_after(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def main() -> None:
        with (
            running_broker(tmp_path / "broker", persistence=True) as broker,
            open_store(f"sqlite:///{db}") as store,
        ):
            # A watcher's persistent session: the broker queues for it while it is away.
            with subscription(broker, "geotrack/#", 100, session="watcher"):
                pass
            async with serving(store, broker.url(), mqtt_publish="geotrack/{device}") as served:
                broker.stop()
                await served.wait_health("disconnected")
                async with connect(served.ws + "/publish", open_timeout=5) as pub:
                    ack = await roundtrip(pub, [fix("car-1", i) for i in range(3)])
                    assert ack["stored"] == 3
                broker.start()
                await served.wait_health(": connected")
                with subscription(broker, "geotrack/#", 3, session="watcher") as seen:
                    lines = await asyncio.to_thread(
                        seen.wait, lambda got: len(_messages(got)) >= 3, 15
                    )
        ts = sorted(json.loads(payload)["ts"] for _, payload in _messages(lines))
        assert ts == [f"2025-11-25T12:00:0{i}.000Z" for i in range(3)]

    arun(main(), timeout=90)


def _messages(lines: Sequence[str]) -> list[tuple[str, str]]:
    return [
        (topic, payload)
        for topic, _, payload in (line.partition(" ") for line in lines)
        if topic.startswith("geotrack/")
    ]


@needs_mosquitto
def test_tls_and_a_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "s.db"
    secret = "pa:ss@w0rd"

    async def main() -> None:
        with (
            running_broker(tmp_path / "broker", tls=True, user="geo", password=secret) as broker,
            open_store(f"sqlite:///{db}") as store,
        ):
            assert broker.cafile is not None
            url = broker.url().replace(secret, "pa%3Ass%40w0rd")
            async with serving(store, url, cafile=broker.cafile):
                mqtt_publish(broker, "owntracks/alice/phone", owntracks(0))
                await wait_stored(db, 1)
            # The wrong password: refused, said so in /healthz, and retried.
            wrong = f"mqtts://geo:wrong-{secret}@localhost:{broker.port}"
            async with serving(store, wrong, cafile=broker.cafile, until="refused") as served:
                _, body = await served.get("/healthz")
                assert "disconnected (refused: Not authorized)" in body
            # Without the CA: the system's store does not trust trustme's.
            async with serving(store, url, until="certificate not trusted"):
                pass

    with caplog.at_level("DEBUG"):
        arun(main(), timeout=120)
    assert "pa:ss" not in caplog.text and "w0rd" not in caplog.text
    assert "refused the connection" in caplog.text


def test_settings_are_checked_where_they_are_made(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="--mqtt-publish: give --mqtt"):
        RelayConfig(mqtt_publish="geotrack/{device}")
    with pytest.raises(InvalidParameter, match="--mqtt-json-filter: '#'"):
        RelayConfig(mqtt=("mqtt://h",), mqtt_json_filter="a/#/b")
    with pytest.raises(InvalidParameter, match="--cafile: cannot load"):
        RelayConfig(mqtt=("mqtts://h",), cafile=tmp_path / "missing.pem")
    assert RelayConfig(mqtt=("mqtt://h",)).mqtt_tls is None
    assert "hunter2" not in repr(RelayConfig(mqtt=("mqtt://geo:hunter2@h",)))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--mqtt", "ws://geo:hunter2@broker"],
            "Error: --mqtt: expected mqtt://HOST[:PORT][/FILTER] or mqtts://..., "
            "got 'ws://…@broker'",
        ),
        (["--mqtt-publish", "x/{device}"], "Error: --mqtt-publish: give --mqtt BROKER_URL too"),
        (
            ["--mqtt", "mqtt://h", "--mqtt-publish", "geotrack/all"],
            "Error: --mqtt-publish: the template has no {device}: 'geotrack/all'",
        ),
    ],
)
def test_the_command_refuses_bad_settings_in_one_line(
    tmp_path: Path, args: list[str], error: str
) -> None:
    result = geotrack(
        "serve", "--port", "0", "--store", f"sqlite:///{tmp_path / 's.db'}", *args, cwd=tmp_path
    )
    assert only_error(result) == error
    assert "hunter2" not in result.stdout + result.stderr


# -- faults ------------------------------------------------------------------------------


@needs_mosquitto
def test_the_broker_restarted_mid_stream_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def main() -> None:
        with (
            running_broker(tmp_path / "broker", persistence=True) as broker,
            open_store(f"sqlite:///{db}") as store,
        ):
            async with serving(store, broker.url()) as served:
                topic = "owntracks/alice/phone"
                await asyncio.to_thread(
                    mqtt_publish_lines, broker, topic, [owntracks(i) for i in range(100)]
                )
                broker.stop()
                await served.wait_health("disconnected")
                broker.start()
                # Published before the relay is back: the broker keeps them for its session.
                await asyncio.to_thread(
                    mqtt_publish_lines, broker, topic, [owntracks(i) for i in range(100, 200)]
                )
                await served.wait_health(": connected")
                await asyncio.to_thread(
                    mqtt_publish_lines, broker, topic, [owntracks(i) for i in range(200, 300)]
                )
                positions = await wait_stored(db, 300)
        assert sorted(p.ts for p in positions) == sorted({p.ts for p in positions})

    arun(main(), timeout=120)


class FailingStore(SQLiteStore):
    """A SQLite store whose writes fail while ``failing`` is set."""

    failing = threading.Event()
    failures: ClassVar[list[list[Position]]] = []

    def write(self, positions: Sequence[Position], origin: str | None = None) -> list[bool]:
        if self.failing.is_set():
            self.failures.append(list(positions))
            raise StoreError("disk on fire")
        return super().write(positions, origin)


@needs_mosquitto
def test_a_failed_commit_is_not_acked_and_comes_again(tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    async def main() -> None:
        store = FailingStore(str(db))
        try:
            with running_broker(tmp_path / "broker") as broker:
                async with serving(store, broker.url()) as served:
                    store.failing.set()
                    mqtt_publish(broker, "owntracks/alice/phone", owntracks(0))
                    # Not acked: the relay reconnects, the broker sends it again, and again.
                    for _ in range(300):
                        if len(store.failures) >= 3:
                            break
                        await asyncio.sleep(0.05)
                    assert len(store.failures) >= 3
                    assert all(
                        [p.ts for p in batch] == ["2025-11-25T12:00:00.000Z"]
                        for batch in store.failures
                    )
                    store.failing.clear()
                    # ...and once the store is back the message is stored, then acked.
                    await wait_stored(db, 1)
                    await served.wait_health(": connected")
                    mqtt_publish(broker, "owntracks/alice/phone", owntracks(1))
                    await wait_stored(db, 2)
        finally:
            store.failing.clear()
            store.close()

    arun(main(), timeout=90)


#: Messages streamed while the relay is stopped: many more than it stores before the stop.
TOTAL = 6000


def _relay(db: Path, port: int, broker: MosquittoBroker, *extra: str) -> Any:
    return relay_process(f"sqlite:///{db}", port, "--mqtt", broker.url(), *extra)


def _wait_line(lines: Lines, text: str) -> None:
    lines.wait(lambda got: any(text in line for line in got), timeout=20)


@needs_mosquitto
@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda proc: proc.kill(), id="SIGKILL"),
        pytest.param(lambda proc: proc.send_signal(signal.SIGTERM), id="SIGTERM"),
    ],
)
def test_a_relay_stopped_mid_stream_stores_every_message_once(
    tmp_path: Path, stop: Callable[[subprocess.Popen[str]], None]
) -> None:
    """Messages flow, the relay dies (or drains); more queue on the broker meanwhile.

    After the restart, under the same default client id, every message is stored: the
    broker sent again what was not acked, and the store dropped what it already had.
    """
    db = tmp_path / "s.db"
    port = free_port()
    topic = "owntracks/alice/phone"
    with running_broker(tmp_path / "broker", persistence=True) as broker:
        with _relay(db, port, broker) as proc:
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            _wait_line(lines, "connected as")
            feeder = threading.Thread(
                target=mqtt_publish_lines,
                args=(broker, topic, [owntracks(i) for i in range(TOTAL)]),
            )
            feeder.start()
            assert wait_stored_sync(db, 200) >= 200
            stop(proc)
            proc.wait(timeout=20)
            feeder.join(30)
            first = len(stored(db))
            output = lines.join()
        assert first < TOTAL, "the relay stopped after the stream ended: nothing was tested"
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, "\n".join(output)
        # Queued on the broker while no relay runs.
        mqtt_publish_lines(broker, topic, [owntracks(i) for i in range(TOTAL, TOTAL + 500)])
        with _relay(db, port, broker) as proc:
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            _wait_line(lines, "session resumed")
            assert wait_stored_sync(db, TOTAL + 500) == TOTAL + 500
    positions = stored(db)
    assert len(positions) == TOTAL + 500
    assert sorted(p.ts for p in positions) == sorted({p.ts for p in positions})
