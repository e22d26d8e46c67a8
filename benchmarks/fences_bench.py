"""Scenario 13: ingest with 10,000 geofences against ingest without (issue 13).

Issue 13's target: with ``serve --fences`` holding 10,000 fences, the relay stores at least
70% of the positions per second it stores without fences. Two workloads at saturation
(as fast as acks allow): scenario 1's single-position frames and scenario 2's batches of
100, each from 100 publishers with 10 subscribers. Per workload the two variants run
interleaved (A B, B A, ...), each on a fresh relay and store; reported per round is the
ratio of stored/s with fences to stored/s without, and the median of those ratios. On a
machine others share the rates swing with their load, so the relay's own CPU time per
stored position is reported too, and its ratio (without ÷ with): the rate ratio a relay
with the cores to itself would see.

The fences: 9,980 spread over a 50 x 45 km region (polygons of 5 to 12 vertices, 50 to
400 m across, and circles of 30 to 300 m), and 20 over the square kilometre the load
generators' fixes move in, so that fixes have fences near them to test exactly and
devices enter and leave them: about one fix in fifty decides an event (the engine alone,
below, counts them), far more than vehicles crossing zone edges do. Also measured, in
this process: the fence engine alone on 200,000 of those fixes (positions per second of
wall and of CPU time: the machine may be shared), to show the worker keeps up.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from benchmarks.relays import GEOTRACK
from benchmarks.runner import PhaseSpec, Workload, run

FENCES = 10_000
NEAR = 20
TARGET = 0.70
VARIANTS = ("no fences", "10,000 fences")
# The load generators' fixes: lat 52.5 + (0..996) * 1e-5, lon 13.4 + (0..990) * 1e-5.
_BOX = (13.4, 52.5, 13.41, 52.51)
_REGION = (13.1, 52.3, 13.75, 52.7)


def _polygon(rng: random.Random, lon: float, lat: float, metres: float) -> dict[str, Any]:
    sides = rng.randint(5, 12)
    ring = []
    for k in range(sides):
        angle = 2 * math.pi * k / sides
        r = metres * rng.uniform(0.6, 1.0) / 2
        ring.append(
            [
                round(lon + r * math.cos(angle) / (111_320 * math.cos(math.radians(lat))), 7),
                round(lat + r * math.sin(angle) / 110_540, 7),
            ]
        )
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def fences_document(count: int = FENCES, near: int = NEAR, seed: int = 13) -> dict[str, Any]:
    """``count`` fences, ``near`` of them over the load generators' square kilometre."""
    rng = random.Random(seed)
    features = []
    for i in range(count):
        west, south, east, north = _BOX if i < near else _REGION
        lon, lat = rng.uniform(west, east), rng.uniform(south, north)
        if i % 3 == 2:
            geometry: dict[str, Any] = {"type": "Point", "coordinates": [lon, lat]}
            properties: dict[str, Any] = {"name": f"f{i:05d}", "radius": rng.uniform(30, 300)}
        else:
            geometry = _polygon(rng, lon, lat, rng.uniform(50, 400))
            properties = {"name": f"f{i:05d}"}
        features.append({"type": "Feature", "properties": properties, "geometry": geometry})
    return {"type": "FeatureCollection", "features": features}


def engine_rate(path: Path, positions: int = 200_000, batch: int = 5_000) -> dict[str, float]:
    """The fence engine alone on the load generators' kind of fixes: positions/s, events."""
    from geotrack.fences import FenceEngine, load_fences
    from geotrack.schema import Position

    fences = load_fences(path)
    engine = FenceEngine(fences)
    # 100 devices moving as the load generators' do: each fix 1e-5 degrees on from its last.
    fixes = [
        Position(
            device=f"pub-{i % 100:03d}",
            lat=52.5 + (i // 100 % 997) * 1e-5,
            lon=13.4 + (i // 100 % 991) * 1e-5,
            ts=1_795_608_000 + i // 100 / 1000,
        )
        for i in range(positions)
    ]
    events = 0
    began, cpu = time.perf_counter(), time.process_time()
    for start in range(0, positions, batch):
        events += len(engine.evaluate(fixes[start : start + batch]))
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    return {
        "positions_per_s": positions / seconds,
        "positions_per_cpu_s": positions / cpu_seconds,
        "events": events,
    }


def run_fences(
    rounds: int, warmup: float, duration: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Both workloads, the two variants interleaved ``rounds`` times; the figures."""
    phase = (PhaseSpec("saturate", warmup=warmup, duration=duration),)
    with tempfile.TemporaryDirectory(prefix="geotrack-bench-fences-") as tmp:
        path = Path(tmp) / "fences.geojson"
        path.write_text(json.dumps(fences_document()))
        engine = engine_rate(path)
        log(
            f"  [13] fence engine alone: {engine['positions_per_s']:,.0f} positions/s, "
            f"{engine['positions_per_cpu_s']:,.0f} per CPU-second, against {FENCES:,} fences "
            f"({engine['events']:,} events)"
        )
        workloads = {
            "single": {"publishers": 100, "window": 8, "subscribers": 10},
            "batched (100)": {"publishers": 100, "batch": 100, "window": 1, "subscribers": 10},
        }
        summary: dict[str, Any] = {"fences": FENCES, "engine": engine, "workloads": {}}
        for name, shape in workloads.items():
            rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
            # The relay's CPU milliseconds per 1,000 stored positions: what the fences cost
            # it, whatever else runs on the machine (the rates swing with others' load).
            cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(rounds):
                for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    args = ("--fences", str(path)) if variant != "no fences" else ()
                    result = run(GEOTRACK, Workload(**shape, phases=phase, relay_args=args))
                    first = result.phases[0] if result.phases else None
                    stored = first.stored_per_s if first else float("nan")
                    per_1000 = (
                        first.relay_cpu_pct / 100 / stored * 1e6
                        if first and stored
                        else float("nan")
                    )
                    rates[variant].append(stored)
                    cpu[variant].append(per_1000)
                    log(
                        f"  [13] {name} round {r + 1}/{rounds} {variant}: {stored:,.0f} "
                        f"stored/s, relay CPU {per_1000:.1f} ms per 1,000"
                    )
            ratios = [
                with_ / without
                for with_, without in zip(rates[VARIANTS[1]], rates[VARIANTS[0]], strict=True)
            ]
            cpu_ratios = [
                without / with_
                for with_, without in zip(cpu[VARIANTS[1]], cpu[VARIANTS[0]], strict=True)
            ]
            summary["workloads"][name] = {
                "stored_per_s": rates,
                "medians": {v: statistics.median(rates[v]) for v in VARIANTS},
                "ratios": ratios,
                "ratio_median": statistics.median(ratios),
                "cpu_ms_per_1000": cpu,
                "cpu_medians": {v: statistics.median(cpu[v]) for v in VARIANTS},
                "cpu_ratios": cpu_ratios,
                "cpu_ratio_median": statistics.median(cpu_ratios),
                "target_met": statistics.median(ratios) >= TARGET,
            }
    return summary


def fences_table(summary: dict[str, Any]) -> Table:
    """Per workload: medians, the per-round ratios, their median, and the target."""
    table = Table(
        title=f"[13] Ingest with {summary['fences']:,} fences vs none "
        f"(target: >= {TARGET:.0%} of the rate without)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    columns = ("workload", *VARIANTS, "ratio per round", "median", "met")
    columns += ("CPU ms/1,000 (none, fences)", "CPU ratio per round", "median")
    for column in columns:
        table.add_column(column, justify="left" if column == "workload" else "right")
    for name, w in summary["workloads"].items():
        table.add_row(
            name,
            *(f"{w['medians'][v]:,.0f}/s" for v in VARIANTS),
            ", ".join(f"{r:.2f}" for r in w["ratios"]),
            f"{w['ratio_median']:.2f}",
            "met" if w["target_met"] else "NOT met",
            ", ".join(f"{w['cpu_medians'][v]:.1f}" for v in VARIANTS),
            ", ".join(f"{r:.2f}" for r in w["cpu_ratios"]),
            f"{w['cpu_ratio_median']:.2f}",
        )
    engine = summary["engine"]
    table.caption = (
        "CPU ratio: the relay's CPU per position without fences over with them (the rate "
        "ratio a relay that has the cores to itself would see). "
        f"The fence engine alone: {engine['positions_per_s']:,.0f} positions/s "
        f"({engine['positions_per_cpu_s']:,.0f} per CPU-second) against "
        f"{summary['fences']:,} fences; the worker thread keeps up while this is above the "
        "ingest rate"
    )
    return table


if __name__ == "__main__":
    import sys

    from rich.console import Console

    quick = "--quick" in sys.argv
    figures = run_fences(
        2 if quick else 3, 1.0, 3.0 if quick else 5.0, lambda m: print(m, file=sys.stderr)
    )
    Console(width=170).print(fences_table(figures))
