"""The subscriber side against a real relay: a replay that fails after its subscriber was
dropped counts one drop in /metrics, not two."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from geotrack.errors import StoreError
from geotrack.relay.http import HttpListener
from geotrack.relay.metrics import exposition
from geotrack.store import ChangeFeed, open_store
from geotrack.store.base import Change
from tests.factories import T0_S
from tests.relay_helpers import arun, publisher, running_relay, subscriber


class StuckThenFailing(ChangeFeed):
    """A replay feed that blocks until released, then fails like a lost database."""

    def __init__(self, release: threading.Event) -> None:
        self._release = release

    @property
    def cursor(self) -> str:
        return ""

    def poll(self, timeout: float) -> list[Change]:
        self._release.wait(10)
        raise StoreError("database went away")

    def close(self) -> None:
        pass


def test_a_failed_replay_of_a_dropped_subscriber_counts_one_drop(tmp_path: Path) -> None:
    release = threading.Event()
    store = open_store(f"sqlite:///{tmp_path / 'db'}")
    real_follow = store.follow

    def follow(since: Any = None, devices: Any = (), exclude_origin: str | None = None) -> Any:
        if since is None:  # the relay following its peers
            return real_follow(since, devices, exclude_origin)
        return StuckThenFailing(release)

    store.follow = follow  # type: ignore[method-assign]

    async def main() -> None:
        async with running_relay("", store=store, max_batch=1, subscriber_queue=2) as relay:
            sub = await subscriber(relay, "since=10m")
            async with await publisher(relay) as pub:
                for i in range(3):  # held during the replay: 3 > 2 drops the subscriber
                    await pub.send(f'{{"device": "a", "lat": 1, "lon": 2, "ts": {T0_S + i}}}')
                    await asyncio.wait_for(pub.recv(), 5)
            release.set()  # now the replay fails
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(sub.recv(), 5)
            await asyncio.wait_for(sub.wait_closed(), 5)
            for _ in range(100):
                if not relay.subscribers:
                    break
                await asyncio.sleep(0.02)
            metrics = exposition(HttpListener(relay, "127.0.0.1", 0).families())
            assert "geotrack_subscriber_drops_total 1\n" in metrics
            assert relay.hub.dropped == 1

    try:
        arun(main())
    finally:
        release.set()
        store.close()
