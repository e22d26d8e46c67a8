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
import struct
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from geotrack.relay.wsconn import text_frame
from tests.relay_helpers import arun, publisher, running_relay, subscriber, within
from tests.test_relay import fix


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
