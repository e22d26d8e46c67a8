"""The HTTP listener (docs/http.md) against a real relay and store on loopback.

Device requests are the ones real clients send (sources in tests/relay/test_http_devices.py).
Every test checks what lands in the store; a WebSocket subscriber sees HTTP-ingested
positions exactly as it sees published ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import signal
import sqlite3
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from geotrack.auth import Tokens
from geotrack.export import export
from geotrack.relay import Relay
from geotrack.relay.http import CONTENT_TYPES, HttpListener
from geotrack.schema import Position, encode_position
from geotrack.store import Store, open_store
from tests.conftest import free_port
from tests.device_requests import TRACCAR_JSON
from tests.factories import BUS, PUB, SUB, T0_S, stored, tokens
from tests.relay_helpers import (
    arun,
    collect,
    publisher,
    relay_process,
    roundtrip,
    running_http,
    running_relay,
    subscriber,
    wait_listening,
    within,
)

# Traccar Client (Android) posts its query string with an empty body.
TRACCAR_CLIENT = (
    "/?id=123456789012345&timestamp=1764072000&lat=52.52&lon=13.405&speed=19.4384"
    "&bearing=90.0&altitude=34.0&accuracy=4.0&batt=76.0"
)
# OwnTracks Android, ParserTest.kt.
OWNTRACKS = (
    '{"_type":"location","tid":"s5","acc":1600,"alt":0.0,"batt":99,"bs":3,"conn":"w",'
    '"lat":52.3153748,"lon":5.0408462,"t":"p","tst":1514455575,"vac":0,"vel":36,'
    '"inregions":["Testregion1","Testregion2"]}'
)


@contextlib.asynccontextmanager
async def serving(
    db: Path, store: Store | None = None, tokens: Tokens | None = None
) -> AsyncIterator[tuple[Relay, HttpListener, aiohttp.ClientSession]]:
    """A relay on a free port, its HTTP listener on another, and a client session."""
    async with running_http(db, store, http_tokens=tokens) as served:
        yield served


async def call(
    http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, str, bytes]:
    async with http.request(method, path, **kwargs) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


# -- device clients --------------------------------------------------------------------------


def test_traccar_client_request_is_stored_and_delivered_like_a_websocket_one(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with serving(db) as (relay, _, http):
            sub = await subscriber(relay)
            status, _, body = await call(http, "POST", TRACCAR_CLIENT)
            assert (status, body) == (200, b"")
            (p,) = stored(db)
            assert (p.device, p.ts, p.heading, p.alt, p.acc, p.attrs) == (
                "123456789012345",
                "2025-11-25T12:00:00.000Z",
                90.0,
                34.0,
                4.0,
                {"batt": 76.0},
            )
            assert p.speed == pytest.approx(10.0, rel=1e-5)  # 19.4384 knots
            frame = await within(sub.recv())
            assert frame == f"[{encode_position(p).decode()}]"  # the canonical stored form
            # The same fix published over the WebSocket (as another device) arrives in
            # exactly the same form: the subscriber cannot tell the transports apart.
            twin = {**json.loads(encode_position(p)), "device": "twin"}
            async with await publisher(relay) as ws:
                assert (await roundtrip(ws, twin))["stored"] == 1
            over_ws = json.loads(await within(sub.recv()))
            assert over_ws == [{**json.loads(frame)[0], "device": "twin"}]
            await sub.close()

    arun(main())


def test_osmand_get_form_body_and_json_variant(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with serving(db) as (_, _, http):
            # OsmAnd: GET, milliseconds, knots.
            osmand = "/?id=osmand&lat=52.5&lon=13.4&timestamp=1764072000123&speed=1&hdop=1.5"
            assert (await call(http, "GET", osmand))[0] == 200
            # GPSLogger: POST with a form body and no query string.
            form = "id=gpslogger&lat=52.6&lon=13.5&timestamp=1764072001&altitude=38.0&hdop="
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            assert (await call(http, "POST", "/", data=form, headers=headers))[0] == 200
            # The newer Traccar Client: JSON.
            for body in TRACCAR_JSON:
                status, _, _ = await call(
                    http, "POST", "/", data=body, headers={"Content-Type": "application/json"}
                )
                assert status == 200
            # Resending is safe: a duplicate is answered 200 too, and stored once.
            assert (await call(http, "GET", osmand))[0] == 200
        by_device = {p.device: p for p in stored(db)}
        assert sorted(by_device) == ["48241179", "658765", "8737767034", "gpslogger", "osmand"]
        osm = by_device["osmand"]
        assert (osm.ts, osm.attrs) == ("2025-11-25T12:00:00.123Z", {"hdop": 1.5})
        assert osm.speed == pytest.approx(0.514444, rel=1e-5)
        assert by_device["gpslogger"].alt == 38.0
        assert by_device["8737767034"].speed == 18.67  # JSON speed: metres per second
        assert len(stored(db)) == 5  # the first JSON device sent twice, stored once

    arun(main())


def test_osmand_bad_requests_get_400_with_a_one_line_reason(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with serving(db) as (relay, _, http):
            cases: list[tuple[str, str, dict[str, Any], str]] = [
                ("GET", "/?lat=1&lon=2", {}, "id: required"),
                ("GET", "/?id=a&lat=95&lon=2", {}, "lat: expected `float` <= 90.0"),
                ("GET", "/?id=a%2Fb&lat=1&lon=2", {}, "id: 'a/b' cannot be a device id"),
                (
                    "POST",
                    "/",
                    {"data": "not json", "headers": {"Content-Type": "application/json"}},
                    "body: not valid JSON",
                ),
                (
                    "POST",
                    "/",
                    {"data": b"id=\xff", "headers": {}},
                    "body: a form body must be UTF-8",
                ),
                # GET / with no parameters at all is the web map (tests/relay/test_http_web.py).
                ("GET", "/?timestamp=1764072000", {}, "id: required"),
            ]
            for method, path, kwargs, reason in cases:
                status, ctype, body = await call(http, method, path, **kwargs)
                assert status == 400, path
                assert ctype.startswith("text/plain")
                text = body.decode()
                assert text.startswith(reason) and text.endswith("\n") and text.count("\n") == 1
            assert relay.counters.transport("osmand").rejected == len(cases)
        assert stored(db) == []

    arun(main())


def test_owntracks_http_mode(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with serving(db) as (relay, _, http):
            sub = await subscriber(relay)
            json_type = {"Content-Type": "application/json; charset=utf-8"}
            # The Android app: X-Limit-U and X-Limit-D headers.
            headers = {**json_type, "X-Limit-U": "jane@example.com", "X-Limit-D": "phone"}
            status, ctype, body = await call(
                http, "POST", "/owntracks", data=OWNTRACKS, headers=headers
            )
            assert (status, ctype, body) == (200, "application/json", b"[]")
            # The Recorder's convention: ?u=&d= in the URL.
            other = OWNTRACKS.replace("1514455575", "1514455580")
            assert (await call(http, "POST", "/owntracks?u=bob&d=tab", data=other))[0] == 200
            # Other message types are accepted and ignored.
            transition = (
                '{"_type":"transition","acc":3.075,"desc":"myregion","event":"leave",'
                '"lat":52.71234,"lon":-1.61234123,"t":"l","tid":"ce","tst":1603209966,'
                '"wtst":1558351273}'
            )
            assert (await call(http, "POST", "/owntracks?u=bob", data=transition))[2] == b"[]"
            status, _, body = await call(
                http, "POST", "/owntracks?u=bob", data='{"_type":"encrypted","data":"x"}'
            )
            assert status == 400 and body.startswith(b"_type: encrypted payloads cannot")
            status, _, body = await call(http, "POST", "/owntracks", data='{"_type":"location"}')
            assert status == 400 and body.startswith(b"device: unknown")
            got = await collect(sub, 2)
            await sub.close()
        assert sorted(p["device"] for p in got) == ["bob:tab", "jane_at_example.com:phone"]
        jane = next(p for p in stored(db) if p.device == "jane_at_example.com:phone")
        assert (jane.ts, jane.acc, jane.speed) == ("2017-12-28T10:06:15.000Z", 1600.0, 10.0)
        assert jane.attrs is not None and jane.attrs["inregions"] == '["Testregion1","Testregion2"]'

    arun(main())


# -- REST ------------------------------------------------------------------------------------


def test_rest_answers_the_websocket_ack_for_the_same_frame(tmp_path: Path) -> None:
    frames: list[Any] = [
        [
            {"device": "a", "lat": 1, "lon": 2, "ts": T0_S},
            {"device": "a", "lat": 1, "lon": 2, "ts": "2025-11-25T12:00:00Z"},  # same key
            {"device": "a", "lat": 95, "lon": 2, "ts": T0_S + 1},
            {"device": "a", "lat": 1, "lon": 2, "ts": T0_S + 2, "colour": "red"},
            {"device": "b", "lat": 1, "lon": 2, "ts": T0_S, "speed": 1.5, "attrs": {"k": 1}},
        ],
        {"device": "a", "lat": 1, "lon": 2, "ts": T0_S},  # a lone object, now a duplicate
        "hello",  # not JSON: an error frame
        [],  # an empty batch: an error frame
    ]

    async def main() -> None:
        async with running_relay(tmp_path / "ws") as ws_relay, await publisher(ws_relay) as ws:
            over_ws = []
            for frame in frames:
                await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
                over_ws.append(await within(ws.recv()))
        async with serving(tmp_path / "rest") as (relay, _, http):
            for frame, expected in zip(frames, over_ws, strict=True):
                data = frame if isinstance(frame, str) else json.dumps(frame)
                status, ctype, body = await call(http, "POST", "/api/positions", data=data)
                assert ctype == "application/json"
                assert body.decode() == expected  # byte for byte
                assert status == (400 if json.loads(expected)["type"] == "error" else 200)
            counts = relay.counters.transport("rest")
            assert (counts.stored, counts.duplicates, counts.rejected) == (2, 2, 2)
        assert stored(tmp_path / "rest") == stored(tmp_path / "ws")

    arun(main())


def test_devices_list_their_last_fix(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (_, _, http):
            frame = [
                {"device": "b", "lat": 1, "lon": 2, "ts": T0_S + 5},
                {"device": "a", "lat": 1, "lon": 2, "ts": T0_S + 9, "speed": 2.0},
                {"device": "a", "lat": 3, "lon": 4, "ts": T0_S},
            ]
            await call(http, "POST", "/api/positions", json=frame)
            status, ctype, body = await call(http, "GET", "/api/devices")
            assert (status, ctype) == (200, "application/json")
            assert json.loads(body) == [
                {
                    "device": "a",
                    "last": {
                        "device": "a",
                        "lat": 1.0,
                        "lon": 2.0,
                        "ts": "2025-11-25T12:00:09.000Z",
                        "speed": 2.0,
                    },
                },
                {
                    "device": "b",
                    "last": {
                        "device": "b",
                        "lat": 1.0,
                        "lon": 2.0,
                        "ts": "2025-11-25T12:00:05.000Z",
                    },
                },
            ]
            _, _, body = await call(http, "GET", "/api/devices?device=b&device=nobody")
            assert [d["device"] for d in json.loads(body)] == ["b"]
            status, _, body = await call(http, "GET", "/api/devices?colour=red")
            assert status == 400 and body.startswith(b"colour: unknown parameter")

    arun(main())


# -- history export --------------------------------------------------------------------------


def many(devices: int = 3, per_device: int = 2000) -> list[Position]:
    return [
        Position(
            device=f"car-{d}",
            lat=52.5 + i * 1e-5,
            lon=13.4 + d * 1e-3,
            ts=T0_S + i,
            speed=float(i % 30),
            attrs={"seq": i} if i % 7 == 0 else None,
        )
        for d in range(devices)
        for i in range(per_device)
    ]


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "gpx", "geojson", "kml"])
def test_history_streams_in_every_export_format(tmp_path: Path, fmt: str) -> None:
    db = tmp_path / "db"
    with open_store(f"sqlite:///{db}") as store:
        store.write(many())

    def expected(**query: Any) -> bytes:
        with open_store(f"sqlite:///{db}") as store:
            out = io.StringIO(newline="")
            export(fmt, store.query(**query), out)
            return out.getvalue().encode()

    async def main() -> None:
        async with serving(db) as (_, _, http):
            async with http.get(f"/api/positions?format={fmt}") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == CONTENT_TYPES[fmt]
                assert response.headers["Transfer-Encoding"] == "chunked"  # streamed
                chunks = [chunk async for chunk in response.content.iter_any()]
            whole = b"".join(chunks)
            assert whole == expected()
            assert len(whole) > 256 * 1024  # several 64 KB chunks' worth
            # Filters by device and fix time (RFC 3339 or Unix seconds).
            path = (
                f"/api/positions?format={fmt}&device=car-1&device=car-2"
                f"&since=2025-11-25T12:10:00Z&until={T0_S + 900}"
            )
            _, _, body = await call(http, "GET", path)
            assert body == expected(
                devices=["car-1", "car-2"],
                since_ms=(T0_S + 600) * 1000,
                until_ms=(T0_S + 900) * 1000,
            )

    arun(main())


def test_history_defaults_to_ndjson_and_refuses_bad_parameters(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (_, _, http):
            await call(
                http, "POST", "/api/positions", json={"device": "a", "lat": 1, "lon": 2, "ts": T0_S}
            )
            status, ctype, body = await call(http, "GET", "/api/positions")
            assert (status, ctype) == (200, CONTENT_TYPES["ndjson"])
            assert json.loads(body) == {
                "device": "a",
                "lat": 1.0,
                "lon": 2.0,
                "ts": "2025-11-25T12:00:00.000Z",
            }
            # Nothing matches: an empty but well-formed document.
            _, _, body = await call(http, "GET", "/api/positions?format=geojson&device=none")
            assert json.loads(body) == {"type": "FeatureCollection", "features": []}
            for query, reason in [
                ("format=shp", "format: unknown format 'shp'"),
                ("since=yesterday", "since: expected an RFC 3339 time"),
                ("until=2025-11-25", "until: expected an RFC 3339 time"),
                ("device=a/b", "device: 'a/b' is not 1-64 characters"),
                ("gap=soon", "gap: expected a duration"),
                ("bbox=1,2,3,4", "bbox: unknown parameter"),
                ("format=csv&format=gpx", "format: give it at most once"),
            ]:
                status, _, body = await call(http, "GET", f"/api/positions?{query}")
                assert status == 400 and body.decode().startswith(reason), query

    arun(main())


def test_a_client_leaving_mid_export_stops_the_export(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with open_store(f"sqlite:///{db}") as store:
        store.write(many(devices=5, per_device=4000))

    async def main() -> None:
        async with serving(db) as (_, listener, http):
            async with http.get("/api/positions?format=csv") as response:
                first = await response.content.read(1024)
                assert first.startswith(b"device,ts,lat,lon")
                response.close()  # gone after one chunk
            # The export thread notices and the listener still stops promptly.
            started = asyncio.get_running_loop().time()
            await listener.stop()
            assert asyncio.get_running_loop().time() - started < 3

    arun(main())


# -- failures --------------------------------------------------------------------------------


def test_a_store_that_cannot_write_gets_503_and_nothing_is_acked(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = open_store(f"sqlite:///{db}?busy_timeout=100")

    async def main() -> None:
        async with serving(db, store) as (relay, _, http):
            # Another connection holds the write lock: writes fail after 100 ms.
            blocker = sqlite3.connect(db, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                requests: list[tuple[str, str, dict[str, Any]]] = [
                    ("GET", TRACCAR_CLIENT, {}),
                    ("POST", "/owntracks?u=jane&d=phone", {"data": OWNTRACKS}),
                    (
                        "POST",
                        "/api/positions",
                        {"json": {"device": "a", "lat": 1, "lon": 2, "ts": T0_S}},
                    ),
                ]
                for method, path, kwargs in requests:
                    status, _, body = await call(http, method, path, **kwargs)
                    assert status == 503, path
                    assert b"store write failed" in body and b"locked" in body
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert stored(db) == []
            # The device retries (as it must: it was never told 200): now it is stored.
            for method, path, kwargs in requests:
                assert (await call(http, method, path, **kwargs))[0] == 200
            assert len(stored(db)) == 3
            assert relay.counters.stored == 3

    try:
        arun(main())
    finally:
        store.close()


def test_healthz_and_reads_answer_503_when_the_store_is_gone(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = open_store(f"sqlite:///{db}")

    async def main() -> None:
        async with serving(db, store) as (_, _, http):
            assert await call(http, "GET", "/healthz") == (
                200,
                "text/plain; charset=utf-8",
                b"ok\n",
            )
            store.close()
            status, _, body = await call(http, "GET", "/healthz")
            assert status == 503 and body.startswith(b"store unreachable:") and b"closed" in body
            status, _, body = await call(http, "GET", "/api/positions?format=gpx")
            assert status == 503 and body.startswith(b"store read failed:")
            status, _, body = await call(http, "GET", "/api/devices")
            assert status == 503 and body.startswith(b"store read failed:")

    arun(main())


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_scrape_cleanly(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db", tokens=None) as (relay, _, http):
            sub = await subscriber(relay)
            async with await publisher(relay) as ws:
                await roundtrip(
                    ws,
                    [
                        {"device": "w", "lat": 1, "lon": 2, "ts": T0_S},
                        {"device": "w", "lat": 91, "lon": 2, "ts": T0_S},
                    ],
                )
                await call(http, "GET", TRACCAR_CLIENT)
                await call(http, "GET", TRACCAR_CLIENT)  # a duplicate
                await call(http, "POST", "/owntracks?u=u", data=OWNTRACKS)
                await call(http, "GET", "/?lat=1")  # rejected
                status, ctype, body = await call(http, "GET", "/metrics")
            await sub.close()
        assert status == 200
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        positions = {
            (s.labels["transport"], s.labels["result"]): s.value
            for s in families["geotrack_positions"].samples
        }
        assert positions[("websocket", "stored")] == 1
        assert positions[("websocket", "rejected")] == 1
        assert positions[("osmand", "stored")] == 1
        assert positions[("osmand", "duplicate")] == 1
        assert positions[("osmand", "rejected")] == 1
        assert positions[("owntracks", "stored")] == 1
        assert positions[("rest", "stored")] == 0
        assert families["geotrack_positions"].type == "counter"
        connections = {s.labels["role"]: s.value for s in families["geotrack_connections"].samples}
        assert connections == {"publisher": 1, "subscriber": 1}
        latency = families["geotrack_ack_latency_seconds"]
        assert latency.type == "histogram"
        buckets = [s for s in latency.samples if s.name.endswith("_bucket")]
        assert buckets[-1].labels["le"] == "+Inf"
        assert [b.value for b in buckets] == sorted(b.value for b in buckets)  # cumulative
        count = next(s.value for s in latency.samples if s.name.endswith("_count"))
        assert count == buckets[-1].value == 4  # the frame and three stored HTTP requests
        assert next(s.value for s in latency.samples if s.name.endswith("_sum")) > 0
        assert families["geotrack_subscriber_drops"].samples[0].value == 0
        requests = {
            (s.labels["route"], s.labels["code"]): s.value
            for s in families["geotrack_http_requests"].samples
        }
        assert requests[("/", "200")] == 2 and requests[("/", "400")] == 1

    arun(main())


# -- auth ------------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_guard_every_endpoint_but_health_and_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db"
    caplog.set_level(logging.DEBUG, logger="geotrack")

    async def main() -> None:
        async with serving(db, tokens=tokens()) as (_, _, http):
            for method, path in [
                ("GET", "/?id=bus-1&lat=1&lon=2"),
                ("POST", "/owntracks"),
                ("POST", "/api/positions"),
                ("GET", "/api/positions"),
                ("GET", "/api/devices"),
            ]:
                async with http.request(method, path) as response:
                    assert response.status == 401, path
                    challenges = response.headers.getall("WWW-Authenticate")
                    assert challenges == [
                        'Bearer realm="geotrack"',
                        'Basic realm="geotrack", charset="UTF-8"',
                    ]
                status, _, _ = await call(
                    http, method, path, headers=bearer("wrong-token-0123456789")
                )
                assert status == 401
            assert (await call(http, "GET", "/healthz"))[0] == 200
            assert (await call(http, "GET", "/metrics"))[0] == 200

            # Roles: a subscriber may not publish, a publisher may not read.
            status, _, body = await call(http, "GET", f"/?id=x&lat=1&lon=2&token={SUB}")
            assert status == 403 and body == b"token 'sub' may not publish\n"
            status, _, _ = await call(http, "GET", "/api/devices", headers=bearer(PUB))
            assert status == 403

            # ?token= works, and never lands in attrs.
            status, _, _ = await call(
                http, "GET", f"/?id=car&lat=1&lon=2&timestamp={T0_S}&token={PUB}"
            )
            assert status == 200
            # A token limited to bus-*: other devices are refused with 403 ...
            status, _, body = await call(http, "GET", f"/?id=car&lat=1&lon=2&token={BUS}")
            assert status == 403 and body.startswith(
                b"device: token 'bus' may not publish as 'car'"
            )
            # ... OwnTracks with Basic auth (the token as the password) ...
            status, _, _ = await call(
                http, "POST", "/owntracks?u=bus-7", data=OWNTRACKS, headers=basic("bus-7", BUS)
            )
            assert status == 200
            status, _, _ = await call(
                http, "POST", "/owntracks?u=van-1", data=OWNTRACKS, headers=basic("van-1", BUS)
            )
            assert status == 403
            # ... and REST rejects those positions in the ack, storing the others.
            frame = [
                {"device": "bus-1", "lat": 1, "lon": 2, "ts": T0_S},
                {"device": "car-1", "lat": 1, "lon": 2, "ts": T0_S},
                {"device": "bus-2", "lat": 91, "lon": 2, "ts": T0_S},
            ]
            status, _, body = await call(
                http, "POST", "/api/positions", json=frame, headers=bearer(BUS)
            )
            assert status == 200
            assert json.loads(body) == {
                "type": "ack",
                "stored": 1,
                "duplicates": 0,
                "rejected": [
                    {"index": 1, "error": "device: token 'bus' may not publish as 'car-1'"},
                    {"index": 2, "error": "lat: expected `float` <= 90.0"},
                ],
            }
            status, _, body = await call(http, "GET", f"/api/positions?token={SUB}")
            assert status == 200 and body.count(b"\n") == 3
            assert (await call(http, "GET", "/api/devices", headers=basic("x", SUB)))[0] == 200

        assert sorted(p.device for p in stored(db)) == ["bus-1", "bus-7", "car"]
        assert all(p.attrs is None or "token" not in p.attrs for p in stored(db))

    arun(main())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/positions" in logged  # the access log ran ...
    for token in (PUB, SUB, BUS):
        assert token not in logged  # ... without a token in it


# -- the command -----------------------------------------------------------------------------


def test_serve_with_http_port(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    store = "sqlite:///geotrack.db"
    with relay_process(store, port, "--http-port", str(http_port), cwd=tmp_path) as proc:
        wait_listening(http_port, proc)
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}{TRACCAR_CLIENT}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/healthz", timeout=10
        ) as response:
            assert response.read() == b"ok\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log = proc.stdout.read() if proc.stdout else ""
    assert f"HTTP on http://127.0.0.1:{http_port}" in log
    assert "stopped: 1 stored" in log
    assert [p.device for p in stored(tmp_path / "geotrack.db")] == ["123456789012345"]


def test_an_unknown_path_gets_404_naming_every_endpoint(tmp_path: Path) -> None:
    # The 404's list of endpoints is hand-written: hold it to the routes the listener has.
    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, listener, http):
            async with http.get("/nowhere") as r:
                assert r.status == 404
                text = await r.text()
            assert listener._runner is not None
            app = listener._runner.app
            assert isinstance(app, aiohttp.web.Application)
            paths = {
                resource.canonical.split("/{")[0]
                for resource in app.router.resources()
                if not resource.canonical.startswith(("/static", "/map"))
            }
            assert paths >= {"/api/trips", "/api/fences", "/api/stream"}
            for path in paths:
                assert path in text, path

    arun(main())
