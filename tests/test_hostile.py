"""A hostile crowd against one relay process, while an honest publisher streams beside it.

Everything the issue lists is thrown at a real ``geotrack serve`` at once: binary frames,
invalid UTF-8, deeply nested JSON, huge numbers and strings, oversize frames, floods of
tiny frames (read and unread), slowloris handshakes, thousands of connects and
disconnects. The relay must answer each as docs/protocol.md says, stay up, keep its memory
bounded, and store every position of the honest publisher exactly once, acked.

Every loop here is bounded in count and in time, and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from geotrack.schema import Position, ms_to_ts
from geotrack.store import open_store
from tests.conftest import free_port
from tests.factories import T0
from tests.relay_helpers import arun, relay_process

MIB = 1 << 20
#: The relay's handshake timeout here: slowloris sockets must be cut off after it.
HANDSHAKE_TIMEOUT = 1.0

# An honest publisher on the client API, without reconnecting: one lost connection fails
# it. Five positions every 20 ms until the file STOP appears (or LIMIT seconds pass).
HONEST = """
import asyncio, json, os, sys, time
from geotrack.client import Publisher
from geotrack.schema import Position, ms_to_ts

url, stop, limit, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

async def main() -> None:
    pub = Publisher(url, window=16, reconnect=False)
    await pub.connect()
    deadline = time.monotonic() + limit
    n = 0
    while not os.path.exists(stop) and time.monotonic() < deadline:
        ts = [ms_to_ts(t0 + (n + k) * 1000) for k in range(5)]
        await pub.send([Position(device="honest", lat=1.0, lon=2.0, ts=t) for t in ts])
        n += 5
        await asyncio.sleep(0.02)
    await pub.flush()
    await pub.close()
    s = pub.stats
    print(json.dumps({"sent": s.sent, "stored": s.stored, "duplicates": s.duplicates,
                      "rejected": s.rejected, "errors": s.errors}))

asyncio.run(main())
"""


def honest_positions(n: int) -> list[Position]:
    return [
        Position(device="honest", lat=1.0, lon=2.0, ts=ms_to_ts(T0 + i * 1000)) for i in range(n)
    ]


def rss_mb(pid: int) -> float:
    """The resident memory of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


# -- the attacks -------------------------------------------------------------------------------
# Each returns what it observed; the test checks it against the protocol.


async def publish_socket(url: str, **kwargs: Any) -> ClientConnection:
    return await connect(f"{url}/publish", open_timeout=10, compression=None, **kwargs)


async def answers(ws: ClientConnection, n: int, seconds: float = 30) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        return [json.loads(await ws.recv()) for _ in range(n)]

    return await asyncio.wait_for(read(), seconds)


async def still_works(ws: ClientConnection, device: str) -> int:
    """Publish one valid position on ``ws``; how many the ack says were stored."""
    await ws.send(json.dumps({"device": device, "lat": 1, "lon": 2, "ts": T0 // 1000}))
    stored: int = (await answers(ws, 1))[0]["stored"]
    return stored


async def binary_frames(url: str) -> list[dict[str, Any]]:
    async with await publish_socket(url) as ws:
        for i in range(200):
            await ws.send(bytes([i % 256]) * (i + 1))
        got = await answers(ws, 200)
        assert await still_works(ws, "after-binary") == 1
        return got


async def invalid_utf8(url: str) -> list[int | None]:
    """Text frames that are not UTF-8, on fresh connections: each must close with 1007."""
    codes = []
    for payload in (b"\xff\xfe\xfd", b'{"device": "\xc3\x28"}', b"\xed\xa0\x80", b"ok\xf8"):
        async with await publish_socket(url) as ws:
            await ws.send(payload, text=True)
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            await asyncio.wait_for(ws.wait_closed(), 10)
            codes.append(ws.close_code)
    return codes


def hostile_frames() -> list[tuple[str, str]]:
    """Frames that are valid UTF-8 and under the size limit, but little else.

    Each comes with the answer the protocol promises: an ``error`` frame, or an ack with
    the position ``rejected`` or ``stored`` (``a|b``: either).
    """
    position = {"device": "evil", "lat": 1, "lon": 2, "ts": T0 // 1000}
    valid = json.dumps(position)
    digits = "9" * 100_000  # far beyond any double, and Python's int parsing limit
    nested = "[" * 100_000 + "]" * 100_000
    return [
        ("[" * 100_000, "error"),  # unbalanced
        (nested, "error"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "error"),
        (valid[:-1] + f', "attrs": {{"k": {nested}}}}}', "error"),
        ("1e999999", "error"),
        ("-1e999999", "error"),
        (digits, "error"),
        # Python's JSON parser refuses integers of over 4300 digits outright: the frame is
        # answered with an error, where the protocol would let a rejection name the field.
        (f"[{digits}]", "error|rejected"),
        (valid.replace('"lat": 1', '"lat": 1e999999'), "rejected"),
        (valid.replace('"lat": 1', '"lat": -1e999999'), "rejected"),
        (valid.replace('"lat": 1', f'"lat": {digits}'), "error|rejected"),
        (valid.replace('"lat": 1', f'"lat": 0.{digits}'), "stored"),  # 0.999…: a fine latitude
        (valid.replace(f'"ts": {T0 // 1000}', f'"ts": {digits}'), "error|rejected"),
        (valid.replace(f'"ts": {T0 // 1000}', '"ts": 1e999999'), "rejected"),
        ('"' + "x" * (MIB - 100) + '"', "error"),  # a string frame just under the limit
        (json.dumps({**position, "device": "d" * (MIB - 200)}), "rejected"),
        (json.dumps({**position, "ts": "2" * (MIB - 200)}), "rejected"),
        (json.dumps({**position, "k" * (MIB - 200): 1}), "rejected"),
        (json.dumps([position] * 1001), "error"),
        # Where the protocol is silent, geotrack bounds attrs strings (1024 characters), so
        # no position can grow a subscriber's frame past what common clients accept.
        (json.dumps({**position, "ts": 1, "attrs": {"s": "y" * (MIB - 200)}}), "rejected"),
    ]


async def hostile_json(url: str) -> list[dict[str, Any]]:
    frames = [frame for frame, _ in hostile_frames()]
    async with await publish_socket(url, max_size=None) as ws:
        for frame in frames:
            await ws.send(frame)
        got = await answers(ws, len(frames), seconds=60)
        assert await still_works(ws, "after-json") == 1
        return got


async def oversize(url: str) -> list[int | None]:
    """Frames over the 1 MiB limit: each connection must close with 1009."""
    codes = []
    for size in (MIB + 1, 2 * MIB, 16 * MIB):
        ws = await publish_socket(url, max_size=None)
        with contextlib.suppress(ConnectionClosed):
            await ws.send("[" + " " * (size - 2) + "]")
            await asyncio.wait_for(ws.recv(), 10)
        await asyncio.wait_for(ws.wait_closed(), 10)  # closed by the relay, not by us
        codes.append(ws.close_code)
    return codes


async def flood_read(url: str, n: int = 4000) -> list[dict[str, Any]]:
    """Thousands of tiny frames, pipelined, every answer read."""
    async with await publish_socket(url) as ws:

        async def send() -> None:
            for i in range(n):
                await ws.send("0" if i % 2 else "{}")

        sender = asyncio.create_task(send())
        got = await answers(ws, n, seconds=60)
        await sender
        assert await still_works(ws, "after-flood") == 1
        return got


async def flood_unread(url: str, seconds: float = 4) -> int:
    """Tiny frames as fast as the relay takes them, never reading an answer, then gone."""
    ws = await publish_socket(url)
    sent = 0
    deadline = asyncio.get_running_loop().time() + seconds
    with contextlib.suppress(TimeoutError, ConnectionClosed):
        while asyncio.get_running_loop().time() < deadline:
            # Blocks once the relay stops reading (backpressure): the time limit ends it.
            await asyncio.wait_for(ws.send("[]"), deadline - asyncio.get_running_loop().time())
            sent += 1
    ws.transport.abort()
    return sent


async def slowloris(port: int, sockets: int, limit: float) -> list[float]:
    """Handshakes that never finish, a header byte at a time; seconds until the relay hung up."""
    started = asyncio.get_running_loop().time()
    request = b"GET /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: "

    async def one() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            loop = asyncio.get_running_loop()
            while loop.time() - started < limit:
                writer.write(b"a")
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1024), 0.5) == b"":
                        break  # the relay closed it
                except TimeoutError:
                    continue
                except ConnectionError:
                    break
            return loop.time() - started
        finally:
            writer.transport.abort()

    return await asyncio.gather(*(one() for _ in range(sockets)))


UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def churn(url: str, port: int, cycles: int, seconds: float) -> int:
    """Connect and disconnect, ``cycles`` times or for ``seconds``: how many were done.

    Every way a connection can end early comes round in turn: before the request, in its
    middle, right after it, refused with an HTTP status, and after a complete handshake
    with and without a close frame.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    done = 0

    async def http(request: str, reset: bool = False) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request.encode())
        if reset:  # RST instead of FIN: the relay's next read or write fails
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if request:
            await reader.read()  # the relay answers (an HTTP error) and closes
        writer.close()

    async def cycle(i: int) -> None:
        key = base64.b64encode(i.to_bytes(16, "big")).decode()
        match i % 8:
            case 0:  # TCP only
                await http("")
            case 1:  # half a request, then reset
                await http("GET /subscribe HTTP/1.1\r\nHost: x\r\n", reset=True)
            case 2:  # a complete upgrade request, then reset before the answer is read
                await http(UPGRADE.format(path="/publish", key=key), reset=True)
            case 3:  # plain HTTP, no upgrade: 426
                await http("GET /subscribe HTTP/1.1\r\nHost: x\r\n\r\n")
            case 4:  # no such endpoint: 404
                await http(UPGRADE.format(path="/nowhere", key=key))
            case 5:  # a bad subscription: 400
                await http(UPGRADE.format(path="/subscribe?bbox=1,2", key=key))
            case 6 | 7 as kind:  # a full WebSocket handshake, then a close frame, or just gone
                path = "/publish" if i % 16 < 8 else "/subscribe"
                ws = await connect(url + path, open_timeout=10, compression=None)
                if kind == 6:
                    await ws.close()
                else:
                    ws.transport.abort()

    async def worker(w: int, workers: int) -> None:
        nonlocal done
        for i in range(w, cycles, workers):
            if loop.time() > deadline:
                return
            with contextlib.suppress(OSError, InvalidHandshake, TimeoutError):
                await asyncio.wait_for(cycle(i), 10)
                done += 1

    await asyncio.gather(*(worker(w, 16) for w in range(16)))
    return done


# -- the test --------------------------------------------------------------------------------


def drain(proc: subprocess.Popen[str]) -> list[str]:
    """Collect a process's output in a thread, so that a chatty relay never blocks on it."""
    lines: list[str] = []
    assert proc.stdout is not None
    stream = proc.stdout

    def read() -> None:
        with contextlib.suppress(OSError, ValueError):
            lines.extend(stream)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.timeout(120)
def test_hostile_clients_leave_the_relay_up_bounded_and_honest_positions_stored(
    tmp_path: Path,
) -> None:
    db = tmp_path / "geotrack.db"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    stop = tmp_path / "stop"
    timeout = ("--handshake-timeout", str(HANDSHAKE_TIMEOUT))
    with relay_process(f"sqlite:///{db}", port, *timeout) as relay:
        log = drain(relay)
        honest_out = tmp_path / "honest.out"
        with open(honest_out, "w") as out, open(tmp_path / "honest.err", "w") as err:
            honest = subprocess.Popen(
                [sys.executable, "-c", HONEST, url, str(stop), "90", str(T0)],
                stdout=out,
                stderr=err,
            )
        try:
            # Warm up: the relay has served a publisher and a subscriber before we measure.
            arun(warm_up(url))
            before = rss_mb(relay.pid)

            async def attack() -> dict[str, Any]:
                attacks = {
                    "binary": binary_frames(url),
                    "utf8": invalid_utf8(url),
                    "json": hostile_json(url),
                    "oversize": oversize(url),
                    "flood": flood_read(url),
                    "unread": flood_unread(url),
                    "slowloris": slowloris(port, 200, limit=HANDSHAKE_TIMEOUT + 15),
                    "churn": churn(url, port, cycles=3000, seconds=25),
                }
                results = await asyncio.gather(*attacks.values())
                return dict(zip(attacks, results, strict=True))

            seen = arun(attack(), timeout=100)
            time.sleep(1)  # let the relay finish closing what the attackers left
            after = rss_mb(relay.pid)
            # The attack set the high-water mark; more of the same churn must not raise it.
            # State left behind by some kind of ended connection would: a few KB each, times
            # the 750 connections of each kind here, is megabytes.
            # Two more rounds: a leak grows every round by the same amount, while the
            # allocator's high-water mark may still move once under load, then settles.
            growth: list[float] = []
            again = 0
            last = after
            for _ in range(2):
                cycles = arun(churn(url, port, cycles=6000, seconds=30), timeout=45)
                time.sleep(1)
                now = rss_mb(relay.pid)
                growth.append((now - last) * 1024 / max(cycles, 1))  # KB per cycle
                again, last = min(again or cycles, cycles), now
            after_again = last

            # Still up, still serving: a fresh publish is stored and acked.
            assert relay.poll() is None
            assert arun(fresh_publish(url)) == 1
            stop.touch()
            assert honest.wait(timeout=30) == 0, (tmp_path / "honest.err").read_text()
        finally:
            if honest.poll() is None:
                honest.kill()
                honest.wait(timeout=10)
        relay_log = "".join(log)

    # What each attack got back is what the protocol promises.
    assert all(a["type"] == "error" and "binary" in a["error"] for a in seen["binary"])
    assert seen["utf8"] == [1007] * 4
    expected = [expect for _, expect in hostile_frames()]
    assert len(seen["json"]) == len(expected)
    for answer, expect in zip(seen["json"], expected, strict=True):
        assert outcome(answer) in expect.split("|"), (answer, expect)
    assert seen["oversize"] == [1009] * 3
    # In order: "{}" is an object, so a position with every field missing; "0" is no frame.
    assert [outcome(a) for a in seen["flood"]] == ["rejected", "error"] * 2000
    assert seen["unread"] > 100
    # Every slowloris socket was cut off by the relay's handshake timeout, not by us.
    assert min(seen["slowloris"]) > HANDSHAKE_TIMEOUT * 0.9
    assert max(seen["slowloris"]) < HANDSHAKE_TIMEOUT + 10
    assert seen["churn"] >= 1000, seen["churn"]  # 3000 unless the machine is very slow

    # Memory: a correctness bound (no leak per connection or frame), not a performance goal.
    assert after - before < 150, (before, after)
    assert again >= 3000, again  # 6000 unless the machine is very slow
    # Per cycle, not in total: RSS also moves with allocator fragmentation and load. The
    # leak this guards against cost 7-10 KB per failed handshake in every round; noise
    # stays under about 3 KB in the round where it shows and near 0 in the other.
    assert min(growth) < 2.5, (after, after_again, growth)
    assert "Traceback" not in relay_log
    assert "never retrieved" not in relay_log

    # The honest publisher: every position acked once, stored once, nothing rejected.
    stats = json.loads(honest_out.read_text().splitlines()[-1])
    assert stats["sent"] > 0
    assert stats == {
        "sent": stats["sent"],
        "stored": stats["sent"],
        "duplicates": 0,
        "rejected": 0,
        "errors": [],
    }
    with open_store(f"sqlite:///{db}") as store:
        positions = list(store.query(devices=["honest"]))
        others = {p.device for p in store.query()} - {"honest"}
    assert sorted(positions, key=lambda p: p.key) == honest_positions(stats["sent"])
    # Of the attackers' positions, only the valid ones got in.
    assert others == {"warm-up", "after-binary", "evil", "after-json", "after-flood", "fresh"}


def outcome(answer: dict[str, Any]) -> str:
    """What an answer to one hostile frame says: error, rejected or stored."""
    if answer["type"] == "error":
        return "error"
    assert answer["type"] == "ack" and answer["stored"] + len(answer["rejected"]) == 1, answer
    return "stored" if answer["stored"] else "rejected"


async def warm_up(url: str) -> None:
    async with await publish_socket(url) as ws:
        assert await still_works(ws, "warm-up") == 1
    async with connect(f"{url}/subscribe", open_timeout=10) as ws:
        await ws.close()


async def fresh_publish(url: str) -> int:
    async with await publish_socket(url) as ws:
        return await still_works(ws, "fresh")
