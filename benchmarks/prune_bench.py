"""Scenario 9: pruning 1,000,000 old positions while publishers run at 5,000 positions/s.

Issue 14's target: the publishers' p99 (scenario 3's workload: 100 publishers at 50/s
each, 10 subscribers timing every fix from publish to delivery, durable write included)
stays within 2x of the p99 without pruning. The store of every run is a copy of one filled
beforehand with ``rows`` fixes a year old (100 devices), so each run prunes the same rows.

Variants, interleaved (A B C, C B A, ...), each on a fresh relay and a fresh copy:

- ``no prune``: the load alone;
- ``prune``: ``geotrack prune --before 30d`` in a separate process (an operator's cron
  job), launched when the load begins (the warm-up absorbs the interpreter's start-up,
  which is not pruning); its wall time gives the prune rate;
- ``retain``: the relay started with ``--retain 30d``: its first check runs inside the
  relay's process, from start-up through the measured window;
- with a baseline revision (the 4th argument, e.g. ``HEAD~1``), ``prune @REV`` too: the
  separate-process prune beside that revision's relay (:mod:`benchmarks.baseline`), so a
  change to the relay's write path is compared under the same rounds' noise.

``python -m benchmarks.prune_bench store [ROUNDS]`` is the same question one level down
(:func:`run_store_level`): no relay, no network, a writer at 5,000 positions/s straight
through the store beside the prune process, its lock waits timed.

Reported per variant: medians of p50/p99; per round, p99 ÷ the ``no prune`` p99 and the
median of those ratios; the prune's rows/s; whether it lasted the whole measured window
(if it finished early, part of the window measured no prune at all).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from benchmarks.relays import GEOTRACK, ROOT, RelayKind, RelayProcess, environment
from benchmarks.runner import PhaseSpec, RunResult, Workload, run

DEVICES = 100
VARIANTS = ("no prune", "prune", "retain")


def fill(db: Path, rows: int, batch: int = 20_000) -> float:
    """Write ``rows`` fixes a year old (100 devices, one fix per second each); seconds."""
    from geotrack.schema import Position
    from geotrack.store import open_store

    began = time.monotonic()
    start = time.time() - 365 * 86_400
    with open_store(f"sqlite:///{db}?synchronous=normal") as store:
        for first in range(0, rows, batch):
            store.write(
                [
                    Position(
                        device=f"old-{i % DEVICES:03d}",
                        lat=52.5 + (i % 5000) * 1e-5,
                        lon=13.4 + (i % 7000) * 1e-5,
                        ts=start + i // DEVICES,
                        speed=8.5,
                        heading=float(i % 360),
                        attrs={"batt": 80},
                    )
                    for i in range(first, min(rows, first + batch))
                ],
                "benchmark-fill",
            )
    return time.monotonic() - began


@dataclass(slots=True)
class _Prune:
    """A ``geotrack prune`` child started under load, and when it ended."""

    db: Path = Path()
    tree: Path = ROOT
    began: float = 0.0
    ended: float = 0.0
    exit: int | None = None
    output: str = ""
    thread: threading.Thread | None = None

    def prepare(self, copy: Callable[[Path], None]) -> Callable[[Path], None]:
        """``copy``, noting the store's path."""

        def prepare(db: Path) -> None:
            copy(db)
            self.db = db

        return prepare

    def start(self, _relay: RelayProcess) -> None:
        cmd = [
            sys.executable, "-m", "geotrack", "prune", "--before", "30d",
            "--store", f"sqlite:///{self.db}", "-q",
        ]  # fmt: skip
        self.began = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=environment(self.tree),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def wait() -> None:
            out, _ = proc.communicate()
            self.ended = time.monotonic()
            self.exit = proc.returncode
            self.output = out.decode(errors="replace").strip()[-300:]

        self.thread = threading.Thread(target=wait, daemon=True)
        self.thread.start()


@dataclass(slots=True)
class _Round:
    p50: dict[str, float] = field(default_factory=dict)
    p99: dict[str, float] = field(default_factory=dict)
    prune_seconds: float = 0.0
    covered: bool = False
    retain_pruned: int = 0
    notes: list[str] = field(default_factory=list)


def run_prune(
    rows: int,
    rounds: int,
    warmup: float,
    duration: float,
    log: Callable[[str], None],
    baseline: RelayKind | None = None,
) -> dict[str, Any]:
    """Fill one store, then run the variants ``rounds`` times, interleaved; the figures.

    ``baseline``: another revision's relay, for the variant ``prune @REV`` (see above).
    """
    variants = VARIANTS if baseline is None else (*VARIANTS, f"prune @{baseline.name}")
    phase = (PhaseSpec("rate", rate=5000, warmup=warmup, duration=duration),)
    load = Workload(publishers=100, window=8, subscribers=10, latency_every=1, phases=phase)
    retain = Workload(
        publishers=100,
        window=8,
        subscribers=10,
        latency_every=1,
        phases=phase,
        relay_args=("--retain", "30d"),
    )
    results: list[_Round] = []
    with tempfile.TemporaryDirectory(prefix="geotrack-bench-prune-") as tmp:
        template = Path(tmp) / "template.db"
        seconds = fill(template, rows)
        log(f"  [14] filled {rows:,} old positions in {seconds:.1f} s")

        def copy(db: Path) -> None:
            shutil.copyfile(template, db)

        for r in range(rounds):
            one = _Round()
            order = variants if r % 2 == 0 else variants[::-1]
            for variant in order:
                pruner: _Prune | None = None
                if variant.startswith("prune"):
                    kind = GEOTRACK if variant == "prune" or baseline is None else baseline
                    pruner = _Prune(tree=kind.tree or ROOT)
                    result = run(kind, load, prepare=pruner.prepare(copy), on_load=pruner.start)
                    if pruner.thread is not None:
                        pruner.thread.join(600)
                elif variant == "retain":
                    result = run(GEOTRACK, retain, prepare=copy)
                    one.retain_pruned = rows + result.stored_total - result.rows_in_store
                else:
                    result = run(GEOTRACK, load, prepare=copy)
                latency = result.phases[0].latency_ms if result.phases else {}
                one.p50[variant] = latency.get("p50", float("nan"))
                one.p99[variant] = latency.get("p99", float("nan"))
                one.notes.extend(f"{variant}: {n}" for n in result.notes)
                extra = ""
                if pruner is not None:
                    seconds = pruner.ended - pruner.began
                    covered = pruner.ended >= pruner.began + warmup + duration
                    if variant == "prune":
                        one.prune_seconds, one.covered = seconds, covered
                    extra = (
                        f", prune {seconds:.1f} s ({rows / seconds:,.0f} rows/s"
                        f"{'' if covered else ', ended before the window did'})"
                    )
                    if pruner.exit != 0:
                        one.notes.append(f"prune exited {pruner.exit}: {pruner.output}")
                if variant == "retain":
                    extra = f", {one.retain_pruned:,} pruned by the relay during the run"
                log(
                    f"  [14] round {r + 1}/{rounds} {variant}: p50 {one.p50[variant]:.2f} ms, "
                    f"p99 {one.p99[variant]:.2f} ms{extra}" + _stored(result)
                )
            results.append(one)
    return _summary(rows, duration, results, variants)


def _stored(result: RunResult) -> str:
    phase = result.phases[0] if result.phases else None
    return "" if phase is None else f", {phase.stored_per_s:,.0f} stored/s"


def _summary(
    rows: int, duration: float, results: list[_Round], variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    medians: dict[str, dict[str, float]] = {}
    for variant in variants:
        medians[variant] = {
            "p50": statistics.median(r.p50[variant] for r in results),
            "p99": statistics.median(r.p99[variant] for r in results),
        }
    ratios = {
        variant: [r.p99[variant] / r.p99["no prune"] for r in results]
        for variant in variants
        if variant != "no prune"
    }
    prune_s = [r.prune_seconds for r in results]
    return {
        "rows": rows,
        "window_s": duration,
        "variants": list(variants),
        "rounds": [
            {
                "p50": r.p50,
                "p99": r.p99,
                "prune_seconds": r.prune_seconds,
                "prune_rows_per_s": rows / r.prune_seconds if r.prune_seconds else None,
                "prune_lasted_the_window": r.covered,
                "retain_pruned": r.retain_pruned,
                "notes": r.notes,
            }
            for r in results
        ],
        "medians": medians,
        "p99_ratios": ratios,
        "p99_ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
        "prune_seconds_median": statistics.median(prune_s),
        "prune_rows_per_s_median": rows / statistics.median(prune_s),
        "target_met": statistics.median(ratios["prune"]) <= 2.0
        and statistics.median(ratios["retain"]) <= 2.0,
    }


STORE_MODES = ("no prune", "1 ms retry", "busy handler")


def run_store_level(rows: int, rounds: int, seconds: float, log: Callable[[str], None]) -> None:
    """A writer's commit times beside a separate ``geotrack prune``, by how it waits.

    One process writes 50 positions every 10 ms (5,000/s) through a SQLiteStore on a copy
    of a ``rows`` store while ``geotrack prune --before 30d`` runs in another; ``1 ms
    retry`` is the store as it is, ``busy handler`` gives its writer connection SQLite's
    busy handler back (a 10 s busy timeout: its waits are then SQLite's), ``no prune`` is
    the writer alone. Each BEGIN's wait is timed by wrapping the store's private
    ``_begin_immediate`` (a benchmark's liberty). Logs write() p50/p99 and the waits.
    """
    import geotrack.store.sqlite as sqlite_module
    from geotrack.schema import Position
    from geotrack.store import open_store

    begin = sqlite_module._begin_immediate
    waits: list[float] = []

    def timed(conn: Any, timeout_ms: int) -> None:
        began = time.monotonic()
        begin(conn, timeout_ms)
        waits.append((time.monotonic() - began) * 1000)

    sqlite_module._begin_immediate = timed  # type: ignore[assignment]
    p99s: dict[str, list[float]] = {mode: [] for mode in STORE_MODES}
    with tempfile.TemporaryDirectory(prefix="geotrack-bench-prune-store-") as tmp:
        template = Path(tmp) / "template.db"
        fill(template, rows)
        for r in range(rounds):
            for mode in STORE_MODES if r % 2 == 0 else STORE_MODES[::-1]:
                db = Path(tmp) / f"{r}-{mode.replace(' ', '-')}.db"
                shutil.copyfile(template, db)
                store = open_store(f"sqlite:///{db}")
                if mode == "busy handler":
                    store._writer.execute("PRAGMA busy_timeout=10000")  # type: ignore[attr-defined]
                pruner = None
                if mode != "no prune":
                    cmd = [sys.executable, "-m", "geotrack", "prune", "--before", "30d",
                           "--store", f"sqlite:///{db}", "-q"]  # fmt: skip
                    pruner = subprocess.Popen(cmd, cwd=ROOT, env=environment())
                times: list[float] = []
                start = next_at = time.monotonic()
                n = 0
                while time.monotonic() - start < seconds + 1.5:
                    n += 1
                    batch = [
                        Position(device=f"d{i}", lat=52.0, lon=13.0, ts=time.time() + n * 1e-3)
                        for i in range(50)
                    ]
                    if n == 150:  # 1.5 s: the prune's interpreter has started
                        waits.clear()
                    began = time.monotonic()
                    store.write(batch)
                    if n > 150:
                        times.append((time.monotonic() - began) * 1000)
                    next_at += 0.01
                    time.sleep(max(0.0, next_at - time.monotonic()))
                if pruner is not None:
                    pruner.kill()
                    pruner.wait()
                store.close()
                q = statistics.quantiles(times, n=100)
                p99s[mode].append(q[98])
                hit = [w for w in waits if w > 0.3]
                log(
                    f"  [14 store] round {r + 1}/{rounds} {mode}: write p50 {q[49]:.2f} ms, "
                    f"p99 {q[98]:.2f} ms; lock waits > 0.3 ms: {len(hit)} of {len(waits)}, "
                    f"mean {statistics.mean(hit) if hit else 0:.2f} ms, "
                    f"max {max(hit, default=0):.1f} ms"
                )
    sqlite_module._begin_immediate = begin
    for mode in STORE_MODES:
        log(f"  [14 store] {mode}: median write p99 {statistics.median(p99s[mode]):.2f} ms")


def prune_table(summary: dict[str, Any]) -> Table:
    """Medians per variant, the p99 ratios per round, the prune rate and the target."""
    table = Table(
        title=f"[14] Pruning {summary['rows']:,} old positions while 100 publishers send "
        f"5,000/s (target: p99 within 2x of no prune; {summary['window_s']:g} s windows)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for name in ("variant", "p50 ms", "p99 ms", "p99 ÷ no prune (per round)", "median", "met"):
        table.add_column(name, justify="left" if name == "variant" else "right")
    for variant in summary.get("variants", VARIANTS):
        m = summary["medians"][variant]
        ratios = summary["p99_ratios"].get(variant)
        median = summary["p99_ratio_median"].get(variant)
        table.add_row(
            variant,
            f"{m['p50']:.2f}",
            f"{m['p99']:.2f}",
            "" if ratios is None else ", ".join(f"{r:.2f}" for r in ratios),
            "" if median is None else f"{median:.2f}x",
            "" if median is None else ("met" if median <= 2.0 else "NOT met"),
        )
    lasted = sum(r["prune_lasted_the_window"] for r in summary["rounds"])
    by_relay = ", ".join(f"{r['retain_pruned']:,}" for r in summary["rounds"])
    table.caption = (
        f"prune (separate process): median {summary['prune_seconds_median']:.1f} s, "
        f"{summary['prune_rows_per_s_median']:,.0f} rows/s; it lasted the whole window in "
        f"{lasted} of {len(summary['rounds'])} rounds. retain: rows the relay pruned during "
        f"each run: {by_relay}"
    )
    return table


if __name__ == "__main__":
    from rich.console import Console

    if sys.argv[1:2] == ["store"]:
        count = int(sys.argv[2]) if len(sys.argv) > 2 else 4
        run_store_level(1_000_000, count, 8.0, lambda line: print(line, file=sys.stderr))
        sys.exit(0)
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    window = float(sys.argv[3]) if len(sys.argv) > 3 else 8.0
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if len(sys.argv) > 4:
        from benchmarks.baseline import Baseline

        with Baseline(sys.argv[4]) as kind:
            result = run_prune(rows, rounds, 1.0, window, say, kind)
    else:
        result = run_prune(rows, rounds, 1.0, window, say)
    Console(width=170).print(prune_table(result))
