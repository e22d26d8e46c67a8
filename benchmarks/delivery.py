"""Delivery: what a watcher pays to stay current, by mechanism (issue 16).

A real ``geotrack serve`` (with its HTTP listener) takes a fleet's positions at a fixed
rate from one WebSocket publisher, and N watchers follow it by one mechanism each run:
WebSocket ``/subscribe``, Server-Sent Events (``/api/stream``), long polling
(``/api/positions/poll?wait=30``) and short polling every 1 s and 5 s (the same endpoint
with ``wait=0``: one request, one answer). Mechanisms take turns within each round, each
on a fresh relay.

The watchers (:mod:`benchmarks.delivery_clients`) are written on raw sockets, so every
byte each one sends and receives is counted on the client side, HTTP headers and
WebSocket framing included. A short poller's request carries the
headers curl sends (Host, User-Agent, Accept): a browser's are several times larger, so
the per-request overhead measured here is a floor.

Figures per run, over the measured window: publish -> watcher latency (one position in
each published batch carries a probe number; its send time is known), relay CPU per
delivered position (the relay's CPU with no watchers at the same rate, the ingest, is
measured too and subtracted), bytes on the wire per delivered position. The idle runs
connect 1,000 watchers with nothing published and report the relay's CPU and the memory
each watcher holds.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks import procstat
from benchmarks.delivery_clients import (
    MECHANISMS,
    Probes,
    Wire,
    cursor_in,
    get,
    head,
    publish,
    watcher,
)
from benchmarks.relays import GEOTRACK, RelayProcess

__all__ = ["WORKLOADS", "run_delivery", "summarize", "workload"]

# -- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    watchers: int
    rate: int
    warmup: float
    window: float


async def _connect_all(
    mechanism: str, relay: RelayProcess, count: int, probes: Probes
) -> tuple[list[Wire], list[asyncio.Task[None]]]:
    wires = [Wire() for _ in range(count)]
    tasks = []
    for i, wire in enumerate(wires):
        tasks.append(asyncio.create_task(watcher(mechanism, relay, wire, probes)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # not a thundering herd on the accept queue
    return wires, tasks


def _totals(wires: list[Wire]) -> tuple[int, int]:
    return sum(w.sent + w.received for w in wires), sum(w.positions for w in wires)


async def _measure(mechanism: str | None, plan: _Plan, workdir: Path) -> dict[str, Any]:
    """One relay, one mechanism (None: the publisher alone), one window."""
    relay = RelayProcess(GEOTRACK, workdir, http=True)
    relay.start()
    probes = Probes()
    tasks: list[asyncio.Task[None]] = []
    try:
        wires: list[Wire] = []
        if mechanism is not None:
            wires, tasks = await _connect_all(mechanism, relay, plan.watchers, probes)
        tasks.append(asyncio.create_task(publish(relay.port, plan.rate, probes)))
        await asyncio.sleep(plan.warmup)
        failed = [t for t in tasks if t.done()]
        if failed:
            failed[0].result()  # raises what went wrong
        bytes0, positions0 = _totals(wires)
        cpu0 = procstat.cpu(relay.pid)
        probes.recording = True
        await asyncio.sleep(plan.window)
        probes.recording = False
        cpu1 = procstat.cpu(relay.pid)
        bytes1, positions1 = _totals(wires)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        relay.stop()
    seconds = cpu1.at - cpu0.at
    latencies = sorted(x for w in wires for x in w.latencies)
    delivered = positions1 - positions0
    return {
        "mechanism": mechanism or "none",
        "watchers": plan.watchers if mechanism else 0,
        "rate": plan.rate,
        "seconds": seconds,
        "cpu_s": cpu1.total - cpu0.total,
        "delivered": delivered,
        "bytes": bytes1 - bytes0,
        "p50_ms": _quantile(latencies, 0.5),
        "p99_ms": _quantile(latencies, 0.99),
        "samples": len(latencies),
    }


async def _idle(mechanism: str, watchers: int, window: float, workdir: Path) -> dict[str, Any]:
    """``watchers`` of one mechanism on a relay where nothing happens."""
    relay = RelayProcess(GEOTRACK, workdir, http=True)
    relay.start()
    probes = Probes()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.sleep(1.0)
        rss0 = relay.rss_kib()
        wires, tasks = await _connect_all(mechanism, relay, watchers, probes)
        await asyncio.sleep(6.0)  # every short poller has made its first requests
        failed = [t for t in tasks if t.done()]
        if failed:
            failed[0].result()
        bytes0, _ = _totals(wires)
        cpu0 = procstat.cpu(relay.pid)
        await asyncio.sleep(window)
        cpu1 = procstat.cpu(relay.pid)
        bytes1, _ = _totals(wires)
        rss1 = relay.rss_kib()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        relay.stop()
    seconds = cpu1.at - cpu0.at
    return {
        "mechanism": mechanism,
        "watchers": watchers,
        "seconds": seconds,
        "cpu_percent": 100 * (cpu1.total - cpu0.total) / seconds,
        "kib_per_watcher": (rss1 - rss0) / watchers,
        "bytes_per_watcher_minute": (bytes1 - bytes0) / watchers * 60 / seconds,
    }


async def _short_poll_cost(workdir: Path, rows: int, requests: int) -> list[dict[str, Any]]:
    """What one short poll costs when nothing changed, on a store of ``rows`` positions.

    Variants, interleaved in blocks of 20 requests on one kept-alive connection each:
    ``GET /api/positions?since=T`` after the newest fix (the export query: a store read
    that finds nothing), the same with ``If-None-Match`` (304 from memory), and
    ``/api/positions/poll?since=CURSOR&wait=0``.
    """
    from benchmarks.export_bench import BASE_TS, DEVICES, fill

    relay = RelayProcess(GEOTRACK, workdir, http=True)
    fill(f"sqlite:///{relay.db}", 0, rows)
    relay.start()
    assert relay.http_port is not None
    port = relay.http_port
    since = BASE_TS + rows // DEVICES + 1
    export = f"/api/positions?since={since}"
    stats = {name: {"cpu": 0.0, "seconds": [], "bytes": 0, "count": 0} for name in _COST_VARIANTS}
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wire = Wire()
        first = await head(reader, writer, wire, port, export, "")
        tag = re.search(rb"(?i)\r\netag: *([^\r]+)", first)
        etag = tag.group(1).decode() if tag else ""
        cursor = cursor_in(await get(reader, writer, wire, port, "/api/positions/poll"))
        paths = {
            "export": (export, ""),
            "export, If-None-Match (304)": (export, f"If-None-Match: {etag}\r\n"),
            "poll, wait=0": (f"/api/positions/poll?since={cursor}&wait=0", ""),
        }
        for _ in range(max(1, requests // 20)):
            for name, (path, extra) in paths.items():
                entry = stats[name]
                wire = Wire()
                cpu0 = procstat.cpu(relay.pid)
                for _ in range(20):
                    began = time.perf_counter()
                    await head(reader, writer, wire, port, path, extra)
                    entry["seconds"].append(time.perf_counter() - began)
                entry["cpu"] += procstat.cpu(relay.pid).total - cpu0.total
                entry["bytes"] += wire.sent + wire.received
                entry["count"] += 20
        writer.close()
    finally:
        relay.stop()
    return [
        {
            "variant": name,
            "rows": rows,
            "ms_p50": 1000 * statistics.median(entry["seconds"]),
            "cpu_ms_per_request": 1000 * entry["cpu"] / entry["count"],
            "bytes_per_request": entry["bytes"] / entry["count"],
        }
        for name, entry in stats.items()
    ]


_COST_VARIANTS: Final = ("export", "export, If-None-Match (304)", "poll, wait=0")


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


#: (watchers, positions/s published): a fleet of 100 vehicles at 1,000 positions/s to 10
#: and 100 watchers; at 1,000 watchers 100/s (100,000 deliveries/s already, what two shared
#: cores can carry); and one vehicle's 1 position/s to 100 watchers, where every answer
#: holds a position or two and the per-request overhead shows.
WORKLOADS: Final = ((10, 1000), (100, 1000), (1000, 100), (100, 1))


def workload(watchers: int, rate: int) -> str:
    """How tables and the chart name a workload."""
    return f"{watchers:,} x {rate:,}/s"


def run_delivery(
    quick: bool, rounds: int, log: Callable[[str], None], idle_window: float | None = None
) -> dict[str, Any]:
    """Every mechanism on every workload, interleaved in each round, then the idle runs."""
    workloads = [w for w in WORKLOADS if not quick or w[0] < 1000]
    window = 4.0 if quick else 8.0
    idle_s = idle_window if idle_window is not None else (10.0 if quick else 30.0)
    runs: list[dict[str, Any]] = []
    idle: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="geotrack-delivery-") as tmp:
        for round_no in range(rounds):
            for watchers, rate in workloads:
                if watchers >= 1000 and round_no > 0:
                    continue  # one round at 1,000: it is the long one
                order: list[str | None] = [None, *MECHANISMS]
                random.Random(round_no * 7 + watchers + rate).shuffle(order)
                for mechanism in order:
                    slow = mechanism == "short-poll-5s" or rate < 10
                    plan = _Plan(watchers, rate, 6.0 if slow else 2.0, window * (2 if slow else 1))
                    name = mechanism or "no watchers"
                    log(f"  delivery round {round_no + 1}: {name}, {workload(watchers, rate)}")
                    workdir = Path(tempfile.mkdtemp(dir=tmp))
                    runs.append(asyncio.run(_measure(mechanism, plan, workdir)))
        for round_no in range(1 if quick else max(1, rounds - 1)):
            shuffled = list(MECHANISMS)
            random.Random(round_no).shuffle(shuffled)
            for mechanism in shuffled:
                log(f"  idle round {round_no + 1}: {mechanism} x1000")
                workdir = Path(tempfile.mkdtemp(dir=tmp))
                idle.append(asyncio.run(_idle(mechanism, 1000, idle_s, workdir)))
        rows = 100_000 if quick else 1_000_000
        log(f"  what a short poll costs when nothing changed ({rows:,} positions stored)")
        workdir = Path(tempfile.mkdtemp(dir=tmp))
        cost = asyncio.run(_short_poll_cost(workdir, rows, 120 if quick else 600))
    summary = summarize(runs, idle)
    summary["short_poll_cost"] = cost
    return {"runs": runs, "idle": idle, "summary": summary}


def summarize(runs: list[dict[str, Any]], idle: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, per mechanism and workload; relay CPU net of the ingest."""
    ingest: dict[int, list[float]] = {}
    for run in runs:
        if run["mechanism"] == "none":
            ingest.setdefault(run["rate"], []).append(run["cpu_s"] / run["seconds"])

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    rows = []
    for watchers, rate in WORKLOADS:
        for mechanism in MECHANISMS:
            mine = [
                r
                for r in runs
                if r["mechanism"] == mechanism and r["watchers"] == watchers and r["rate"] == rate
            ]
            if not mine:
                continue
            base = statistics.median(ingest.get(rate, [0.0]))
            rows.append(
                {
                    "mechanism": mechanism,
                    "watchers": watchers,
                    "rate": rate,
                    "workload": workload(watchers, rate),
                    "rounds": len(mine),
                    "p50_ms": med([r["p50_ms"] for r in mine]),
                    "p99_ms": med([r["p99_ms"] for r in mine]),
                    "bytes_per_position": med(
                        [r["bytes"] / r["delivered"] if r["delivered"] else None for r in mine]
                    ),
                    "cpu_us_per_position": med(
                        [
                            1e6 * max(0.0, r["cpu_s"] - base * r["seconds"]) / r["delivered"]
                            if r["delivered"]
                            else None
                            for r in mine
                        ]
                    ),
                    "delivered_per_s": med([r["delivered"] / r["seconds"] for r in mine]),
                }
            )
    idle_rows = []
    for mechanism in MECHANISMS:
        mine = [r for r in idle if r["mechanism"] == mechanism]
        if mine:
            idle_rows.append(
                {
                    "mechanism": mechanism,
                    "watchers": mine[0]["watchers"],
                    "cpu_percent": statistics.median(r["cpu_percent"] for r in mine),
                    "kib_per_watcher": statistics.median(r["kib_per_watcher"] for r in mine),
                    "bytes_per_watcher_minute": statistics.median(
                        r["bytes_per_watcher_minute"] for r in mine
                    ),
                }
            )
    return {"rows": rows, "idle": idle_rows}


def main() -> None:
    """``python -m benchmarks.delivery [--quick] [--rounds N] [--idle S] [--json F] [--svg F]``."""
    import argparse
    import sys

    from benchmarks.delivery_report import markdown, svg

    parser = argparse.ArgumentParser(prog="python -m benchmarks.delivery")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, help="seconds each idle run is measured")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--svg", type=Path, help="write the chart here")
    args = parser.parse_args()
    result = run_delivery(
        args.quick, args.rounds, lambda line: print(line, file=sys.stderr), args.idle
    )
    print(markdown(result["summary"]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    if args.svg is not None:
        args.svg.write_text(svg(result["summary"]))


if __name__ == "__main__":
    main()
