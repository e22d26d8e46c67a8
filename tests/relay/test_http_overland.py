"""POST /overland on a real relay's HTTP listener: what the Overland app sends and reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from geotrack.sources.overland import parse_location
from tests.conftest import SAMPLES
from tests.factories import BUS, PUB, SUB, stored, tokens
from tests.relay_helpers import arun, collect, running_http, subscriber

#: The batch of Overland's README (iOS), as a file in samples/overland.
README_BATCH = SAMPLES / "overland" / "readme-batch.json"
OK = {"result": "ok"}


def location(i: int, device: str = "iphone", **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [-122.030581 + i * 1e-4, 37.3318 + i * 1e-4]},
        "properties": {
            "timestamp": f"2025-10-01T08:00:{i:02d}-0700",
            "altitude": 12,
            "speed": 4,
            "horizontal_accuracy": 30,
            "vertical_accuracy": -1,
            "course": 271.5,
            "motion": ["driving", "stationary"],
            "battery_state": "charging",
            "battery_level": 0.89,
            "device_id": device,
            "wifi": "",
            **properties,
        },
    }


async def post(
    http: aiohttp.ClientSession, body: Any, path: str = "/overland", **kwargs: Any
) -> tuple[int, Any]:
    data = body if isinstance(body, str) else json.dumps(body)
    async with http.post(path, data=data, **kwargs) as response:
        text = await response.text()
        if response.content_type == "application/json":
            return response.status, json.loads(text)
        return response.status, text


def test_a_batch_is_stored_delivered_and_answered_ok(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_http(db) as (relay, _, http):
            sub = await subscriber(relay)
            batch = {"locations": [location(i) for i in range(3)], "current": location(9)}
            assert await post(http, batch) == (200, OK)
            got = await collect(sub, 4)
            await sub.close()
            # The app retries a batch it did not see answered: nothing is stored twice.
            assert await post(http, batch) == (200, OK)
        assert len(got) == 4
        positions = stored(db)
        assert len(positions) == 4
        first = positions[0]
        assert first == parse_location(location(0))
        assert (first.device, first.ts, first.lat, first.lon) == (
            "iphone",
            "2025-10-01T15:00:00.000Z",
            37.3318,
            -122.030581,
        )
        assert (first.speed, first.heading, first.acc, first.alt) == (4, 271.5, 30, 12)
        assert first.attrs == {
            "batt": 89,
            "motion": "driving,stationary",
            "vertical_accuracy": -1,
            "battery_state": "charging",
        }

    arun(main())


def test_bad_locations_are_refused_alone_and_the_batch_answered_ok(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_http(db) as (_, _, http):
            batch = {
                "locations": [
                    location(0),
                    location(1, timestamp="yesterday"),
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [1, 95]},
                        "properties": {"timestamp": "2025-10-01T08:00:02Z", "device_id": "iphone"},
                    },
                    location(3),
                ]
            }
            status, answer = await post(http, batch)
            async with http.get("/metrics") as response:
                metrics = await response.text()
        assert status == 200 and answer["result"] == "ok"
        assert [r["location"] for r in answer["rejected"]] == ["locations[1]", "locations[2]"]
        assert answer["rejected"][0]["reason"].startswith("timestamp: ")
        assert answer["rejected"][1]["reason"].startswith("lat: ")
        assert [p.ts for p in stored(db)] == [
            "2025-10-01T15:00:00.000Z",
            "2025-10-01T15:00:03.000Z",
        ]
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        counts = {
            (s.labels["transport"], s.labels["result"]): s.value
            for s in families["geotrack_positions"].samples
        }
        assert counts[("overland", "stored")] == 2
        assert counts[("overland", "rejected")] == 2

    arun(main())


def test_batches_that_cannot_be_read_or_name_no_device_are_400(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_http(db) as (_, _, http):
            status, text = await post(http, "{not json")
            assert status == 400 and text.startswith("body: not valid JSON")
            status, text = await post(http, {"location": []})
            assert status == 400 and text.startswith("locations: expected")
            # The app's Device ID left empty: the batch stays on the phone until it is set...
            unnamed = {"locations": [location(0, device=""), location(1, device="")]}
            status, text = await post(http, unnamed)
            assert status == 400 and "Device ID" in text and "?device=ID" in text
            # ...or the receiver URL names the device.
            assert await post(http, unnamed, "/overland?device=jane phone") == (200, OK)
            status, text = await post(http, unnamed, "/overland?device=jane/phone")
            assert status == 400 and text.startswith("device: ")
            assert await post(http, {"locations": []}) == (200, OK)
        assert [p.device for p in stored(db)] == ["jane_phone", "jane_phone"]

    arun(main())


def test_tokens_bearer_header_or_query_and_device_grants(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_http(db, tokens=tokens()) as (_, _, http):
            batch = {"locations": [location(0, device="bus-7")]}
            assert (await post(http, batch))[0] == 401
            assert (await post(http, batch, headers={"Authorization": f"Bearer {SUB}"}))[0] == 403
            # Overland sends its access token as a bearer token; a URL can carry ?token=.
            ok = await post(http, batch, headers={"Authorization": f"Bearer {BUS}"})
            assert ok == (200, OK)
            van = {"locations": [location(1, device="van-1")]}
            status, text = await post(http, van, f"/overland?token={BUS}")
            assert status == 403 and "van-1" in text
            assert await post(http, van, f"/overland?token={PUB}") == (200, OK)
        assert sorted(p.device for p in stored(db)) == ["bus-7", "van-1"]
        assert all("token" not in (p.attrs or {}) for p in stored(db))

    arun(main())


def test_the_readme_batch_as_the_app_documents_it(tmp_path: Path) -> None:
    db = tmp_path / "db"
    body = README_BATCH.read_text(encoding="utf-8")

    async def main() -> None:
        async with running_http(db) as (_, _, http):
            # Its device_id is empty, as the app sends it when none is configured.
            assert (await post(http, body))[0] == 400
            assert await post(http, body, "/overland?device=phone") == (200, OK)

    arun(main())
    [p] = stored(db)
    assert (p.device, p.ts, p.lat, p.lon, p.speed, p.acc) == (
        "phone",
        "2015-10-01T15:00:00.000Z",
        37.3318,
        -122.030581,
        4,
        30,
    )
