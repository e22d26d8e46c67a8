"""Long polling, Server-Sent Events and cheap short polls, against a real relay and listener.

Every test runs the relay and its HTTP listener on free loopback ports with a real SQLite
file; positions come in through a real WebSocket publisher, as they would in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection

from geotrack.auth import Tokens, sign_share
from geotrack.relay import recent
from geotrack.store import open_store
from tests.factories import PUB, SUB, pos
from tests.mongo_servers import fresh_database, nx27017_server
from tests.relay_helpers import arun, fix, publisher, roundtrip, running_http, within

SECRET = "a-share-secret-of-at-least-32-characters"


def table() -> Tokens:
    return Tokens.from_entries(
        [
            {"name": "pub", "token": PUB, "role": "publish"},
            {"name": "sub", "token": SUB, "role": "subscribe"},
        ],
        share={"secret": SECRET},
    )


async def publish(ws: ClientConnection, *fixes: dict[str, Any]) -> None:
    ack = await roundtrip(ws, list(fixes))
    assert ack["type"] == "ack" and ack["stored"] == len(fixes), ack


async def poll(http: aiohttp.ClientSession, query: str, **headers: str) -> dict[str, Any]:
    async with http.get(f"/api/positions/poll?{query}", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("application/json")
        answer: dict[str, Any] = await response.json()
        return answer


def ids(positions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(p["device"], p["ts"]) for p in positions]


# -- long polling ------------------------------------------------------------------------------


def test_long_polls_miss_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (relay, _, http):
            start = await poll(http, "")
            assert start["positions"] == [] and start["cursor"].startswith("sqlite:")
            ws = await publisher(relay)
            await publish(ws, fix("car-1", 0), fix("car-1", 1), fix("car-2", 0))
            # News exists: answered at once, whatever the wait.
            first = await within(poll(http, f"since={start['cursor']}&wait=60"), 5)
            assert len(first["positions"]) == 3
            # Nothing newer: held until the next commit, then exactly that.
            held = asyncio.create_task(poll(http, f"since={first['cursor']}&wait=60"))
            await asyncio.sleep(0.3)
            assert not held.done()
            await publish(ws, fix("car-1", 2))
            second = await within(held, 5)
            assert ids(second["positions"]) == [("car-1", "2025-11-25T12:00:02.000Z")]
            # Many commits between polls: all of them, in store order, once.
            for i in range(3, 23):
                await publish(ws, fix("car-1", i))
            third = await poll(http, f"since={second['cursor']}&wait=0")
            assert [p["ts"][17:19] for p in third["positions"]] == [f"{i:02}" for i in range(3, 23)]
            fourth = await poll(http, f"since={third['cursor']}&wait=0")
            assert fourth == {"cursor": third["cursor"], "more": False, "positions": []}
            await ws.close()

    arun(main())


def test_an_answer_holds_at_most_1000_positions_and_says_when_there_are_more(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (relay, _, http):
            cursor = (await poll(http, ""))["cursor"]
            ws = await publisher(relay)
            await publish(ws, *(fix("car-1", i) for i in range(600)))
            await publish(ws, *(fix("car-2", i) for i in range(600)))
            first = await poll(http, f"since={cursor}&wait=0")
            second = await poll(http, f"since={first['cursor']}&wait=0")
            assert (len(first["positions"]), first["more"]) == (1000, True)
            assert (len(second["positions"]), second["more"]) == (200, False)
            assert len(set(ids(first["positions"] + second["positions"]))) == 1200
            await ws.close()

    arun(main())


def test_a_wait_that_runs_out_answers_nothing_and_the_same_cursor(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, _, http):
            cursor = (await poll(http, ""))["cursor"]
            answer = await within(poll(http, f"since={cursor}&wait=300ms"), 5)
            assert answer == {"cursor": cursor, "more": False, "positions": []}

    arun(main())


def test_a_cursor_older_than_memory_and_a_time_are_read_from_the_store(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with open_store(f"sqlite:///{db}") as store:
        store.write([pos("car-1", i) for i in range(1500)])

    async def main() -> None:
        async with running_http(db) as (relay, _, http):
            # sqlite:0 is before anything this relay has seen: the store answers, 1,000 at
            # a time, and the cursors lead on into memory without a gap.
            got: list[dict[str, Any]] = []
            mores = []
            cursor = "sqlite:0"
            while len(got) < 1500:
                answer = await poll(http, f"since={cursor}&wait=0")
                assert answer["positions"], "the store's positions come before any wait"
                got.extend(answer["positions"])
                mores.append(answer["more"])
                cursor = answer["cursor"]
            assert len(set(ids(got))) == 1500
            assert mores == [True, False]  # a full answer says to ask again at once
            ws = await publisher(relay)
            await publish(ws, fix("car-9", 0))
            last = await poll(http, f"since={cursor}&wait=5")
            assert ids(last["positions"]) == [("car-9", "2025-11-25T12:00:00.000Z")]
            # since= a time replays what was stored since then.
            replay = await poll(http, "since=1h&device=car-9&wait=0")
            assert ids(replay["positions"]) == ids(last["positions"])
            await ws.close()

    arun(main())


def test_filters_narrow_long_polls_and_move_the_cursor_past_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (relay, _, http):
            cursor = (await poll(http, ""))["cursor"]
            ws = await publisher(relay)
            held = asyncio.create_task(poll(http, f"since={cursor}&device=bus-1&wait=60"))
            boxed = asyncio.create_task(poll(http, f"since={cursor}&bbox=0,0,1,1&wait=60"))
            await publish(ws, fix("car-1", 0))  # neither: they keep waiting
            await asyncio.sleep(0.3)
            assert not held.done() and not boxed.done()
            await publish(ws, fix("bus-1", 0), fix("car-1", 1, lat=0.5, lon=0.5))
            assert ids((await within(held, 5))["positions"]) == [
                ("bus-1", "2025-11-25T12:00:00.000Z")
            ]
            assert ids((await within(boxed, 5))["positions"]) == [
                ("car-1", "2025-11-25T12:00:01.000Z")
            ]
            await ws.close()

    arun(main())


@pytest.mark.parametrize(
    ("query", "start"),
    [
        ("colour=red", "colour: unknown parameter (accepted by /api/positions/poll: device"),
        ("wait=soon", "wait: expected a duration"),
        ("wait=10m", "wait: must be 0 to 120 seconds"),
        ("since=yesterday", "since: expected an RFC 3339 time"),
        ("since=sqlite:x", "cursor: 'sqlite:x' is not a SQLite cursor"),
        ("bbox=1,2,3", "bbox:"),
        ("device=a/b", "device:"),
        ("since=1h&since=2h", "since: give it at most once"),
    ],
)
def test_bad_parameters_are_answered_400_in_one_line(
    tmp_path: Path, query: str, start: str
) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, _, http):
            for path in ("/api/positions/poll", "/api/stream"):
                if path == "/api/stream" and "wait" in query:
                    continue
                async with http.get(f"{path}?{query}") as response:
                    text = await response.text()
                    assert response.status == 400, text
                    expected = start.replace("/api/positions/poll", path)
                    if path == "/api/stream":
                        expected = expected.split(" (accepted")[0]
                    assert text.startswith(expected) and text.count("\n") == 1, text

    arun(main())


def test_tokens_and_share_links_hold_for_the_feeds(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db", tokens=table()) as (relay, _, http):
            for path in ("/api/positions/poll", "/api/stream"):
                async with http.get(path) as response:
                    assert response.status == 401
                async with http.get(f"{path}?token={PUB}") as response:
                    assert response.status == 403
            now = int(time.time())
            link = sign_share(SECRET, ["bus-1"], now + 3600, now)
            async with http.get(f"/api/positions/poll?token={link}&device=car-1") as response:
                assert response.status == 403
            cursor = (await poll(http, f"token={link}"))["cursor"]
            ws = await publisher(relay, additional_headers={"Authorization": f"Bearer {PUB}"})
            await publish(ws, fix("car-1", 0), fix("bus-1", 0))
            shown = await poll(http, f"since={cursor}&wait=5", Authorization=f"Bearer {link}")
            assert ids(shown["positions"]) == [("bus-1", "2025-11-25T12:00:00.000Z")]
            everything = await poll(http, f"since={cursor}&wait=5&token={SUB}")
            assert len(everything["positions"]) == 2
            await ws.close()

    arun(main())


# -- Server-Sent Events ------------------------------------------------------------------------


class EventStream:
    """A client of /api/stream that parses events as EventSource does."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.last_id: str | None = None
        self.comments: list[str] = []

    async def next_event(self) -> tuple[str, list[dict[str, Any]]]:
        """The next event with data, as (id, positions)."""
        data: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("id: "):
                self.last_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                assert self.last_id is not None
                return self.last_id, json.loads("\n".join(data))


@contextlib.asynccontextmanager
async def stream(
    http: aiohttp.ClientSession, query: str = "", **headers: str
) -> AsyncIterator[EventStream]:
    async with http.get(f"/api/stream?{query}", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        yield EventStream(response)


def test_an_event_stream_resumes_from_last_event_id_without_gaps(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (relay, _, http):
            ws = await publisher(relay)
            async with stream(http) as events:
                await publish(ws, fix("car-1", 0), fix("car-1", 1))
                first_id, first = await within(events.next_event(), 5)
                assert len(first) == 2 and first_id.startswith("sqlite:")
            # Disconnected: what is stored meanwhile comes on reconnecting with Last-Event-ID.
            for i in range(2, 12):
                await publish(ws, fix("car-1", i))
            async with stream(http, "since=sqlite:999999", **{"Last-Event-ID": first_id}) as events:
                got: list[dict[str, Any]] = []
                while len(got) < 10:
                    _, batch = await within(events.next_event(), 5)
                    got.extend(batch)
                await publish(ws, fix("car-1", 12))
                _, live = await within(events.next_event(), 5)
            assert [p["ts"][17:19] for p in got + live] == [f"{i:02}" for i in range(2, 13)]
            # since= starts a stream at a cursor the same way.
            async with stream(http, f"since={first_id}&device=car-1") as events:
                _, again = await within(events.next_event(), 5)
                assert again[0]["ts"][17:19] == "02"
            await ws.close()

    arun(main())


def test_an_idle_stream_sends_keep_alive_comments(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, listener, http):
            listener.feeds.keepalive = 0.2
            async with stream(http) as events:
                read = events.response.content.readline
                lines = [await within(read(), 5) for _ in range(5)]
            assert lines == [b"retry: 2000\n", b"\n", b"id: sqlite:0\n", b"\n", b": keep-alive\n"]

    arun(main())


# -- lifecycle and limits --------------------------------------------------------------------


def test_stopping_the_listener_ends_held_requests_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, listener, http):
            cursor = (await poll(http, ""))["cursor"]
            held = asyncio.create_task(poll(http, f"since={cursor}&wait=120"))
            streamed = asyncio.create_task(_read_to_end(http))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            await within(listener.stop(), 5)
            assert await within(held, 5) == {"cursor": cursor, "more": False, "positions": []}
            assert (await within(streamed, 5)).startswith(b"retry: ")
            assert time.monotonic() - started < 5  # not the 120 s wait, nor the 5 s grace

    arun(main())


async def _read_to_end(http: aiohttp.ClientSession) -> bytes:
    async with http.get("/api/stream") as response:
        return await response.read()


def test_held_requests_count_under_the_connection_limit(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db", max_connections=2) as (_, listener, _http):
            cursor = "sqlite:0"
            sessions = [aiohttp.ClientSession(listener.url) for _ in range(3)]
            try:
                held = [
                    asyncio.create_task(poll(s, f"since={cursor}&wait=60")) for s in sessions[:2]
                ]
                await asyncio.sleep(0.3)
                async with sessions[2].get(f"/api/positions/poll?since={cursor}") as response:
                    assert response.status == 503
                    assert "too many connections" in await response.text()
                await listener.feeds.close()
                await within(asyncio.gather(*held), 5)
            finally:
                for session in sessions:
                    await session.close()

    arun(main())


# -- short polling ---------------------------------------------------------------------------


def test_short_polls_of_unchanged_data_are_answered_304(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (relay, _, http):
            ws = await publisher(relay)
            await publish(ws, fix("car-1", 0))
            query = "/api/positions?since=2025-11-25T00:00:00Z"
            async with http.get(query) as response:
                assert response.status == 200
                etag = response.headers["ETag"]
                assert len((await response.text()).splitlines()) == 1
            async with http.get(query, headers={"If-None-Match": etag}) as response:
                assert response.status == 304 and await response.read() == b""
            await publish(ws, fix("car-1", 1))
            async with http.get(query, headers={"If-None-Match": etag}) as response:
                assert response.status == 200 and response.headers["ETag"] != etag
                assert len((await response.text()).splitlines()) == 2
            # Another query's ETag does not match, nor does an age (it moves with the clock).
            async with http.get(query + "&device=car-1", headers={"If-None-Match": etag}) as r:
                assert r.status == 200
            async with http.get("/api/positions?since=10m") as response:
                assert "ETag" not in response.headers
            await ws.close()

    arun(main())


def test_feeds_count_as_subscribe_reads_in_metrics(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, _, http):
            await poll(http, "")
            async with http.get("/metrics") as response:
                text = await response.text()
            assert 'route="/api/positions/poll",method="GET",code="200"} 1' in text

    arun(main())


def test_metrics_count_the_requests_held_now(tmp_path: Path) -> None:
    async def watchers(http: aiohttp.ClientSession) -> str:
        async with http.get("/metrics") as response:
            text = await response.text()
        return next(line for line in text.splitlines() if line.startswith("geotrack_http_watchers"))

    async def main() -> None:
        async with running_http(tmp_path / "db") as (_, _, http):
            cursor = (await poll(http, ""))["cursor"]
            assert await watchers(http) == "geotrack_http_watchers 0"
            held = asyncio.ensure_future(poll(http, f"since={cursor}&wait=10"))
            async with stream(http, ""):
                deadline = time.monotonic() + 5
                while (line := await watchers(http)) != "geotrack_http_watchers 2":
                    assert time.monotonic() < deadline, line
                    await asyncio.sleep(0.02)
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held

    arun(main())


def test_the_tail_follows_the_store_only_while_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recent, "IDLE_AFTER", 0.2)

    async def main() -> None:
        async with running_http(tmp_path / "db") as (relay, listener, http):
            tail = listener.feeds.tail
            ws = await publisher(relay)
            await publish(ws, fix("car-1", 0))
            assert tail.cursor is None  # nobody watches: no store read per commit
            cursor = (await poll(http, ""))["cursor"]
            assert cursor == "sqlite:1" and tail.cursor == cursor
            await asyncio.sleep(0.3)
            await publish(ws, fix("car-1", 1))  # read, then the tail goes idle
            for _ in range(50):
                if tail.cursor is None:
                    break
                await asyncio.sleep(0.05)
            assert tail.cursor is None
            await publish(ws, fix("car-1", 2))
            # A cursor from before: the store has what memory forgot, nothing is missed.
            answer = await poll(http, f"since={cursor}&wait=5")
            assert [p["ts"][17:19] for p in answer["positions"]] == ["01", "02"]
            await ws.close()

    arun(main())


def test_long_polls_and_streams_over_a_mongo_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """MongoDB cursors are change-stream resume tokens: the same guarantees hold."""
    server = nx27017_server(request)
    database = fresh_database()
    store = open_store(server.url(database))

    async def main() -> None:
        async with running_http(tmp_path / "db", store) as (relay, _, http):
            start = (await poll(http, ""))["cursor"]
            assert start.startswith("mongo:")
            ws = await publisher(relay)
            await publish(ws, fix("car-1", 0), fix("car-1", 1))
            first = await within(poll(http, f"since={start}&wait=10"), 15)
            assert len(first["positions"]) == 2
            held = asyncio.create_task(poll(http, f"since={first['cursor']}&wait=10"))
            await publish(ws, fix("car-1", 2))
            second = await within(held, 15)
            assert ids(second["positions"]) == [("car-1", "2025-11-25T12:00:02.000Z")]
            await publish(ws, fix("car-1", 3))
            headers = {"Last-Event-ID": second["cursor"]}
            async with stream(http, **headers) as events:
                _, resumed = await within(events.next_event(), 15)
            assert ids(resumed) == [("car-1", "2025-11-25T12:00:03.000Z")]
            await ws.close()

    try:
        arun(main())
    finally:
        store.close()
        server.drop_database(database)


def test_held_requests_hold_no_thread_each(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db") as (relay, listener, http):
            cursor = (await poll(http, ""))["cursor"]
            before = threading.active_count()
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(listener.url, connector=connector) as many:
                held = [
                    asyncio.create_task(poll(many, f"since={cursor}&wait=60")) for _ in range(200)
                ]
                streams = [asyncio.create_task(_read_to_end(many)) for _ in range(50)]
                await asyncio.sleep(1.0)
                assert not any(task.done() for task in held + streams)
                assert threading.active_count() <= before + 4  # a worker pool, not one each
                ws = await publisher(relay)
                await publish(ws, fix("car-1", 0))
                answers = await within(asyncio.gather(*held), 10)
                assert all(len(a["positions"]) == 1 for a in answers)
                for task in streams:
                    task.cancel()
                await ws.close()

    arun(main())


def test_a_share_links_stream_ends_when_the_link_expires(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_http(tmp_path / "db", tokens=table()) as (_, _, http):
            now = int(time.time())
            link = sign_share(SECRET, ["bus-1"], now + 2, now)
            async with http.get(f"/api/stream?token={link}") as response:
                assert response.status == 200
                body = await within(response.read(), 10)
            assert b"this link expired at" in body

    arun(main())
