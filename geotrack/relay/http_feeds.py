"""Live positions over plain HTTP: long polling, Server-Sent Events, cheap short polls.

For clients that cannot open a WebSocket (curl scripts, proxies that strip Upgrade, a
browser's ``EventSource``), with the filters, cursors, tokens and limits of /subscribe:

    GET /api/positions/poll?since=CURSOR&wait=30   one answer, held until news or ``wait``
    GET /api/stream                                text/event-stream, ``id:`` = the cursor

Nothing here polls the store per request. One
:class:`~geotrack.relay.recent.RecentChanges` reads each commit once, woken by the relay's
hub right after the commit (the relay's own writes and, through its peer follower, every
other writer's), and keeps the recent changes in memory with their cursors. A request
whose cursor is among them is answered from memory, and a request with nothing to send
waits on one shared future: an idle watcher costs a coroutine and a timer, no thread and
no store read. A cursor older than the memory (or a time) is answered from the store's
change feed once, on a worker thread; its answer's cursor then lands in memory. Cursors
are the store's own, so a watcher can move between /subscribe, the feeds and relays
sharing the store.

The same reader dates the store's contents for short polls: ``GET /api/positions`` carries
an ETag that changes with every commit, and ``If-None-Match`` with the current one is
answered 304 without touching the store (:meth:`Feeds.etag`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, NamedTuple

import msgspec
from aiohttp import web
from multidict import MultiMapping

from geotrack.auth import Grant
from geotrack.errors import InvalidParameter, LinkExpired, StoreError
from geotrack.relay.access import (
    POLL_PARAMETERS,
    STREAM_PARAMETERS,
    restrict_filter,
)
from geotrack.relay.fanout import MAX_FRAME_POSITIONS, Hub
from geotrack.relay.recent import Entry, RecentChanges, cursor_of
from geotrack.schema import (
    SubscribeFilter,
    encode_batch,
    encode_position,
    parse_duration,
    parse_time,
)
from geotrack.store import Store

__all__ = [
    "DEFAULT_WAIT",
    "KEEPALIVE",
    "MAX_WAIT",
    "Feeds",
]

log = logging.getLogger("geotrack.http")

#: Seconds a long poll is held when it does not say (``wait=``), and at most.
DEFAULT_WAIT: Final = 30.0
MAX_WAIT: Final = 120.0
#: Seconds between the comment lines that keep an idle event stream (and proxies) alive.
KEEPALIVE: Final = 15.0
#: The ``retry:`` an event stream advises: milliseconds before EventSource reconnects.
_RETRY_MS: Final = 2000
#: Changes one store read looks at, at most, for one answer.
_READ_AT_MOST: Final = 50_000
#: Seconds an answer may wait for a commit the tail is reading when its own wait is over.
_SETTLE: Final = 1.0
_EVENT_STREAM: Final = "text/event-stream; charset=utf-8"

Authorize = Callable[[web.Request, Any], Grant | None]
Viewable = Callable[[web.Request, Grant | None, tuple[str, ...]], tuple[str, ...]]
StoreCall = Callable[..., Awaitable[Any]]


class _Batch(NamedTuple):
    """What a watcher gets next: encoded positions and the cursor to resume after them."""

    encoded: list[bytes]
    cursor: str | None
    #: Whether it stopped at a limit with more to come at once.
    more: bool = False


class _Watch(NamedTuple):
    """A validated feed request."""

    filter: SubscribeFilter
    since: str | int | None
    wait: float
    expires: float


class Feeds:
    """The request handlers of the feeds, beside an :class:`HttpListener`.

    ``authorize`` checks a request's token for a role (raising the HTTP error),
    ``viewable`` narrows devices to what the grant may see, ``store_call`` runs a store
    call on the listener's worker threads.
    """

    def __init__(
        self,
        store: Store,
        hub: Hub,
        relay_id: str,
        authorize: Authorize,
        viewable: Viewable,
        store_call: StoreCall,
    ) -> None:
        self._store = store
        self._hub = hub
        self._relay_id = relay_id
        self._authorize = authorize
        self._viewable = viewable
        self._store_call = store_call
        self.tail = RecentChanges(store)
        #: Seconds between keep-alive comments on an idle event stream.
        self.keepalive = KEEPALIVE

    @property
    def watching(self) -> int:
        """Event streams and long polls being served now."""
        return self.tail.users

    async def start(self) -> None:
        """Start following the store (raises StoreError)."""
        await self.tail.start()
        self._hub.watchers.append(self.tail.wake)

    async def close(self) -> None:
        """End every held request now: long polls answer, event streams end."""
        with contextlib.suppress(ValueError):
            self._hub.watchers.remove(self.tail.wake)
        await self.tail.close()

    # -- short polling ---------------------------------------------------------------

    def etag(self, request: web.Request) -> str | None:
        """The ETag of a GET /api/positions answer, or None when it cannot have one.

        It changes with every commit the relay sees (its own and its peers'), with the
        query and with the credentials; a query with a relative time (``since=10m``)
        gets none, its answer moves with the clock.
        """
        for name in ("since", "until"):
            for text in request.query.getall(name, []):
                if _relative(text):
                    return None
        scope = "\0".join((request.query_string, request.headers.get("Authorization", ""))).encode()
        digest = hashlib.blake2s(scope, digest_size=6).hexdigest()
        return f'"{self._relay_id}-{self.tail.version}-{digest}"'

    # -- long polling ----------------------------------------------------------------

    async def poll(self, request: web.Request) -> web.StreamResponse:
        """GET /api/positions/poll: the positions after ``since``, held until there are some.

        Without ``since`` it answers at once with no positions and the current cursor,
        to start from.
        """
        watch = self._watch(request, POLL_PARAMETERS, "/api/positions/poll", long_poll=True)
        if isinstance(watch, web.Response):
            return watch
        try:
            await self.tail.attach()
        except StoreError as exc:
            return _text(503, f"store read failed: {exc}")
        try:
            if watch.since is None:
                cursor = self.tail.cursor
                if cursor is None:
                    return _text(503, "the store has not given a cursor yet: retry")
                return _poll_answer(_Batch([], cursor))
            deadline = time.monotonic() + min(watch.wait, watch.expires - time.time())
            batch = await self._next(watch.since, watch.filter, deadline)
        except InvalidParameter as exc:
            return _text(400, str(exc))
        except StoreError as exc:
            return _text(503, f"store read failed: {exc}")
        finally:
            self.tail.detach()
        response = _poll_answer(batch)
        if self.tail.closed:
            response.force_close()
        return response

    # -- Server-Sent Events ----------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET /api/stream: one event per batch of stored positions, ``id:`` the cursor."""
        watch = self._watch(request, STREAM_PARAMETERS, "/api/stream", long_poll=False)
        if isinstance(watch, web.Response):
            return watch
        try:
            await self.tail.attach()
        except StoreError as exc:
            return _text(503, f"store read failed: {exc}")
        try:
            return await self._stream(request, watch)
        finally:
            self.tail.detach()

    async def _stream(self, request: web.Request, watch: _Watch) -> web.StreamResponse:
        since = watch.since
        try:
            if isinstance(since, int):
                # A time: find where it starts now, so a failure is still a status code.
                first = await self._next(since, watch.filter, time.monotonic())
                since = first.cursor
            else:
                first = _Batch([], None)
                if since is None:
                    since = self.tail.cursor
                elif not self.tail.knows(since):
                    # Check a cursor from the store before the 200.
                    first = await self._catch_up(since, watch.filter)
                    since = first.cursor
        except InvalidParameter as exc:
            return _text(400, str(exc))
        except StoreError as exc:
            return _text(503, f"store read failed: {exc}")
        if since is None:
            return _text(503, "the store has not given a cursor yet: retry")
        response = web.StreamResponse(
            headers={
                "Content-Type": _EVENT_STREAM,
                "Cache-Control": "no-cache",
                # nginx buffers responses unless told not to; an event must not wait.
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(f"retry: {_RETRY_MS}\n\n".encode())
            if first.encoded:
                await response.write(_event(first.encoded, since))
            else:
                # An id before any event: a client that reconnects before the first event
                # resumes here, not at "now".
                await response.write(f"id: {since}\n\n".encode())
            await self._stream_into(response, since, watch)
            await response.write_eof()
        except (ConnectionResetError, StoreError) as exc:
            log.debug("event stream to %s ended: %s", request.remote, exc)
        return response

    async def _stream_into(self, response: web.StreamResponse, since: str, watch: _Watch) -> None:
        while not self.tail.closed:
            left = watch.expires - time.time()
            if left <= 0:
                await response.write(f": {LinkExpired(int(watch.expires))}\n\n".encode())
                return
            deadline = time.monotonic() + min(self.keepalive, left)
            batch = await self._next(since, watch.filter, deadline)
            if batch.cursor is not None and batch.encoded:
                since = batch.cursor
                await response.write(_event(batch.encoded, since))
            elif not self.tail.closed:
                if batch.cursor is not None:
                    since = batch.cursor  # moved past what the filter left out
                await response.write(b": keep-alive\n\n")

    # -- the shared part -------------------------------------------------------------

    def _watch(
        self, request: web.Request, accepted: tuple[str, ...], path: str, *, long_poll: bool
    ) -> _Watch | web.Response:
        """The request's filter, start and wait; an error answer for bad ones (401/403 raise)."""
        grant = self._authorize(request, "subscribe")
        query = request.query
        try:
            unknown = sorted(set(query) - set(accepted))
            if unknown:
                raise InvalidParameter(
                    unknown[0],
                    f"unknown parameter (accepted by {path}: {', '.join(accepted)})",
                )
            for name in ("since", "wait", "bbox"):
                if len(query.getall(name, [])) > 1:
                    raise InvalidParameter(name, "give it at most once")
            flt = SubscribeFilter.from_query(
                {k: query.getall(k) for k in query if k not in ("since", "wait", "token")},
                others=(),
            )
            self._viewable(request, grant, tuple(flt.devices))  # 403 for a device not shown
            flt = restrict_filter(grant, flt)
            since = self._since(query, request.headers)
            wait = _wait(query.get("wait")) if long_poll else 0.0
        except InvalidParameter as exc:
            return _text(400, str(exc))
        expires = grant.expires if grant is not None and grant.expires is not None else math.inf
        return _Watch(flt, since, wait, expires)

    def _since(self, query: MultiMapping[str], headers: Mapping[str, str]) -> str | int | None:
        # EventSource resends the last id it saw as Last-Event-ID: it wins over the URL's
        # since=, which is where the stream started.
        text = headers.get("Last-Event-ID") or query.get("since")
        if text is None or not text.strip():
            return None
        text = text.strip()
        if self._store.is_cursor(text):
            return text
        return parse_time(text, time.time_ns() // 1_000_000, "since")

    async def _next(self, since: str | int, flt: SubscribeFilter, deadline: float) -> _Batch:
        """The next positions after ``since`` that pass ``flt``, waiting until ``deadline``.

        Raises InvalidParameter for a cursor the store cannot resume from.
        """
        tail = self.tail
        cursor: str | int = since
        # Commits seen before this request may still be being read: a client polling right
        # after its publisher's ack expects to see them. Reading takes milliseconds.
        seen = tail.version
        settle = time.monotonic() + _SETTLE
        while not tail.has_read(seen) and (left := settle - time.monotonic()) > 0:
            await tail.changed(left)
        while True:
            kept = tail.after(cursor) if isinstance(cursor, str) else None
            if kept is None:
                batch = await self._catch_up(cursor, flt)
            else:
                batch = _select(kept[0], kept[1], flt)
            if batch.cursor is not None:
                cursor = batch.cursor
            if batch.encoded or tail.closed:
                return _Batch(
                    batch.encoded, cursor if isinstance(cursor, str) else None, batch.more
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return _Batch([], cursor if isinstance(cursor, str) else None)
            await tail.changed(left)

    async def _catch_up(self, since: str | int, flt: SubscribeFilter) -> _Batch:
        """Read what the store holds after ``since`` (not in memory), on a worker thread."""
        batch: _Batch = await self._store_call(_read_store, self._store, since, flt)
        return batch


# -- helpers ---------------------------------------------------------------------------------


def _select(entries: list[Entry], end: str | None, flt: SubscribeFilter) -> _Batch:
    """The entries ``flt`` passes, at most MAX_FRAME_POSITIONS, and the cursor after them."""
    encoded: list[bytes] = []
    for entry in entries:
        if flt.matches(entry.position):
            encoded.append(entry.encoded)
            if len(encoded) == MAX_FRAME_POSITIONS:
                return _Batch(encoded, entry.cursor, more=entry is not entries[-1])
    return _Batch(encoded, end)


def _read_store(store: Store, since: str | int, flt: SubscribeFilter) -> _Batch:
    """Run on a worker thread: the changes after ``since`` from a change feed of its own.

    Reads until MAX_FRAME_POSITIONS pass the filter, the feed has no more, or
    :data:`_READ_AT_MOST` changes were looked at (a bbox that matches little must not
    hold a thread for a whole backlog): ``more`` then says to ask again at once.
    """
    encoded: list[bytes] = []
    read = 0
    with store.follow(since, tuple(flt.devices)) as feed:
        while changes := feed.poll(0):
            for change in changes:
                if flt.matches(change.position):
                    encoded.append(encode_position(change.position))
                    if len(encoded) == MAX_FRAME_POSITIONS:
                        return _Batch(encoded, change.cursor, more=change is not changes[-1])
            read += len(changes)
            if read >= _READ_AT_MOST:
                return _Batch(encoded, cursor_of(feed), more=True)
        return _Batch(encoded, cursor_of(feed))


def _relative(text: str) -> bool:
    """Whether a time parameter is an age (``10m``), which means another time each second."""
    try:
        return parse_time(text, 0) != parse_time(text, 1)
    except InvalidParameter:
        return False


def _wait(text: str | None) -> float:
    if text is None:
        return DEFAULT_WAIT
    seconds = parse_duration(text, "wait")
    if not 0 <= seconds <= MAX_WAIT:
        raise InvalidParameter("wait", f"must be 0 to {MAX_WAIT:g} seconds, got {text!r}")
    return seconds


def _poll_answer(batch: _Batch) -> web.Response:
    cursor = b"null" if batch.cursor is None else _json_string(batch.cursor)
    more = b"true" if batch.more else b"false"
    body = b'{"cursor":' + cursor + b',"more":' + more + b',"positions":'
    body += encode_batch(batch.encoded) + b"}"
    return web.Response(
        body=body, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


def _event(encoded: list[bytes], cursor: str) -> bytes:
    return b"id: " + cursor.encode() + b"\ndata: " + encode_batch(encoded) + b"\n\n"


def _json_string(text: str) -> bytes:
    return msgspec.json.encode(text)


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text.replace("\n", " ").strip() + "\n")
