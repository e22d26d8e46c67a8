"""The wire contract (docs/protocol.md), clause by clause, against a real relay on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from geotrack.store import open_store
from tests.conftest import StoreFactory
from tests.factories import T0_S, stored
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

# -- transport and paths --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/pub", "/publish/x", "/subscribe/", "/ws"])
def test_other_paths_are_refused_with_404(tmp_path: Path, path: str) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            with pytest.raises(InvalidStatus) as info:
                await connect(relay.url + path, open_timeout=5)
            assert info.value.response.status_code == 404
            assert b"/publish or /subscribe" in info.value.response.body

    arun(main())


def test_relay_listens_on_ipv6_loopback(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")

    async def main() -> None:
        async with running_relay(tmp_path / "db", host="::1") as relay:
            assert relay.url.startswith("ws://[::1]:")
            async with await publisher(relay) as ws:
                assert (await roundtrip(ws, fix()))["stored"] == 1

    arun(main())


# -- publishing -----------------------------------------------------------------------


def test_one_position_is_acked_after_it_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_relay(db) as relay, await publisher(relay) as ws:
            ack = await roundtrip(ws, fix(speed=3.5, attrs={"batt": 80}))
            assert ack == {"type": "ack", "stored": 1, "duplicates": 0, "rejected": []}
            # Acked means durable: another connection to the file sees it already.
            (p,) = stored(db)
            assert (p.device, p.speed, p.attrs) == ("car-1", 3.5, {"batt": 80})

    arun(main())


def test_batch_with_invalid_positions_stores_the_valid_ones(tmp_path: Path) -> None:
    db = tmp_path / "db"
    frame = [
        fix(i=0),
        fix(i=1, lat=91),
        fix(i=2),
        {"device": "car-1", "lat": 1, "lon": 2},
        fix(i=4, colour="red"),
        fix(i=5),
    ]

    async def main() -> None:
        async with running_relay(db) as relay, await publisher(relay) as ws:
            ack = await roundtrip(ws, frame)
            assert ack["stored"] == 3 and ack["duplicates"] == 0
            assert [r["index"] for r in ack["rejected"]] == [1, 3, 4]
            errors = [r["error"] for r in ack["rejected"]]
            assert errors[0].startswith("lat:")
            assert errors[1].startswith("ts:")
            assert errors[2].startswith("colour:")

    arun(main())
    assert sorted(p.ts_ms // 1000 - T0_S for p in stored(db)) == [0, 2, 5]


def test_duplicates_are_counted_not_stored_twice(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_relay(db) as relay:
            async with await publisher(relay) as ws:
                assert (await roundtrip(ws, [fix(i=0), fix(i=1)]))["stored"] == 2
            # A publisher resending after a reconnect: same (device, ts), any other form.
            async with await publisher(relay) as ws:
                again = [fix(i=0), {**fix(i=1), "ts": "2025-11-25T13:00:01+01:00"}, fix(i=2)]
                ack = await roundtrip(ws, again)
                assert (ack["stored"], ack["duplicates"], ack["rejected"]) == (1, 2, [])

    arun(main())
    assert len(stored(db)) == 3


def test_stored_plus_duplicates_plus_rejected_equals_the_frame(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            frame = [fix(i=i % 7, lat=(95 if i % 5 == 0 else 10)) for i in range(40)]
            ack = await roundtrip(ws, frame)
            assert ack["stored"] + ack["duplicates"] + len(ack["rejected"]) == 40
            valid = [i for i in range(40) if i % 5 != 0]
            assert ack["stored"] == len({i % 7 for i in valid})
            assert ack["duplicates"] == len(valid) - ack["stored"]
            indexes = [r["index"] for r in ack["rejected"]]
            assert indexes == [i for i in range(40) if i % 5 == 0]

    arun(main())


def test_acks_come_in_frame_order_under_pipelining(tmp_path: Path) -> None:
    sizes = [1 + (i * 7) % 13 for i in range(60)]

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            n = 0
            for size in sizes:  # send everything before reading any ack
                await ws.send(json.dumps([fix("d", n + k) for k in range(size)]))
                n += size
            acks = [json.loads(await within(ws.recv())) for _ in sizes]
            assert [a["stored"] for a in acks] == sizes

    arun(main())


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("42", "not a number"),
        ('"a string"', "not a string"),
        ("null", "not null"),
        ("true", "not a boolean"),
        ("[]", "empty array"),
        (json.dumps([fix(i=i) for i in range(1001)]), "got 1001"),
        ("[" * 100_000 + "]" * 100_000, "JSON"),
    ],
)
def test_unusable_frames_get_an_error_and_the_connection_stays(
    tmp_path: Path, frame: str, expected: str
) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            reply = await roundtrip(ws, frame)
            assert reply["type"] == "error"
            assert expected in reply["error"]
            assert (await roundtrip(ws, fix()))["stored"] == 1  # still open, still working

    arun(main())


def test_binary_frames_get_an_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            reply = await roundtrip(ws, json.dumps(fix()).encode())
            assert reply["type"] == "error" and "text" in reply["error"]
            assert (await roundtrip(ws, fix()))["stored"] == 1

    arun(main())


def test_a_batch_of_exactly_1000_is_accepted(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            ack = await roundtrip(ws, [fix("d", i) for i in range(1000)])
            assert ack["stored"] == 1000

    arun(main())


def test_oversize_frame_closes_with_1009(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with running_relay(db, max_frame=4096) as relay:
            async with await publisher(relay, max_size=None) as ws:
                assert (await roundtrip(ws, fix(i=0)))["stored"] == 1
                await ws.send(json.dumps([fix(i=i) for i in range(1, 100)]))
                with pytest.raises(ConnectionClosed) as info:
                    await within(ws.recv())
                assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            # The relay itself is fine.
            async with await publisher(relay) as ws:
                assert (await roundtrip(ws, fix(i=200)))["stored"] == 1

    arun(main())
    assert len(stored(db)) == 2


INVALID = [
    ({"lat": "NaN"}, "lat"),
    ({"lat": 90.5}, "lat"),
    ({"lon": -180.01}, "lon"),
    ({"lat": True}, "lat"),
    ({"lon": None}, "lon"),
    ({"device": ""}, "device"),
    ({"device": "a" * 65}, "device"),
    ({"device": "has space"}, "device"),
    ({"device": 12}, "device"),
    ({"ts": "2025-11-25T12:00:00"}, "ts"),  # no offset
    ({"ts": "2025-11-25"}, "ts"),
    ({"ts": "yesterday"}, "ts"),
    ({"ts": True}, "ts"),
    ({"ts": 1e20}, "ts"),
    ({"ts": "2025-02-30T00:00:00Z"}, "ts"),
    ({"speed": -1}, "speed"),
    ({"heading": 360}, "heading"),
    ({"heading": -0.5}, "heading"),
    ({"acc": -3}, "acc"),
    ({"alt": "high"}, "alt"),
    ({"attrs": {"nested": {"a": 1}}}, "attrs"),
    ({"attrs": {f"k{i}": i for i in range(33)}}, "attrs"),
    ({"attrs": [1, 2]}, "attrs"),
    ({"attrs": {"big": 2**70}}, "attrs"),
    ({"extra": 1}, "extra"),
]


@pytest.mark.parametrize(
    ("change", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)]
)
def test_each_invalid_field_is_rejected_by_name(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    db = tmp_path / "db"
    bad = {**fix(i=1), **change}
    if change.get("lat") == "NaN":
        bad["lat"] = float("nan")

    async def main() -> None:
        async with running_relay(db) as relay, await publisher(relay) as ws:
            # json.dumps writes NaN as a bare NaN literal, as Python clients do.
            ack = await roundtrip(ws, json.dumps([fix(i=0), bad, fix(i=2)]))
            assert ack["stored"] == 2
            assert len(ack["rejected"]) == 1 and ack["rejected"][0]["index"] == 1
            assert ack["rejected"][0]["error"].startswith(f"{field}:"), ack["rejected"][0]

    arun(main())
    assert len(stored(db)) == 2


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_rejected_naming_the_field(tmp_path: Path, literal: str) -> None:
    frame = (
        '[{"device":"a","lat":1,"lon":2,"ts":1},'
        f'{{"device":"a","lat":1,"lon":2,"ts":2,"alt":{literal}}}]'
    )

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            ack = await roundtrip(ws, frame)
            assert ack["stored"] == 1
            assert ack["rejected"][0]["index"] == 1
            assert ack["rejected"][0]["error"].startswith("alt:")

    arun(main())


def test_a_lone_invalid_object_is_rejected_at_index_0(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            ack = await roundtrip(ws, fix(lat=-100))
            assert ack["stored"] == 0 and ack["rejected"][0]["index"] == 0

    arun(main())


# -- subscribing ----------------------------------------------------------------------


def test_subscribers_get_stored_positions_in_canonical_form(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            sub = await subscriber(relay)
            async with await publisher(relay) as ws:
                await roundtrip(ws, [fix(i=0, speed=2.0), {**fix(i=1), "ts": T0_S + 1.2345}])
                await roundtrip(ws, fix(i=0))  # a duplicate is not delivered again
                await roundtrip(ws, fix(i=2, lat=200))  # nor is a rejected one
                await roundtrip(ws, fix(i=3, ts="2025-11-25T14:00:03.5+02:00"))
            got = await collect(sub, 3)
            await sub.close()
            assert [p["ts"] for p in got] == [
                "2025-11-25T12:00:00.000Z",
                "2025-11-25T12:00:01.234Z",
                "2025-11-25T12:00:03.500Z",
            ]
            assert got[0] == {
                "device": "car-1",
                "lat": 52.5,
                "lon": 13.4,
                "ts": got[0]["ts"],
                "speed": 2.0,
            }

    arun(main())


def test_subscriber_filters_by_device_and_bbox(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            cars = await subscriber(relay, "device=car-1&device=car-2")
            box = await subscriber(relay, "bbox=13.0,52.0,14.0,53.0")
            both = await subscriber(relay, "device=car-2&bbox=13.0,52.0,14.0,53.0")
            dateline = await subscriber(relay, "bbox=179,-10,-179,10")
            everything = await subscriber(relay)
            frame = [
                fix("car-1", 0),
                fix("car-2", 0, lat=10.0, lon=10.0),
                fix("car-2", 1),
                fix("bus", 0),
                fix("boat", 0, lat=0.0, lon=179.5),
                fix("boat", 1, lat=0.0, lon=-179.5),
            ]
            async with await publisher(relay) as ws:
                await roundtrip(ws, frame)
            keys = lambda got: [(p["device"], p["ts"][17:19]) for p in got]  # noqa: E731
            assert keys(await collect(cars, 3)) == [
                ("car-1", "00"),
                ("car-2", "00"),
                ("car-2", "01"),
            ]
            assert keys(await collect(box, 3)) == [("car-1", "00"), ("car-2", "01"), ("bus", "00")]
            assert keys(await collect(both, 1)) == [("car-2", "01")]
            assert keys(await collect(dateline, 2)) == [("boat", "00"), ("boat", "01")]
            assert len(await collect(everything, 6)) == 6
            # Nothing more arrives for the filtered ones.
            for ws_ in (cars, box, both, dateline):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws_.recv(), 0.3)
                await ws_.close()
            await everything.close()

    arun(main())


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("bbox=1,2,3", "bbox"),
        ("bbox=a,b,c,d", "bbox"),
        ("bbox=0,10,1,5", "bbox"),  # minLat > maxLat
        ("bbox=0,0,200,1", "bbox"),
        ("bbox=0,0,1,1&bbox=0,0,2,2", "bbox"),
        ("device=", "device"),
        ("device=no%20spaces", "device"),
        ("colour=red", "colour"),
    ],
)
def test_bad_subscribe_parameters_refuse_the_handshake_with_400(
    tmp_path: Path, query: str, says: str
) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            with pytest.raises(InvalidStatus) as info:
                await subscriber(relay, query)
            assert info.value.response.status_code == 400
            assert info.value.response.body.decode().startswith(f"{says}:")

    arun(main())


def test_per_device_order_is_store_order_across_publishers(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            sub = await subscriber(relay)

            async def publish(device: str) -> None:
                async with await publisher(relay) as ws:
                    for start in range(0, 300, 20):
                        await ws.send(
                            json.dumps([fix(device, i) for i in range(start, start + 20)])
                        )
                    for _ in range(15):
                        await within(ws.recv())

            await asyncio.gather(*(publish(f"d{k}") for k in range(4)))
            got = await collect(sub, 1200)
            await sub.close()
            for k in range(4):
                times = [p["ts"] for p in got if p["device"] == f"d{k}"]
                assert len(times) == 300 and times == sorted(times)

    arun(main())


def test_slow_subscriber_is_dropped_and_never_stalls_anyone(tmp_path: Path) -> None:
    """A subscriber that stops reading is closed with 1013; publishers and others go on."""
    total = 30_000

    async def main() -> None:
        async with running_relay(tmp_path / "db", subscriber_queue=2000) as relay:
            # A fixed receive buffer and a one-frame client queue: this one stops reading
            # until the end, and the kernel's buffers fill before the relay's queue does.
            sock = socket.create_connection(("127.0.0.1", relay.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            slow = await connect(
                relay.url + "/subscribe", sock=sock, max_queue=1, max_size=None, ping_interval=None
            )
            fast = await subscriber(relay)
            fast_got = asyncio.create_task(collect(fast, total, 30))
            async with await publisher(relay) as ws:
                for start in range(0, total, 1000):
                    ack = await roundtrip(
                        ws,
                        [fix("d", i, attrs={"pad": "x" * 300}) for i in range(start, start + 1000)],
                    )
                    assert ack["stored"] == 1000
            assert len(await within(fast_got, 30)) == total
            await fast.close()
            # The slow one gets what was queued before it was dropped, then the close.
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await within(slow.recv(), 20)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1013 and "too slow" in info.value.rcvd.reason
            for _ in range(100):  # the relay's handler finishes just after the close
                if relay.hub.dropped:
                    break
                await asyncio.sleep(0.05)
            assert relay.hub.dropped == 1 and not relay.hub.subscribers

    arun(main(), timeout=90)


def test_subscribers_receive_what_other_relays_store(store_factory: StoreFactory) -> None:
    """Two relays on one store (every backend): publish to one, subscribe to the other."""

    async def main() -> None:
        async with (
            running_relay("", store=store_factory(), follow_interval=0.05) as a,
            running_relay("", store=store_factory(), follow_interval=0.05) as b,
        ):
            on_a, on_b = await subscriber(a), await subscriber(b)
            async with await publisher(a) as ws:
                assert (await roundtrip(ws, [fix("x", i) for i in range(50)]))["stored"] == 50
            async with await publisher(b) as ws:
                ack = await roundtrip(ws, [fix("x", i) for i in range(40, 60)])
                assert (ack["stored"], ack["duplicates"]) == (10, 10)
            got_a = await collect(on_a, 60)
            got_b = await collect(on_b, 60)
            for got in (got_a, got_b):
                keys = [(p["device"], p["ts"]) for p in got]
                assert len(keys) == len(set(keys)) == 60  # every one, never twice
            for ws_ in (on_a, on_b):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws_.recv(), 0.3)
                await ws_.close()

    arun(main())


def test_stop_acks_in_flight_and_closes_everyone_with_1001(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        store = open_store(f"sqlite:///{db}")
        async with running_relay(db, store=store) as relay:
            sub = await subscriber(relay)
            pub = await publisher(relay)
            for start in range(0, 2000, 100):
                await pub.send(json.dumps([fix("d", i) for i in range(start, start + 100)]))
            acked = json.loads(await within(pub.recv()))["stored"]
            # Frames the relay has read by now are committed and acked; the rest of what
            # the client sent stays unacknowledged (a publisher resends it).
            stopping = asyncio.create_task(relay.stop())

            async def read_until_closed(ws: Any) -> tuple[list[Any], int | None]:
                frames: list[Any] = []
                try:
                    while True:
                        frames.append(json.loads(await within(ws.recv())))
                except ConnectionClosed as closed:
                    return frames, closed.rcvd.code if closed.rcvd else None

            (acks, pub_code), (batches, sub_code) = await asyncio.gather(
                read_until_closed(pub), read_until_closed(sub)
            )
            assert pub_code == sub_code == 1001
            acked += sum(a["stored"] for a in acks)
            got = [p for batch in batches for p in batch]
            # Every acked position is stored and was delivered; nothing acked was lost.
            await within(stopping)
            assert acked == len(list(store.query())) == len(got)
            assert acked > 0
        store.close()

    arun(main())


def test_a_large_commit_does_not_drop_a_subscriber_that_keeps_up(tmp_path: Path) -> None:
    """Commits are capped below the subscriber queue, so bursts never drop readers."""
    total = 5000

    async def main() -> None:
        async with running_relay(tmp_path / "db", subscriber_queue=2500) as relay:
            sub = await subscriber(relay)
            reading = asyncio.create_task(collect(sub, total, 30))
            async with await publisher(relay) as ws:
                for start in range(0, total, 1000):  # pipelined: one big group commit
                    await ws.send(json.dumps([fix("burst", i) for i in range(start, start + 1000)]))
                acks = [json.loads(await within(ws.recv())) for _ in range(total // 1000)]
            assert sum(a["stored"] for a in acks) == total
            assert len(await within(reading, 30)) == total
            assert relay.hub.dropped == 0
            await sub.close()

    arun(main())
