"""Every name of websockets' internals the relay relies on, in one place, checked at import.

:class:`~geotrack.relay.wsconn.RelayConnection` reads data frames itself for speed (see
docs/benchmarks.md), and for that it leans on parts of websockets' asyncio connection
that are not its public API: ``process_event()`` (each parsed frame), ``send_data()``
(flush what the protocol has to send), ``paused`` and ``drain()`` (write flow control),
``connection_lost_waiter``, the protocol's ``max_message_size`` and the C ``apply_mask``.
They are used here only, by :class:`InternalsConnection`, and checked when this module
is imported: a websockets release outside :data:`SUPPORTED` or one that renamed any of
them fails at once with :class:`UnsupportedWebsockets`, naming the version, instead of
failing every connection with an AttributeError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, CloseCode, Frame
from websockets.protocol import OPEN, Event
from websockets.server import ServerProtocol
from websockets.version import version as _installed

from geotrack.errors import RelayError

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["SUPPORTED", "InternalsConnection", "UnsupportedWebsockets", "apply_mask", "check"]

#: The websockets releases the relay is tested on: (oldest major, first major not allowed).
SUPPORTED: Final = (16, 18)
_METHODS: Final = ("process_event", "send_data", "drain", "data_received", "connection_lost")
_PROTOCOL_ATTRIBUTES: Final = ("max_message_size", "state", "fail")


class UnsupportedWebsockets(RelayError):
    """The installed websockets is not one the relay works with."""

    def __init__(self, version: str, missing: str | None = None) -> None:
        self.version = version
        self.missing = missing
        low, high = SUPPORTED
        why = f" (it has no {missing})" if missing else ""
        super().__init__(
            f"websockets {version} is not supported{why}: the relay needs "
            f"websockets>={low},<{high} (pip install 'websockets>={low},<{high}')"
        )


def check(
    version: str = _installed,
    connection: type = ServerConnection,
    protocol: Callable[[], object] = ServerProtocol,
) -> None:
    """Raise UnsupportedWebsockets unless websockets ``version`` has what the relay uses."""
    try:
        major = int(version.split(".", maxsplit=1)[0])
    except ValueError:
        raise UnsupportedWebsockets(version) from None
    if not SUPPORTED[0] <= major < SUPPORTED[1]:
        raise UnsupportedWebsockets(version)
    for name in _METHODS:
        if not callable(getattr(connection, name, None)):
            raise UnsupportedWebsockets(version, f"{connection.__name__}.{name}()")
    sample = protocol()
    for name in _PROTOCOL_ATTRIBUTES:
        if not hasattr(sample, name):
            raise UnsupportedWebsockets(version, f"{type(sample).__name__}.{name}")


check()


class InternalsConnection(ServerConnection):
    """websockets' server connection, with what the relay needs of its internals as methods.

    Subclasses get every complete data *frame* websockets parsed in :meth:`data_frame`
    instead of websockets' message assembly; every other event goes to websockets.
    """

    @property
    def max_message_size(self) -> int | None:
        """The largest message the protocol accepts (``max_size``), None for no limit."""
        size: int | None = self.protocol.max_message_size
        return size

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            self.data_frame(event)
        else:
            super().process_event(event)

    def data_frame(self, frame: Frame) -> None:
        """A data frame websockets parsed (a whole message or a fragment of one)."""
        raise NotImplementedError

    def fail(self, code: int, reason: str) -> None:
        """Close at once because of what the client sent (1007 invalid UTF-8, ...)."""
        if self.protocol.state is not OPEN:
            return
        self.protocol.fail(CloseCode(code), reason)
        self.send_data()
        # fail() expects the client to answer the close frame; don't wait forever.
        timeout = self.close_timeout if self.close_timeout is not None else 10.0
        self.loop.call_later(timeout, self.transport.abort)

    def writable(self) -> bool:
        """Open, and the write buffer is below its high-water mark."""
        return self.protocol.state is OPEN and not self.paused and not self.transport.is_closing()

    async def wait_writable(self) -> None:
        """Wait until the write buffer drains below its low-water mark (or the end)."""
        if self.paused and self.protocol.state is OPEN:
            await self.drain()

    @property
    def lost(self) -> asyncio.Future[None]:
        """Done once the TCP connection is gone."""
        return self.connection_lost_waiter
