"""The relay's WebSocket connection: websockets' server connection, with a direct frame path.

websockets (its ``asyncio`` server) does the HTTP handshake, TLS, origin checks, the
closing handshake, keepalive pings and the protocol's own checks (frame sizes, masking,
control frames). What it does per *message* — a future, an assembler and a queue
round-trip for every ``recv()``, an async context, a frame object and a drain for every
``send()`` — costs more than everything else the relay does with a one-position frame.
So, for the data frames only:

- incoming: complete text and binary messages go to a *sink* callback, synchronously, in
  the order they arrived. While a client sends whole, masked frames within the size limit
  (every client in practice), :meth:`RelayConnection.data_received` cuts and unmasks them
  itself and hands websockets only its control frames (pings, pongs, the close), each
  whole; the first frame that is anything else — a fragment, a protocol error, an
  oversize frame — and everything after it go to websockets' parser for good, and its
  data frames reach the sink through :meth:`RelayConnection.data_frame` (fragments
  joined first);
- outgoing: the relay writes ready-made frames to the transport. Server frames are not
  masked and the relay negotiates no extension, so a text frame is a 2-10 byte header and
  the payload: one frame can be built once and written to a thousand subscribers, and a
  burst of acks goes out in one ``write``.

Flow control stays with the caller: :meth:`RelayConnection.pause_reading` stops reading
from the socket (TCP backpressure on the client) and :meth:`RelayConnection.writable`
says whether the transport's write buffer is below its high-water mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, CLOSING, CONNECTING, OPEN

from geotrack.relay._websockets_private import InternalsConnection, apply_mask
from geotrack.relay.access import RefusalLog

__all__ = ["RelayConnection", "Sink", "close_text", "peer_name", "text_frame"]

#: Called with each complete data message: (payload, is_text).
Sink = Callable[[bytes, bool], None]

_TEXT: Final = 0x81  # FIN + text opcode
#: Bytes of the opening handshake kept to see whether frames followed the request.
_HANDSHAKE_KEPT: Final = 16 * 1024


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, unfragmented WebSocket text frame carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((_TEXT, n)) + payload
    if n < 65536:
        return bytes((_TEXT, 126)) + n.to_bytes(2, "big") + payload
    return bytes((_TEXT, 127)) + n.to_bytes(8, "big") + payload


class RelayConnection(InternalsConnection):
    """A server connection whose data frames go to a sink instead of ``recv()``.

    Until :meth:`set_sink` is called, messages are kept (a client may send its first
    frames right behind the handshake); a connection that never sets a sink must not be
    read with ``recv()``. Every websockets internal it needs comes through
    :class:`~geotrack.relay._websockets_private.InternalsConnection`.
    """

    #: Where an opening handshake that never completed within ``handshake_timeout``
    #: seconds is reported as refused (the relay sets both on a subclass).
    refusals: RefusalLog | None = None
    handshake_timeout: float = 10.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._sink: Sink | None = None
        self._early: list[tuple[bytes, bool]] | None = []
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._reading_paused = False
        self._lost_callbacks: list[Callable[[], None]] = []
        # The fast path: None until the handshake is over, then whether it is on.
        self._fast: bool | None = None
        self._handshake: bytes | None = b""
        # The start of a frame not complete yet; a bytearray, so that a large frame coming
        # in many reads is not copied again with each one.
        self._buffer = bytearray()
        size = self.max_message_size
        self._fast_limit = size if size is not None else 1 << 62
        self._made_at: float | None = None

    # -- the fast path for whole frames ----------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._fast is None:
            self._decide_fast(data)
        if not self._fast or self.protocol.state is not OPEN:
            super().data_received(data)
            return
        buf: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            buf, self._buffer = self._buffer, bytearray()
        pos = self._whole_frames(buf)
        if pos is None:
            return
        # Anything else (a fragment, a protocol error, the closing handshake): websockets
        # reads the rest of this connection, starting at a frame boundary.
        self._fast = False
        if pos < len(buf):
            super().data_received(bytes(buf[pos:]))

    def _decide_fast(self, data: bytes) -> None:
        """Keep handshake bytes; on the first bytes after it, turn the fast path on or off.

        It may take over only at a frame boundary: if the client sent anything behind
        its request before the handshake ended, websockets has read it, perhaps half a
        frame, so it keeps reading this connection.
        """
        if self.protocol.state is CONNECTING:
            if self._handshake is not None:
                self._handshake += data
                if len(self._handshake) > _HANDSHAKE_KEPT:
                    self._handshake = None
            return
        kept, self._handshake = self._handshake, None
        self._fast = kept is not None and kept.find(b"\r\n\r\n") + 4 == len(kept)

    def _whole_frames(self, buf: bytes | bytearray) -> int | None:
        """Take the whole simple frames at the start of ``buf``; keep a partial one.

        Returns None when all of ``buf`` is taken or kept, else where the first frame the
        fast path does not take starts.
        """
        size, pos, limit = len(buf), 0, self._fast_limit
        while pos < size:
            if size - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            opcode, length, head = b0 & 0x0F, b1 & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            # FIN and no RSV bit, masked; text or binary within the limit, or a control frame.
            if (b0 & 0xF0) != 0x80 or not b1 & 0x80:
                return pos
            if opcode in (1, 2):
                if length > limit:
                    return pos
            elif opcode not in (8, 9, 10) or length > 125:
                return pos
            end = head + 4 + length
            if end > size:
                break
            if opcode <= 2:
                self._deliver(apply_mask(buf[head + 4 : end], buf[head : head + 4]), opcode == 1)
            else:
                # websockets answers pings, notes pongs and runs the closing handshake.
                super().data_received(bytes(buf[pos:end]))
            pos = end
            if self.protocol.state is not OPEN:
                return pos
        if pos < size:
            if pos == 0 and isinstance(buf, bytearray):
                self._buffer = buf
            else:
                self._buffer = bytearray(buf[pos:])
        return None

    # -- reading ---------------------------------------------------------------------

    def set_sink(self, sink: Sink) -> None:
        """Deliver data messages to ``sink`` from now on, starting with those kept so far."""
        self._sink = sink
        early, self._early = self._early, None
        for payload, text in early or ():
            sink(payload, text)

    def data_frame(self, frame: Frame) -> None:
        if frame.opcode is not Opcode.CONT:
            self._fragment_text = frame.opcode is Opcode.TEXT
            if frame.fin:
                self._deliver(bytes(frame.data), self._fragment_text)
                return
            self._fragments = [bytes(frame.data)]
            return
        self._fragments.append(bytes(frame.data))
        if frame.fin:
            payload = b"".join(self._fragments)
            self._fragments = []
            self._deliver(payload, self._fragment_text)

    def _deliver(self, payload: bytes, text: bool) -> None:
        if self.protocol.state in (CLOSING, CLOSED):
            return  # what arrives after our close frame is not read
        if self._sink is not None:
            self._sink(payload, text)
        elif self._early is not None:
            self._early.append((payload, text))

    def pause_reading(self) -> None:
        """Stop reading from the socket until :meth:`resume_reading`."""
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        if self._reading_paused:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # -- writing ---------------------------------------------------------------------

    def write_frames(self, frames: bytes) -> bool:
        """Write ready-made frames (see :func:`text_frame`); False if no longer open."""
        # An aborted transport is closing before connection_lost tells the protocol.
        if self.protocol.state is not OPEN or self.transport.is_closing():
            return False
        self.transport.write(frames)
        return True

    # -- the end ---------------------------------------------------------------------

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the TCP connection is gone (at once if it already is)."""
        if self.lost.done():
            callback()
        else:
            self._lost_callbacks.append(callback)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._made_at = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        refusals = self.refusals
        if (
            refusals is not None
            and self.protocol.state is CONNECTING
            and self._made_at is not None
            and self.loop.time() - self._made_at >= self.handshake_timeout * 0.9
        ):
            # websockets aborts a handshake past its open_timeout without a word; a client
            # that merely connected and left (a port probe) is not reported.
            refusals.refused(
                peer_name(self), "timeout", f"no handshake within {self.handshake_timeout:g} s"
            )
        super().connection_lost(exc)
        self._sink = None
        self._early = None
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for callback in callbacks:
            callback()


def peer_name(ws: ServerConnection) -> str:
    """The client's address as ``host:port`` (``[host]:port`` for IPv6)."""
    try:
        address = ws.remote_address
    except Exception:  # no transport yet
        return "unknown peer"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def close_text(ws: ServerConnection) -> str:
    """How a connection ended: ``code 1000: reason``, or ``no close code``."""
    code = ws.close_code
    reason = ws.close_reason
    if code is None:
        return "no close code"
    return f"code {code}{': ' + reason if reason else ''}"
