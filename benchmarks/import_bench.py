"""Scenario 12: ``geotrack import`` of NDJSON and CSV files into SQLite, at two sizes.

The files are geotrack's own exports (100 devices, a fix per second each, every field
and an attr on a third of them), written once through the export writers. Each import
runs in a child process on a fresh SQLite file with the default ``synchronous=full``:
the child times :func:`geotrack.importing.import_files` itself (Python's start-up is
not an import's cost) and its peak RSS comes from ``wait4`` (the kernel's ru_maxrss of
that child alone). The smaller file is a quarter of the larger: memory flat in the file
size means the same peak at both sizes. Rounds interleave formats and sizes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from benchmarks.relays import ROOT, environment

FORMATS = ("ndjson", "csv")
DEVICES = 100
BASE_TS = 1_795_608_000
TARGET = 150_000


def _positions(count: int) -> Iterator[Any]:
    from geotrack.schema import Position

    per_device = count // DEVICES
    for d in range(DEVICES):
        for i in range(per_device):
            yield Position(
                device=f"vehicle-{d:03d}",
                lat=52.5 + (i % 5000) * 1e-5,
                lon=13.4 + (i % 7000) * 1e-5,
                ts=float(BASE_TS + i),
                speed=8.5,
                heading=float(i % 360),
                alt=34.0,
                acc=5.0,
                attrs={"batt": 80} if i % 3 == 0 else None,
            )


def write_file(fmt: str, count: int, path: Path) -> float:
    """Export ``count`` positions as ``fmt`` to ``path``; seconds."""
    from geotrack.export import export

    began = time.monotonic()
    with open(path, "w", encoding="utf-8", newline="") as out:
        export(fmt, _positions(count), out)
    return time.monotonic() - began


def import_once(path: Path, db: Path) -> dict[str, Any]:
    """Import ``path`` into a fresh ``db`` in a child process; seconds, counts, peak RSS."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.import_bench", str(path), str(db)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate()
    code = proc.returncode
    if code != 0:
        return {"exit": code, "error": err.decode(errors="replace").strip()[-300:]}
    result: dict[str, Any] = json.loads(out)
    result["exit"] = 0
    result["error"] = ""
    return result


def _child(path: Path, db: Path) -> None:
    """In the child: import one file, print seconds, counts and peak RSS as JSON.

    The child reports its own peak (getrusage of itself): the parent's RUSAGE_CHILDREN
    is a maximum over every child it ever waited for.
    """
    import resource

    from geotrack.importing import import_files
    from geotrack.store import open_store

    with open_store(f"sqlite:///{db}") as store:
        began, cpu = time.perf_counter(), time.process_time()
        (report,) = import_files(store, [path])
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "read": report.read,
                "stored": report.stored,
                "positions_per_s": report.stored / seconds,
                # Per second of this process's CPU: the machine is shared, so the wall rate
                # also measures the other processes' load; this one does not.
                "positions_per_cpu_s": report.stored / cpu,
                "load": os.getloadavg()[0],
                "peak_rss_mib": peak,
                "ok": report.ok,
            }
        )
    )


def run_import(sizes: tuple[int, int], rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Write both formats at both sizes, import each ``rounds`` times, interleaved."""
    small, large = sizes
    with tempfile.TemporaryDirectory(prefix="geotrack-bench-import-") as tmp:
        work = Path(tmp)
        files: dict[tuple[str, int], Path] = {}
        for fmt in FORMATS:
            for count in sizes:
                path = work / f"{count}.{fmt}"
                seconds = write_file(fmt, count, path)
                files[fmt, count] = path
                log(
                    f"  [12] wrote {count:,} positions as {fmt} "
                    f"({path.stat().st_size / 2**20:.0f} MiB) in {seconds:.1f} s"
                )
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            f: {small: [], large: []} for f in FORMATS
        }
        import_once(files["ndjson", small], work / "warm.db")  # warms the page cache
        for r in range(rounds):
            for fmt in FORMATS:
                for count in sizes:
                    result = import_once(files[fmt, count], work / "import.db")
                    runs[fmt][count].append(result)
                    if result["exit"]:
                        log(
                            f"  [12] round {r + 1}/{rounds} {fmt} {count:,}: "
                            f"FAILED {result['error']}"
                        )
                        continue
                    log(
                        f"  [12] round {r + 1}/{rounds} {fmt} {count:,}: "
                        f"{result['seconds']:.2f} s, {result['positions_per_s']:,.0f} positions/s "
                        f"({result['positions_per_cpu_s']:,.0f} per CPU-second, load "
                        f"{result['load']:.1f}), peak RSS {result['peak_rss_mib']:.0f} MiB"
                    )
        summary: dict[str, Any] = {"sizes": [small, large], "runs": runs, "medians": {}}
        for fmt in FORMATS:
            per: dict[str, Any] = {}
            for count in sizes:
                good = [x for x in runs[fmt][count] if not x["exit"]]
                per[str(count)] = {
                    "positions_per_s": statistics.median(x["positions_per_s"] for x in good)
                    if good
                    else 0.0,
                    "positions_per_cpu_s": statistics.median(x["positions_per_cpu_s"] for x in good)
                    if good
                    else 0.0,
                    "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in good)
                    if good
                    else 0.0,
                    "mib": files[fmt, count].stat().st_size / 2**20,
                    "rounds": len(good),
                    "failed": len(runs[fmt][count]) - len(good),
                }
            small_rss = per[str(small)]["peak_rss_mib"] or 1.0
            per["rss_ratio_large_small"] = per[str(large)]["peak_rss_mib"] / small_rss
            summary["medians"][fmt] = per
        return summary


def import_table(summary: dict[str, Any]) -> Table:
    """The medians: positions/s and peak RSS per format and size, and the target."""
    small, large = summary["sizes"]
    table = Table(
        title=f"[12] geotrack import into SQLite (target >= {TARGET:,} positions/s, "
        "memory flat in the file size)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    columns = ("format", "positions", "file MiB", "positions/s", "per CPU-s", "peak RSS MiB", "met")
    for name in columns:
        table.add_column(name, justify="left" if name == "format" else "right")
    for fmt, per in summary["medians"].items():
        for count in (small, large):
            row = per[str(count)]
            table.add_row(
                fmt,
                f"{count:,}",
                f"{row['mib']:.0f}",
                f"{row['positions_per_s']:,.0f}",
                f"{row['positions_per_cpu_s']:,.0f}",
                f"{row['peak_rss_mib']:.0f}",
                "met" if row["positions_per_s"] >= TARGET else "NOT met",
            )
        ratio = f"{per['rss_ratio_large_small']:.2f}x"
        table.add_row(fmt, "RSS large/small", "", "", "", ratio, "")
    return table


if __name__ == "__main__":
    if len(sys.argv) == 3:
        _child(Path(sys.argv[1]), Path(sys.argv[2]))
    else:
        from rich.console import Console

        quick = "--quick" in sys.argv
        done = run_import(
            (50_000, 200_000) if quick else (250_000, 1_000_000),
            1 if quick else 3,
            lambda line: print(line, file=sys.stderr, flush=True),
        )
        Console(width=120).print(import_table(done))
