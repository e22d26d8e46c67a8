"""REST for fences: GET /api/fences, GET/PUT/DELETE /api/fences/NAME, on a real listener."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from geotrack.auth import Tokens
from geotrack.fences import load_fences
from geotrack.relay import Relay
from geotrack.relay.fencing import Fencing
from geotrack.relay.http import HttpListener
from tests.factories import T0_S
from tests.relay_helpers import arun, publisher, roundtrip, running_http, within

SQUARE = [[13.395, 52.495], [13.405, 52.495], [13.405, 52.505], [13.395, 52.505], [13.395, 52.495]]
DEPOT = {
    "type": "Feature",
    "properties": {"name": "depot", "colour": "red"},
    "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
}
YARD = {
    "type": "Feature",
    "properties": {"radius": 100},
    "geometry": {"type": "Point", "coordinates": [13.475, 52.50]},
}
ADMIN = "admin-token-0123456789"
SUB = "subscriber-token-0123456789"
FLEET = "fleet-token-0123456789"
TOKENS = Tokens.from_entries(
    [
        {"name": "admin", "token": ADMIN, "role": "both"},
        {"name": "sub", "token": SUB, "role": "subscribe"},
        {"name": "fleet", "token": FLEET, "role": "both", "devices": ["van-*"]},
    ]
)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def fenced_http(
    tmp_path: Path, **config: Any
) -> AsyncIterator[tuple[Relay, HttpListener, aiohttp.ClientSession, Path]]:
    path = tmp_path / "fences.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [DEPOT]}))
    async with running_http(tmp_path / "db", fences=path, **config) as (relay, listener, http):
        listener.fences = await Fencing.attach(relay)
        try:
            yield relay, listener, http, path
        finally:
            await relay.stop()
            await listener.fences.stop()


def test_list_get_put_delete_and_the_file_follows(tmp_path: Path) -> None:
    async def main() -> None:
        async with fenced_http(tmp_path) as (relay, _, http, path):
            async with http.get("/api/fences") as r:
                assert r.status == 200
                assert r.content_type == "application/geo+json"
                assert (await r.json())["features"] == [DEPOT]
            async with http.get("/api/fences/depot") as r:
                assert r.status == 200 and await r.json() == DEPOT
            async with http.put("/api/fences/yard", data=json.dumps(YARD)) as r:
                assert r.status == 201
                created = await r.json()
                assert created["properties"] == {"radius": 100, "name": "yard"}
            async with http.put(
                "/api/fences/yard", json={**YARD, "properties": {"radius": 50}}
            ) as r:
                assert r.status == 200
            assert [(f.name, f.radius) for f in load_fences(path)] == [
                ("depot", None),
                ("yard", 50.0),
            ]
            async with http.delete("/api/fences/depot") as r:
                assert r.status == 204
            async with http.delete("/api/fences/depot") as r:
                assert r.status == 404
            async with http.get("/api/fences/depot") as r:
                assert r.status == 404 and "no fence named 'depot'" in await r.text()
            assert [f.name for f in load_fences(path)] == ["yard"]
            # The fences in use changed too: entering the yard is an event.
            async with connect(relay.url + "/events", open_timeout=5) as ws:
                async with await publisher(relay) as pub:
                    fix = {"device": "van-1", "lat": 52.5, "lon": 13.475, "ts": T0_S}
                    await roundtrip(pub, fix)
                events = json.loads(await within(ws.recv()))
            assert [(e["type"], e["fence"]) for e in events] == [("enter", "yard")]
            # /metrics counts the fences and what they decided.
            for _ in range(50):
                async with http.get("/metrics") as r:
                    text = await r.text()
                if 'geotrack_fence_events_total{result="stored"} 1' in text:
                    break
                await asyncio.sleep(0.1)
            assert "\ngeotrack_fences 1\n" in text
            assert 'geotrack_fence_events_total{result="stored"} 1\n' in text
            assert "\ngeotrack_fence_positions_total 1\n" in text

    arun(main())


def test_bad_fences_are_400_and_a_broken_file_409(tmp_path: Path) -> None:
    async def main() -> None:
        async with fenced_http(tmp_path) as (_, listener, http, path):
            for body, message in [
                ("{", "the body must be a GeoJSON Feature"),
                (json.dumps({**YARD, "properties": {}}), "needs properties.radius"),
                (json.dumps({**DEPOT, "properties": {"name": "other"}}), "differs from"),
            ]:
                async with http.put("/api/fences/x", data=body) as r:
                    assert r.status == 400, body
                    text = await r.text()
                    assert message in text and text.count("\n") == 1
            path.write_text("[]")  # a hand edit gone wrong, not reloaded yet
            async with http.put("/api/fences/yard", json=YARD) as r:
                assert r.status == 409 and "fix it first" in await r.text()
            assert path.read_text() == "[]"  # nothing written over it
            assert listener.fences is not None
            assert [f.name for f in listener.fences.fences] == ["depot"]
            async with http.post("/api/fences/depot") as r:
                assert r.status == 405

    arun(main())


def test_a_hand_edit_not_yet_reloaded_is_kept_by_a_rest_change(tmp_path: Path) -> None:
    async def main() -> None:
        async with fenced_http(tmp_path) as (_, _listener, http, path):
            other = {**DEPOT, "properties": {"name": "other"}}
            path.write_text(json.dumps({"type": "FeatureCollection", "features": [other]}))
            async with http.put("/api/fences/yard", json=YARD) as r:
                assert r.status == 201
            assert [f.name for f in load_fences(path)] == ["other", "yard"]

    arun(main())


def test_who_may_read_and_change(tmp_path: Path) -> None:
    async def main() -> None:
        async with fenced_http(tmp_path, tokens=TOKENS) as (_, _listener, http, _path):
            async with http.get("/api/fences") as r:
                assert r.status == 401
            async with http.get("/api/fences", headers=auth(SUB)) as r:
                assert r.status == 200
            for token, status in [(SUB, 403), (FLEET, 403), (ADMIN, 201)]:
                async with http.put("/api/fences/yard", json=YARD, headers=auth(token)) as r:
                    assert r.status == status, token
            async with http.delete("/api/fences/yard", headers=auth(FLEET)) as r:
                assert r.status == 403
                assert "may not change fences" in await r.text()
            async with http.delete("/api/fences/yard", headers=auth(ADMIN)) as r:
                assert r.status == 204

    arun(main())


def test_without_fences_the_api_says_how_to_get_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, _, http):
            async with http.get("/api/fences") as r:
                assert r.status == 404 and "--fences FILE" in await r.text()
            async with http.put("/api/fences/x", json=YARD) as r:
                assert r.status == 404

    arun(main())
