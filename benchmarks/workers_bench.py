"""Scenario 17 (issue 15 part 3): ``geotrack serve --workers N``.

- **throughput**: scenario 1's workload (100 publishers, single-position frames as fast as
  acks allow, 10 subscribers) on ``--workers 2`` and on one process, interleaved rounds,
  the ratio per round. The load generators share the machine's cores with the relay.
- **cross-worker latency**: one publisher and one subscriber on each worker (told apart
  by the relay's log), positions paced to 2,000/s in all: publish -> subscriber latency
  of the fixes that crossed from one worker to the other (store, commit, wake-up, the
  sibling's follower) next to those delivered by the worker that stored them.
- **saturation**: scenario 16's paced climb at 1,000 publisher connections (one ladder),
  for 2 workers, 1 worker and the Node ``ws`` reference.
- **store ceiling**: SQLite rows/s with the dedupe index, 1, 2 and 4 writer processes on
  one file, commits of 1, 100 and 1,000 rows, queued on a shared flock (as the workers are)
  and in SQLite's busy handler: what the workers share, so what bounds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.fleet_bench import P99_LIMIT_MS, _f, held, saturation_point
from benchmarks.relays import GEOTRACK, NODE_WS, ROOT, RelayKind, SetupError, environment
from benchmarks.runner import PhaseSpec, Workload, run
from benchmarks.scenarios import Outcome, Scenario, Settings, Variant, run_scenario

__all__ = ["run_workers", "workers_tables"]

_PORTS = re.compile(r"(\d+) workers \(pids [\d, ]+\) share port (\d+)")
_LISTENING = re.compile(r"geotrack relay listening on ws://127\.0\.0\.1:(\d+)")
_CONNECTED = re.compile(r"worker (\d+): (publisher|subscriber) 127\.0\.0\.1:(\d+) connected")


def run_workers(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """All three parts; a JSON-able dict (the throughput part also as an Outcome)."""
    out: dict[str, Any] = {}
    outcome = _throughput(settings, log)
    out["throughput"] = outcome
    per_round = [
        two.phases[0].stored_per_s / one.phases[0].stored_per_s
        for two, one in zip(outcome.runs["2 workers"], outcome.runs["1 worker"], strict=False)
        if one.phases[0].stored_per_s
    ]
    out["speedup"] = {"median": statistics.median(per_round), "per_round": per_round}
    log(f"  [17] --workers 2 ÷ 1: {', '.join(f'{r:.2f}' for r in per_round)}")
    seconds = 4.0 if settings.quick else 10.0
    # Interleaved: two workers, then the same clients on one process.
    out["latency"] = [
        _latency(count, 2000.0, seconds) for _ in range(settings.rounds) for count in (2, 1)
    ]
    for r in out["latency"]:
        c, same = r["cross"], r["same"]
        log(
            f"  [17] {r['workers']} worker(s): cross-worker p50/p99 {c['p50']:.2f}/"
            f"{c['p99']:.2f} ms, same worker {same['p50']:.2f}/{same['p99']:.2f} ms"
        )
    out["saturation"] = _saturation(settings, log)
    seconds = 2.0 if settings.quick else 4.0
    out["ceiling"] = [
        _ceiling(writers, batch, seconds, flock)
        for batch in (1, 100, 1000)  # 1000: a group commit at saturation
        for writers in (1, 2, 4)
        for flock in ((False,) if writers == 1 else (True, False))
    ]
    for c in out["ceiling"]:
        what = f"{c['writers']} writers x {c['batch']}-row commits ({c['queue']})"
        log(f"  [17] SQLite {what}: {c['rows_per_s']:,.0f} rows/s")
    return out


# -- throughput ------------------------------------------------------------------------------


def _throughput(settings: Settings, log: Callable[[str], None]) -> Outcome:
    saturate = (PhaseSpec("saturate", warmup=settings.warmup, duration=settings.duration),)
    one = Workload(publishers=100, window=8, subscribers=10, phases=saturate)
    two = Workload(
        publishers=100, window=8, subscribers=10, phases=saturate, relay_args=("--workers", "2")
    )
    scenario = Scenario(
        17,
        "workers",
        "serve --workers 2 vs 1: single-position frames, 100 publishers, 10 subscribers",
        [Variant("2 workers", GEOTRACK, two), Variant("1 worker", GEOTRACK, one)],
        settings.rounds,
        baseline="1 worker",
        profile=(),
    )
    return run_scenario(scenario, settings, log)


# -- saturation at 1,000 connections ---------------------------------------------------------


def _saturation(settings: Settings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Scenario 16's climb at 1,000 publishers: 2 workers, 1, and Node ws, interleaved.

    One ladder of paced rates per relay and round (scenario 16 climbs two); the point is
    the highest rate held (p99 <= 100 ms, everything offered sent) with every lower one.
    """
    # Up to 36,000/s: every relay held 24,000/s on a quiet machine (the relays' capacity
    # here varies by a fifth from hour to hour), so a ladder that ends there ranks nothing.
    rates = [2000.0, 5000.0, 8000.0] if settings.quick else [2000.0 * k for k in range(2, 19)]
    phases = tuple(
        PhaseSpec("rate", rate=r, warmup=settings.warmup, duration=settings.duration) for r in rates
    )
    base = Workload(
        publishers=1000,
        window=8,
        subscribers=50,
        subscriber_procs=2,
        latency_every=5,
        phases=phases,
        connect_concurrency=100,
        drain=2.0,
        relay_args=("--max-connections", "20000"),
    )
    two = dataclasses.replace(base, relay_args=(*base.relay_args, "--workers", "2"))
    variants: list[tuple[str, RelayKind, Workload]] = [
        ("2 workers", GEOTRACK, two),
        ("1 worker", GEOTRACK, base),
    ]
    if settings.references:
        variants.append(("node-ws", NODE_WS, base))
    out: list[dict[str, Any]] = []
    for r in range(max(1, settings.rounds // 2)):
        for label, kind, workload in variants if r % 2 == 0 else variants[::-1]:
            try:
                result = run(kind, workload)
            except SetupError as exc:
                log(f"  [17] saturation {label}: skipped: {exc}")
                continue
            steps = [
                {
                    "rate": p.rate,
                    "p99": p.latency_ms.get("p99"),
                    "relay_cpu_pct": p.relay_cpu_pct,
                    "held": held(result, i),
                }
                for i, p in enumerate(result.phases)
            ]
            point, every = saturation_point(steps)
            out.append({"relay": label, "round": r + 1, "saturation": point, "censored": every,
                        "steps": steps})  # fmt: skip
            log(
                f"  [17] saturation at 1,000 publishers, {label}: holds {point:,.0f}/s; "
                + ", ".join(
                    f"{s['rate']:,.0f}: p99 {s['p99'] or float('nan'):.0f} ms" for s in steps
                )
            )
    return out


# -- cross-worker latency --------------------------------------------------------------------


@contextlib.contextmanager
def _serve_workers(workdir: Path, count: int) -> Iterator[tuple[int, list[str]]]:
    """``geotrack serve --workers COUNT --port 0``: its port and its log lines, as they come."""
    args = [sys.executable, "-m", "geotrack", "serve", "--workers", str(count), "--port", "0"]
    args += ["--store", f"sqlite:///{workdir / 'store.db'}", "--stats-interval", "0"]
    proc = subprocess.Popen(args, cwd=ROOT, env=environment(), stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    stream = proc.stderr
    reader = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        ports = _PORTS if count > 1 else _LISTENING
        while not (m := next((m for x in list(lines) if (m := ports.search(x))), None)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("serve did not start:\n" + "".join(lines[-20:]))
            time.sleep(0.05)
        yield int(m[m.lastindex or 0]), lines
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _worker_of(lines: list[str], role: str, port: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(lines):
            m = _CONNECTED.search(line)
            if m and m[2] == role and int(m[3]) == port:
                return int(m[1])
        time.sleep(0.01)
    raise RuntimeError(f"no log line for {role} on port {port}")


def _latency(count: int, rate: float, seconds: float) -> dict[str, Any]:
    """Latency of paced single-position frames, crossing workers and not, in ms.

    With ``count`` 1, the same clients on one process: every fix is ``same``.
    """
    with (
        tempfile.TemporaryDirectory(prefix="geotrack-bench-workers-") as tmp,
        _serve_workers(Path(tmp), count) as (port, lines),
    ):
        result = asyncio.run(_measure(port, lines if count > 1 else None, rate, seconds))
    return {"workers": count, **result}


async def _on_each_worker(url: str, role: str, lines: list[str] | None) -> dict[int, Any]:
    """A connection on each of two workers; with no log (one process), two connections."""
    from websockets.asyncio.client import connect

    held: dict[int, Any] = {}
    while len(held) < 2:
        path = {"publisher": "/publish", "subscriber": "/subscribe"}[role]
        ws = await connect(url + path, max_size=None, compression=None)
        if lines is None:
            held[len(held)] = ws
            continue
        worker = await asyncio.to_thread(_worker_of, lines, role, ws.local_address[1])
        if worker in held:
            await ws.close()
        else:
            held[worker] = ws
    return held


async def _measure(
    port: int, lines: list[str] | None, rate: float, seconds: float
) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}"
    subs = await _on_each_worker(url, "subscriber", lines)
    pubs = await _on_each_worker(url, "publisher", lines)
    samples: dict[str, list[float]] = {"cross": [], "same": []}
    warmup = time.monotonic() + 1.0
    end = warmup + seconds

    async def receive(worker: int, ws: Any) -> None:
        with contextlib.suppress(Exception):
            async for message in ws:
                now = time.monotonic()
                for fix in json.loads(message):
                    if now >= warmup:
                        sent_on, sent_at = fix["attrs"]["w"], fix["attrs"]["t"]
                        kind = "same" if sent_on == worker or lines is None else "cross"
                        samples[kind].append((now - sent_at) * 1000)

    async def drain(ws: Any) -> None:
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass

    async def publish() -> None:
        n, t0 = 0, time.monotonic()
        while (now := time.monotonic()) < end:
            due = int((now - t0) * rate / len(pubs))
            while n < due:
                n += 1
                for worker, ws in pubs.items():
                    fix = {
                        "device": f"dev-{worker}-{n % 50}",
                        "lat": 1.0,
                        "lon": 2.0,
                        "ts": 1_764_072_000 + n / 1000,
                        "attrs": {"t": time.monotonic(), "w": worker},
                    }
                    await ws.send(json.dumps(fix))
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(receive(w, ws)) for w, ws in subs.items()]
    tasks += [asyncio.create_task(drain(ws)) for ws in pubs.values()]
    await publish()
    await asyncio.sleep(0.5)
    for task in tasks:
        task.cancel()
    for ws in [*subs.values(), *pubs.values()]:
        await ws.close()
    return {kind: _summary(values) for kind, values in samples.items()} | {"rate": rate}


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(values), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


# -- store ceiling ---------------------------------------------------------------------------


def _writer(
    url: str, index: int, batch: int, lock: Path | None, start: float, stop: float, out: Any
) -> None:
    from geotrack.relay.siblings import share_write_lock
    from geotrack.schema import Position, ms_to_ts
    from geotrack.store import open_store

    with open_store(url) as store:
        if lock is not None:
            share_write_lock(store, lock)
        n = 0
        while time.time() < start:
            time.sleep(0.001)
        while time.time() < stop:
            fixes = [
                Position(device=f"w{index}-{i % 100}", lat=1.0, lon=2.0, ts=ms_to_ts(n + i))
                for i in range(batch)
            ]
            store.write(fixes, origin=f"writer-{index}")
            n += batch
        out.put(n)


def _ceiling(writers: int, batch: int, seconds: float, flock: bool) -> dict[str, Any]:
    """Rows/s that ``writers`` processes get into one SQLite file, ``batch`` rows a commit.

    With ``flock``, the writers queue on a shared lock file as the workers do; without,
    in SQLite's busy handler.
    """
    with tempfile.TemporaryDirectory(prefix="geotrack-bench-ceiling-") as tmp:
        lock = Path(tmp) / "write.lock" if flock else None
        url = f"sqlite:///{Path(tmp) / 'store.db'}"
        from geotrack.store import open_store

        open_store(url).close()  # the schema, before the writers race to make it
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        start = time.time() + 1.5  # after every writer has imported and opened the store
        procs = [
            context.Process(
                target=_writer, args=(url, i, batch, lock, start, start + seconds, queue)
            )
            for i in range(writers)
        ]
        for proc in procs:
            proc.start()
        rows = sum(queue.get(timeout=60 + seconds) for _ in procs)
        for proc in procs:
            proc.join()
    return {
        "writers": writers,
        "batch": batch,
        "queue": "flock" if flock else "busy handler",
        "rows_per_s": rows / seconds,
        "commits_per_s": rows / batch / seconds,
    }


# -- report ----------------------------------------------------------------------------------


def workers_tables(result: dict[str, Any]) -> list[Table]:
    """Scenario 17's three tables."""
    outcome: Outcome = result["throughput"]
    first = Table(title=f"17. {outcome.title} (medians)", title_justify="left")
    names = ("relay", "rounds", "stored/s", "delivered/s/sub", "relay CPU %", "stored/CPU-s")
    for name in (*names, "machine busy %"):
        first.add_column(name, justify="left" if name == "relay" else "right")
    for label, rows in outcome.medians.items():
        m = rows[-1]
        cpu = m.get("relay_cpu_pct") or 0.0
        first.add_row(
            label,
            str(m["rounds"]),
            _f(m.get("stored_per_s"), 0),
            _f(m.get("delivered_per_sub_per_s"), 0),
            _f(cpu, 0),
            _f(m["stored_per_s"] / (cpu / 100) if cpu else None, 0),
            _f(m.get("machine_busy_pct"), 0),
        )
    s = result["speedup"]
    first.caption = (
        f"2 workers ÷ 1 worker, stored/s: {s['median']:.2f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in s['per_round'])})"
    )
    second = Table(
        title="17. Cross-worker delivery at 2,000 positions/s (one publisher and one "
        "subscriber on each worker; the same clients on one process), ms",
        title_justify="left",
    )
    columns = ("run", "workers", "cross p50", "cross p99", "cross max", "same p50", "same p99")
    for name in (*columns, "same max", "n"):
        second.add_column(name, justify="right")
    for i, r in enumerate(result["latency"], 1):
        c, same = r["cross"], r["same"]
        second.add_row(
            str(i), str(r["workers"]), _f(c["p50"], 2), _f(c["p99"], 2), _f(c["max"], 1),
            _f(same["p50"], 2), _f(same["p99"], 2), _f(same["max"], 1),
            f"{c['n'] + same['n']:,}",
        )  # fmt: skip
    third = Table(title="17. SQLite store ceiling (dedupe index on)", title_justify="left")
    for name in ("writers", "rows/commit", "queued in", "rows/s", "commits/s"):
        third.add_column(name, justify="right")
    for c in result["ceiling"]:
        third.add_row(
            str(c["writers"]),
            str(c["batch"]),
            c["queue"] if c["writers"] > 1 else "-",
            _f(c["rows_per_s"], 0),
            _f(c["commits_per_s"], 0),
        )
    fourth = Table(
        title=f"17. Saturation at 1,000 publisher connections: highest paced rate with p99 <= "
        f"{P99_LIMIT_MS:.0f} ms (one ladder per relay and round)",
        title_justify="left",
    )
    for name in ("relay", "round", "holds /s", "steps: rate p99 ms (CPU %)"):
        fourth.add_column(name, justify="left" if name != "holds /s" else "right")
    for e in result.get("saturation", []):
        steps = ", ".join(
            f"{s['rate']:,.0f}{'' if s['held'] else ' ✗'} {_f(s['p99'], 0)} "
            f"({s['relay_cpu_pct']:.0f})"
            for s in e["steps"]
        )
        holds = f"{e['saturation']:,.0f}" + ("+" if e["censored"] else "")
        fourth.add_row(e["relay"], str(e["round"]), holds, steps)
    return [first, second, third, fourth]
