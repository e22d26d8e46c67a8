"""``python -m benchmarks``: run the scenarios, print the tables, write the JSON.

Examples::

    .venv/bin/python -m benchmarks                 # everything (about 10 minutes)
    .venv/bin/python -m benchmarks --quick         # a smoke run of everything (about 2 minutes)
    .venv/bin/python -m benchmarks --only 3 --only fanout --rounds 5
    .venv/bin/python -m benchmarks --baseline main --only 1,3 --no-references --rounds 6
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import procstat, report
from benchmarks.baseline import Baseline
from benchmarks.delivery import run_delivery
from benchmarks.delivery_report import markdown as delivery_markdown
from benchmarks.delivery_report import svg as delivery_svg
from benchmarks.export_bench import run_export
from benchmarks.fences_bench import fences_table, run_fences
from benchmarks.fleet_bench import fleet_table, run_fleet, run_saturation, saturation_table
from benchmarks.import_bench import import_table, run_import
from benchmarks.profiling import py_spy
from benchmarks.prune_bench import prune_table, run_prune
from benchmarks.relays import ROOT, SetupError, ensure_node_modules, node_versions
from benchmarks.scenarios import Outcome, Settings, build, log_to_stderr, run_scenario
from benchmarks.webhooks_bench import run_webhooks, webhooks_table
from benchmarks.workers_bench import run_workers, workers_tables

NAMES = {
    "single": 1,
    "batched": 2,
    "latency": 3,
    "fanout": 4,
    "idle": 5,
    "http": 6,
    "reference": 7,
    "export": 8,
    # Only when asked (--only delivery): about 15 minutes of its own.
    "delivery": 10,
    # Only when asked (--only import): geotrack import of NDJSON and CSV (issue 12).
    "import": 12,
    # Only when asked (--only fences): ingest with 10,000 geofences vs none (issue 13).
    "fences": 13,
    # Only when asked (--only prune): pruning 1,000,000 rows under load (issue 14).
    "prune": 14,
    # Only when asked (--only fleet, --only saturation): a fleet's paced publishers (issue 15).
    "fleet": 15,
    "saturation": 16,
    # Only when asked (--only workers): serve --workers 2 vs 1, cross-worker latency, the
    # SQLite ceiling (issue 15 part 3).
    "workers": 17,
    # Only when asked (--only webhooks): delivering a backlog to a webhook (issue 13).
    "webhooks": 18,
}


def _parse_only(values: list[str]) -> set[int]:
    chosen: set[int] = set()
    for value in values:
        for raw in value.split(","):
            part = raw.strip().lower()
            if not part:
                continue
            if part.isdigit() and 1 <= int(part) <= 8:
                chosen.add(int(part))
            elif part in NAMES:
                chosen.add(NAMES[part])
            else:
                raise SystemExit(f"--only: no scenario {part!r} (1-8 or {', '.join(NAMES)})")
    return chosen


def _http_available() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "geotrack", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return "--http-port" in done.stdout


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("geotrack", "websockets", "msgspec", "uvloop", "aiohttp", "rich"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    import sqlite3

    versions["sqlite (python)"] = sqlite3.sqlite_version
    versions.update(node_versions())
    return versions


def _machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "geotrack"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": procstat.cpu_model(),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "commit": commit + (" (geotrack/ modified)" if dirty else ""),
    }


def side_by_side(outcomes: list[Outcome], baseline: str | None = None) -> Table | None:
    """Scenario 7: geotrack next to the seed's stack, on the workloads of scenarios 1-5."""
    relays = ("geotrack", *(() if baseline is None else (baseline,)), "node-ws", "socketio")
    rows = []
    for o in outcomes:
        if o.number not in (1, 2, 3, 4, 5) or "geotrack" not in o.medians:
            continue
        metric, label, digits = {
            1: ("stored_per_s", "stored/s", 0),
            2: ("stored_per_s", "stored/s", 0),
            3: ("p99", "p99 ms", 2),
            4: ("p99", "p99 ms", 1),
            5: ("kib_per_connection", "KiB/conn", 1),
        }[o.number]
        cells = []
        for relay in relays:
            value = o.medians.get(relay, [{}])[-1].get(metric)
            cells.append("-" if value is None else f"{value:,.{digits}f}")
        rows.append((str(o.number), o.name, label, *cells))
    if not rows:
        return None
    table = Table(
        title="7. Side by side: geotrack and the seed's stack (medians)", title_justify="left"
    )
    names = ("geotrack", *(() if baseline is None else (baseline,)), "Node ws", "Node socket.io")
    for name in ("#", "scenario", "figure", *names):
        table.add_column(name, justify="left" if name in ("scenario", "figure") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark a real geotrack relay (and the Node.js references) on loopback.",
        epilog="Scenarios: " + ", ".join(f"{n} {name}" for name, n in NAMES.items()),
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of everything")
    parser.add_argument(
        "--only", action="append", default=[], metavar="SCENARIO",
        help="run only this scenario (number or name; repeat or comma-separate)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds measured per phase (default 3)")
    parser.add_argument(
        "--no-references", action="store_true", help="leave out the Node.js reference relays"
    )
    parser.add_argument(
        "--baseline", metavar="REV",
        help="also run geotrack as of git revision REV (e.g. main, HEAD~3, a sha) in every "
        "round of scenarios 1-5 and report current ÷ baseline (with --no-references: only "
        "the two)",
    )  # fmt: skip
    parser.add_argument("--no-profile", action="store_true", help="no py-spy profile runs")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    chosen = _parse_only(args.only) or set(range(1, 9))
    with contextlib.ExitStack() as stack:
        baseline = None
        if args.baseline is not None:
            try:
                baseline = Baseline(args.baseline)
                stack.enter_context(baseline)
            except SetupError as exc:
                raise SystemExit(str(exc)) from None
        return _run(args, chosen, baseline)


def _run(args: argparse.Namespace, chosen: set[int], baseline: Baseline | None) -> int:
    if chosen == {7}:
        chosen = {1, 3, 7}  # the reference comparison shows on scenarios 1 and 3
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        rounds=args.rounds or (1 if args.quick else 3),
        warmup=0.5 if args.quick else 1.0,
        duration=args.duration or (1.5 if args.quick else 3.0),
        quick=args.quick,
        references=not args.no_references,
        profile=not args.no_profile and not args.quick and py_spy() is not None,
        results_dir=results_dir,
        stamp=stamp,
        baseline=None if baseline is None else baseline.kind,
    )
    log = log_to_stderr
    notes: list[str] = []
    if baseline is not None:
        log(f"baseline: {baseline.label} ({baseline.commit}) from {baseline.dir}")
        if chosen & {6, 8}:
            notes.append(
                f"{baseline.label} runs in scenarios 1-5 only; 6 and 8 measure the current tree"
            )
    if settings.references and chosen & {1, 2, 3, 4, 5, 7, 15, 16}:
        try:
            ensure_node_modules(log)
        except SetupError as exc:
            notes.append(f"Node.js references left out: {exc}")
            log(f"Node.js references left out: {exc}")
            settings = dataclasses.replace(settings, references=False)
    if not args.no_profile and py_spy() is None:
        notes.append("no profiles: py-spy is not installed (.venv/bin/pip install py-spy)")

    began = time.monotonic()
    machine = _machine()
    versions = _versions()
    log(
        f"geotrack benchmarks: {machine['nproc']} CPUs ({machine['cpu']}), rounds {settings.rounds}"
    )
    http = _http_available()
    outcomes: list[Outcome] = []
    for scenario in build(settings, http):
        if scenario.number not in chosen:
            continue
        log(f"[{scenario.number}] {scenario.title}")
        outcomes.append(run_scenario(scenario, settings, log))
    export = None
    if 8 in chosen:
        log("[8] Export to GeoJSON, CSV and GPX")
        sizes = (20_000, 80_000) if settings.quick else (250_000, 1_000_000)
        export = run_export(
            sizes,
            settings.rounds,
            results_dir if settings.profile else None,
            stamp,
            log,
        )
    delivery = None
    if 10 in chosen:
        log("[10] Delivery: WebSocket, SSE, long and short polling side by side (issue 16)")
        delivery = run_delivery(settings.quick, settings.rounds, log)
        chart = results_dir / f"{stamp}-delivery.svg"
        chart.write_text(delivery_svg(delivery["summary"]))
        notes.append(f"delivery chart: {chart}")
    imported = None
    if 12 in chosen:
        log("[12] Import NDJSON and CSV files into SQLite (issue 12)")
        sizes = (50_000, 200_000) if settings.quick else (250_000, 1_000_000)
        imported = run_import(sizes, settings.rounds, log)
    fenced = None
    if 13 in chosen:
        log("[13] Ingest with 10,000 geofences vs none, interleaved (issue 13)")
        fenced = run_fences(settings.rounds, settings.warmup, settings.duration, log)
    pruned = None
    if 14 in chosen:
        log("[14] Pruning old positions while publishers run at 5,000/s (issue 14)")
        rows = 100_000 if settings.quick else 1_000_000
        window = 4.0 if settings.quick else 8.0
        pruned = run_prune(rows, settings.rounds, settings.warmup, window, log)
    fleet = None
    if 15 in chosen:
        log("[15] Fleet: 950 publishers paced to 5,000/s, 50 subscribers (issue 15)")
        fleet = run_fleet(settings, log)
    saturation = None
    if 16 in chosen:
        log("[16] Saturation at 1,000 and 10,000 publisher connections (issue 15)")
        saturation = run_saturation(settings, log)
    workers = None
    if 17 in chosen:
        log("[17] serve --workers 2 vs 1, cross-worker latency, SQLite ceiling (issue 15)")
        workers = run_workers(settings, log)
    hooked = None
    if 18 in chosen:
        log("[18] Webhook delivery of a stored backlog, 1 vs 8 in flight (issue 13)")
        hooked = run_webhooks(settings.rounds, log)
    elapsed = time.monotonic() - began

    target_items = report.targets(outcomes, export)
    console = Console(width=max(shutil.get_terminal_size((170, 40)).columns, 170))
    console.print(
        f"[bold]geotrack benchmarks[/] {stamp}: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"commit {machine['commit']}; rounds {settings.rounds}, {settings.duration:g} s measured "
        f"per phase after {settings.warmup:g} s warm-up; took {elapsed:.0f} s"
    )
    console.print(", ".join(f"{k} {v}" for k, v in versions.items()), highlight=False)
    report.print_all(console, outcomes, export, target_items, settings.quick)
    if delivery is not None:
        console.print(delivery_markdown(delivery["summary"]), highlight=False)
    if imported is not None:
        console.print(import_table(imported))
    if fenced is not None:
        console.print(fences_table(fenced))
    if pruned is not None:
        console.print(prune_table(pruned))
    if fleet is not None:
        console.print(fleet_table(fleet))
    if saturation is not None:
        console.print(saturation_table(saturation))
    if workers is not None:
        for table in workers_tables(workers):
            console.print(table)
    if hooked is not None:
        console.print(webhooks_table(hooked))
    label = None if baseline is None else baseline.label
    if 7 in chosen and (table := side_by_side(outcomes, label)) is not None:
        console.print(table)
    compared = None
    if baseline is not None:
        compared = report.before_after(outcomes, baseline.label)
        if compared:
            console.print(report.before_after_table(compared, baseline.label))
        else:
            notes.append(f"no before/after figures: geotrack or {baseline.label} was skipped")
    for note in notes:
        console.print(f"note: {note}", highlight=False)

    output = args.output or results_dir / f"{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "stamp": stamp,
        "seconds": elapsed,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks", *sys.argv[1:]]),
        "machine": machine,
        "versions": versions,
        "settings": {k: str(v) for k, v in dataclasses.asdict(settings).items() if k != "baseline"},
        "baseline": None if baseline is None else {**baseline.to_json(), "ratios": compared},
        "notes": notes,
        "scenarios": [o.to_json() for o in outcomes],
        "export": export,
        "delivery": delivery,
        "import": imported,
        "prune": pruned,
        "fences": fenced,
        "fleet": None if fleet is None else fleet.to_json(),
        "saturation": saturation,
        "workers": None
        if workers is None
        else {**workers, "throughput": workers["throughput"].to_json()},
        "webhooks": hooked,
        "targets": target_items,
    }
    output.write_text(json.dumps(document, indent=1, default=str))
    console.print(f"results: {output}", highlight=False)
    return 0
