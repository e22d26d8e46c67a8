"""WebSocket ``/events``: geofence events as the store holds them, live and resumable.

The handshake takes ``device=`` and ``fence=`` (each repeatable) and ``since=`` (a cursor
or a time, as ``/subscribe``), and needs a token that may subscribe; a share link sees
only its own devices. Each connection then follows the store's event feed
(:meth:`Store.follow_events`) from ``since`` (or from now) in a thread of its own and
sends what it reads as JSON arrays of events (``docs/protocol.md``, section Events). The
store is the one source: an event is sent once it is stored, whichever relay decided it,
and a transition two relays decided is stored, so sent, once.

Each connection holds a store cursor and a thread: ``/events`` is meant for tens of
consumers (dashboards, webhook bridges), not for thousands of watchers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from geotrack.errors import InvalidParameter, StoreError
from geotrack.relay.access import Refused, authorize, check_parameters, device_ids, restrict_devices
from geotrack.relay.publishers import CLOSE_GOING_AWAY, CLOSE_STORE_FAILED, close_reason
from geotrack.relay.wsconn import RelayConnection
from geotrack.schema import EventFilter, encode_events, parse_time

if TYPE_CHECKING:
    from geotrack.relay.server import Relay

__all__ = ["EventAdmission", "EventSubscriptions"]

log = logging.getLogger("geotrack.relay")

#: Seconds one poll of the store's event feed waits: how soon a stopping relay is noticed.
_POLL = 0.25
#: Events in one frame at most.
_FRAME = 1000


@dataclass(frozen=True, slots=True)
class EventAdmission:
    """What an ``/events`` handshake settled: the filter and where to start."""

    filter: EventFilter
    since: str | int | None


class EventSubscriptions:
    """The relay's ``/events`` connections: admission at the handshake, then delivery."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        # Weak, as the relay's own admissions: a handshake admitted here may still fail.
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, EventAdmission] = (
            weakref.WeakKeyDictionary()
        )
        self.connected = 0
        self.delivered = 0

    def __len__(self) -> int:
        return len(self._admitted)

    def admit(
        self,
        connection: ServerConnection,
        request: Request,
        query_string: str,
        respond: Callable[[ServerConnection, HTTPStatus, str], Response],
    ) -> Response | None:
        """Check an ``/events`` handshake: None to accept it, or the refusal to send."""
        relay = self._relay
        query = parse_qs(query_string, keep_blank_values=True)
        try:
            grant = authorize(relay.config.tokens, request.headers, query, "subscribe")
        except Refused as refused:
            response = respond(connection, HTTPStatus(refused.status), refused.reason)
            for challenge in refused.challenges:
                response.headers["WWW-Authenticate"] = challenge
            return response
        try:
            check_parameters("/events", query)
            since = query.get("since", [])
            if len(since) > 1:
                raise InvalidParameter("since", "give it at most once")
            devices = restrict_devices(grant, device_ids(query.get("device", ())))
            fences = tuple(query.get("fence", ()))
            if any(not name for name in fences):
                raise InvalidParameter("fence", "give a fence name")
            start: str | int | None = None
            if since:
                start = (
                    since[0]
                    if relay.store.is_cursor(since[0])
                    else parse_time(since[0], time.time_ns() // 1_000_000, "since")
                )
        except InvalidParameter as exc:
            return respond(connection, HTTPStatus.BAD_REQUEST, f"{exc}\n")
        except Refused as refused:
            return respond(connection, HTTPStatus(refused.status), refused.reason)
        self._admitted[connection] = EventAdmission(
            EventFilter(frozenset(devices), frozenset(fences)), start
        )
        return None

    def take(self, connection: ServerConnection) -> EventAdmission | None:
        """The admission of a connection that passed an ``/events`` handshake, once."""
        return self._admitted.pop(connection, None)

    async def serve(self, ws: RelayConnection, peer: str, admission: EventAdmission) -> None:
        """Send the events the store holds from ``since`` on, until the client or relay
        goes."""
        relay = self._relay
        flt = admission.filter
        executor = ThreadPoolExecutor(1, thread_name_prefix="geotrack-events")
        loop = asyncio.get_running_loop()
        sent = 0
        self.connected += 1
        log.info("events subscriber %s connected", peer)
        try:
            try:
                feed = await loop.run_in_executor(
                    executor,
                    lambda: relay.store.follow_events(
                        admission.since, tuple(flt.devices), tuple(flt.fences)
                    ),
                )
            except StoreError as exc:
                await ws.close(CLOSE_STORE_FAILED, close_reason(f"cannot follow events: {exc}"))
                return
            # What a client sends means nothing; its connection is still read (pings, the
            # close frame), so its end is noticed.
            ws.set_sink(_ignore)
            lost = asyncio.Event()
            ws.on_lost(lost.set)
            try:
                while not relay.stopping and not lost.is_set():
                    try:
                        changes = await loop.run_in_executor(executor, feed.poll, _POLL)
                    except StoreError as exc:
                        log.error("events for %s: %s", peer, exc)
                        await ws.close(CLOSE_STORE_FAILED, close_reason(str(exc)))
                        return
                    events = [c.event for c in changes if flt.matches(c.event)]
                    for start in range(0, len(events), _FRAME):
                        chunk = events[start : start + _FRAME]
                        await ws.send(encode_events(chunk).decode())
                        sent += len(chunk)
                if relay.stopping:
                    await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
            except ConnectionClosed:
                pass
            finally:
                await loop.run_in_executor(executor, feed.close)
        finally:
            executor.shutdown(wait=False)
            self.connected -= 1
            self.delivered += sent
            log.info("events subscriber %s disconnected: %d events sent", peer, sent)


def _ignore(payload: bytes, text: bool) -> None:
    """The sink of an events subscriber's connection."""
