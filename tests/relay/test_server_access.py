"""Who may connect and how much: tokens, TLS, origins, limits, and `since` replay."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from geotrack.auth import Tokens
from geotrack.client import Publisher
from geotrack.schema import Position
from geotrack.store import open_store
from tests.factories import BUS, PUB, SUB, tokens
from tests.relay_helpers import (
    arun,
    collect,
    fix,
    publisher,
    roundtrip,
    running_relay,
    subscriber,
    within,
)


async def refused(url: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, open_timeout=5, **kwargs)
    return info.value.response.status_code, info.value.response.body.decode()


# -- tokens ---------------------------------------------------------------------------


def test_without_a_valid_token_the_handshake_gets_401(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db", tokens=tokens(bus_role="both")) as relay:
            for url in (relay.url + "/publish", relay.url + "/subscribe"):
                status, body = await refused(url)
                assert status == 401 and "token" in body
                status, _ = await refused(url + "?token=wrong-token-0123456789")
                assert status == 401
                status, _ = await refused(url, additional_headers={"Authorization": "Bearer nope"})
                assert status == 401

    arun(main())


def test_roles_are_enforced_with_403(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db", tokens=tokens(bus_role="both")) as relay:
            status, body = await refused(f"{relay.url}/publish?token={SUB}")
            assert (status, body.strip()) == (403, "token 'sub' may not publish")
            status, _ = await refused(f"{relay.url}/subscribe?token={PUB}")
            assert status == 403

    arun(main())


def test_tokens_by_header_or_query_and_device_grants(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_relay(db, tokens=tokens(bus_role="both")) as relay:
            sub = await connect(
                relay.url + "/subscribe",
                additional_headers={"Authorization": f"Bearer {SUB}"},
                open_timeout=5,
            )
            async with await connect(f"{relay.url}/publish?token={BUS}", open_timeout=5) as ws:
                ack = await roundtrip(ws, [fix("bus-1", 0), fix("car-1", 0), fix("bus-2", 0)])
                assert ack["stored"] == 2
                assert ack["rejected"] == [
                    {"index": 1, "error": "device: token 'bus' may not publish as 'car-1'"}
                ]
            async with await connect(
                relay.url + "/publish", additional_headers={"Authorization": f"Bearer {PUB}"}
            ) as ws:
                assert (await roundtrip(ws, fix("car-1", 0)))["stored"] == 1
            got = await collect(sub, 3)
            assert sorted(p["device"] for p in got) == ["bus-1", "bus-2", "car-1"]
            await sub.close()

    arun(main())


def test_tokens_are_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")

    async def main() -> None:
        async with running_relay(tmp_path / "db", tokens=tokens(bus_role="both")) as relay:
            async with await connect(f"{relay.url}/publish?token={PUB}") as ws:
                await roundtrip(ws, fix())
            await refused(f"{relay.url}/publish?token=guessed-token-0123456789")

    arun(main())
    relay_records = [r for r in caplog.records if r.name.startswith("geotrack")]
    assert relay_records, "the relay logs connections"
    for record in relay_records:
        assert PUB not in record.getMessage() and "guessed-token" not in record.getMessage()


def test_token_file_errors_name_the_entry(tmp_path: Path) -> None:
    from geotrack.errors import InvalidParameter

    path = tmp_path / "tokens.toml"
    path.write_text('[[token]]\ntoken = "short"\nrole = "publish"\n')
    with pytest.raises(InvalidParameter, match="token #1: a token must be"):
        Tokens.load(path)
    path.write_text('[[token]]\ntoken = "long-enough-token-123"\nrole = "admin"\n')
    with pytest.raises(InvalidParameter, match="role must be one of"):
        Tokens.load(path)
    path.write_text("not toml [")
    with pytest.raises(InvalidParameter, match="not valid TOML"):
        Tokens.load(path)
    path.write_text(
        '[[token]]\nname = "d"\nrole = "subscribe"\n'
        'sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"\n'
    )
    grant = Tokens.load(path).check("test")  # sha256("test") is the digest above
    assert grant is not None and grant.name == "d" and grant.may_subscribe


# -- TLS and origins ------------------------------------------------------------------


def test_wss_with_a_certificate_the_client_trusts(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        async with running_relay(tmp_path / "db", ssl=server_ctx) as relay:
            assert relay.url.startswith("wss://")
            async with Publisher(relay.url, ssl_context=client_ctx) as pub:
                ack = await (
                    await pub.send([Position(device="tls", lat=1.0, lon=2.0, ts=1_764_072_000)])
                )
                assert ack.stored == 1
            # A client that does not trust the CA cannot connect.
            from geotrack.errors import RelayError

            with pytest.raises(RelayError, match="cannot"):
                await Publisher(relay.url, ssl_context=ssl.create_default_context()).connect()

    arun(main())


def test_browser_origins_outside_the_allowlist_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db", allow_origins=("https://map.example",)) as relay:
            status, _ = await refused(
                relay.url + "/subscribe", additional_headers={"Origin": "https://evil.example"}
            )
            assert status == 403
            ok = await connect(
                relay.url + "/subscribe", additional_headers={"Origin": "https://map.example"}
            )
            await ok.close()
            # Devices and servers send no Origin header at all: always allowed.
            async with await publisher(relay) as ws:
                assert (await roundtrip(ws, fix()))["stored"] == 1

    arun(main())


# -- limits ---------------------------------------------------------------------------


def test_connections_beyond_the_limit_get_503(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db", max_connections=3) as relay:
            held = [await subscriber(relay) for _ in range(3)]
            status, body = await refused(relay.url + "/subscribe")
            assert status == 503 and "too many connections" in body
            await held.pop().close()
            await asyncio.sleep(0.1)
            again = await subscriber(relay)  # room again
            for ws in [*held, again]:
                await ws.close()

    arun(main())


def test_a_stalled_handshake_is_cut_off(tmp_path: Path) -> None:
    """Slowloris: a client that opens TCP and never finishes the handshake is closed."""

    async def main() -> None:
        async with running_relay(tmp_path / "db", handshake_timeout=0.5) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET /publish HTTP/1.1\r\nHost: x\r\n")  # never ends the headers
            await writer.drain()
            started = time.monotonic()
            assert await within(reader.read(), 5) == b""  # the relay closed it
            assert time.monotonic() - started < 4
            writer.close()
            async with await publisher(relay) as ws:  # and it still serves others
                assert (await roundtrip(ws, fix()))["stored"] == 1

    arun(main())


def test_a_flood_of_tiny_frames_is_slowed_not_dropped(tmp_path: Path) -> None:
    db = tmp_path / "db"
    n = 300

    async def main() -> None:
        async with running_relay(db, max_rate=200.0) as relay, await publisher(relay) as ws:
            started = time.monotonic()
            for i in range(n):
                await ws.send(json.dumps(fix("flood", i)))
            acks = [json.loads(await within(ws.recv())) for _ in range(n)]
            elapsed = time.monotonic() - started
            assert sum(a["stored"] for a in acks) == n
            # 200/s with a burst of 400 lets 300 through at once; the point is that
            # every frame is answered and stored, whatever the pace.
            assert elapsed < 30

    arun(main())
    with open_store(f"sqlite:///{db}") as store:
        assert len(list(store.query())) == n


def test_rate_limit_paces_reading(tmp_path: Path) -> None:
    """Past the burst, frames are read at the configured rate (backpressure)."""

    async def main() -> None:
        async with (
            running_relay(tmp_path / "db", max_rate=50.0) as relay,
            await publisher(relay) as ws,
        ):
            started = time.monotonic()
            for i in range(150):  # burst 100, then 50 more at 50/s: about 1 s
                await ws.send(json.dumps(fix("paced", i)))
            for _ in range(150):
                await within(ws.recv())
            assert time.monotonic() - started >= 0.8

    arun(main())


def test_smaller_batch_limit(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            running_relay(tmp_path / "db", max_batch=10) as relay,
            await publisher(relay) as ws,
        ):
            reply = await roundtrip(ws, [fix("d", i) for i in range(11)])
            assert reply == {
                "type": "error",
                "error": "a batch must hold 1 to 10 positions; got 11",
            }
            assert (await roundtrip(ws, [fix("d", i) for i in range(10)]))["stored"] == 10

    arun(main())


# -- since ----------------------------------------------------------------------------


def test_since_replays_then_goes_live_without_gap_or_duplicate(tmp_path: Path) -> None:
    """Subscribe with since= while a publisher keeps publishing: every position once."""
    total = 5000

    async def main() -> None:
        async with running_relay(tmp_path / "db", subscriber_queue=6000) as relay:
            async with await publisher(relay) as ws:
                before = time.time() - 1
                for start in range(0, 3000, 100):
                    await roundtrip(ws, [fix("seam", i) for i in range(start, start + 100)])

                async def keep_publishing() -> None:
                    for start in range(3000, total, 25):
                        await roundtrip(ws, [fix("seam", i) for i in range(start, start + 25)])

                task = asyncio.create_task(keep_publishing())
                await asyncio.sleep(0.05)  # subscribe in the middle of the stream
                sub = await subscriber(relay, f"since={before}&device=seam")
                got = await collect(sub, total, 30)
                await task
                await sub.close()
            keys = [p["ts"] for p in got]
            assert len(keys) == len(set(keys)) == total
            assert keys == sorted(keys)  # per device, store order

    arun(main())


def test_since_cursor_and_bad_since(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            async with await publisher(relay) as ws:
                await roundtrip(ws, [fix("c", i) for i in range(5)])
            sub = await subscriber(relay, "since=sqlite:3")  # after the third row
            got = await collect(sub, 2)
            assert [p["ts"][17:19] for p in got] == ["03", "04"]
            await sub.close()
            status, body = await refused(relay.url + "/subscribe?since=yesterday")
            assert status == 400 and body.startswith("since:")

    arun(main())


def test_handshakes_refused_after_admission_leave_no_state(tmp_path: Path) -> None:
    """A plain GET (no Upgrade) passes our checks, then fails websockets' own: no leak."""
    import gc

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
                writer.write(b"GET /publish HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                assert b"426" in (await within(reader.read(), 5)).split(b"\r\n", 1)[0]
                writer.close()
            await asyncio.sleep(0.2)
            gc.collect()
            assert len(relay._admissions) == 0

    arun(main())
