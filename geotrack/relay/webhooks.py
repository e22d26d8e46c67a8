"""Webhooks (``serve --webhook URL``): every stored geofence event POSTed as JSON, at least once.

Each webhook follows the store's event feed (:meth:`Store.follow_events`) in a thread of
its own and POSTs every event as the JSON object ``/events`` sends
(``{"type":…,"device":…,"fence":…,"ts":…,"lat":…,"lon":…}``), with an
``Idempotency-Key`` header that names the transition (:func:`idempotency_key`): the same
for every attempt, every relay and every restart, so a receiver can drop repeats. Each
device's events go one at a time, in store order; up to 8 devices' are in flight at once.

A POST answered 2xx is delivered; anything else (another status, a refused connection, a
timeout) is retried after a delay that doubles up to ``retry_max``, and that device's
later events wait: its order is kept and nothing is skipped. The feed's cursor, moved
only past events all delivered, is saved (at most once a second while delivering, and at
stop) to a small file per (store, webhook) in the state directory, and a restart resumes
from it: an event is delivered at least once, whatever stops the relay between its
storing and its delivery. A webhook never seen before starts with the events stored
from its first start on.

Failures are counted for /metrics (:func:`webhook_families`) and logged at most once a
``log_interval`` per webhook, with the URL stripped of credentials and query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from geotrack import __version__
from geotrack.errors import GeotrackError
from geotrack.relay.metrics import Family
from geotrack.relay.webhook_target import Webhook, backoff, default_state_dir, idempotency_key
from geotrack.schema import Event, encode_event
from geotrack.store import EventChange, EventFeed, Store

__all__ = ["Webhooks", "webhook_families"]

log = logging.getLogger("geotrack.relay")

#: Seconds one poll of the store's event feed waits: how soon a stopping relay is noticed.
_POLL: Final = 0.25
#: Seconds between two saves of a webhook's cursor while it delivers.
_SAVE_EVERY: Final = 1.0


@dataclass(slots=True)
class _Pending:
    """An event read from the feed: its cursor, and whether it has been delivered."""

    cursor: str
    event: Event
    delivered: bool = False


class Webhooks:
    """The relay's webhooks: started before the relay stores anything, stopped last.

    ``retry_min``/``retry_max`` bound the delay between attempts, ``timeout`` one POST
    (connecting included), ``log_interval`` the failure lines in the log. Up to
    ``concurrency`` devices' events are sent at once, each device's in store order, and
    at most ``ahead`` events are read from the store before the cursor can pass them.
    """

    def __init__(
        self,
        store: Store,
        urls: Sequence[str],
        state_dir: Path | None = None,
        *,
        retry_min: float = 0.5,
        retry_max: float = 60.0,
        timeout: float = 10.0,
        log_interval: float = 60.0,
        concurrency: int = 8,
        ahead: int = 1000,
    ) -> None:
        self.store = store
        state = state_dir if state_dir is not None else default_state_dir()
        self.hooks = [Webhook(url, store, state) for url in dict.fromkeys(urls)]
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.timeout = timeout
        self.log_interval = log_interval
        self.concurrency = concurrency
        self.ahead = ahead
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._feeds: list[EventFeed] = []

    async def start(self) -> None:
        """Open each webhook's event feed where its cursor says, then start delivering.

        Raises GeotrackError (a cursor file that cannot be read) or StoreError; nothing
        is left running then.
        """
        loop = asyncio.get_running_loop()
        opened = []
        try:
            for hook in self.hooks:
                executor = ThreadPoolExecutor(1, thread_name_prefix="geotrack-webhook")
                self._executors.append(executor)
                feed = await loop.run_in_executor(executor, self._open, hook)
                opened.append((hook, executor, feed))
        except BaseException:
            for _hook, executor, feed in opened:
                await loop.run_in_executor(executor, feed.close)
            self._shutdown_executors()
            raise
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": f"geotrack/{__version__}"},
        )
        for hook, executor, feed in opened:
            self._feeds.append(feed)
            self._tasks.append(loop.create_task(self._run(hook, executor, feed)))

    def _open(self, hook: Webhook) -> EventFeed:
        since = hook.load_cursor()
        opened_ms = time.time_ns() // 1_000_000
        feed = self.store.follow_events(since)
        if since is None:
            log.info(
                "webhook %s: first start, delivering the events stored from now on", hook.display
            )
        else:
            log.info("webhook %s: resuming after cursor %s", hook.display, since)
        try:
            hook.cursor = feed.cursor
        except GeotrackError:
            # A feed with no cursor before its first event (MongoDB's change stream):
            # the time it opened resumes it as well, replaying what was stored since.
            if since is None:
                hook.cursor = opened_ms
        try:
            hook.save_cursor()
        except OSError as exc:
            feed.close()
            raise GeotrackError(
                f"cannot save the cursor of webhook {hook.display} to {hook.state_file}: "
                f"{exc.strerror or exc}"
            ) from None
        return feed

    async def stop(self) -> None:
        """Stop delivering (an attempt under way is abandoned: it is sent again at the next
        start) and save where each webhook is."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        loop = asyncio.get_running_loop()
        for hook, executor, feed in zip(self.hooks, self._executors, self._feeds, strict=False):
            try:
                await loop.run_in_executor(executor, hook.save_cursor)
            except OSError as exc:
                log.error("webhook %s: cannot save its cursor: %s", hook.display, exc)
            await loop.run_in_executor(executor, feed.close)
        self._tasks.clear()
        self._feeds.clear()
        self._shutdown_executors()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _shutdown_executors(self) -> None:
        for executor in self._executors:
            executor.shutdown(wait=False)
        self._executors.clear()

    async def _run(self, hook: Webhook, executor: ThreadPoolExecutor, feed: EventFeed) -> None:
        """Read the feed ahead, POST up to ``concurrency`` devices' events at once (each
        device's one at a time, in store order), and move the cursor past what is
        delivered without a gap."""
        loop = asyncio.get_running_loop()
        window: deque[_Pending] = deque()  # read and not yet behind the cursor, store order
        waiting: dict[str, deque[_Pending]] = {}  # by device, not yet being sent
        sending: dict[str, asyncio.Task[None]] = {}  # by device
        reading: asyncio.Future[list[EventChange]] | None = None
        saved_at = time.monotonic()
        try:
            while True:
                if reading is None and len(window) < self.ahead:
                    reading = loop.run_in_executor(executor, feed.poll, _POLL)
                pending: set[asyncio.Future[Any]] = set(sending.values())
                if reading is not None:
                    pending.add(reading)
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if reading is not None and reading.done():
                    changes = await self._read(hook, reading)
                    reading = None
                    for change in changes:
                        item = _Pending(change.cursor, change.event)
                        window.append(item)
                        waiting.setdefault(change.event.device, deque()).append(item)
                for device in [d for d, task in sending.items() if task.done()]:
                    del sending[device]
                for device in list(waiting):
                    if len(sending) >= self.concurrency:
                        break
                    if device not in sending:
                        queue = waiting[device]
                        sending[device] = loop.create_task(self._send(hook, queue.popleft()))
                        if not queue:
                            del waiting[device]
                while window and window[0].delivered:
                    hook.cursor = window.popleft().cursor
                # Saved when all read is delivered, and at least every second under way.
                if hook.cursor != hook.saved and (
                    not window or time.monotonic() - saved_at >= _SAVE_EVERY
                ):
                    await self._save(hook)
                    saved_at = time.monotonic()
        finally:
            for task in sending.values():
                task.cancel()
            if reading is not None:
                # The feed is closed in the same thread, after this poll has returned.
                reading.cancel()
            await asyncio.gather(*sending.values(), return_exceptions=True)

    async def _read(
        self, hook: Webhook, reading: asyncio.Future[list[EventChange]]
    ) -> list[EventChange]:
        try:
            return reading.result()
        except GeotrackError as exc:
            hook.failure(f"reading the store's events failed: {exc}", self.log_interval)
            await asyncio.sleep(backoff(hook.failing, self.retry_min, self.retry_max))
            return []

    async def _send(self, hook: Webhook, item: _Pending) -> None:
        await self._deliver(hook, item.event)
        item.delivered = True

    async def _save(self, hook: Webhook) -> None:
        # Not in the feed's thread: a poll under way there would hold the save up.
        try:
            await asyncio.get_running_loop().run_in_executor(None, hook.save_cursor)
        except OSError as exc:
            # Delivery goes on; a restart before the next successful save repeats events.
            hook.failure(f"cannot save its cursor to {hook.state_file}: {exc}", self.log_interval)

    async def _deliver(self, hook: Webhook, event: Event) -> None:
        """POST one event until it is answered 2xx (retrying with backoff)."""
        assert self._session is not None
        body = encode_event(event)
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(event)}
        attempt = 0
        while True:
            try:
                async with self._session.post(
                    hook.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        hook.success()
                        return
                    reason = f"HTTP {response.status} {response.reason or ''}".rstrip()
            except TimeoutError:
                reason = f"no answer within {self.timeout:g} s"
            except Exception as exc:
                # Whatever fails, the event is retried: aiohttp.ClientError mostly. Some
                # errors quote the URL: never with its credentials or query.
                reason = (str(exc) or type(exc).__name__).replace(hook.url, hook.display)
            hook.failure(reason, self.log_interval)
            await asyncio.sleep(backoff(attempt, self.retry_min, self.retry_max))
            attempt += 1


def webhook_families(webhooks: Webhooks) -> list[Family]:
    """The /metrics families of the webhooks."""
    deliveries = Family(
        "geotrack_webhook_deliveries_total",
        "counter",
        "Webhook POSTs of events, by webhook and result (delivered: answered 2xx; failed: "
        "an attempt that will be retried).",
    )
    failing = Family(
        "geotrack_webhook_failing",
        "gauge",
        "Failed attempts in a row now, by webhook (0 while delivering).",
    )
    for hook in webhooks.hooks:
        deliveries.add(hook.delivered, webhook=hook.display, result="delivered")
        deliveries.add(hook.failed, webhook=hook.display, result="failed")
        failing.add(hook.failing, webhook=hook.display)
    return [deliveries, failing]
