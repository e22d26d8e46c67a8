"""The store's recent changes, read once for every HTTP watcher of the relay.

:class:`RecentChanges` is what lets the HTTP feeds (:mod:`geotrack.relay.http_feeds`)
hold thousands of watchers without a thread or a store poll each: one change feed, read on
one thread when the hub says a commit landed (the relay's own, and every other writer's
through its peer follower), its changes kept in memory with their cursors so a watcher
resumes from any recent cursor without touching the store. Waiters share one future that
each read resolves. It reads only while watched: a relay nobody follows over HTTP pays
nothing per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, NamedTuple

from geotrack.errors import StoreError
from geotrack.schema import Position, encode_position
from geotrack.store import ChangeFeed, Store

__all__ = ["IDLE_AFTER", "RECENT", "Entry", "RecentChanges", "cursor_of"]

log = logging.getLogger("geotrack.http")

#: Changes kept in memory for watchers to catch up from without a store read (~10 s at
#: 1,000 positions/s, a few MB).
RECENT: Final = 10_000
#: Seconds after the last HTTP watcher left that the tail stops following the store.
IDLE_AFTER: Final = 60.0


class Entry(NamedTuple):
    """One change kept: its cursor, its position, and the position's wire form."""

    cursor: str
    position: Position
    encoded: bytes


class RecentChanges:
    """The store's recent changes, read once for every HTTP watcher.

    :meth:`wake` (hooked to the hub, so called after every commit) makes it read the
    store's change feed on its own thread; waiters of :meth:`changed` wake when it has.
    It reads only while watched: a relay nobody follows over HTTP pays nothing per commit.
    The first request (:meth:`attach`) opens a feed at the store's end; :data:`IDLE_AFTER`
    seconds after the last request ended it closes the feed and forgets what it kept
    (cursors from before are then served from the store).
    """

    def __init__(self, store: Store, keep: int = RECENT) -> None:
        self._store = store
        self._keep = keep
        self._entries: deque[Entry] = deque()
        #: Absolute number of the first entry kept.
        self._base = 0
        #: Cursor -> how many entries come before it (absolute): where it resumes.
        self._marks: OrderedDict[str, int] = OrderedDict()
        self._cursor: str | None = None
        #: Commits seen (wakes): dates the store's contents for ETags.
        self.version = 0
        self._read_version = 0
        self._pending = asyncio.Event()
        self._changed: asyncio.Future[None] | None = None
        self._opened: asyncio.Future[None] | None = None
        self._feed: ChangeFeed | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        #: Requests being served now, and when the last one ended.
        self.users = 0
        self._last_use = 0.0
        self.closed = False

    @property
    def cursor(self) -> str | None:
        """The cursor right after the newest change read (None before the store gave one)."""
        return self._cursor

    async def start(self) -> None:
        """Get ready to follow the store (the feed opens with the first request)."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="geotrack-feeds")
        self._changed = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name="geotrack-feeds")

    async def close(self) -> None:
        """Stop reading and wake every waiter (they answer with what they have)."""
        self.closed = True
        self._notify()
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(StoreError("the relay is stopping"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            if self._feed is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._feed.close)
                self._feed = None
            self._executor.shutdown(wait=True)
            self._executor = None

    async def attach(self) -> None:
        """A request starts using the tail: open the feed if it is not. Raises StoreError."""
        self.users += 1
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_future()
            self._opened.add_done_callback(_retrieve)
            self._pending.set()
        try:
            await asyncio.shield(self._opened)
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """A request is done with the tail."""
        self.users -= 1
        self._last_use = time.monotonic()

    def wake(self) -> None:
        """Something was committed: read it (soon, on the tail's thread)."""
        self.version += 1
        if self._opened is not None:
            self._pending.set()

    def after(self, cursor: str) -> tuple[list[Entry], str | None] | None:
        """The changes kept after ``cursor`` and the cursor after them; None if not kept."""
        mark = self._marks.get(cursor)
        if mark is None or mark < self._base:
            return None
        start = mark - self._base
        return [self._entries[i] for i in range(start, len(self._entries))], self._cursor

    def has_read(self, version: int) -> bool:
        """Whether every commit seen up to ``version`` (a past :attr:`version`) is read."""
        return self._read_version >= version or self.closed

    def knows(self, cursor: str) -> bool:
        """Whether ``cursor`` can be resumed from memory."""
        mark = self._marks.get(cursor)
        return mark is not None and mark >= self._base

    async def changed(self, seconds: float) -> None:
        """Wait until the next changes are read, the tail closes, or ``seconds`` pass."""
        if self.closed or self._changed is None or seconds <= 0:
            return
        await asyncio.wait((self._changed,), timeout=seconds)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._pending.wait()
            self._pending.clear()
            seen = self.version
            try:
                if self._feed is None:
                    if self._opened is not None:  # else a wake left over from going idle
                        await self._open(loop, seen)
                    continue
                # A change stream (MongoDB) may show a commit a moment after it: wait a
                # little for it; SQLite's rows are there at once.
                changes, cursor = await loop.run_in_executor(self._executor, _read, self._feed, 0.2)
            except StoreError as exc:
                log.error("HTTP feeds: reading the store failed: %s; retrying in 1 s", exc)
                if self._feed is None and self._opened is not None:
                    opened, self._opened = self._opened, None
                    opened.set_exception(exc)  # the requests waiting answer 503
                    continue
                await asyncio.sleep(1)
                self._pending.set()
                continue
            if changes:
                self._append(changes)
            # A feed reads a batch at a time: a full one means more may be waiting. Less
            # than a full batch (or nothing) means every commit seen before the read is
            # read; a feed that does not say its batch size is caught up when it is empty.
            if changes and len(changes) >= getattr(self._feed, "batch", 1):
                self._pending.set()
            else:
                self._read_version = seen
            self._mark(cursor)
            self._notify()
            if not self.users and time.monotonic() - self._last_use > IDLE_AFTER:
                await self._idle(loop)

    async def _open(self, loop: asyncio.AbstractEventLoop, seen: int) -> None:
        """Open a feed at the store's end; what was kept before is forgotten."""
        feed = await loop.run_in_executor(self._executor, self._store.follow)
        self._feed = feed
        self._entries.clear()
        self._base = 0
        self._marks.clear()
        self._read_version = seen
        self._mark(await loop.run_in_executor(self._executor, cursor_of, feed))
        self._last_use = time.monotonic()
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)
        log.debug("HTTP feeds: following the store from %s", self._cursor)

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nobody watched for a while: stop reading every commit."""
        feed, self._feed = self._feed, None
        self._opened = None
        self._entries.clear()
        self._marks.clear()
        self._cursor = None
        if feed is not None:
            await loop.run_in_executor(self._executor, feed.close)
        log.debug("HTTP feeds: nobody watching, no longer following the store")

    def _append(self, changes: list[Any]) -> None:
        for change in changes:
            self._entries.append(
                Entry(change.cursor, change.position, encode_position(change.position))
            )
            self._mark(change.cursor)
        excess = len(self._entries) - self._keep
        for _ in range(max(0, excess)):
            self._entries.popleft()
            self._base += 1
        while self._marks and next(iter(self._marks.values())) < self._base:
            self._marks.popitem(last=False)

    def _mark(self, cursor: str | None) -> None:
        if cursor is None:
            return
        self._cursor = cursor
        self._marks[cursor] = self._base + len(self._entries)
        self._marks.move_to_end(cursor)

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)
        if not self.closed:
            self._changed = asyncio.get_running_loop().create_future()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen: the requests that awaited it report it."""
    if not future.cancelled():
        future.exception()


def _read(feed: ChangeFeed, timeout: float) -> tuple[list[Any], str | None]:
    changes = feed.poll(timeout)
    return changes, cursor_of(feed)


def cursor_of(feed: ChangeFeed) -> str | None:
    """The feed's cursor, or None while it has none (a change stream before its first token)."""
    try:
        return feed.cursor
    except StoreError:  # a change stream that has not given a resume token yet
        return None
