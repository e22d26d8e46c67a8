"""Group commit: many publish frames, one store transaction.

Frames queue up while a write is in progress and all go into the next one, so under load
a transaction carries many frames (one fsync for all of them) and when idle a lone frame
is written at once: there is no timer adding latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from geotrack.errors import StoreError
from geotrack.schema import Position
from geotrack.store import Store

__all__ = ["Batch", "GroupCommitter", "Slot"]

log = logging.getLogger("geotrack.relay")

OnStored = Callable[[list[Position]], None]


class Batch:
    """The positions of one future transaction, and the future of its outcome.

    ``committed`` gives, per position, whether it was new, once the transaction committed;
    it raises StoreError when the write failed. One future per transaction, not per
    frame: under load a transaction carries hundreds of frames.
    """

    __slots__ = ("committed", "positions")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.positions: list[Position] = []
        self.committed: asyncio.Future[list[bool]] = loop.create_future()


class Slot(NamedTuple):
    """Where one submission's positions are in its batch: ``flags()`` once committed."""

    batch: Batch
    start: int
    end: int

    def flags(self) -> list[bool]:
        """Per position, whether it was new (raises StoreError if the write failed)."""
        return self.batch.committed.result()[self.start : self.end]


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
        # Batches waiting for the writer; only the last one still takes submissions.
        self._pending: deque[Batch] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="geotrack-writer")
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0
        self.failures = 0

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="geotrack-group-commit")

    def submit(self, positions: Sequence[Position]) -> Slot:
        """Queue positions for the next transaction that has room for them (up to
        ``max_rows``; a larger submission gets a transaction of its own).

        Queuing is synchronous so that a frame read before shutdown began is always part
        of the final flush.
        """
        loop = asyncio.get_running_loop()
        if self._closing and self._task is not None and self._task.done():
            batch = Batch(loop)
            batch.committed.set_exception(StoreError("the relay has stopped writing"))
            return Slot(batch, 0, 0)
        pending = self._pending
        if not pending or (
            pending[-1].positions and len(pending[-1].positions) + len(positions) > self._max_rows
        ):
            pending.append(Batch(loop))
        batch = pending[-1]
        start = len(batch.positions)
        batch.positions.extend(positions)
        self._wakeup.set()
        return Slot(batch, start, start + len(positions))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        writing: tuple[Batch, asyncio.Future[list[bool]]] | None = None
        while True:
            if writing is None:
                if not self._pending:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                writing = self._start(loop)
            batch, write = writing
            writing = None
            positions = batch.positions
            try:
                flags = await write
            except StoreError as exc:
                self.failures += 1
                log.error("store write failed, %d positions not acked: %s", len(positions), exc)
                batch.committed.set_exception(StoreError(str(exc)))
                continue
            except Exception as exc:  # a driver bug must not kill the relay
                self.failures += 1
                log.exception("store write failed unexpectedly")
                batch.committed.set_exception(StoreError(f"write failed: {exc!r}"))
                continue
            # The next transaction starts before this one is fanned out and acked, so the
            # writer thread is not idle while the event loop does that.
            if self._pending:
                writing = self._start(loop)
            self.transactions += 1
            # Fan out before acking: a publisher that sees its ack knows subscribers have it
            # queued.
            try:
                self._on_stored([p for p, new in zip(positions, flags, strict=True) if new])
            except Exception:  # a fan-out bug must not stop the writer or the acks
                log.exception("fan-out after a commit failed")
            batch.committed.set_result(flags)

    def _start(self, loop: asyncio.AbstractEventLoop) -> tuple[Batch, asyncio.Future[list[bool]]]:
        """Hand the oldest pending batch to the writer thread."""
        batch = self._pending.popleft()
        write = loop.run_in_executor(
            self._executor, self._store.write, batch.positions, self._origin
        )
        return batch, write

    async def close(self) -> None:
        """Write everything already submitted, then stop the writer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
