"""The subscriber side of the relay: a connection's life as a subscriber, and its replay.

Delivery itself (queues, frames shared by subscribers, the slow-subscriber policy) is
:mod:`geotrack.relay.fanout`; this module connects a subscriber to the hub, replays what
was stored since ``since`` when asked, and closes it at the end. What a subscriber may see
is settled at the handshake (:func:`geotrack.relay.access.restrict_filter`); a share link
that expires while its subscriber is connected closes it then (1008), so a link stops
working when it says it does, not when the page next reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from geotrack.auth import Grant
from geotrack.errors import LinkExpired, StoreError
from geotrack.relay.fanout import Subscriber
from geotrack.relay.publishers import CLOSE_GOING_AWAY, CLOSE_STORE_FAILED, close_reason
from geotrack.relay.wsconn import RelayConnection, close_text, text_frame
from geotrack.schema import SubscribeFilter, encode_position

if TYPE_CHECKING:
    from geotrack.relay.server import Relay

__all__ = ["CLOSE_EXPIRED", "CLOSE_TIMEOUT", "Subscriptions"]

log = logging.getLogger("geotrack.relay")

#: Seconds a client gets to complete a closing handshake before it is cut off.
CLOSE_TIMEOUT = 10.0
#: Close code for a subscriber whose share link expired (policy violation).
CLOSE_EXPIRED: Final = 1008


class Subscriptions:
    """The relay's subscribers, seen from their connections."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._hub = relay.hub

    async def serve(
        self,
        ws: RelayConnection,
        peer: str,
        flt: SubscribeFilter,
        since: str | int | None,
        grant: Grant | None = None,
    ) -> None:
        """Deliver to one subscriber until it is gone, dropped, or the relay stops.

        ``grant`` is the subscriber's token's; one that expires (a share link's) closes
        the connection at its expiry with :data:`CLOSE_EXPIRED`.
        """
        relay, hub = self._relay, self._hub
        # Nothing a subscriber sends means anything; the connection still reads (pings,
        # the close frame), so its end is noticed.
        ws.set_sink(_ignore)

        async def close(code: int, reason: str) -> None:
            # A client that never reads never takes the close frame either: give it the
            # close timeout, then cut the connection.
            try:
                await asyncio.wait_for(ws.close(code, reason), CLOSE_TIMEOUT)
            except TimeoutError:
                ws.transport.abort()

        subscriber = Subscriber(
            peer,
            flt,
            ws,
            text_frame,
            close,
            relay.config.subscriber_queue,
            hold=since is not None,
        )
        ws.on_lost(subscriber.disconnected)
        hub.add(subscriber)
        log.info("subscriber %s connected%s (%s)", peer, _describe(flt), relay.population())
        expiry = (
            asyncio.create_task(_expire(grant.expires, peer, close))
            if grant is not None and grant.expires is not None
            else None
        )
        try:
            if since is None:
                await subscriber.run()
            else:
                pump = asyncio.create_task(subscriber.run())
                try:
                    await self._replay(subscriber, since)
                except StoreError as exc:
                    log.error("replay for subscriber %s failed: %s", peer, exc)
                    # Removed (and counted, if it was dropped) once, in the finally below.
                    pump.cancel()
                    await ws.close(CLOSE_STORE_FAILED, close_reason(f"replay failed: {exc}"))
                    return
                finally:
                    if not pump.done() and hub.subscribers.isdisjoint((subscriber,)):
                        pump.cancel()
                await pump
            if relay.stopping and not subscriber.dropped:
                await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
        finally:
            if expiry is not None:
                expiry.cancel()
            hub.remove(subscriber)
            relay.counters.delivered += subscriber.delivered
            log.info(
                "subscriber %s disconnected (%s): %d delivered",
                peer,
                close_text(ws),
                subscriber.delivered,
            )

    async def _replay(self, subscriber: Subscriber, since: str | int) -> None:
        """Send what was stored since ``since``, then release the live positions held."""
        loop = asyncio.get_running_loop()
        flt = subscriber.filter
        store = self._relay.store
        feed = await asyncio.to_thread(store.follow, since, tuple(flt.devices))
        step = max(1, self._relay.config.subscriber_queue // 2)
        try:
            while not subscriber.dropped:
                changes = await loop.run_in_executor(None, feed.poll, 0)
                if not changes:
                    break
                items = [
                    (c.position.key, encode_position(c.position))
                    for c in changes
                    if flt.matches(c.position)
                ]
                for start in range(0, len(items), step):
                    await subscriber.room()
                    subscriber.replay(items[start : start + step])
        finally:
            await asyncio.to_thread(feed.close)
        subscriber.release()


async def _expire(expires: int, peer: str, close: Callable[[int, str], Awaitable[None]]) -> None:
    """Close a share link's subscriber when the link expires."""
    await asyncio.sleep(max(0.0, expires - time.time()))
    reason = str(LinkExpired(expires))
    log.info("subscriber %s: %s, closing it", peer, reason)
    await close(CLOSE_EXPIRED, reason)


def _ignore(payload: bytes, text: bool) -> None:
    """The sink of a subscriber's connection: what a subscriber sends means nothing."""


def _describe(flt: SubscribeFilter) -> str:
    parts = []
    if flt.devices:
        parts.append("devices " + ",".join(sorted(flt.devices)))
    if flt.bbox is not None:
        parts.append(f"bbox {flt.bbox}")
    return f" [{'; '.join(parts)}]" if parts else ""
