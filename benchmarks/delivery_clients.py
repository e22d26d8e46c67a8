"""The delivery benchmark's clients: watchers of every mechanism and the fleet's publisher.

Written on raw sockets (asyncio streams; WebSocket through websockets' sans-I/O protocol)
so that every byte a watcher sends and receives is counted here, on the client side, HTTP
headers, chunked framing and WebSocket framing included. A poll request carries the three
headers curl sends (Host, User-Agent, Accept).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Final

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from benchmarks.relays import RelayProcess

__all__ = [
    "MECHANISMS",
    "Probes",
    "Wire",
    "cursor_in",
    "get",
    "head",
    "publish",
    "watcher",
]

#: Every mechanism, in the order tables show them.
MECHANISMS: Final = ("websocket", "sse", "long-poll", "short-poll-1s", "short-poll-5s")
#: Seconds between a short poller's requests.
_SHORT: Final = {"short-poll-1s": 1.0, "short-poll-5s": 5.0}
_PROBE: Final = re.compile(rb'"p":(\d+)')
_POSITION: Final = b'"device":'
_LENGTH: Final = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_TICK: Final = 0.1  # the publisher sends one batch every tick
_DEVICES: Final = 100


@dataclass(slots=True)
class Wire:
    """What one watcher moved: bytes each way and positions received."""

    sent: int = 0
    received: int = 0
    positions: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Probes:
    """Send times of the probes, and whether latencies are being recorded now."""

    sent: dict[int, float] = field(default_factory=dict)
    recording: bool = False

    def seen(self, wire: Wire, chunk: bytes) -> None:
        wire.positions += chunk.count(_POSITION)
        if self.recording:
            now = time.perf_counter()
            for match in _PROBE.finditer(chunk):
                began = self.sent.get(int(match.group(1)))
                if began is not None:
                    wire.latencies.append(now - began)


# -- watchers ----------------------------------------------------------------------------------


async def _websocket(port: int, wire: Wire, probes: Probes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/subscribe"), max_size=None)
    protocol.send_request(protocol.connect())

    def flush() -> None:
        for data in protocol.data_to_send():
            wire.sent += len(data)
            writer.write(data)

    flush()
    try:
        while data := await reader.read(65536):
            wire.received += len(data)
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Response):
                    if event.status_code != 101:
                        raise RuntimeError(f"/subscribe refused: {event.status_code}")
                elif event.opcode == Opcode.TEXT:
                    probes.seen(wire, event.data)
            flush()  # pongs
    finally:
        writer.close()


def _request(port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    ).encode()


async def get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire, port: int, path: str
) -> bytes:
    """One GET on a kept-alive connection; its body (which must have a Content-Length)."""
    request = _request(port, path)
    wire.sent += len(request)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = _LENGTH.search(head)
    if not head.startswith(b"HTTP/1.1 200") or length is None:
        raise RuntimeError(f"{path}: {head[:200]!r}")
    body = await reader.readexactly(int(length.group(1)))
    wire.received += len(head) + len(body)
    return body


def cursor_in(body: bytes) -> str:
    start = body.index(b'"cursor":"') + 10
    return body[start : body.index(b'"', start)].decode()


async def _poller(port: int, wire: Wire, probes: Probes, every: float | None) -> None:
    """Long polling (``every`` None) or short polling every ``every`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if every is not None:
            await asyncio.sleep(random.uniform(0, every))  # pollers do not march in step
        cursor = cursor_in(await get(reader, writer, wire, port, "/api/positions/poll"))
        wait = "30" if every is None else "0"
        next_at = time.monotonic()
        more = False
        while True:
            if every is not None and not more:
                next_at += every
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            body = await get(
                reader, writer, wire, port, f"/api/positions/poll?since={cursor}&wait={wait}"
            )
            probes.seen(wire, body)
            cursor = cursor_in(body)
            more = b'"more":true' in body[:200]  # a full answer: ask again at once
    finally:
        writer.close()


async def _sse(port: int, wire: Wire, probes: Probes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = _request(port, "/api/stream")
        wire.sent += len(request)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        wire.received += len(head)
        if b"chunked" not in head.lower():
            raise RuntimeError(f"/api/stream: {head[:200]!r}")
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line, 16)
            chunk = await reader.readexactly(size + 2)
            wire.received += len(size_line) + len(chunk)
            if size == 0:
                return
            probes.seen(wire, chunk)
    finally:
        writer.close()


def watcher(mechanism: str, relay: RelayProcess, wire: Wire, probes: Probes) -> Any:
    assert relay.http_port is not None
    if mechanism == "websocket":
        return _websocket(relay.port, wire, probes)
    if mechanism == "sse":
        return _sse(relay.http_port, wire, probes)
    return _poller(relay.http_port, wire, probes, _SHORT.get(mechanism))


# -- the fleet ---------------------------------------------------------------------------------


async def publish(port: int, rate: int, probes: Probes) -> None:
    """Publish ``rate`` positions a second in batches of one tick, one probe in each."""
    from websockets.asyncio.client import connect

    per_tick = max(1, round(rate * _TICK))
    base = 1_790_000_000.0 + random.randrange(10**6)
    n = 0
    seq = 0
    async with connect(f"ws://127.0.0.1:{port}/publish", max_size=None) as ws:

        async def drain() -> None:
            async for _ in ws:
                pass

        acks = asyncio.create_task(drain())
        next_at = time.monotonic()
        try:
            while True:
                batch: list[dict[str, Any]] = []
                for i in range(per_tick):
                    fix: dict[str, Any] = {
                        "device": f"vehicle-{n % _DEVICES:03d}",
                        "lat": 52.5 + (n % 997) * 1e-5,
                        "lon": 13.4 + (n % 991) * 1e-5,
                        "ts": round(base + n / 1000, 3),
                        "speed": 8.5,
                    }
                    if i == 0:
                        seq += 1
                        fix["attrs"] = {"p": seq}
                    batch.append(fix)
                    n += 1
                probes.sent[seq] = time.perf_counter()
                await ws.send(json.dumps(batch, separators=(",", ":")))
                next_at += _TICK
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            acks.cancel()


async def head(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    wire: Wire,
    port: int,
    path: str,
    extra: str,
) -> bytes:
    """A GET with ``extra`` header lines; reads the answer (chunked or not), returns its head."""
    request = _request(port, path).replace(b"\r\n\r\n", b"\r\n" + extra.encode() + b"\r\n")
    wire.sent += len(request)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    wire.received += len(head)
    length = _LENGTH.search(head)
    if length is not None:
        wire.received += len(await reader.readexactly(int(length.group(1))))
    elif b"chunked" in head.lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            chunk = await reader.readexactly(int(size_line, 16) + 2)
            wire.received += len(size_line) + len(chunk)
            if len(chunk) == 2:
                break
    return head
