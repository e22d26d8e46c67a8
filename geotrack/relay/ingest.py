"""Group commit: many publish frames, one store transaction.

Frames queue up while a write is in progress and all go into the next one, so under load
a transaction carries many frames (one fsync for all of them) and when idle a lone frame
is written at once: there is no timer adding latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from geotrack.errors import StoreError
from geotrack.schema import Position
from geotrack.store import Store

log = logging.getLogger("geotrack.relay")

OnStored = Callable[[list[Position]], None]


class GroupCommitter:
    """Writes submitted positions in as few transactions as the store's speed allows.

    ``on_stored`` is called in the event loop, in commit order, with the positions each
    transaction newly stored (duplicates left out): the fan-out hook.
    """

    def __init__(
        self,
        store: Store,
        origin: str,
        on_stored: OnStored,
        max_rows: int = 20_000,
    ) -> None:
        self._store = store
        self._origin = origin
        self._on_stored = on_stored
        self._max_rows = max_rows
        self._pending: list[tuple[Sequence[Position], asyncio.Future[list[bool]]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="geotrack-writer")
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0
        self.failures = 0

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="geotrack-group-commit")

    def submit(self, positions: Sequence[Position]) -> asyncio.Future[list[bool]]:
        """Queue positions for the next transaction.

        The future gives, per position, whether it was new, once the transaction committed;
        it raises StoreError when the write failed. Queuing is synchronous so that a frame
        read before shutdown began is always part of the final flush.
        """
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        if self._closing and self._task is not None and self._task.done():
            future.set_exception(StoreError("the relay has stopped writing"))
            return future
        self._pending.append((positions, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, rows = self._take()
            positions = [p for group, _ in batch for p in group]
            try:
                flags = await loop.run_in_executor(
                    self._executor, self._store.write, positions, self._origin
                )
            except StoreError as exc:
                self.failures += 1
                log.error("store write failed, %d positions not acked: %s", rows, exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreError(str(exc)))
                continue
            except Exception as exc:  # a driver bug must not kill the relay
                self.failures += 1
                log.exception("store write failed unexpectedly")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreError(f"write failed: {exc!r}"))
                continue
            self.transactions += 1
            # Fan out before acking: a publisher that sees its ack knows subscribers have it
            # queued.
            self._on_stored([p for p, new in zip(positions, flags, strict=True) if new])
            offset = 0
            for group, future in batch:
                if not future.done():
                    future.set_result(flags[offset : offset + len(group)])
                offset += len(group)

    def _take(self) -> tuple[list[tuple[Sequence[Position], asyncio.Future[list[bool]]]], int]:
        """Take pending frames up to ``max_rows`` positions (at least one frame)."""
        taken = 0
        rows = 0
        for group, _ in self._pending:
            if taken and rows + len(group) > self._max_rows:
                break
            rows += len(group)
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch, rows

    async def close(self) -> None:
        """Write everything already submitted, then stop the writer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
