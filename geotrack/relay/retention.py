"""Retention for a running relay (``geotrack serve --retain 90d``).

:class:`Retention` deletes the store's fixes older than the retention age when the relay
starts and then every ``every`` seconds, through :meth:`Store.prune
<geotrack.store.base.Store.prune>` in a worker thread: short, paced batches, so the relay's
own writes (group commits on another thread) interleave with them and its acks are not
held up. A failed check is logged and tried again at the next one; the relay goes on.
Stopping waits for the batch in progress only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from geotrack._text import plural
from geotrack.errors import StoreError
from geotrack.schema import ms_to_ts
from geotrack.store import Store

__all__ = ["Retention"]

log = logging.getLogger("geotrack.relay")


class Retention:
    """Keeps ``keep`` seconds of fixes in ``store``; checks at start and every ``every`` s."""

    def __init__(self, store: Store, keep: float, every: float = 300.0) -> None:
        self.store = store
        self.keep = keep
        self.every = every
        #: Positions and geofence events deleted since the relay started; checks run.
        self.pruned = 0
        self.events_pruned = 0
        self.checks = 0
        self._halt = threading.Event()  # read between batches by the worker thread
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin checking, now and then every ``every`` seconds, in the background."""
        self._task = asyncio.create_task(self._run(), name="geotrack-retention")

    async def stop(self) -> None:
        """Stop after the batch in progress; what it deleted stays deleted."""
        self._halt.set()
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a bug: say so, and keep the relay running
                log.exception("retention: the check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)

    def check(self) -> dict[str, int]:
        """Delete what is older than the retention age now; positions per device.

        Geofence events older than the age go too (counted in ``events_pruned``).

        Blocking: the relay runs it in a worker thread. A store error is logged, and what
        was deleted before it is counted.
        """
        before_ms = time.time_ns() // 1_000_000 - round(self.keep * 1000)
        began = time.monotonic()
        counts: dict[str, int] = {}
        events = 0
        steps = self.store.prune(before_ms)
        try:
            for step in steps:
                if step.events:
                    events += step.count
                    continue
                counts[step.device] = counts.get(step.device, 0) + step.count
                if self._halt.is_set():
                    break
        except StoreError as exc:
            log.warning("retention: pruning %s failed, next try in %gs: %s",
                        self.store.display_url, self.every, exc)  # fmt: skip
        finally:
            steps.close()
        total = sum(counts.values())
        self.pruned += total
        self.checks += 1
        seconds = time.monotonic() - began
        self.events_pruned += events
        if total or events:
            log.info(
                "retention: deleted %s of %s%s with fixes before %s in %.1f s",
                plural(total, "position"),
                plural(len(counts), "device"),
                f" and {plural(events, 'geofence event')}" if events else "",
                ms_to_ts(before_ms),
                seconds,
            )
        else:
            log.debug("retention: no fixes before %s", ms_to_ts(before_ms))
        return counts
