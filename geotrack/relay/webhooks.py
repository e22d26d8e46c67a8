"""Webhooks (``serve --webhook URL``): every stored geofence event POSTed as JSON, at least once.

Each webhook follows the store's event feed (:meth:`Store.follow_events`) in a thread of
its own and POSTs the events one by one, in store order, as the JSON object ``/events``
sends (``{"type":…,"device":…,"fence":…,"ts":…,"lat":…,"lon":…}``), with an
``Idempotency-Key`` header that names the transition (:func:`idempotency_key`): the same
for every attempt, every relay and every restart, so a receiver can drop repeats.

A POST answered 2xx is delivered; anything else (another status, a refused connection, a
timeout) is retried after a delay that doubles up to ``retry_max``, and the later events
wait: order is kept and nothing is skipped. After each delivery the feed's cursor is
saved (at most once a second, and at stop) to a small file per (store, webhook) in the
state directory, and a restart resumes from it: an event is delivered at least once,
whatever stops the relay between its storing and its delivery. A webhook never seen
before starts with the events stored from its first start on.

Failures are counted for /metrics (:func:`webhook_families`) and logged at most once a
``log_interval`` per webhook, with the URL stripped of credentials and query.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp

from geotrack import __version__
from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.relay.metrics import Family
from geotrack.schema import Event, encode_event
from geotrack.store import EventFeed, Store

__all__ = [
    "Webhook",
    "Webhooks",
    "check_webhook_url",
    "default_state_dir",
    "idempotency_key",
    "webhook_display",
    "webhook_families",
]

log = logging.getLogger("geotrack.relay")

#: Seconds one poll of the store's event feed waits: how soon a stopping relay is noticed.
_POLL: Final = 0.25
#: Seconds between two saves of a webhook's cursor while it delivers.
_SAVE_EVERY: Final = 1.0


def idempotency_key(event: Event) -> str:
    """``device/fence/ts/type``, each part percent-encoded: the transition's identity.

    The store keeps one event per (device, fence, ts, type), so this names it whichever
    relay decided it and however often it is sent.
    """
    return "/".join(quote(part, safe=":") for part in event.key)


def webhook_display(url: str) -> str:
    """``url`` without credentials, query or fragment: what logs and /metrics show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_webhook_url(url: str) -> None:
    """InvalidParameter (``--webhook``) unless ``url`` is an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        raise InvalidParameter("--webhook", f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise InvalidParameter(
            "--webhook",
            f"expected an http(s)://HOST[:PORT]/PATH URL, got {webhook_display(url)!r}",
        )


def default_state_dir() -> Path:
    """Where webhook cursors live unless ``--webhook-state`` says: ``$XDG_STATE_HOME``'s
    ``geotrack/webhooks`` (``~/.local/state/geotrack/webhooks``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "geotrack" / "webhooks"


def backoff(attempt: int, low: float, high: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling from ``low``, capped
    at ``high``, with up to a quarter less at random so relays do not retry in step."""
    delay: float = min(high, low * 2.0 ** min(attempt, 62))
    return delay * (0.75 + 0.25 * random.random())


class Webhook:
    """One ``--webhook`` URL: its cursor file, its counters and its delivery task."""

    def __init__(self, url: str, store: Store, state_dir: Path) -> None:
        self.url = url
        self.display = webhook_display(url)
        identity = f"{store.display_url}\n{url}".encode()
        self.state_file = state_dir / f"{hashlib.sha256(identity).hexdigest()[:24]}.json"
        self._store_url = store.display_url
        #: Events delivered (answered 2xx), and attempts that failed.
        self.delivered = 0
        self.failed = 0
        #: Failed attempts in a row now (0 while delivering).
        self.failing = 0
        self._cursor: str | int | None = None
        self._saved: str | int | None = None
        self._last_log = -float("inf")
        self._unlogged = 0

    def load_cursor(self) -> str | int | None:
        """The saved cursor (or store time, Unix ms), None when there is none."""
        try:
            document = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise GeotrackError(
                f"cannot read the cursor of webhook {self.display} from {self.state_file}: "
                f"{exc}; delete the file to start with new events"
            ) from None
        cursor = document.get("cursor") if isinstance(document, dict) else None
        if not isinstance(cursor, (str, int)) or isinstance(cursor, bool):
            raise GeotrackError(
                f"{self.state_file} holds no cursor of webhook {self.display}; delete the "
                "file to start with new events"
            )
        self._cursor = self._saved = cursor
        return cursor

    def save_cursor(self) -> None:
        """Write the cursor (atomically: a new file renamed over the old) if it moved."""
        cursor = self._cursor
        if cursor is None or cursor == self._saved:
            return
        document = {"webhook": self.display, "store": self._store_url, "cursor": cursor}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        # Its own temporary name: two relays on one machine may share a state directory.
        temporary = self.state_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document) + "\n", encoding="utf-8")
        os.replace(temporary, self.state_file)
        self._saved = cursor

    def failure(self, reason: str, interval: float) -> None:
        """Count a failed attempt; log it unless one was logged less than ``interval`` ago."""
        self.failed += 1
        self.failing += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= interval:
            more = f" ({self._unlogged} failed attempts since the last report)"
            log.warning(
                "webhook %s: %s; retrying%s",
                self.display,
                reason,
                more if self._unlogged > 1 else "",
            )
            self._last_log = now
            self._unlogged = 0

    def success(self) -> None:
        """Count a delivery; say so when it ends a run of failures."""
        if self.failing:
            log.info(
                "webhook %s: delivering again after %d failed attempts",
                self.display,
                self.failing,
            )
        self.delivered += 1
        self.failing = 0
        self._unlogged = 0
        self._last_log = -float("inf")


class Webhooks:
    """The relay's webhooks: started before the relay stores anything, stopped last.

    ``retry_min``/``retry_max`` bound the delay between attempts, ``timeout`` one POST
    (connecting included), ``log_interval`` the failure lines in the log.
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
    ) -> None:
        self.store = store
        state = state_dir if state_dir is not None else default_state_dir()
        self.hooks = [Webhook(url, store, state) for url in dict.fromkeys(urls)]
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.timeout = timeout
        self.log_interval = log_interval
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
            hook._cursor = feed.cursor
        except GeotrackError:
            # A feed with no cursor before its first event (MongoDB's change stream):
            # the time it opened resumes it as well, replaying what was stored since.
            if since is None:
                hook._cursor = opened_ms
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
        loop = asyncio.get_running_loop()
        saved_at = time.monotonic()
        while True:
            try:
                changes = await loop.run_in_executor(executor, feed.poll, _POLL)
            except GeotrackError as exc:
                hook.failure(f"reading the store's events failed: {exc}", self.log_interval)
                await asyncio.sleep(backoff(hook.failing, self.retry_min, self.retry_max))
                continue
            for change in changes:
                await self._deliver(hook, change.event)
                hook._cursor = change.cursor
                if time.monotonic() - saved_at >= _SAVE_EVERY:
                    await self._save(hook, executor)
                    saved_at = time.monotonic()
            if not changes and hook._cursor != hook._saved:
                await self._save(hook, executor)
                saved_at = time.monotonic()

    async def _save(self, hook: Webhook, executor: ThreadPoolExecutor) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(executor, hook.save_cursor)
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
            except aiohttp.ClientError as exc:
                # Some errors quote the URL: never with its credentials or query.
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
