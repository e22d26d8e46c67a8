"""Webhooks: stored events POSTed to a real aiohttp server on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from websockets.asyncio.client import connect

from geotrack.relay import RelayConfig, serve
from geotrack.relay.metrics import exposition
from geotrack.relay.webhook_target import idempotency_key
from geotrack.relay.webhooks import Webhooks, webhook_families
from geotrack.schema import Event, ms_to_ts
from geotrack.store import Store, open_store
from tests.cli_helpers import env, geotrack, only_error
from tests.conftest import free_port
from tests.factories import T0_S
from tests.relay.test_events import IN, OUT, at, fences_file
from tests.relay_helpers import arun, roundtrip, wait_listening


@dataclass
class Receiver:
    """A webhook endpoint: answers 503 to the first ``fail_first`` requests, and to every
    request after ``accept`` accepted ones (None: no limit), 204 otherwise."""

    fail_first: int = 0
    accept: int | None = None
    refuse: set[str] = field(default_factory=set)  # devices whose events get 503
    attempts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    accepted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        key = request.headers.get("Idempotency-Key", "")
        self.attempts.append((key, body))
        self.headers.append(dict(request.headers))
        if (
            len(self.attempts) <= self.fail_first
            or (self.accept is not None and len(self.accepted) >= self.accept)
            or body["device"] in self.refuse
        ):
            return web.Response(status=503, text="not now")
        self.accepted.append((key, body))
        return web.Response(status=204)

    def keys(self) -> list[str]:
        return [key for key, _ in self.accepted]


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """The receiver served on 127.0.0.1 and a free port (https with ``tls``); its URL."""
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{port}/hook"
    finally:
        await runner.cleanup()


async def until(predicate: Any, seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def event(i: int, kind: str = "enter", device: str = "van") -> Event:
    return Event(kind, device, "depot", ms_to_ts((T0_S + i) * 1000), 52.5, 13.4)  # type: ignore[arg-type]


def write(store: Store, *events: Event) -> None:
    assert store.write_events(events) == [True] * len(events)


def test_every_event_delivered_in_order_retried_with_a_stable_key(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=3)

    async def main() -> None:
        with open_store(f"sqlite:///{tmp_path / 'db'}") as store:
            write(store, event(0))  # before the first start: not delivered
            async with receiving(receiver) as url:
                hooks = Webhooks(store, [url], tmp_path / "state", retry_min=0.01, retry_max=0.05)
                await hooks.start()
                try:
                    events = [event(1), event(2, "exit"), event(3), event(4, "exit", "bus")]
                    write(store, *events[:2])
                    write(store, *events[2:])
                    await until(lambda: len(receiver.accepted) == 4)
                    await asyncio.sleep(0.2)
                    metrics = exposition(webhook_families(hooks))
                finally:
                    await hooks.stop()
        # Each once, each device's in store order (devices go side by side).
        assert sorted(receiver.keys()) == sorted(idempotency_key(e) for e in events)
        for device in ("van", "bus"):
            assert [body for _, body in receiver.accepted if body["device"] == device] == [
                msgspec.to_builtins(e) for e in events if e.device == device
            ]
        # Every attempt, failed or not, carries the key of the event it carries.
        assert len(receiver.attempts) == 7
        for key, body in receiver.attempts:
            assert key == idempotency_key(msgspec.convert(body, Event))
        assert all(h["Content-Type"] == "application/json" for h in receiver.headers)
        display = url
        assert f'geotrack_webhook_deliveries_total{{webhook="{display}",result="delivered"}} 4' in (
            metrics
        )
        assert f'geotrack_webhook_deliveries_total{{webhook="{display}",result="failed"}} 3' in (
            metrics
        )
        assert f'geotrack_webhook_failing{{webhook="{display}"}} 0' in metrics

    arun(main())


def test_failures_logged_rate_limited_without_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver(fail_first=20)

    async def main() -> None:
        with open_store(f"sqlite:///{tmp_path / 'db'}") as store:
            async with receiving(receiver) as url:
                secret_url = url.replace("http://", "http://hook:s3cret@") + "?token=t0ken"
                hooks = Webhooks(store, [secret_url], tmp_path / "state", retry_min=0.005)
                hooks.retry_max = 0.01
                await hooks.start()
                try:
                    write(store, event(1))
                    await until(lambda: len(receiver.accepted) == 1)
                    failing_metrics = hooks.hooks[0].failed
                finally:
                    await hooks.stop()
        assert failing_metrics == 20
        # The credentials went to the server (as basic auth), never to the log.
        assert receiver.headers[0]["Authorization"].startswith("Basic ")
        text = caplog.text
        assert "s3cret" not in text and "t0ken" not in text
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # 20 failures within a minute: one line
        assert warnings[0].startswith(f"webhook {url}: HTTP 503")
        assert any(
            "delivering again after 20 failed attempts" in r.getMessage() for r in (caplog.records)
        )

    with caplog.at_level(logging.INFO, logger="geotrack.relay"):
        arun(main())


async def _relay(store: Store, config: RelayConfig) -> tuple[asyncio.Event, asyncio.Task[Any]]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(store, config, stop))
    await asyncio.get_running_loop().run_in_executor(None, wait_listening, config.port)
    return stop, task


def test_relay_restart_mid_backlog_loses_nothing(tmp_path: Path) -> None:
    """Positions cross a fence; the webhook takes 2 events, then fails; the relay stops;
    an event is stored while it is down; after the restart every event is delivered."""
    receiver = Receiver(accept=2)

    async def main() -> None:
        with open_store(f"sqlite:///{tmp_path / 'db'}") as store:
            async with receiving(receiver) as url:

                def config() -> RelayConfig:
                    return RelayConfig(
                        port=free_port(),
                        stats_interval=0,
                        fences=fences_file(tmp_path),
                        webhooks=(url,),
                        webhook_state=tmp_path / "state",
                    )

                first = config()
                stop, task = await _relay(store, first)
                fixes = [
                    at(d, s, lon)
                    for d in ("a", "b", "c")
                    for s, lon in enumerate((OUT, IN, OUT, IN))
                ]
                async with connect(f"ws://127.0.0.1:{first.port}/publish") as pub:
                    ack = await roundtrip(pub, fixes)
                    assert ack["stored"] == len(fixes)
                await until(lambda: len(list(store.query_events())) == 9)
                await until(lambda: len(receiver.attempts) > 3)
                stop.set()
                await task
                assert len(receiver.accepted) == 2
                write(store, event(100, device="d"))  # stored by another relay meanwhile
                receiver.accept = None
                stop, task = await _relay(store, config())
                try:
                    stored = [idempotency_key(e) for e in store.query_events()]
                    assert len(stored) == 10
                    await until(lambda: set(receiver.keys()) >= set(stored))
                finally:
                    stop.set()
                    await task
        # At least once; and the events after the last saved cursor came in store order.
        assert set(receiver.keys()) == set(stored)
        state = list((tmp_path / "state").glob("*.json"))
        assert len(state) == 1 and json.loads(state[0].read_text())["webhook"] == url

    arun(main(), 90)


def test_a_bad_webhook_url_is_one_error_line(tmp_path: Path) -> None:
    result = geotrack("serve", "--port", "0", "--webhook", "ftp://u:pw@example.org/x", cwd=tmp_path)
    line = only_error(result)
    assert "--webhook" in line and "ftp://example.org/x" in line and "pw" not in line


def test_stop_and_restart_resume_on_every_backend(store_factory: Any, tmp_path: Path) -> None:
    """Events stored while the webhooks are stopped (and one retried when they stop) are
    delivered after they start again, on SQLite and MongoDB (whose event feed has no
    cursor before its first event: the start time stands in for it)."""
    receiver = Receiver(accept=1)

    async def main() -> None:
        store = store_factory()
        async with receiving(receiver) as url:

            async def run(until_accepted: int, *events: Event) -> None:
                hooks = Webhooks(store, [url], tmp_path / "state", retry_min=0.01, retry_max=0.05)
                await hooks.start()
                try:
                    write(store, *events)
                    await until(lambda: len(receiver.accepted) >= until_accepted)
                    # Stopped while the next event is being retried, when there is one.
                    await until(lambda: len(receiver.attempts) > until_accepted or not events)
                finally:
                    await hooks.stop()

            await run(1, event(1), event(2))
            assert len(receiver.attempts) > len(receiver.accepted) == 1
            write(store, event(3))  # while stopped
            receiver.accept = None
            await run(3)
        assert receiver.keys() == [idempotency_key(event(i)) for i in (1, 2, 3)]

    arun(main())


def test_counted_on_the_listeners_metrics(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=2)

    async def main() -> None:
        with open_store(f"sqlite:///{tmp_path / 'db'}") as store:
            async with receiving(receiver) as url:
                config = RelayConfig(
                    port=free_port(),
                    http_port=free_port(),
                    stats_interval=0,
                    webhooks=(url.replace("http://", "http://u:pw@"),),
                    webhook_state=tmp_path / "state",
                )
                stop, task = await _relay(store, config)
                try:
                    write(store, event(1))
                    await until(lambda: len(receiver.accepted) == 1)
                    async with (
                        aiohttp.ClientSession() as http,
                        http.get(f"http://127.0.0.1:{config.http_port}/metrics") as response,
                    ):
                        text = await response.text()
                finally:
                    stop.set()
                    await task
        assert f'geotrack_webhook_deliveries_total{{webhook="{url}",result="delivered"}} 1' in text
        assert f'geotrack_webhook_deliveries_total{{webhook="{url}",result="failed"}} 2' in text
        assert "pw" not in text.split("geotrack_webhook", 1)[1]

    arun(main(), 60)


def test_a_refused_device_holds_up_only_itself_and_the_cursor(tmp_path: Path) -> None:
    """The receiver refuses bus's events: van's go on; the cursor stays before bus's first,
    so after a restart it is delivered (and van's after it again: at least once)."""
    receiver = Receiver(refuse={"bus"})

    async def main() -> None:
        with open_store(f"sqlite:///{tmp_path / 'db'}") as store:
            async with receiving(receiver) as url:

                async def webhooks() -> Webhooks:
                    hooks = Webhooks(store, [url], tmp_path / "state", retry_min=0.01)
                    hooks.retry_max = 0.05
                    await hooks.start()
                    return hooks

                hooks = await webhooks()
                try:
                    write(store, event(1), event(2, device="bus"), event(3, "exit"), event(4))
                    await until(lambda: len(receiver.accepted) == 3)
                    await asyncio.sleep(0.3)
                    assert hooks.hooks[0].failing > 1
                finally:
                    await hooks.stop()
                assert [b["device"] for _, b in receiver.accepted] == ["van"] * 3
                receiver.refuse.clear()
                receiver.accepted.clear()
                hooks = await webhooks()
                try:
                    await until(lambda: len(receiver.accepted) == 3)
                    await asyncio.sleep(0.3)
                finally:
                    await hooks.stop()
        again = [event(2, device="bus"), event(3, "exit"), event(4)]
        assert sorted(receiver.keys()) == sorted(idempotency_key(e) for e in again)

    arun(main())


def test_serve_killed_mid_backlog_delivers_everything_after_restart(tmp_path: Path) -> None:
    """``geotrack serve --webhook`` as a real process, killed (-9) while the receiver
    refuses; the restarted process delivers every event, the killed one's included."""
    receiver = Receiver(accept=2)
    db = tmp_path / "db"

    async def serve_process(url: str) -> tuple[asyncio.subprocess.Process, int]:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "geotrack", "serve", "--port", str(port)),
            *("--store", f"sqlite:///{db}", "--stats-interval", "0"),
            *("--fences", str(fences_file(tmp_path)), "--webhook", url),
            *("--webhook-state", str(tmp_path / "state")),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.get_running_loop().run_in_executor(None, wait_listening, port)
        return proc, port

    async def main() -> list[str]:
        async with receiving(receiver) as url:
            proc, port = await serve_process(url)
            try:
                fixes = [at(d, s, lon) for d in "abc" for s, lon in enumerate((OUT, IN, OUT, IN))]
                async with connect(f"ws://127.0.0.1:{port}/publish") as pub:
                    assert (await roundtrip(pub, fixes))["stored"] == len(fixes)
                with open_store(f"sqlite:///{db}") as store:
                    await until(lambda: len(list(store.query_events())) == 9)
                await until(lambda: len(receiver.attempts) > 4)
            finally:
                proc.kill()
                await proc.wait()
            assert len(receiver.accepted) == 2
            receiver.accept = None
            proc, _ = await serve_process(url)
            try:
                with open_store(f"sqlite:///{db}") as store:
                    stored = [idempotency_key(e) for e in store.query_events()]
                assert len(stored) == 9
                await until(lambda: set(receiver.keys()) >= set(stored))
            finally:
                proc.terminate()
                assert await proc.wait() == 0
            return stored

    stored = arun(main(), 90)
    assert set(receiver.keys()) == set(stored)


def test_a_state_directory_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    result = geotrack(
        *("serve", "-q", "--port", "0", "--store", f"sqlite:///{tmp_path / 'db'}"),
        *("--webhook", "http://127.0.0.1:9/hook", "--webhook-state", str(tmp_path / "taken")),
        cwd=tmp_path,
    )
    line = only_error(result)
    assert line.startswith("Error: cannot read the cursor of webhook http://127.0.0.1:9/hook")
    assert line.endswith(": Not a directory")


def test_https_receiver_trusted_through_ssl_cert_file(tmp_path: Path) -> None:
    """A receiver with a certificate of a private CA: refused until SSL_CERT_FILE names it."""
    import trustme

    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(tls)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    db = tmp_path / "db"
    receiver = Receiver()

    async def main() -> None:
        async with receiving(receiver, tls) as url:
            for trusted in (False, True):
                environment = env()
                if trusted:
                    environment["SSL_CERT_FILE"] = str(tmp_path / "ca.pem")
                port = free_port()
                proc = await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "geotrack", "serve", "--port", str(port)),
                    *("--store", f"sqlite:///{db}", "--stats-interval", "0"),
                    *("--webhook", url, "--webhook-state", str(tmp_path / "state")),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    env=environment,
                )
                assert proc.stderr is not None
                try:
                    await asyncio.get_running_loop().run_in_executor(None, wait_listening, port)
                    with open_store(f"sqlite:///{db}") as store:
                        write(store, event(10 if trusted else 1))
                    if trusted:
                        await until(lambda: len(receiver.accepted) == 2)
                    else:
                        log = ""
                        while "certificate verify failed" not in log:
                            line = await asyncio.wait_for(proc.stderr.readline(), 20)
                            assert line, log
                            log += line.decode()
                        assert receiver.accepted == []
                finally:
                    proc.terminate()
                    await proc.stderr.read()
                    assert await proc.wait() == 0

    arun(main(), 60)
    # The event stored while the receiver was not trusted came first, after the restart.
    assert receiver.keys() == [idempotency_key(event(1)), idempotency_key(event(10))]


def test_each_webhook_gets_every_event_on_its_own_cursor(tmp_path: Path) -> None:
    """Two webhooks (the same one given twice counts once): a failing one does not hold
    up the other, and each has its own cursor file."""
    good, failing = Receiver(), Receiver(fail_first=10)

    async def main() -> None:
        with open_store(f"sqlite:///{tmp_path / 'db'}") as store:
            async with receiving(good) as one, receiving(failing) as two:
                hooks = Webhooks(store, [one, two, one], tmp_path / "state", retry_min=0.2)
                hooks.retry_max = 0.2
                await hooks.start()
                try:
                    assert [h.display for h in hooks.hooks] == [one, two]
                    write(store, event(1), event(2))
                    await until(lambda: len(good.accepted) == 2)
                    assert failing.accepted == []  # still retrying its first
                    await until(lambda: len(failing.accepted) == 2)
                finally:
                    await hooks.stop()
        assert good.keys() == failing.keys() == [idempotency_key(event(i)) for i in (1, 2)]
        assert len(list((tmp_path / "state").glob("*.json"))) == 2

    arun(main())
