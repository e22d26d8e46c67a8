"""Sibling workers hand each other what they commit, instead of re-reading the store.

The workers of ``geotrack serve --workers N`` on SQLite share one file. Each must deliver
every position to its subscribers, also those its siblings stored; reading them back
through the change feed made every worker decode every sibling's rows again (about 4 µs a
position, the price of a second worker). So a worker sends each commit's new positions,
already in their wire form, to its siblings (:class:`Handoff`, over the datagram sockets of
:class:`~geotrack.relay.siblings.Siblings`), and a sibling delivers them as they come.

Exactly once and in store order, whatever is lost on the way: every commit is a seq range
``(after, top]`` (the workers' commits take turns on one lock, so ranges never overlap).
:class:`Sequencer` keeps the seq delivered up to and moves it only over ranges it can
account for — a sibling's hand-over, the worker's own commit (delivered by the worker
itself), or rows its change feed read. A hand-over that does not join on (one was lost, a
sibling restarted, another relay or ``geotrack import`` wrote to the file) leaves a gap;
the change feed, woken at once, reads just the rows from the gap on (its floor is the
sequencer's seq), and the hand-overs waiting behind the gap follow.

:class:`Sequencer` does no I/O: the relay's event loop feeds it; its tests drive it alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple, cast

import msgspec

from geotrack.relay.metrics import Family
from geotrack.schema import Position, encode_position
from geotrack.schema.frames import decode_positions
from geotrack.store.base import Change

if TYPE_CHECKING:
    from geotrack.relay.server import Relay
    from geotrack.relay.siblings import Siblings
    from geotrack.store.sqlite import SQLiteChangeFeed, SQLiteStore

__all__ = ["Delivery", "Handoff", "Sequencer", "decode_handover", "encode_handover"]

log = logging.getLogger("geotrack.relay")

#: At most this many bytes of positions go into one datagram (a commit may take several).
DATAGRAM_LIMIT: Final = 256 * 1024
#: Hand-overs kept while they wait behind a gap; beyond that the oldest go (the feed reads
#: their rows instead).
MAX_WAITING: Final = 4096

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(tuple[int, int, list[bytes]])


def encode_handover(
    after: int,
    top: int,
    encoded: list[bytes],
    seqs: list[int] | None = None,
    limit: int = DATAGRAM_LIMIT,
) -> list[bytes]:
    """One commit's positions (wire form; all its rows, seqs in ``(after, top]``, which are
    ``seqs`` or else ``after + 1`` … ``top``) as datagrams of at most ``limit`` bytes
    (unless one position is larger), each ``(after, top, positions)`` of its own part."""
    out: list[bytes] = []
    start, done = 0, after
    while start < len(encoded):
        # msgpack's framing: at most 32 bytes for the tuple and seqs, 5 for each position.
        end, size = start, 32
        while end < len(encoded) and (end == start or size + len(encoded[end]) + 5 <= limit):
            size += len(encoded[end]) + 5
            end += 1
        upto = top if end == len(encoded) else seqs[end - 1] if seqs else after + end
        out.append(_encoder.encode((done, upto, encoded[start:end])))
        start, done = end, upto
    return out


def decode_handover(data: bytes | memoryview) -> tuple[int, int, list[bytes]]:
    """``(after, top, positions)`` of one datagram; ValueError when it is not one."""
    try:
        # Any buffer decodes; older msgspec types the argument as bytes only.
        after, top, encoded = _decoder.decode(cast("bytes", data))
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a hand-over: {exc}") from None
    if not 0 < len(encoded) <= top - after or after < 0:
        raise ValueError(f"not a hand-over: seqs {after}..{top} for {len(encoded)} positions")
    return after, top, encoded


class Delivery(NamedTuple):
    """Positions to deliver: a sibling's (``encoded``, wire form) or the feed's (``positions``)."""

    encoded: list[bytes] | None
    positions: list[Position] | None


class Sequencer:
    """Which positions of the shared store are delivered, in seq order, each once.

    Owned by one event loop, except :meth:`own`, which the store's writer thread calls.
    """

    def __init__(self, after: int) -> None:
        #: Every seq up to this one is delivered (or the worker's own).
        self.after = after
        # The worker's own commits (after, top), in commit order; appended by the writer.
        self._own: deque[tuple[int, int]] = deque(maxlen=MAX_WAITING)
        # Hand-overs that do not join on yet, by the seq they start after.
        self._waiting: dict[int, tuple[int, list[bytes]]] = {}
        self._read_wanted = False

    def own(self, after: int, top: int) -> None:
        """The worker committed ``(after, top]`` itself (thread-safe: a deque append)."""
        self._own.append((after, top))

    @property
    def gap(self) -> bool:
        """Whether rows nobody handed over are missing (the feed must read them)."""
        return bool(self._waiting) or self._read_wanted

    def offer(self, after: int, top: int, encoded: list[bytes]) -> list[Delivery]:
        """A sibling's hand-over: what can now be delivered, in order."""
        if top > self.after:
            if len(self._waiting) >= MAX_WAITING:
                del self._waiting[min(self._waiting)]
            self._waiting[after] = (top, encoded)
        return self.advance()

    def read(self, changes: list[Change], through: int) -> list[Delivery]:
        """The feed read every row up to ``through`` that it did not leave out (the
        worker's own) from at most :attr:`after` on: those not delivered yet, then any
        hand-overs that now join on."""
        fresh = [c.position for c in changes if _seq(c.cursor) > self.after]
        out = [Delivery(None, fresh)] if fresh else []
        self.after = max(self.after, through)
        self._read_wanted = False
        return out + self.advance()

    def advance(self) -> list[Delivery]:
        """Move over the worker's own commits and the hand-overs that join on."""
        out: list[Delivery] = []
        own, waiting = self._own, self._waiting
        while True:
            after = self.after
            while own and own[0][1] <= after:
                own.popleft()
            if own and own[0][0] <= after:
                self.after = own.popleft()[1]
                continue
            handover = waiting.pop(after, None)
            if handover is not None:
                self.after, encoded = handover
                out.append(Delivery(encoded, None))
                continue
            for start in [s for s in waiting if s < after]:
                # Delivered already, or partly (a feed read that ended inside it): the
                # feed reads the rest.
                top, _ = waiting.pop(start)
                self._read_wanted |= top > after
            return out


def _seq(cursor: str) -> int:
    return int(cursor.rpartition(":")[2])


class Handoff:
    """One worker's hand-overs: sends its commits to its siblings, delivers theirs.

    :meth:`attach` wires it to a started relay on a SQLite store: the store's commit hook
    sends, the siblings' datagrams arrive on the event loop, the relay's change feed reads
    from the sequencer's seq on and gives what it reads to the sequencer.
    """

    def __init__(self, relay: Relay, store: SQLiteStore, siblings: Siblings) -> None:
        self._relay = relay
        self._store = store
        self._siblings = siblings
        self._feed: SQLiteChangeFeed | None = None
        self.sequencer = Sequencer(0)
        #: Positions delivered from siblings' hand-overs, and read from the file instead
        #: (another writer's, or hand-overs lost); datagrams that were not hand-overs.
        self.handed = 0
        self.read = 0
        self.unreadable = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start sending and receiving (the relay started: its feed follows the store)."""
        from geotrack.store.sqlite import SQLiteChangeFeed, parse_cursor

        feed = self._relay.follower_feed
        cursor = self._relay.peer_cursor
        if not isinstance(feed, SQLiteChangeFeed) or cursor is None:
            raise TypeError("hand-overs need a started relay following a SQLite store")
        self._feed = feed
        # Everything up to the cursor the relay last handed on is delivered; a read in
        # flight comes through peer_order, from there on.
        self.sequencer.after = parse_cursor(cursor)
        sequencer = self.sequencer
        feed.floor = lambda: sequencer.after
        self._store.commit_hooks.append(self._committed)
        self._relay.peer_order = self._read
        # After each own commit's fan-out: move over it (nothing else may come for a while).
        self._relay.stored_hooks.append(lambda _: self._deliver(sequencer.advance()))
        self._siblings.listen(loop, self._received)

    def detach(self) -> None:
        """Stop sending (the store stays open until the relay has drained)."""
        if self._committed in self._store.commit_hooks:
            self._store.commit_hooks.remove(self._committed)

    def families(self) -> list[Family]:
        """/metrics: how siblings' positions arrived, and hand-overs that could not be sent."""
        positions = Family(
            "geotrack_handover_positions_total",
            "counter",
            "Sibling workers' positions delivered, by how they came: handed over, or read "
            "from the store (another writer's rows, or hand-overs that were lost).",
        )
        positions.add(self.handed, path="handed")
        positions.add(self.read, path="read")
        unsent = Family(
            "geotrack_handover_unsent_total",
            "counter",
            "Hand-over datagrams that could not be sent to a sibling (restarting, or its "
            "queue full): it read those rows from the store instead.",
        )
        unsent.add(self._siblings.unsent)
        return [positions, unsent]

    def _committed(
        self,
        origin: str | None,
        after: int,
        top: int,
        stored: Sequence[Position],
        seqs: list[int] | None,
    ) -> None:
        """The store's commit hook (writer thread, under the write lock)."""
        if origin == self._relay.id:
            self.sequencer.own(after, top)
        siblings = self._siblings
        if not siblings.peers:
            return
        encoded = [encode_position(p) for p in stored]
        for datagram in encode_handover(after, top, encoded, seqs, siblings.datagram_limit):
            siblings.send(datagram)

    def _received(self, data: bytes | memoryview) -> None:
        try:
            after, top, encoded = decode_handover(data)
        except ValueError as exc:
            self.unreadable += 1
            log.warning("a sibling's hand-over was dropped: %s", exc)
            return
        self._deliver(self.sequencer.offer(after, top, encoded))

    def _read(self, changes: list[Change], cursor: str) -> None:
        """What the relay's change feed read (the relay's peer_order)."""
        self._deliver(self.sequencer.read(changes, _seq(cursor)))

    def _deliver(self, deliveries: list[Delivery]) -> None:
        if self.sequencer.gap and self._feed is not None:
            self._feed.wake()  # rows nobody handed over: read them now
        relay = self._relay
        for delivery in deliveries:
            if delivery.positions is not None:
                self.read += len(delivery.positions)
                relay.deliver_peers(delivery.positions)
            elif delivery.encoded:
                encoded = delivery.encoded
                self.handed += len(encoded)
                relay.deliver_peers_encoded(encoded, functools.partial(_decode, encoded))


def _decode(encoded: list[bytes]) -> list[Position]:
    return decode_positions(b"[" + b",".join(encoded) + b"]")
