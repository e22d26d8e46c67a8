"""Scenario 18: webhook delivery (``serve --webhook``) of a backlog of stored events.

A backlog of events (50 devices) is stored in a fresh SQLite file, then
:class:`geotrack.relay.webhooks.Webhooks` delivers it to an aiohttp receiver on
127.0.0.1 that answers 204, at once or after a delay standing for a remote receiver's
round trip. Delivery one request at a time (``concurrency=1``) and geotrack's default (8
devices in flight) run interleaved per round (A B, B A, ...); reported are events per
second of wall time, and the ratio. The receiver runs in the same process (its CPU time
counts against the rate: figures for an instant receiver are a floor).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from rich import box
from rich.table import Table

from geotrack.relay.webhooks import Webhooks
from geotrack.schema import Event, ms_to_ts
from geotrack.store import open_store

#: (receiver delay in seconds, events in the backlog)
CASES = ((0.0, 3000), (0.02, 400))
VARIANTS = (1, 8)


async def _deliver(events: int, delay: float, concurrency: int) -> float:
    """Events per second delivering a backlog of ``events``."""
    got = 0
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal got
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        got += 1
        if got >= events:
            done.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = open_store(f"sqlite:///{folder}/events.db")
            hooks = Webhooks(store, [url], Path(folder) / "state", concurrency=concurrency)
            await hooks.start()
            try:
                base = 1_700_000_000_000
                backlog = [
                    Event("enter", f"car-{i % 50}", "depot", ms_to_ts(base + i * 1000), 52.5, 13.4)
                    for i in range(events)
                ]
                store.write_events(backlog)
                began = time.perf_counter()
                await done.wait()
                return events / (time.perf_counter() - began)
            finally:
                await hooks.stop()
                store.close()
    finally:
        await runner.cleanup()


def run_webhooks(rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Per case and round, events/s one at a time and with 8 in flight, interleaved."""
    cases: list[dict[str, Any]] = []
    for delay, events in CASES:
        per_round: list[dict[str, float]] = []
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            rates = {c: asyncio.run(_deliver(events, delay, c)) for c in order}
            per_round.append({"one": rates[1], "eight": rates[8], "ratio": rates[8] / rates[1]})
            log(
                f"  receiver {delay * 1000:.0f} ms, round {r + 1}: one at a time "
                f"{rates[1]:,.0f}/s, 8 in flight {rates[8]:,.0f}/s"
            )
        cases.append(
            {
                "delay_ms": delay * 1000,
                "events": events,
                "rounds": per_round,
                "median_ratio": statistics.median(x["ratio"] for x in per_round),
            }
        )
    return {"cases": cases}


def webhooks_table(result: dict[str, Any]) -> Table:
    table = Table(
        title="[18] Webhook delivery of a stored backlog (events/s, wall; receiver in-process)",
        box=box.SIMPLE_HEAVY,
    )
    for column in ("receiver delay", "events", "one at a time", "8 in flight", "ratio (median)"):
        table.add_column(column, justify="right")
    for case in result["cases"]:
        rounds = case["rounds"]
        table.add_row(
            f"{case['delay_ms']:.0f} ms",
            f"{case['events']:,}",
            " / ".join(f"{x['one']:,.0f}" for x in rounds),
            " / ".join(f"{x['eight']:,.0f}" for x in rounds),
            f"{case['median_ratio']:.1f}",
        )
    return table
