"""The relay's direct frame path (geotrack/relay/wsconn.py), checked against websockets.

Frames the relay writes itself must be byte for byte what websockets would write, and
frames it reads past websockets' ``recv()`` must arrive whole, in order, and none lost,
however the client cuts them: fragments, frames in the handshake's own TCP segment,
pings in between.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from geotrack.relay.wsconn import text_frame
from geotrack.schema import Position
from tests.factories import T0_S
from tests.relay_helpers import arun, fix, publisher, running_relay, subscriber, within


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_websockets_writes(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


def test_fragmented_messages_are_joined(tmp_path: Path) -> None:
    batch = json.dumps([fix("frag", i) for i in range(50)])
    parts = [batch[i : i + 97] for i in range(0, len(batch), 97)]

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay, await publisher(relay) as ws:
            await ws.send(parts)  # an iterable is sent as one message in many frames
            ack = json.loads(await within(ws.recv()))
            assert ack == {"type": "ack", "stored": 50, "duplicates": 0, "rejected": []}
            # Pings between messages are answered by websockets, not taken as data.
            await within(await ws.ping())
            await ws.send(json.dumps(fix("frag", 99)))
            assert json.loads(await within(ws.recv()))["stored"] == 1

    arun(main())


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    header = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_frames_in_the_handshake_segment_are_read(tmp_path: Path) -> None:
    """A client may send its first frames right behind the upgrade request."""

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                "GET /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            frames = b"".join(_masked_text(json.dumps(fix("early", i)).encode()) for i in range(3))
            writer.write(request + frames)  # one write: one TCP segment on loopback
            head = await within(reader.readuntil(b"\r\n\r\n"))
            assert head.startswith(b"HTTP/1.1 101")
            acks: list[Any] = []
            for _ in range(3):
                first, length = await within(reader.readexactly(2))
                assert first == 0x81 and length < 126  # unmasked text frames, short
                acks.append(json.loads(await within(reader.readexactly(length))))
            assert [a["stored"] for a in acks] == [1, 1, 1]
            writer.close()
            await writer.wait_closed()

    arun(main())


def test_subscriber_frames_are_ignored_and_delivery_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            running_relay(tmp_path / "db") as relay,
            await subscriber(relay) as sub,
            await publisher(relay) as pub,
        ):
            await sub.send("anything")
            await sub.send(b"\x00\x01")
            await pub.send(json.dumps([fix("s", i) for i in range(3)]))
            await within(pub.recv())
            got = json.loads(await within(sub.recv()))
            assert [p["device"] for p in got] == ["s"] * 3

    arun(main())


# -- the fast path: frames cut and unmasked by the relay itself -----------------------


def _masked(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame, built by hand (so that it can also be a wrong one)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        header = bytes((b0, (0x80 if mask else 0) | n))
    elif n < 65536:
        header = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        header = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def _raw_publisher(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket client: the upgrade request alone, then the 101."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await within(reader.readuntil(b"\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def _server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await within(reader.readexactly(2))
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await within(reader.readexactly(2)), "big")
    elif n == 127:
        n = int.from_bytes(await within(reader.readexactly(8)), "big")
    assert not b1 & 0x80  # server frames are not masked
    return b0 & 0x0F, await within(reader.readexactly(n))


def test_frames_cut_anywhere_arrive_whole_and_pings_are_answered(tmp_path: Path) -> None:
    """One byte per TCP segment: every way a frame can be cut, headers included."""
    small = json.dumps(fix("cut", 1)).encode()  # 7-bit length
    batch = json.dumps([fix("cut", i) for i in range(2, 12)]).encode()  # 16-bit length
    assert 125 < len(batch) < 65536
    stream = _masked(1, small) + _masked(9, b"are you there") + _masked(1, batch) + _masked(10, b"")

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            reader, writer = await _raw_publisher(relay.port)
            writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            for i in range(len(stream)):
                writer.write(stream[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.0005)
            got = [await _server_frame(reader) for _ in range(3)]
            assert got[1] == (0xA, b"are you there")  # the pong, in order
            acks = [json.loads(payload) for opcode, payload in got if opcode == 1]
            assert [a["stored"] for a in acks] == [1, 10]
            writer.close()
            await writer.wait_closed()

    arun(main())


def test_a_fragmented_message_midway_hands_the_connection_to_websockets(tmp_path: Path) -> None:
    text = json.dumps([fix("mid", i) for i in range(5)]).encode()
    parts = [text[:40], text[40:90], text[90:]]
    stream = (
        _masked(1, json.dumps(fix("mid", 100)).encode())
        + _masked(1, parts[0], fin=False)
        + _masked(9, b"between fragments")
        + _masked(0, parts[1], fin=False)
        + _masked(0, parts[2])
        + _masked(1, json.dumps(fix("mid", 101)).encode())
    )

    async def main() -> None:
        async with running_relay(tmp_path / "db") as relay:
            reader, writer = await _raw_publisher(relay.port)
            writer.write(stream)
            got = [await _server_frame(reader) for _ in range(4)]
            assert (0xA, b"between fragments") in got
            acks = [json.loads(payload)["stored"] for opcode, payload in got if opcode == 1]
            assert acks == [1, 5, 1]
            writer.close()
            await writer.wait_closed()

    arun(main())


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_masked(1, b'{"device":"x"}', mask=False), 1002),  # clients must mask
        (_masked(3, b"reserved opcode"), 1002),
        (_masked(1, b"{}", rsv=0x40), 1002),  # RSV1 without an extension
        (_masked(1, b"\xff\xfe not utf-8"), 1007),
        (_masked(1, b" " * 2000), 1009),  # over max_frame (1000 here)
        (_masked(0, b"continuation of nothing"), 1002),
    ],
    ids=["unmasked", "opcode-3", "rsv1", "bad-utf8", "oversize", "stray-continuation"],
)
def test_protocol_errors_after_good_frames_close_with_the_right_code(
    tmp_path: Path, frame: bytes, code: int
) -> None:
    async def main() -> None:
        async with running_relay(tmp_path / "db", max_frame=1000) as relay:
            reader, writer = await _raw_publisher(relay.port)
            # A good frame first, so the fast path is on when the bad one comes.
            writer.write(_masked(1, json.dumps(fix("ok", 1)).encode()))
            opcode, payload = await _server_frame(reader)
            assert opcode == 1 and json.loads(payload)["stored"] == 1
            writer.write(frame)
            opcode, payload = await _server_frame(reader)
            assert opcode == 8 and int.from_bytes(payload[:2], "big") == code
            writer.close()
            await writer.wait_closed()

    arun(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_fan_out_to_a_connection_aborted_a_moment_ago_skips_it(tmp_path: Path, loop: str) -> None:
    """Between transport.abort() and connection_lost the protocol still says OPEN.

    On both event loops ``geotrack serve`` may run on (uvloop when it is installed).
    """

    async def main() -> None:
        async with (
            running_relay(tmp_path / "db") as relay,
            await subscriber(relay) as gone,
            await subscriber(relay) as kept,
            await publisher(relay) as pub,
        ):
            for _ in range(500):
                if relay.subscribers == 2:
                    break
                await asyncio.sleep(0.01)
            port = gone.transport.get_extra_info("socket").getsockname()[1]
            assert relay._server is not None
            (victim,) = [c for c in relay._server.connections if c.remote_address[1] == port]
            victim.transport.abort()
            # Same callback, before connection_lost runs: the fan-out must skip it.
            relay.hub.publish([Position(device="abort", lat=1.0, lon=2.0, ts=T0_S)])
            await pub.send(json.dumps(fix("after", 1)))
            assert json.loads(await within(pub.recv()))["stored"] == 1
            got = json.loads(await within(kept.recv()))
            if len(got) < 2:
                got += json.loads(await within(kept.recv()))
            assert [p["device"] for p in got] == ["abort", "after"]

    if loop == "asyncio":
        arun(main())
        return
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 60))
