"""Paced publishing: send a source's positions at their (scaled) times, batched, acked.

A source is any iterator of ``(offset_seconds, position)`` in offset order (GPX tracks,
simulated movers). Positions due at the same moment go out together in one frame, so a
fast replay (``speed`` 0 or large) sends full batches while a real-time one sends each
fix when it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Final

from geotrack.client import Publisher
from geotrack.schema import MAX_BATCH, Position

__all__ = ["Source", "play"]

Source = Iterable[tuple[float, Position]]
Progress = Callable[[int], None]

#: Positions due within this many seconds of each other go into one frame.
_SLACK: Final = 0.002


async def play(
    source: Source,
    publisher: Publisher,
    *,
    speed: float = 1.0,
    batch: int = MAX_BATCH,
    on_sent: Progress | None = None,
    stop: asyncio.Event | None = None,
) -> bool:
    """Send every position of ``source`` at ``offset / speed`` seconds from now.

    ``speed`` 0 sends as fast as acks allow. Returns True when everything was sent and
    acked. Once ``stop`` is set it sends nothing more and returns False at once, without
    waiting for acks (the caller decides how long to wait for them). Raises RelayError
    when the relay goes away.
    """
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be within 1..{MAX_BATCH}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: list[Position] = []
    stopped = stop if stop is not None else asyncio.Event()

    async def flush() -> None:
        if pending and not stopped.is_set():
            await publisher.send(list(pending))
            if on_sent is not None:
                on_sent(len(pending))
            pending.clear()

    for offset, position in source:
        if speed > 0:
            delay = start + offset / speed - loop.time()
            if delay > _SLACK:
                await flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopped.wait(), delay)
        if stopped.is_set():
            return False
        pending.append(position)
        if len(pending) >= batch:
            await flush()
    await flush()
    if stopped.is_set():
        return False
    await publisher.flush()
    return True
