"""GET /api/trips and /api/stops on a real relay's HTTP listener, over a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import aiohttp
import pytest

from geotrack.auth import Tokens, sign_share
from geotrack.store import open_store
from tests.analysis.test_trips import Track
from tests.factories import PUB, SUB
from tests.relay_helpers import arun, running_http

SECRET = "a-share-secret-of-at-least-32-characters"


def _tokens() -> Tokens:
    return Tokens.from_entries(
        [
            {"name": "pub", "token": PUB, "role": "publish"},
            {"name": "sub", "token": SUB, "role": "subscribe"},
        ],
        share={"secret": SECRET},
    )


def _link(*devices: str) -> str:
    now = int(time.time())
    return sign_share(SECRET, devices, now + 3600, now)


def _store(db: Path) -> None:
    car = Track("car-1").move(600, 15, 90).stand(600, jitter=10).move(600, 15, 0)
    van = Track("van-2").stand(1800, every=10, jitter=30)
    with open_store(f"sqlite:///{db}") as store:
        store.write(car.fixes + van.fixes)


async def _get(http: aiohttp.ClientSession, path: str) -> tuple[int, str, str]:
    async with http.get(path) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def test_trips_and_stops_in_every_format(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"
    _store(db)

    async def main() -> None:
        async with running_http(db) as (_, _, http):
            status, kind, body = await _get(http, "/api/trips")
            assert (status, kind) == (200, "application/json")
            trips = json.loads(body)
            assert [t["device"] for t in trips] == ["car-1", "car-1"]
            assert trips[0]["distance_m"] == pytest.approx(9000, rel=0.02)
            status, kind, body = await _get(http, "/api/stops")
            stops = json.loads(body)
            assert [s["device"] for s in stops] == ["car-1", "van-2"]
            assert stops[1]["duration_s"] == pytest.approx(1790)
            status, kind, body = await _get(http, "/api/stops?format=csv&device=van-2")
            assert (status, kind) == (200, "text/csv; charset=utf-8")
            (row,) = csv.DictReader(io.StringIO(body))
            assert row["device"] == "van-2"
            status, kind, body = await _get(http, "/api/trips?format=geojson&device=car-1")
            assert (status, kind) == (200, "application/geo+json")
            features = json.loads(body)["features"]
            assert [f["geometry"]["type"] for f in features] == ["LineString", "LineString"]
            assert len(features[0]["geometry"]["coordinates"]) == features[0]["properties"]["fixes"]

    arun(main())


def test_the_parameters_are_the_cli_options(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"
    _store(db)

    async def main() -> None:
        async with running_http(db) as (_, _, http):
            _, _, body = await _get(http, "/api/trips?device=car-1&stop-duration=15m")
            assert len(json.loads(body)) == 1
            _, _, body = await _get(http, "/api/stops?stop-radius=5")
            assert json.loads(body) == []
            _, _, body = await _get(http, "/api/trips?until=2025-11-25T12:05:00Z")
            (trip,) = json.loads(body)
            assert trip["end"] == "2025-11-25T12:05:00.000Z"
            _, _, body = await _get(http, "/api/trips?gap=1s")
            assert json.loads(body) == []
            for query, reason in [
                ("format=xml", "format: unknown format 'xml'"),
                ("stop-radius=near", "stop-radius: expected metres"),
                ("stop-radius=-1", "stop-radius: must be a positive number"),
                ("stop-duration=0s", "stop-duration: must be a positive number"),
                ("gap=later", "gap: expected a duration"),
                ("since=yesterday", "since: expected an RFC 3339 time"),
                ("device=a%20b", "device: 'a b' is not"),
                ("gap=1h&gap=2h", "gap: give it at most once"),
                ("radius=5", "radius: unknown parameter (supported: device, since"),
            ]:
                status, _, body = await _get(http, f"/api/stops?{query}")
                assert status == 400, query
                assert body.startswith(reason), (query, body)

    arun(main())


def test_the_token_rules_of_get_api_positions(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"
    _store(db)

    async def main() -> None:
        async with running_http(db, tokens=_tokens()) as (_, _, http):
            for path in ("/api/trips", "/api/stops"):
                assert (await _get(http, path))[0] == 401
                assert (await _get(http, f"{path}?token={PUB}"))[0] == 403  # publish only
                status, _, body = await _get(http, f"{path}?token={SUB}")
                assert status == 200
                assert {i["device"] for i in json.loads(body)} >= {"car-1"}
            # A share link reads its own devices, and is refused any other.
            link = _link("van-2")
            status, _, body = await _get(http, f"/api/stops?token={link}")
            assert status == 200
            assert [s["device"] for s in json.loads(body)] == ["van-2"]
            status, _, body = await _get(http, f"/api/trips?device=car-1&token={link}")
            assert status == 403
            assert "this link shows only van-2" in body

    arun(main())


def test_a_store_that_is_gone_gets_503(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"
    _store(db)
    store = open_store(f"sqlite:///{db}")

    async def main() -> None:
        async with running_http(db, store) as (_, _, http):
            store.close()
            status, _, body = await _get(http, "/api/trips")
            assert status == 503
            assert body.startswith("store read failed: ")

    arun(main())


def test_a_long_answer_streams_in_chunks(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"
    track = Track("bus-9")
    for leg in range(6):
        track.move(900, 12, 90 * leg, every=1).stand(300, every=10)
    with open_store(f"sqlite:///{db}") as store:
        store.write(track.fixes)

    async def main() -> None:
        async with running_http(db) as (_, _, http):
            async with http.get("/api/trips?format=geojson") as response:
                assert response.status == 200
                assert response.headers["Transfer-Encoding"] == "chunked"
                body = await response.read()
            assert len(body) > 64 * 1024  # more than one chunk
            features = json.loads(body)["features"]
            assert len(features) == 6
            assert sum(f["properties"]["fixes"] for f in features) > 5000

    arun(main())
