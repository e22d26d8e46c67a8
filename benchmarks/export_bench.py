"""Scenario 8: exporting stored positions to GeoJSON, CSV and GPX, at two sizes.

The store is filled directly through the library (``open_store(...).write``, in batches,
``synchronous=normal``: the fill is not what is measured), then ``geotrack export`` runs
as a child process per format and size. Its wall time gives the rate; its peak RSS comes
from ``wait4`` (the kernel's ru_maxrss of that child alone). The smaller store is a quarter
of the larger one: memory flat in the row count means the same peak at both sizes.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.profiling import py_spy, summarize
from benchmarks.relays import ROOT, environment

FORMATS = ("geojson", "csv", "gpx")
DEVICES = 100
BASE_TS = 1_795_608_000


def fill(url: str, start: int, stop: int, batch: int = 20_000) -> float:
    """Write positions ``start``..``stop`` (100 devices, one fix per second each); seconds."""
    from geotrack.schema import Position
    from geotrack.store import open_store

    began = time.monotonic()
    store = open_store(url)
    try:
        for first in range(start, stop, batch):
            positions = [
                Position(
                    device=f"vehicle-{i % DEVICES:03d}",
                    lat=52.5 + (i % 5000) * 1e-5,
                    lon=13.4 + (i % 7000) * 1e-5,
                    ts=float(BASE_TS + i // DEVICES),
                    speed=8.5,
                    heading=float(i % 360),
                    alt=34.0,
                    acc=5.0,
                    attrs={"batt": 80},
                )
                for i in range(first, min(stop, first + batch))
            ]
            store.write(positions, "benchmark-fill")
    finally:
        store.close()
    return time.monotonic() - began


def export_once(db: Path, fmt: str, out: Path) -> dict[str, Any]:
    """Run ``geotrack export`` once; wall seconds, peak RSS and output size."""
    cmd = [
        sys.executable, "-m", "geotrack", "export",
        "--store", f"sqlite:///{db}", "--format", fmt, "-o", str(out), "-q",
    ]  # fmt: skip
    began = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environment(), stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - began
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4 above
    size = out.stat().st_size if out.exists() else 0
    out.unlink(missing_ok=True)
    return {
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "bytes": size,
        "exit": code,
        "error": err.strip()[-300:] if code else "",
    }


def profile_export(db: Path, fmt: str, out_txt: Path, work: Path) -> dict[str, Any]:
    """py-spy over one export (launched under py-spy); the summary."""
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy is not installed"}
    target = work / f"profiled.{fmt}"
    cmd = [
        exe, "record", "--rate", "200", "--format", "raw", "--output", str(out_txt), "--threads",
        "--", sys.executable, "-m", "geotrack", "export",
        "--store", f"sqlite:///{db}", "--format", fmt, "-o", str(target), "-q",
    ]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, check=False)
    seconds = time.monotonic() - began
    target.unlink(missing_ok=True)
    if done.returncode != 0 or not out_txt.exists():
        return {"error": done.stderr.decode(errors="replace").strip()[-300:]}
    summary = summarize(out_txt.read_text(), seconds * 200)
    summary["file"] = str(out_txt)
    summary["format"] = fmt
    return summary


def run_export(
    sizes: tuple[int, int],
    rounds: int,
    profile_dir: Path | None,
    stamp: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Fill two stores, export each format at both sizes, interleaved, ``rounds`` times."""
    small, large = sizes
    with tempfile.TemporaryDirectory(prefix="geotrack-bench-export-") as tmp:
        work = Path(tmp)
        small_db, large_db = work / "small.db", work / "large.db"
        fill_seconds = fill(f"sqlite:///{small_db}?synchronous=normal", 0, small)
        shutil.copyfile(small_db, large_db)
        fill_seconds += fill(f"sqlite:///{large_db}?synchronous=normal", small, large)
        log(f"  [8] filled {small:,} and {large:,} positions in {fill_seconds:.1f} s")
        warm = export_once(small_db, "csv", work / "warm.csv")  # warms the page cache
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            f: {small: [], large: []} for f in FORMATS
        }
        for r in range(rounds):
            for fmt in FORMATS:
                # GPX has no target; one round of it is enough to show it streams.
                if fmt == "gpx" and r > 0:
                    continue
                for rows, db in ((small, small_db), (large, large_db)):
                    result = export_once(db, fmt, work / f"out.{fmt}")
                    result["rows_per_s"] = rows / result["seconds"]
                    runs[fmt][rows].append(result)
                    log(
                        f"  [8] round {r + 1}/{rounds} {fmt} {rows:,}: {result['seconds']:.1f} s, "
                        f"{result['rows_per_s']:,.0f} rows/s, "
                        f"peak RSS {result['peak_rss_mib']:.0f} MiB"
                        + (f" FAILED: {result['error']}" if result["exit"] else "")
                    )
        summary: dict[str, Any] = {
            "sizes": [small, large],
            "fill_seconds": fill_seconds,
            "warmup_export": warm,
            "runs": runs,
            "medians": {},
            "profiles": {},
        }
        for fmt in FORMATS:
            per: dict[str, Any] = {}
            for rows in (small, large):
                results = runs[fmt][rows]
                per[str(rows)] = {
                    "seconds": statistics.median(x["seconds"] for x in results),
                    "rows_per_s": statistics.median(x["rows_per_s"] for x in results),
                    "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in results),
                    "mib": statistics.median(x["bytes"] for x in results) / 2**20,
                    "rounds": len(results),
                    "failed": sum(1 for x in results if x["exit"]),
                }
            per["rss_ratio_large_small"] = (
                per[str(large)]["peak_rss_mib"] / per[str(small)]["peak_rss_mib"]
            )
            summary["medians"][fmt] = per
        if profile_dir is not None:
            for fmt in ("geojson", "csv"):
                out = profile_dir / f"{stamp}-profile-8-export-{fmt}.txt"
                summary["profiles"][fmt] = profile_export(small_db, fmt, out, work)
                log(f"  [8] profiled export {fmt} with py-spy: {out}")
        return summary
