"""The storage interface every backend implements.

A store does three things: write a batch of positions idempotently (a position whose
(device, ts) is already stored is a duplicate, not an error), query stored tracks, and
follow the stream of newly stored positions from a resumable cursor. For retention it
also deletes old positions, in small batches (:meth:`Store.prune`).

Geofence events (``geotrack.schema.Event``) are kept beside the positions with the same
three verbs: :meth:`Store.write_events` (idempotent on (device, fence, ts, type), so a
transition two relays decide is stored, and delivered, once), :meth:`Store.query_events`
and :meth:`Store.follow_events` (an :class:`EventFeed`, resumable by cursor). The fence
engine's per-device state is kept too (:meth:`Store.fence_states`,
:meth:`Store.save_fence_states`) so that it survives a restart.

The interface is synchronous: backends wrap blocking drivers (sqlite3, pymongo), and the
relay calls them from a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from geotrack.schema import Event, FenceState, Position

__all__ = ["Change", "ChangeFeed", "EventChange", "EventFeed", "Pruned", "Store"]


@dataclass(frozen=True, slots=True)
class Change:
    """One newly stored position as the change feed reports it.

    ``cursor`` resumes the feed right after this change; ``origin`` is the id the writer
    passed to :meth:`Store.write` (a relay's id), so a relay can skip its own writes.
    """

    cursor: str
    position: Position
    origin: str | None


@dataclass(frozen=True, slots=True)
class Pruned:
    """One step of a prune: ``count`` positions of ``device`` deleted in one committed batch.

    In a dry run, one step per device: how many positions the prune would delete. Steps
    with ``events`` set count geofence events instead, which follow the same retention.
    """

    device: str
    count: int
    events: bool = False


class ChangeFeed(ABC):
    """An open, resumable follow of a store's newly stored positions, in store order."""

    @property
    @abstractmethod
    def cursor(self) -> str:
        """Where to resume to miss nothing and repeat nothing of what was returned so far."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Change]:
        """Return the next changes, waiting up to ``timeout`` seconds; [] when none came."""

    @abstractmethod
    def close(self) -> None:
        """Release the feed's resources. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class EventChange:
    """One newly stored event as an event feed reports it.

    ``cursor`` resumes the feed right after this event (a string of the same backend
    syntax as position cursors, so :meth:`Store.is_cursor` recognizes it, but numbering
    events, not positions).
    """

    cursor: str
    event: Event


class EventFeed(ABC):
    """An open, resumable follow of a store's newly stored events, in store order."""

    @property
    @abstractmethod
    def cursor(self) -> str:
        """Where to resume to miss nothing and repeat nothing of what was returned so far."""

    @abstractmethod
    def poll(self, timeout: float) -> list[EventChange]:
        """Return the next events, waiting up to ``timeout`` seconds; [] when none came."""

    @abstractmethod
    def close(self) -> None:
        """Release the feed's resources. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Store(ABC):
    """Where positions live. One subclass per backend, chosen by URL scheme."""

    #: The URL the store was opened with, credentials removed, for messages and logs.
    display_url: str
    #: Positions in one batch of :meth:`prune` (the first batch, where a backend sizes
    #: later ones to a time budget).
    prune_batch: int = 1000

    @abstractmethod
    def write(self, positions: Sequence[Position], origin: str | None = None) -> list[bool]:
        """Store positions durably; return, for each, whether it was new.

        All-or-nothing: when this raises StoreError nothing of the batch may be assumed
        stored, and writing the same batch again is safe. A position repeated within the
        batch is new once and a duplicate after that.
        """

    @abstractmethod
    def query(
        self,
        devices: Collection[str] = (),
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[Position]:
        """Stream stored positions ordered by device, then time.

        ``devices`` narrows to those devices (all when empty); ``since_ms``/``until_ms``
        bound the fix time, inclusive. The iterator reads lazily: memory stays flat in the
        number of rows.
        """

    @abstractmethod
    def devices(self) -> list[str]:
        """Every device that has stored positions, sorted."""

    def latest(self, devices: Collection[str] = ()) -> list[Position]:
        """The last fix (latest ``ts``) of each device that has one, ordered by device.

        ``devices`` narrows to those devices (all when empty). This default reads every
        stored position once; backends override it with a lookup on their (device, ts)
        index.
        """
        last: list[Position] = []
        for position in self.query(devices):
            if last and last[-1].device == position.device:
                last[-1] = position
            else:
                last.append(position)
        return last

    @abstractmethod
    def prune(
        self, before_ms: int, devices: Collection[str] = (), *, dry_run: bool = False
    ) -> Generator[Pruned, None, None]:
        """Delete the positions (and events) whose time is before ``before_ms``, in batches.

        A generator: nothing is deleted until it is iterated, and each step it yields is
        a batch already committed, so stopping early (closing the generator) keeps what
        was deleted and loses nothing else. Batches are short and paced so that writers
        running at the same time (a relay, in this process or another) are delayed by
        milliseconds at most. ``devices`` narrows the prune (all when empty); with
        ``dry_run`` nothing is deleted and one step per device says how many would be.
        Change-feed cursors stay valid across a prune: a feed resumed after one misses
        nothing stored since and repeats nothing.
        """

    @abstractmethod
    def follow(
        self,
        since: str | int | None = None,
        devices: Collection[str] = (),
        exclude_origin: str | None = None,
    ) -> ChangeFeed:
        """Open a change feed.

        ``since`` is None to start with what is stored from now on, a cursor returned by a
        feed to resume after it, or Unix milliseconds to replay what was stored from that
        time on. ``devices`` narrows the feed (all when empty); ``exclude_origin`` leaves
        out what that writer stored (a relay following the positions other relays stored).
        """

    @abstractmethod
    def write_events(
        self,
        events: Sequence[Event],
        origin: str | None = None,
        *,
        states: Sequence[FenceState] = (),
        cursor: tuple[str, str] | None = None,
    ) -> list[bool]:
        """Store events durably; return, for each, whether it was new.

        Idempotent on :attr:`Event.key` (device, fence, ts, type): an event already stored
        (by this relay or another on the same store) is a duplicate, reported False and
        not delivered again by :meth:`follow_events`. All-or-nothing like :meth:`write`.
        ``states`` are saved as :meth:`save_fence_states` does, in the same transaction
        where the backend has one (SQLite): the engine's state and its events agree.
        ``cursor`` is ``(name, change-feed cursor)``: saved under that name with them
        (:meth:`saved_cursor` reads it back), so the fence engine resumes its evaluation
        after a crash where its saved states left off. Without a transaction (MongoDB) it
        is saved last: a crash in between leaves an older cursor, which only replays.
        """

    @abstractmethod
    def saved_cursor(self, name: str) -> str | None:
        """The change-feed cursor last saved under ``name`` by :meth:`write_events`; None
        when there is none."""

    @abstractmethod
    def query_events(
        self,
        devices: Collection[str] = (),
        fences: Collection[str] = (),
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[Event]:
        """Stream stored events ordered by device time (``ts``), then device and fence.

        ``devices`` and ``fences`` narrow (all when empty); ``since_ms``/``until_ms``
        bound the event's ``ts``, inclusive. Lazy, like :meth:`query`.
        """

    @abstractmethod
    def follow_events(
        self,
        since: str | int | None = None,
        devices: Collection[str] = (),
        fences: Collection[str] = (),
    ) -> EventFeed:
        """Open a feed of newly stored events, in store order.

        ``since`` is None for what is stored from now on, a cursor an event feed returned
        to resume after it, or Unix milliseconds to replay the events stored from that
        time on (store time, as :meth:`follow`). ``devices`` and ``fences`` narrow it.
        """

    @abstractmethod
    def fence_states(self, devices: Collection[str] = ()) -> list[FenceState]:
        """The fence engine's saved states (of ``devices``; all when empty).

        States never saved are the default: outside, nothing pending.
        """

    @abstractmethod
    def save_fence_states(self, states: Sequence[FenceState]) -> None:
        """Save these states, replacing any saved for the same (device, fence)."""

    @abstractmethod
    def is_cursor(self, text: str) -> bool:
        """Whether ``text`` looks like one of this backend's cursors (as opposed to a time)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError when the store cannot be reached."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
