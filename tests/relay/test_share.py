"""Share links against a real relay and its HTTP listener: only their devices, until they expire.

Each test runs a relay on a free loopback port with a token table holding a [share]
secret, publishes with an ordinary token, and looks through a link as its holder would:
/subscribe, the REST reads, and publishing (refused).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from geotrack.auth import Tokens, sign_share
from geotrack.errors import expiry_text
from geotrack.relay import Relay
from tests.factories import PUB, SUB
from tests.relay_helpers import arun, collect, fix, roundtrip, running_http, within

SECRET = "a-share-secret-of-at-least-32-characters"
TRACKER = "tracker-token-0123456789"


def table(secret: str = SECRET) -> Tokens:
    return Tokens.from_entries(
        [
            {"name": "pub", "token": PUB, "role": "publish"},
            {"name": "sub", "token": SUB, "role": "subscribe"},
            {"name": "tracker", "token": TRACKER, "role": "publish", "devices": ["bus-*"]},
        ],
        share={"secret": secret},
    )


def link(*devices: str, seconds: float = 3600, secret: str = SECRET) -> str:
    now = int(time.time())
    return sign_share(secret, devices, int(now + seconds), now)


@contextlib.asynccontextmanager
async def serving(
    db: Path, tokens: Tokens | None = None
) -> AsyncIterator[tuple[Relay, aiohttp.ClientSession]]:
    """A relay with ``tokens``, its HTTP listener, and a client session for the listener."""
    async with running_http(db, tokens=tokens or table()) as (relay, _, http):
        yield relay, http


async def publish(relay: Relay, *positions: dict[str, Any]) -> None:
    async with connect(f"{relay.url}/publish?token={PUB}", open_timeout=5) as ws:
        ack = await roundtrip(ws, list(positions))
        assert ack["stored"] == len(positions), ack


async def refused(url: str) -> tuple[int, str, list[str]]:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, open_timeout=5)
    response = info.value.response
    return (
        response.status_code,
        response.body.decode(),
        response.headers.get_all("WWW-Authenticate"),
    )


async def get(http: aiohttp.ClientSession, path: str, token: str, **kwargs: Any) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(path, headers=headers, **kwargs) as response:
        return response.status, await response.text()


# -- /subscribe ----------------------------------------------------------------------------


def test_a_link_subscribes_to_its_devices_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, _):
            token = link("bus-12", "bus-14")
            ws = await connect(f"{relay.url}/subscribe?token={token}", open_timeout=5)
            await publish(relay, fix("car-1", 0), fix("bus-12", 0), fix("bus-13", 0))
            await publish(relay, fix("bus-14", 1), fix("car-1", 1))
            got = await collect(ws, 2)
            assert [p["device"] for p in got] == ["bus-12", "bus-14"]
            # Nothing else comes: the next thing to arrive is the next bus-12 fix.
            await publish(relay, fix("car-1", 2), fix("bus-12", 2))
            assert [p["device"] for p in await collect(ws, 1)] == ["bus-12"]
            # Asking for one of its own devices narrows it as for anyone.
            only = await connect(
                f"{relay.url}/subscribe?device=bus-14&token={token}", open_timeout=5
            )
            await publish(relay, fix("bus-12", 3), fix("bus-14", 3))
            assert [p["device"] for p in await collect(only, 1)] == ["bus-14"]
            await ws.close()
            await only.close()

    arun(main())


def test_a_link_replays_its_devices_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, _):
            await publish(relay, *(fix(d, i) for i in range(3) for d in ("bus-12", "car-1")))
            token = link("bus-12")
            ws = await connect(f"{relay.url}/subscribe?since=0&token={token}", open_timeout=5)
            got = await collect(ws, 3)
            assert {p["device"] for p in got} == {"bus-12"}
            await ws.close()

    arun(main())


def test_a_link_asking_for_another_device_gets_403_and_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, _):
            token = link("bus-12")
            for query in ("device=car-1", "device=bus-12&device=car-1"):
                status, body, _ = await refused(f"{relay.url}/subscribe?{query}&token={token}")
                assert (status, body) == (403, "this link shows only bus-12: not 'car-1'\n")

    arun(main())


def test_an_expired_link_gets_401_saying_when_it_expired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, _):
            now = int(time.time())
            token = sign_share(SECRET, ["bus-12"], now - 60, now - 3600)
            with caplog.at_level(logging.WARNING, "geotrack.relay"):
                status, body, challenges = await refused(f"{relay.url}/subscribe?token={token}")
            assert status == 401
            assert body == f"this link expired at {expiry_text(now - 60)}\n"
            assert challenges  # a 401 says how to authenticate
            refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert len(refusals) == 1
            assert f"401 this link expired at {expiry_text(now - 60)}" in refusals[0]
            assert token not in caplog.text and token.split(".")[2] not in caplog.text

    arun(main())


def test_a_link_signed_with_a_rotated_secret_gets_401(tmp_path: Path) -> None:
    async def main() -> None:
        old = link("bus-12", secret="the-old-secret-of-at-least-32-characters")
        async with serving(tmp_path / "db") as (relay, _):
            status, body, _ = await refused(f"{relay.url}/subscribe?token={old}")
            assert status == 401
            assert body == "this link is not valid: it was mistyped, or revoked by a new secret\n"

    arun(main())


def test_a_live_subscriber_is_closed_when_its_link_expires(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, _):
            expires = int(time.time()) + 2
            token = sign_share(SECRET, ["bus-12"], expires, expires - 60)
            ws = await connect(f"{relay.url}/subscribe?token={token}", open_timeout=5)
            await publish(relay, fix("bus-12", 0))
            assert len(await collect(ws, 1)) == 1
            with pytest.raises(ConnectionClosed):
                await within(ws.recv(), 10)
            assert ws.close_code == 1008
            assert ws.close_reason == f"this link expired at {expiry_text(expires)}"
            assert time.time() >= expires
            # And it cannot come back.
            status, body, _ = await refused(f"{relay.url}/subscribe?token={token}")
            assert (status, body) == (401, f"this link expired at {expiry_text(expires)}\n")

    arun(main())


def test_a_link_cannot_publish(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, http):
            token = link("bus-12")
            status, body, _ = await refused(f"{relay.url}/publish?token={token}")
            assert (status, body) == (403, "token 'share link' may not publish\n")
            headers = {"Authorization": f"Bearer {token}"}
            data = json.dumps(fix("bus-12", 0))
            async with http.post("/api/positions", data=data, headers=headers) as response:
                assert response.status == 403
            async with http.get(
                "/", params={"id": "bus-12", "lat": "52.5", "lon": "13.4", "token": token}
            ) as response:
                assert response.status == 403

    arun(main())


# -- REST --------------------------------------------------------------------------------


def test_rest_reads_through_a_link_return_its_devices_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, http):
            await publish(relay, *(fix(d, i) for i in range(2) for d in ("bus-12", "car-1")))
            token = link("bus-12")
            status, text = await get(http, "/api/positions", token)
            assert status == 200
            assert {json.loads(line)["device"] for line in text.splitlines()} == {"bus-12"}
            assert len(text.splitlines()) == 2
            status, text = await get(http, "/api/positions?device=bus-12&format=csv", token)
            assert status == 200 and "car-1" not in text and text.count("bus-12") == 2
            status, text = await get(http, "/api/devices", token)
            assert status == 200
            assert [d["device"] for d in json.loads(text)] == ["bus-12"]
            # An ordinary subscribe token still sees everything.
            status, text = await get(http, "/api/devices", SUB)
            assert [d["device"] for d in json.loads(text)] == ["bus-12", "car-1"]

    arun(main())


def test_rest_reads_of_another_device_get_403(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, http):
            await publish(relay, fix("car-1", 0))
            token = link("bus-12")
            for path in ("/api/positions?device=car-1", "/api/devices?device=car-1"):
                status, text = await get(http, path, token)
                assert (status, text) == (403, "this link shows only bus-12: not 'car-1'\n")
            # ?token= works as well as the header (the page's links carry it).
            async with http.get(f"/api/devices?device=car-1&token={token}") as response:
                assert response.status == 403

    arun(main())


def test_rest_reads_with_an_expired_link_get_401_saying_when(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (_, http):
            now = int(time.time())
            token = sign_share(SECRET, ["bus-12"], now - 5, now - 60)
            for path in ("/api/positions", "/api/devices"):
                status, text = await get(http, path, token)
                assert (status, text) == (401, f"this link expired at {expiry_text(now - 5)}\n")

    arun(main())


def test_a_publish_token_tracks_its_own_devices_but_reads_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, http):
            headers = {"Authorization": f"Bearer {TRACKER}"}
            for device, expected in (("bus-12", 200), ("car-1", 403)):
                async with http.post(
                    "/", params={"id": device, "lat": "52.5", "lon": "13.4"}, headers=headers
                ) as response:
                    assert response.status == expected
            for path in ("/api/positions?device=bus-12", "/api/devices"):
                status, text = await get(http, path, TRACKER)
                assert (status, text) == (403, "token 'tracker' may not subscribe\n")
            status, _, _ = await refused(f"{relay.url}/subscribe?token={TRACKER}")
            assert status == 403

    arun(main())


def test_without_a_share_secret_links_are_not_accepted(tmp_path: Path) -> None:
    async def main() -> None:
        tokens = Tokens.from_entries([{"name": "sub", "token": SUB, "role": "subscribe"}])
        async with serving(tmp_path / "db", tokens) as (relay, http):
            token = link("bus-12")
            status, body, _ = await refused(f"{relay.url}/subscribe?token={token}")
            assert (status, body) == (
                401,
                "this link is not valid: share links are not enabled on this relay\n",
            )
            assert (await get(http, "/api/devices", token))[0] == 401

    arun(main())


def test_a_page_presenting_a_token_is_never_offered_basic_auth(tmp_path: Path) -> None:
    # A Basic challenge on a fetch makes the browser pop its password dialog over the page
    # (and a headless one never settles the fetch), so the page could not show the reason.
    bearer_only = ['Bearer realm="geotrack", error="invalid_token"']
    both = ['Bearer realm="geotrack"', 'Basic realm="geotrack", charset="UTF-8"']

    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, http):
            now = int(time.time())
            expired = sign_share(SECRET, ["bus-12"], now - 5, now - 60)
            for token in (expired, "wrong-token-0123456789"):
                async with http.get(
                    "/api/devices", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    assert response.status == 401
                    assert response.headers.getall("WWW-Authenticate") == bearer_only
                async with http.get(f"/api/devices?token={token}") as response:
                    assert response.headers.getall("WWW-Authenticate") == bearer_only
                _, _, challenges = await refused(f"{relay.url}/subscribe?token={token}")
                assert challenges == bearer_only
            # No token at all, or Basic (OwnTracks, GPSLogger): both are offered, as before.
            async with http.get("/api/devices") as response:
                assert response.headers.getall("WWW-Authenticate") == both
            basic = base64.b64encode(b"user:wrong-token-0123456789").decode()
            headers = {"Authorization": f"Basic {basic}"}
            async with http.post("/owntracks", headers=headers, data="{}") as response:
                assert response.status == 401
                assert response.headers.getall("WWW-Authenticate") == both

    arun(main())
