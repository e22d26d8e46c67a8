"""A load-generator process: many lean connections to one relay, on a schedule.

The runner starts it as ``python -m benchmarks.loadgen`` and talks to it in JSON lines:
the config on stdin; ``{"ready": ...}`` on stdout once every connection is open; the
schedule (phase times on the shared ``time.monotonic()`` clock, CLOCK_MONOTONIC, the same
in every process) on stdin; the result on stdout when it is done.

Lean on purpose: on a 2-core machine the load generators share the CPU with the relay,
so every microsecond they spend is taken from it. Connections are opened with the
``websockets`` asyncio client (handshake, headers, key check), then their transport is
handed to :class:`LeanWS`, a callback-only protocol that writes pre-built frames and reads
frames with a dozen lines of byte arithmetic: no task, queue or message object per frame.
Acks are decoded by msgspec; subscribers only count positions (``bytes.count``) unless they
measure latency, and then decode nothing but each position's ``attrs.t``. Each process
reports the CPU it used, so the runner can show that it was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import resource
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException
from websockets.speedups import apply_mask  # type: ignore[import-not-found]

#: Unix seconds of the first fix each device sends; ts advances one millisecond per fix.
BASE_TS = 1_795_608_000
#: Latency histogram: bucket i holds samples in [1.01**i, 1.01**(i+1)) microseconds.
_LOG_STEP = math.log(1.01)
_BUCKETS = 2200  # up to ~5.6e9 us

#: Attempts to open one subscriber or idle connection.
_CONNECT_TRIES = 5

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


class _Ack(msgspec.Struct):
    type: str
    stored: int = 0
    duplicates: int = 0
    rejected: list[Any] = msgspec.field(default_factory=list)
    error: str = ""


class _Stamp(msgspec.Struct):
    t: int = 0


class _Fix(msgspec.Struct):
    attrs: _Stamp | None = None


_ack_decoder = msgspec.json.Decoder(_Ack)
_socketio_ack_decoder = msgspec.json.Decoder(tuple[_Ack])
_fixes_decoder = msgspec.json.Decoder(list[_Fix])
_socketio_fixes_decoder = msgspec.json.Decoder(tuple[str, list[_Fix]])


def now_us() -> int:
    """The shared clock in microseconds (what publishers put in ``attrs.t``)."""
    return time.monotonic_ns() // 1000


# -- WebSocket framing -------------------------------------------------------------------


def encode_frame(payload: bytes, opcode: int = _OP_TEXT) -> bytes:
    """One masked client frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    mask = random.randbytes(4)
    return header + mask + apply_mask(payload, mask)


class LeanWS(asyncio.Protocol):
    """An open WebSocket connection that calls ``on_message(payload)`` for each message.

    Messages from the server are not masked; fragmented ones are reassembled. Pings are
    answered; a close frame is answered and closes the transport.
    """

    def __init__(self, transport: asyncio.Transport, on_message: Callable[[bytes], None]) -> None:
        self.transport = transport
        self.on_message = on_message
        self.buf = bytearray()
        self.fragments: list[bytes] = []
        self.closed = False
        self.close_code: int | None = None

    def send(self, payload: bytes) -> None:
        self.transport.write(encode_frame(payload))

    def send_many(self, payloads: list[bytes]) -> None:
        self.transport.write(b"".join(encode_frame(p) for p in payloads))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if end - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                if not b0 & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments.clear()
                self.on_message(payload)
            elif opcode == _OP_PING:
                self.transport.write(encode_frame(payload, _OP_PONG))
            elif opcode == _OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                with contextlib.suppress(Exception):
                    self.transport.write(encode_frame(payload[:2], _OP_CLOSE))
                self.transport.close()
                self.closed = True
                break
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = 1006

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.transport.write(encode_frame(struct.pack("!H", 1000), _OP_CLOSE))
            self.transport.close()
            self.closed = True


async def open_ws(
    url: str, source: str | None, socketio: bool, on_message: Callable[[bytes], None]
) -> LeanWS:
    """Open a WebSocket with the websockets client, then hand its transport to LeanWS.

    For socket.io (Engine.IO 4 over a WebSocket), the Engine.IO open packet is read and the
    default namespace joined first, so what follows is only events and acks.
    """
    ws = await connect(
        url,
        compression=None,
        ping_interval=None,
        max_size=None,
        open_timeout=60,
        proxy=None,
        local_addr=(source, 0) if source else None,
    )
    if socketio:
        opened = await ws.recv()
        if not str(opened).startswith("0"):
            raise RuntimeError(f"not an Engine.IO open packet: {opened!r}")
        await ws.send("40")
        joined = await ws.recv()
        if not str(joined).startswith("40"):
            raise RuntimeError(f"socket.io refused the namespace: {joined!r}")
    transport = ws.transport
    lean = LeanWS(transport, on_message)
    transport.set_protocol(lean)
    return lean


# -- measurement windows -----------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    """One phase of the schedule: sending from ``start`` to ``end``, measured from ``measure``."""

    mode: str  # "rate" (a fixed offered load) or "saturate" (as fast as acks allow)
    rate: float  # positions per second for "rate"
    start: float
    measure: float
    end: float


class Histogram:
    """Latency samples in log buckets of 1 %: mergeable, small, and exact enough."""

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.n = 0
        self.max = 0

    def add(self, us: int) -> None:
        index = int(math.log(us) / _LOG_STEP) if us > 1 else 0
        self.counts[min(index, _BUCKETS - 1)] += 1
        self.n += 1
        self.max = max(self.max, us)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "max": self.max,
            "buckets": {str(i): c for i, c in enumerate(self.counts) if c},
        }


@dataclass(slots=True)
class PhaseCounts:
    """What one process counted inside one phase's measurement window."""

    sent: int = 0
    acked: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: int = 0
    received: int = 0
    deferred: int = 0
    unsent: int = 0
    max_backlog: int = 0
    cpu: float = 0.0
    latency: Histogram = field(default_factory=Histogram)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "latency"}  # type: ignore[attr-defined]
        out["latency"] = self.latency.to_json()
        return out


class Clock:
    """Which phase's measurement window is open now (-1: none); kept by timer tasks."""

    def __init__(self) -> None:
        self.window = -1
        self.configure([])

    def configure(self, phases: list[Phase]) -> None:
        """Set the schedule (it arrives after the connections are open)."""
        self.phases = phases
        self.counts = [PhaseCounts() for _ in phases]
        self.windows_us = [(int(p.measure * 1e6), int(p.end * 1e6)) for p in phases]

    def phase_of_stamp(self, t_us: int) -> int:
        for i, (lo, hi) in enumerate(self.windows_us):
            if lo <= t_us <= hi:
                return i
        return -1

    async def run(self) -> None:
        for i, phase in enumerate(self.phases):
            await _sleep_until(phase.measure)
            self.window = i
            cpu0 = time.process_time()
            await _sleep_until(phase.end)
            self.window = -1
            self.counts[i].cpu = time.process_time() - cpu0


async def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


# -- publishers --------------------------------------------------------------------------


class _Fixes:
    """Position text for one device: unique (device, ts), with the send time in attrs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seq = 0

    def one(self, t_us: int) -> bytes:
        seq = self.seq
        self.seq = seq + 1
        return (
            f'{{"device":"{self.device}","lat":{52.5 + (seq % 997) * 1e-5:.5f},'
            f'"lon":{13.4 + (seq % 991) * 1e-5:.5f},"ts":{BASE_TS + seq // 1000}.{seq % 1000:03d},'
            f'"speed":4.2,"heading":90.0,"attrs":{{"t":{t_us}}}}}'
        ).encode()

    def frame(self, batch: int, t_us: int) -> bytes:
        if batch == 1:
            return self.one(t_us)
        return b"[" + b",".join([self.one(t_us) for _ in range(batch)]) + b"]"


class _Sender:
    """One publishing connection: a window of frames in flight and a backlog."""

    def __init__(self, gen: PublishLoad, device: str) -> None:
        self.gen = gen
        self.fixes = _Fixes(device)
        self.inflight = 0
        #: When each frame that is due but waits for room in the window was due (us).
        self.backlog: deque[int] = deque()
        self.next_id = 0
        self.ws: LeanWS | None = None
        self.http: _HttpSlot | None = None

    def send(self, due_us: int = 0) -> None:
        """Send the next frame, stamped with when it was due (now, unless it waited)."""
        gen = self.gen
        payload = self.fixes.frame(gen.batch, due_us or now_us())
        self.inflight += 1
        if gen.socketio:
            payload = b'42%d["publish",%b]' % (self.next_id, payload)
            self.next_id += 1
        if self.http is not None:
            self.http.request(payload)
        else:
            assert self.ws is not None
            self.ws.send(payload)
        window = gen.clock.window
        if window >= 0:
            gen.clock.counts[window].sent += gen.batch

    def on_message(self, payload: bytes) -> None:
        gen = self.gen
        if gen.socketio:
            if payload == b"2":  # Engine.IO ping
                assert self.ws is not None
                self.ws.send(b"3")
                return
            if not payload.startswith(b"43"):
                return
            ack = _socketio_ack_decoder.decode(payload[payload.index(b"[") :])[0]
        else:
            ack = _ack_decoder.decode(payload)
        self.on_ack(ack)

    def on_ack(self, ack: _Ack) -> None:
        gen = self.gen
        self.inflight -= 1
        n = ack.stored + ack.duplicates + len(ack.rejected)
        gen.total_stored += ack.stored
        gen.total_acked += n
        window = gen.clock.window
        if window >= 0:
            counts = gen.clock.counts[window]
            counts.acked += n
            counts.stored += ack.stored
            counts.duplicates += ack.duplicates
            counts.rejected += len(ack.rejected)
            if ack.type != "ack":
                counts.errors += 1
        if gen.active is not None:
            if gen.active.mode == "saturate":
                self.send()
            elif self.backlog:
                gen.backlog -= 1
                self.send(self.backlog.popleft())
        elif not self.inflight:
            gen.maybe_done()


class _HttpSlot(asyncio.Protocol):
    """POST /api/positions, one request at a time, on a kept-alive or a fresh connection."""

    def __init__(self, sender: _Sender, host: str, port: int, source: str | None, keepalive: bool):
        self.sender = sender
        self.host = host
        self.port = port
        self.source = source
        self.keepalive = keepalive
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head = (
            f"POST /api/positions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\n"
            f"{'' if keepalive else 'Connection: close' + chr(13) + chr(10)}"
        ).encode()
        self.pending: bytes | None = None
        self.failures = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: self, self.host, self.port, local_addr=(self.source, 0) if self.source else None
        )

    def request(self, body: bytes) -> None:
        data = self.head + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        if self.keepalive and self.transport is not None:
            self.transport.write(data)
            return
        self.pending = data
        asyncio.get_running_loop().create_task(self._connect_and_send())

    async def _connect_and_send(self) -> None:
        try:
            await self.open()
        except OSError:
            self.failures += 1
            self.sender.on_ack(_Ack(type="error", error="connect failed"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.buf.clear()
        if self.pending is not None:
            transport.write(self.pending)
            self.pending = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            split = buf.find(b"\r\n\r\n")
            if split < 0:
                return
            head = bytes(buf[:split]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            if len(buf) < split + 4 + length:
                return
            body = bytes(buf[split + 4 : split + 4 + length])
            del buf[: split + 4 + length]
            ok = head.startswith(b"http/1.1 200")
            if not self.keepalive and self.transport is not None:
                self.transport.close()
                self.transport = None
            self.sender.on_ack(_ack_decoder.decode(body) if ok else _Ack(type="error"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.keepalive:
            self.transport = None


class PublishLoad:
    """Publishers: frames of ``batch`` positions, ``window`` in flight per connection."""

    def __init__(self, config: dict[str, Any], clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.batch: int = config.get("batch", 1)
        self.window: int = config.get("window", 8)
        self.socketio = config.get("framing") == "socketio"
        self.transport: str = config.get("transport", "ws")
        self.senders = [
            _Sender(self, f"{config['prefix']}-{i}") for i in range(config["connections"])
        ]
        self.active: Phase | None = None
        self.backlog = 0
        self.total_stored = 0
        self.total_acked = 0
        self.finished = False
        self.done = asyncio.Event()

    async def connect(self) -> None:
        sources: list[str | None] = self.config.get("sources") or [None]
        if self.transport.startswith("http"):
            host, port = self.config["host"], self.config["port"]
            keepalive = self.transport == "http-keepalive"
            for i, sender in enumerate(self.senders):
                sender.http = _HttpSlot(sender, host, port, sources[i % len(sources)], keepalive)
                if keepalive:
                    await sender.http.open()
            self.window = 1
            return
        semaphore = asyncio.Semaphore(self.config.get("connect_concurrency", 100))

        async def one(i: int, sender: _Sender) -> None:
            async with semaphore:
                sender.ws = await open_ws(
                    self.config["url"], sources[i % len(sources)], self.socketio, sender.on_message
                )

        await asyncio.gather(*(one(i, s) for i, s in enumerate(self.senders)))

    def maybe_done(self) -> None:
        if self.finished and all(s.inflight == 0 for s in self.senders):
            self.done.set()

    async def run(self, stop: float) -> None:
        for phase in self.clock.phases:
            await _sleep_until(phase.start)
            self.active = phase
            if phase.mode == "saturate":
                for sender in self.senders:
                    while sender.inflight < self.window:
                        sender.send()
                await _sleep_until(phase.end)
            else:
                await self._offer(phase)
            self.active = None
            # What was due but never sent (every window full) is not sent later.
            self.backlog = 0
            for sender in self.senders:
                sender.backlog.clear()
        self.finished = True
        self.maybe_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), max(0.0, stop - time.monotonic()))

    async def _offer(self, phase: Phase) -> None:
        """Send ``phase.rate`` positions per second, spread evenly over the connections."""
        frames_per_s = phase.rate / self.batch
        issued = 0
        senders = self.senders
        n = len(senders)
        next_sender = 0
        while (now := time.monotonic()) < phase.end:
            due = int((now - phase.start) * frames_per_s) - issued
            window = self.clock.window
            for _ in range(due):
                sender = senders[next_sender]
                next_sender = (next_sender + 1) % n
                if sender.inflight < self.window:
                    sender.send()
                else:
                    # Stamped with when it was due once it goes: the wait for a full
                    # window (acks too slow) counts in the latency, no coordinated omission.
                    sender.backlog.append(now_us())
                    self.backlog += 1
                    if window >= 0:
                        counts = self.clock.counts[window]
                        counts.deferred += self.batch
                        counts.max_backlog = max(counts.max_backlog, self.backlog * self.batch)
            issued += due
            await asyncio.sleep(0.001)
        window_counts = self.clock.counts[self.clock.phases.index(phase)]
        window_counts.unsent += self.backlog * self.batch

    def result(self) -> dict[str, Any]:
        closed = [s.ws.close_code for s in self.senders if s.ws is not None and s.ws.closed]
        return {
            "total_stored": self.total_stored,
            "total_acked": self.total_acked,
            "closed": len(closed),
            "close_codes": sorted(set(c for c in closed if c is not None)),
            "http_connect_failures": sum(s.http.failures for s in self.senders if s.http),
            "unanswered_at_exit": sum(s.inflight for s in self.senders),
        }


# -- subscribers and idle connections ----------------------------------------------------


class SubscribeLoad:
    """Subscribers: count the positions each receives; some also time them."""

    def __init__(self, config: dict[str, Any], clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.socketio = config.get("framing") == "socketio"
        self.n: int = config["connections"]
        every = config.get("latency_every", 0)
        self.timed = [every > 0 and i % every == 0 for i in range(self.n)]
        self.totals = [0] * self.n
        self.conns: list[LeanWS] = []
        self.retries = 0

    def handler(self, index: int) -> Callable[[bytes], None]:
        clock = self.clock
        totals = self.totals
        socketio = self.socketio
        timed = self.timed[index]

        def on_message(payload: bytes) -> None:
            if socketio:
                if payload == b"2":
                    self.conns[index].send(b"3")
                    return
                if not payload.startswith(b"42"):
                    return
            if timed:
                arrived = now_us()
                fixes = (
                    _socketio_fixes_decoder.decode(payload[2:])[1]
                    if socketio
                    else _fixes_decoder.decode(payload)
                )
                count = len(fixes)
                for fix in fixes:
                    if fix.attrs is not None:
                        phase = clock.phase_of_stamp(fix.attrs.t)
                        if phase >= 0:
                            clock.counts[phase].latency.add(arrived - fix.attrs.t)
            else:
                count = payload.count(b'"device"')
            totals[index] += count
            window = clock.window
            if window >= 0:
                clock.counts[window].received += count

        return on_message

    async def connect(self) -> None:
        url = self.config["url"]
        sources: list[str | None] = self.config.get("sources") or [None]
        semaphore = asyncio.Semaphore(self.config.get("connect_concurrency", 100))
        self.conns = [None] * self.n  # type: ignore[list-item]

        async def one(i: int) -> None:
            async with semaphore:
                # A handshake the relay drops (a full accept queue) is retried, as real
                # clients do; the retries are reported.
                for attempt in range(_CONNECT_TRIES):
                    try:
                        self.conns[i] = await open_ws(
                            url, sources[i % len(sources)], self.socketio, self.handler(i)
                        )
                        return
                    except (OSError, WebSocketException):
                        if attempt == _CONNECT_TRIES - 1:
                            raise
                        self.retries += 1
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one(i) for i in range(self.n)))

    async def run(self, stop: float) -> None:
        await _sleep_until(stop)

    def result(self) -> dict[str, Any]:
        codes = [c.close_code for c in self.conns if c.closed]
        return {
            "totals": self.totals,
            "connect_retries": self.retries,
            "closed": len(codes),
            "close_codes": sorted(set(c for c in codes if c is not None)),
        }


class IdleLoad(SubscribeLoad):
    """Idle connections: opened, held, and checked still open at the end."""

    def handler(self, index: int) -> Callable[[bytes], None]:
        def on_message(payload: bytes) -> None:
            if self.socketio and payload == b"2":
                self.conns[index].send(b"3")

        return on_message


# -- main --------------------------------------------------------------------------------


def _raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(config: dict[str, Any]) -> None:
    fd_limit = _raise_fd_limit(config["connections"] + 256)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    role = config["role"]
    clock = Clock()
    load: PublishLoad | SubscribeLoad
    if role == "publish":
        load = PublishLoad(config, clock)
    elif role == "subscribe":
        load = SubscribeLoad(config, clock)
    else:
        load = IdleLoad(config, clock)
    try:
        await load.connect()
    except Exception as exc:
        _emit({"error": f"connecting failed: {exc!r}", "fd_limit": fd_limit})
        return
    _emit({"ready": True, "connect_seconds": time.monotonic() - started, "fd_limit": fd_limit})
    line = await loop.run_in_executor(None, sys.stdin.readline)
    schedule = json.loads(line)
    clock.configure([Phase(**p) for p in schedule["phases"]])
    timer = asyncio.create_task(clock.run())
    await load.run(schedule["stop"])
    await timer
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _emit(
        {
            "role": role,
            "phases": [c.to_json() for c in clock.counts],
            "cpu_total": usage.ru_utime + usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss,
            **load.result(),
        }
    )


def main() -> None:
    config = json.loads(sys.stdin.readline())
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_main(config))


if __name__ == "__main__":
    main()
