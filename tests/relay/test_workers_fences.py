"""Fences under ``geotrack serve --workers 2``: one evaluation, SIGHUP and REST reach all."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from geotrack.store import open_store
from tests.relay.test_events import (
    FENCES,
    IN,
    OUT,
    YARD,
    at,
    brief,
    fences_file,
    nothing_more,
    receive,
)
from tests.relay.test_workers import Workers, on_both, serve_workers
from tests.relay_helpers import roundtrip


async def publish_via(ws: ClientConnection, *fixes: dict[str, Any]) -> None:
    ack = await roundtrip(ws, list(fixes))
    assert ack["stored"] == len(fixes), ack


async def publishers(workers: Workers) -> dict[int, ClientConnection]:
    """One publisher held by each worker (others opened on the way are closed)."""
    by_worker: dict[int, ClientConnection] = {}
    for ws in await on_both(workers, "/publish", "publisher"):
        index = workers.worker_of(ws, "publisher")
        if index in by_worker:
            await ws.close()
        else:
            by_worker[index] = ws
    return by_worker


def count(workers: Workers, pattern: str) -> int:
    found = re.compile(pattern)
    return sum(1 for line in workers.log.lines if found.search(line))


@pytest.mark.timeout(120)
def test_each_transition_once_whichever_worker_stored_the_fix(tmp_path: Path) -> None:
    fences = fences_file(tmp_path)
    db = tmp_path / "db"
    with serve_workers(db, "--fences", str(fences)) as workers:
        lines = workers.log.wait(lambda ls: sum("fences: 2 from" in x for x in ls) == 2)
        assert any("worker 1: fences: 2 from" in x and "worker 0 evaluates" in x for x in lines)

        async def main() -> None:
            pubs = await publishers(workers)
            # The events of every worker (each /events follows the store).
            subs = [await connect(workers.url + "/events", open_timeout=5) for _ in range(4)]
            # The van's fixes alternate between the workers; worker 0 evaluates them all,
            # its own after the commit and worker 1's through the store's change feed.
            for s, lon in enumerate([OUT, IN, OUT, IN, IN, OUT]):
                await publish_via(pubs[s % 2], at("van", s, lon))
            expected = [
                ("enter", "van", "depot", 1),
                ("exit", "van", "depot", 2),
                ("enter", "van", "depot", 3),
                ("exit", "van", "depot", 5),
            ]
            for ws in subs:
                assert brief(await receive(ws, 4)) == expected
            await nothing_more(subs[0])
            for ws in [*subs, *pubs.values()]:
                await ws.close()

        asyncio.run(main())
        assert workers.stop() == 0
    with open_store(f"sqlite:///{db}") as store:
        assert len(list(store.query_events())) == 4


@pytest.mark.timeout(120)
def test_sighup_and_rest_changes_reach_every_worker(tmp_path: Path) -> None:
    fences = fences_file(tmp_path)
    with serve_workers(tmp_path / "db", "--fences", str(fences)) as workers:
        workers.log.wait(lambda ls: sum("fences: 2 from" in x for x in ls) == 2)
        # SIGHUP to the supervisor: both workers reread the file (worker 0 evaluates).
        renamed = {**FENCES["features"][0], "properties": {"name": "far"}}  # type: ignore[index]
        fences.write_text(json.dumps({"type": "FeatureCollection", "features": [renamed]}))
        workers.proc.send_signal(signal.SIGHUP)
        for index in (0, 1):
            workers.log.wait(
                lambda ls, i=index: any(f"worker {i}: fences reloaded" in x for x in ls)
            )
        assert workers.proc.poll() is None

        async def enter(device: str, lon: float) -> list[dict[str, Any]]:
            async with connect(workers.url + f"/events?device={device}", open_timeout=5) as ws:
                pubs = await publishers(workers)
                await publish_via(pubs[1], at(device, 0, OUT))
                await publish_via(pubs[1], at(device, 1, lon))
                for pub in pubs.values():
                    await pub.close()
                return await receive(ws, 1)

        assert brief(asyncio.run(enter("bike", IN))) == [("enter", "bike", "far", 1)]

        # A REST PUT answered by worker 1 is applied by worker 0 too (through the file).
        yard = {**FENCES["features"][1], "properties": {"name": "annex", "radius": 100}}  # type: ignore[index]
        reloads = count(workers, r"worker 0: fences reloaded")

        async def put_until_worker_1_answers() -> None:
            url = f"http://127.0.0.1:{workers.http_port}/api/fences/annex"
            for _ in range(40):
                async with aiohttp.ClientSession() as http, http.put(url, json=yard) as answer:
                    assert answer.status in (200, 201), await answer.text()
                if count(workers, r"worker 1: fence 'annex' (added|replaced)"):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("no PUT reached worker 1")

        asyncio.run(put_until_worker_1_answers())
        workers.log.wait(lambda ls: count(workers, r"worker 0: fences reloaded") > reloads)
        assert brief(asyncio.run(enter("cart", YARD))) == [("enter", "cart", "annex", 1)]
        assert workers.stop() == 0
