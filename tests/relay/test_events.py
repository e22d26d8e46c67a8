"""Geofence events end to end: positions in on /publish, events out on /events."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from geotrack.auth import Tokens
from geotrack.relay import Relay
from geotrack.relay.fencing import Fencing
from geotrack.store import open_store
from tests.conftest import free_port
from tests.factories import T0_S
from tests.relay_helpers import (
    Lines,
    arun,
    publisher,
    roundtrip,
    running_relay,
    wait_listening,
    within,
)

# A square around (13.40, 52.50), about 1.1 km wide, and a 100 m circle east of it.
SQUARE = [[13.395, 52.495], [13.405, 52.495], [13.405, 52.505], [13.395, 52.505], [13.395, 52.495]]
FENCES = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"name": "depot"},
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
        },
        {
            "type": "Feature",
            "properties": {"name": "yard", "radius": 100},
            "geometry": {"type": "Point", "coordinates": [13.475, 52.50]},
        },
    ],
}
IN, OUT, YARD = 13.40, 13.30, 13.475
SERVE = [sys.executable, "-m", "geotrack", "serve"]


def fences_file(tmp_path: Path, document: Any = FENCES) -> Path:
    path = tmp_path / "fences.geojson"
    path.write_text(json.dumps(document))
    return path


def at(device: str, s: int, lon: float, **extra: Any) -> dict[str, Any]:
    return {"device": device, "lat": 52.50, "lon": lon, "ts": T0_S + s, **extra}


@asynccontextmanager
async def fenced_relay(db: Path, fences: Path, **config: Any) -> AsyncIterator[Relay]:
    """A relay with --fences, as serve() wires it: the engine fed after each commit."""
    async with running_relay(db, fences=fences, **config) as relay:
        fencing = await Fencing.attach(relay)
        try:
            yield relay
        finally:
            await relay.stop()
            await fencing.stop()


async def events_of(relay: Relay, query: str = "", **kwargs: Any) -> ClientConnection:
    url = relay.url + "/events" + (f"?{query}" if query else "")
    return await connect(url, open_timeout=5, **kwargs)


async def receive(ws: ClientConnection, n: int, seconds: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < n:
        frame = json.loads(await within(ws.recv(), seconds))
        assert isinstance(frame, list) and frame, "/events frames are non-empty arrays"
        got.extend(frame)
    return got


async def nothing_more(ws: ClientConnection, seconds: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


async def publish(relay: Relay, *fixes: dict[str, Any]) -> None:
    async with await publisher(relay) as pub:
        ack = await roundtrip(pub, list(fixes))
        assert ack["stored"] == len(fixes), ack


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    from geotrack.schema import ts_to_ms

    return [(e["type"], e["device"], e["fence"], ts_to_ms(e["ts"]) // 1000 - T0_S) for e in events]


def test_positions_in_events_out_exactly_as_the_protocol_gives_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with fenced_relay(tmp_path / "db", fences_file(tmp_path)) as relay:
            ws = await events_of(relay)
            await publish(relay, at("van", 0, OUT), at("van", 1, IN), at("van", 2, OUT))
            events = await receive(ws, 2)
            assert events[0] == {
                "type": "enter",
                "device": "van",
                "fence": "depot",
                "ts": "2025-11-25T12:00:01.000Z",
                "lat": 52.5,
                "lon": 13.4,
            }
            assert brief(events) == [("enter", "van", "depot", 1), ("exit", "van", "depot", 2)]
            await nothing_more(ws)
            await ws.close()

    arun(main())


def test_filters_and_since_resume(tmp_path: Path) -> None:
    async def main() -> None:
        async with fenced_relay(tmp_path / "db", fences_file(tmp_path)) as relay:
            only_bike = await events_of(relay, "device=bike")
            only_yard = await events_of(relay, "fence=yard")
            everything = await events_of(relay)
            await publish(relay, at("van", 0, IN), at("bike", 0, IN), at("bike", 1, YARD))
            assert sorted(brief(await receive(only_bike, 3))) == [
                ("enter", "bike", "depot", 0),
                ("enter", "bike", "yard", 1),
                ("exit", "bike", "depot", 1),
            ]
            assert brief(await receive(only_yard, 1)) == [("enter", "bike", "yard", 1)]
            assert len(await receive(everything, 4)) == 4
            for ws in (only_bike, only_yard, everything):
                await nothing_more(ws, 0.2)
                await ws.close()
            # since= a time replays what was stored; since= a cursor resumes after it.
            replay = await events_of(relay, "since=1h&device=van")
            assert brief(await receive(replay, 1)) == [("enter", "van", "depot", 0)]
            await replay.close()
            store = relay.store
            with store.follow_events(since=0) as feed:
                changes = []
                while len(changes) < 4:
                    changes += feed.poll(1)
            cursor = changes[1].cursor
            resumed = await events_of(relay, f"since={cursor}")
            assert [e["fence"] for e in await receive(resumed, 2)] == [
                c.event.fence for c in changes[2:]
            ]
            await publish(relay, at("van", 5, OUT))
            assert brief(await receive(resumed, 1)) == [("exit", "van", "depot", 5)]
            await resumed.close()

    arun(main())


def test_handshake_refusals_and_grants(tmp_path: Path) -> None:
    tokens = Tokens.from_entries(
        [
            {"name": "pub", "token": "publisher-token-0123456789", "role": "publish"},
            {"name": "sub", "token": "subscriber-token-0123456789", "role": "subscribe"},
        ]
    )

    async def main() -> None:
        async with fenced_relay(tmp_path / "db", fences_file(tmp_path), tokens=tokens) as relay:
            for query, status in [
                ("", 401),
                ("token=publisher-token-0123456789", 403),
                ("token=subscriber-token-0123456789&bbox=1,2,3,4", 400),
                ("token=subscriber-token-0123456789&device=bad%20id", 400),
                ("token=subscriber-token-0123456789&since=yesterday", 400),
            ]:
                with pytest.raises(InvalidStatus) as info:
                    await events_of(relay, query)
                assert info.value.response.status_code == status, query
            ws = await events_of(relay, "token=subscriber-token-0123456789&fence=depot")
            await ws.close()

    arun(main())


def test_relay_without_fences_still_delivers_stored_events(tmp_path: Path) -> None:
    from geotrack.schema import Event, ms_to_ts

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            ws = await events_of(relay)
            event = Event("enter", "van", "depot", ms_to_ts(T0_S * 1000), 52.5, 13.4)
            await asyncio.to_thread(relay.store.write_events, [event])
            assert brief(await receive(ws, 1)) == [("enter", "van", "depot", 0)]
            await ws.close()

    arun(main())


def test_restart_keeps_the_state(tmp_path: Path) -> None:
    fences = fences_file(tmp_path)

    async def main() -> None:
        async with fenced_relay(tmp_path / "db", fences, fence_dwell=10) as relay:
            # Inside long enough to enter, then out (an exit pending) when the relay stops.
            await publish(relay, at("van", 0, IN), at("van", 10, IN), at("van", 15, OUT))
        async with fenced_relay(tmp_path / "db", fences, fence_dwell=10) as relay:
            ws = await events_of(relay, "since=1h")
            assert brief(await receive(ws, 1)) == [("enter", "van", "depot", 10)]
            # No second enter (the state says inside), and the exit pending since 15 s is
            # decided by the first fix 10 s after it: it was kept across the restart.
            await publish(relay, at("van", 20, IN), at("van", 21, OUT), at("van", 31, OUT))
            assert brief(await receive(ws, 1)) == [("exit", "van", "depot", 31)]
            await nothing_more(ws)
            await ws.close()

    arun(main())


def test_two_relays_on_one_store_report_each_transition_once(tmp_path: Path) -> None:
    fences = fences_file(tmp_path)
    db = tmp_path / "db"

    async def main() -> None:
        async with (
            fenced_relay(db, fences, follow_interval=0.05) as a,
            fenced_relay(db, fences, follow_interval=0.05) as b,
        ):
            ws_a, ws_b = await events_of(a), await events_of(b)
            # The van publishes to a, then moves to b: both relays evaluate every fix
            # (their own, and the other's from the store's feed).
            await publish(a, at("van", 0, OUT), at("van", 1, IN))
            await asyncio.sleep(0.5)
            await publish(b, at("van", 2, IN), at("van", 3, OUT))
            await asyncio.sleep(0.5)
            await publish(a, at("van", 4, IN))
            expected = [
                ("enter", "van", "depot", 1),
                ("exit", "van", "depot", 3),
                ("enter", "van", "depot", 4),
            ]
            assert brief(await receive(ws_a, 3)) == expected
            assert brief(await receive(ws_b, 3)) == expected
            await nothing_more(ws_a)
            await nothing_more(ws_b, 0.1)
            await ws_a.close()
            await ws_b.close()
        with open_store(f"sqlite:///{db}") as store:
            assert len(list(store.query_events())) == 3

    arun(main(), timeout=90)


def test_sighup_reloads_the_fences_file(tmp_path: Path) -> None:
    fences = fences_file(tmp_path)
    port = free_port()
    url = f"sqlite:///{tmp_path / 'db'}"
    proc = subprocess.Popen(
        [*SERVE, "--port", str(port), "--store", url, "--fences", str(fences)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        wait_listening(port, proc)
        lines.wait(lambda ls: any("fences: 2 from" in line for line in ls))
        # Logged once SIGHUP is handled (before, SIGHUP would end the process).
        lines.wait(lambda ls: any("geotrack relay listening on" in line for line in ls))
        fences.write_text("{ broken")
        proc.send_signal(signal.SIGHUP)
        got = lines.wait(lambda ls: any("fences not reloaded" in line for line in ls))
        assert any("the 2 in use stay" in line and "not JSON" in line for line in got)
        # The old fences still work: a van entering the depot is an event.
        relay_url = f"ws://127.0.0.1:{port}"

        async def enter(device: str, lon: float) -> list[dict[str, Any]]:
            async with connect(relay_url + f"/events?device={device}", open_timeout=5) as ws:
                async with connect(relay_url + "/publish", open_timeout=5) as pub:
                    await roundtrip(pub, [at(device, 0, OUT), at(device, 1, lon)])
                return await receive(ws, 1)

        assert brief(arun(enter("van", IN))) == [("enter", "van", "depot", 1)]
        renamed = {**FENCES["features"][0], "properties": {"name": "far"}}  # type: ignore[index]
        moved = {"type": "FeatureCollection", "features": [renamed]}
        fences.write_text(json.dumps(moved))
        proc.send_signal(signal.SIGHUP)
        lines.wait(lambda ls: any("fences reloaded from" in line for line in ls))
        assert brief(arun(enter("bike", IN))) == [("enter", "bike", "far", 1)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_bad_fences_file_is_one_error_line(tmp_path: Path) -> None:
    bad = fences_file(tmp_path, {"type": "FeatureCollection", "features": [{"type": "Feature"}]})
    result = subprocess.run(
        [*SERVE, "--port", "0", "--fences", str(bad), "--store", f"sqlite:///{tmp_path / 'db'}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "feature 0: properties.name" in lines[0]


def test_a_share_link_sees_only_its_devices_events(tmp_path: Path) -> None:
    tokens = Tokens.from_entries(
        [{"name": "pub", "token": "publisher-token-0123456789", "role": "publish"}],
        share={"secret": "a-share-secret-of-at-least-32-characters"},
    )
    link = tokens.share(["van"], 3600)

    async def main() -> None:
        async with fenced_relay(tmp_path / "db", fences_file(tmp_path), tokens=tokens) as relay:
            with pytest.raises(InvalidStatus) as info:
                await events_of(relay, f"token={link}&device=bike")
            assert info.value.response.status_code == 403
            ws = await events_of(relay, f"token={link}")
            url = relay.url + "/publish?token=publisher-token-0123456789"
            async with connect(url, open_timeout=5) as pub:
                assert (await roundtrip(pub, [at("bike", 0, IN), at("van", 1, IN)]))["stored"] == 2
            assert brief(await receive(ws, 1)) == [("enter", "van", "depot", 1)]
            await nothing_more(ws)
            await ws.close()

    arun(main())


def test_a_relay_killed_before_evaluating_evaluates_after_the_restart(tmp_path: Path) -> None:
    """kill -9 right after the ack of the fix that crosses: the event comes after the restart.

    The fence worker evaluates at most every 0.1 s, so a fix acked while it waits out that
    pace (fixes far from the fence keep it busy just before) is stored, not evaluated,
    when the relay dies. Each attempt checks that it caught that moment (no event stored
    at the kill); one that did not is retried with another device.
    """
    from tests.relay_helpers import relay_process

    fences = fences_file(tmp_path)
    url = f"sqlite:///{tmp_path / 'db'}"

    async def cross(port: int, device: str) -> None:
        async with connect(f"ws://127.0.0.1:{port}/publish", open_timeout=5) as pub:
            for s in range(30):  # outside: evaluations every 0.1 s, no event
                await roundtrip(pub, [at(device, s, OUT)])
                await asyncio.sleep(0.01)
            await roundtrip(pub, [at(device, 30, IN)])

    def stored_events(device: str) -> list[str]:
        with open_store(url) as store:
            return [e.type for e in store.query_events(devices=[device])]

    caught = None
    for attempt in range(5):
        device = f"van-{attempt}"
        port = free_port()
        with relay_process(url, port, "--fences", str(fences)) as proc:
            arun(cross(port, device))
            proc.kill()  # SIGKILL: nothing is flushed
            proc.wait(timeout=10)
        if stored_events(device) == []:
            caught = device
            break
    assert caught is not None, "the worker evaluated before every kill; nothing was tested"

    async def after_restart(port: int) -> list[dict[str, Any]]:
        ws = await connect(f"ws://127.0.0.1:{port}/events?device={caught}&since=1h")
        got = await receive(ws, 1)
        await nothing_more(ws)
        await ws.close()
        return got

    port = free_port()
    with relay_process(url, port, "--fences", str(fences)) as proc:
        assert brief(arun(after_restart(port))) == [("enter", caught, "depot", 30)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert stored_events(caught) == ["enter"]
