"""HTTP ingestion is under the relay's limits: --max-rate per token or peer (429 with
Retry-After, nothing valid lost once the device retries) and --max-connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from geotrack.auth import Tokens
from geotrack.relay import Relay
from geotrack.relay.http import HttpListener
from geotrack.store import open_store
from tests.factories import T0_S
from tests.relay_helpers import arun, running_http

A = "device-a-token-0123456789"
B = "device-b-token-0123456789"


@contextlib.asynccontextmanager
async def serving(db: Path, **config: Any) -> AsyncIterator[tuple[Relay, HttpListener]]:
    async with running_http(db, **config) as (relay, listener, _):
        yield relay, listener


def osmand(device: str, i: int, token: str | None = None) -> str:
    auth = f"&token={token}" if token else ""
    return f"/?id={device}&timestamp={T0_S + i}&lat=52.5&lon=13.4{auth}"


def stored(db: Path) -> int:
    with open_store(f"sqlite:///{db}") as store:
        return len(list(store.query()))


async def post(http: aiohttp.ClientSession, path: str) -> tuple[int, str | None]:
    async with http.post(path) as response:
        await response.read()
        return response.status, response.headers.get("Retry-After")


def test_requests_over_the_rate_get_429_and_a_retrying_device_loses_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with (
            serving(db, max_rate=5.0) as (_, listener),
            aiohttp.ClientSession(listener.url) as http,
        ):
            answers = [await post(http, osmand("phone", i)) for i in range(15)]
            statuses = [status for status, _ in answers]
            # A burst of twice the rate passes; the rest is refused, none of it stored.
            assert statuses[:10] == [200] * 10
            assert set(statuses[10:]) == {429}
            assert all(retry is not None and int(retry) >= 1 for _, retry in answers[10:])
            assert stored(db) == 10
            # Devices send again after Retry-After: then everything is stored.
            pending = list(range(10, 15))
            for _ in range(20):
                if not pending:
                    break
                await asyncio.sleep(1)
                pending = [i for i in pending if (await post(http, osmand("phone", i)))[0] != 200]
            assert not pending and stored(db) == 15

    arun(main())


def test_the_rate_is_counted_per_token(tmp_path: Path) -> None:
    tokens = Tokens.from_entries(
        [
            {"name": "a", "token": A, "role": "publish"},
            {"name": "b", "token": B, "role": "publish"},
        ]
    )

    async def main() -> None:
        async with (
            serving(tmp_path / "db", max_rate=1.0, tokens=tokens) as (relay, listener),
            aiohttp.ClientSession(listener.url) as http,
        ):
            assert [(await post(http, osmand("a", i, A)))[0] for i in range(3)] == [200, 200, 429]
            assert (await post(http, osmand("b", 0, B)))[0] == 200  # its own bucket
            # REST and OwnTracks draw from the same bucket as OsmAnd.
            async with http.post("/owntracks", params={"token": A}, data=b"{}") as response:
                assert response.status == 429
            body = b'{"device": "a", "lat": 1, "lon": 2, "ts": 1764072000}'
            async with http.post("/api/positions", params={"token": A}, data=body) as response:
                assert response.status == 429
            # Reads are not paced (the rate is for positions coming in).
            async with http.get("/healthz") as response:
                assert response.status == 200
            assert relay.counters.stored == 3

    arun(main())


async def raw_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/healthz"
) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_connections_beyond_max_connections_get_503_and_are_closed(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db", max_connections=2) as (_, listener):
            conns = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(3)]
            await asyncio.sleep(0.1)
            answer = await raw_get(*conns[2])
            assert answer.startswith(b"HTTP/1.1 503")
            assert b"Retry-After: 1" in answer and b"too many connections" in answer
            assert await asyncio.wait_for(conns[2][0].read(), 5) == b""  # closed by the relay
            await asyncio.sleep(0.1)
            for conn in conns[:2]:  # the others are served, and stay open
                assert (await raw_get(*conn)).startswith(b"HTTP/1.1 200")
                assert (await raw_get(*conn)).startswith(b"HTTP/1.1 200")
            for _, writer in conns:
                writer.close()

    arun(main())
