"""One run: a fresh relay, load-generator processes, a schedule of phases, the figures.

The runner is the only process that watches the clock for measurement: it tells every
load generator the phase times on the shared monotonic clock, samples the relay's CPU from
/proc at the start and end of each measurement window, and turns what the load generators
counted into rates, latency percentiles and resource use.
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import procstat
from benchmarks.profiling import Profiler
from benchmarks.relays import ROOT, RelayKind, RelayProcess, SetupError, environment

_LOG_STEP = math.log(1.01)


@dataclass(frozen=True, slots=True)
class PhaseSpec:
    """One phase: ``saturate`` (as fast as acks allow) or ``rate`` (a fixed offered load)."""

    mode: str
    rate: float = 0.0
    warmup: float = 1.0
    duration: float = 4.0


@dataclass(frozen=True, slots=True)
class Workload:
    """Who connects and what they send. Every count is across all load-generator processes."""

    publishers: int = 0
    publisher_procs: int = 1
    batch: int = 1
    window: int = 8
    transport: str = "ws"  # or "http-keepalive", "http-close"
    subscribers: int = 0
    subscriber_procs: int = 1
    #: Every n-th subscriber decodes what it receives and times it (0: none, 1: all).
    latency_every: int = 0
    idle: int = 0
    idle_procs: int = 1
    idle_role: str = "subscribe"
    connect_concurrency: int = 100
    sources: int = 0  # loopback source addresses to spread connections over (0: default)
    phases: tuple[PhaseSpec, ...] = ()
    drain: float = 1.5
    relay_args: tuple[str, ...] = ()


@dataclass(slots=True)
class PhaseResult:
    """The figures of one phase of one run."""

    mode: str
    rate: float
    seconds: float
    acked_per_s: float = 0.0
    stored_per_s: float = 0.0
    sent_per_s: float = 0.0
    delivered_per_sub_per_s: float = 0.0
    delivered_total_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_samples: int = 0
    relay_cpu_pct: float = 0.0
    relay_main_cpu_pct: float = 0.0
    machine_busy_pct: float = 0.0
    loadgen_cpu_max_pct: float = 0.0
    loadgen_cpu_total_pct: float = 0.0
    deferred: int = 0
    unsent: int = 0
    errors: int = 0
    rejected: int = 0


@dataclass(slots=True)
class RunResult:
    """Everything one run measured."""

    relay: str
    phases: list[PhaseResult]
    peak_rss_mib: float
    stored_total: int
    rows_in_store: int
    subscribers_complete: int
    subscribers: int
    closed_by_relay: int
    close_codes: list[int]
    relay_exit: int | None
    idle: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)


class _Loadgen:
    """A load-generator child process and the JSON lines it prints."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.name = name
        self.stderr = (workdir / f"{name}.err").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen"],
            cwd=ROOT,
            env=environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(config)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise SetupError(
                f"load generator {self.name} gave no answer in {timeout:.0f} s"
            ) from None
        if not line:
            self.proc.wait()
            err = Path(self.stderr.name).read_text(errors="replace")[-1500:]
            raise SetupError(f"load generator {self.name} exited: {err}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise SetupError(f"load generator {self.name}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(buckets: dict[int, int], n: int, q: float) -> float:
    """The q-quantile (0..1) of a log-bucket histogram, in microseconds."""
    if n == 0:
        return math.nan
    rank = q * n
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return math.exp((index + 0.5) * _LOG_STEP)
    return math.exp((max(buckets) + 0.5) * _LOG_STEP)


def run(
    kind: RelayKind,
    workload: Workload,
    *,
    profile_to: Path | None = None,
    keep_dir: bool = False,
    prepare: Callable[[Path], None] | None = None,
    on_load: Callable[[RelayProcess], None] | None = None,
) -> RunResult:
    """Start a relay, drive it with ``workload``, stop it, and return the figures.

    ``prepare`` gets the store's path before the relay starts (to fill it); ``on_load``
    is called when the first phase's load begins, at its warm-up (to start something
    under load: the warm-up absorbs its start-up).
    """
    # No "@" of geotrack@REV in the store's path: it goes into a sqlite:// URL.
    safe = kind.name.replace("@", "-")
    with tempfile.TemporaryDirectory(prefix=f"geotrack-bench-{safe}-") as tmp:
        workdir = Path(tmp)
        relay = RelayProcess(
            kind,
            workdir,
            http=workload.transport.startswith("http"),
            extra=() if kind.is_node else workload.relay_args,
        )
        loadgens: list[_Loadgen] = []
        try:
            if prepare is not None:
                prepare(relay.db)
            relay.start()
            return _drive(relay, workload, workdir, loadgens, profile_to, on_load)
        finally:
            for lg in loadgens:
                lg.close()
            relay.stop()
            if keep_dir:
                print(f"kept {workdir}", file=sys.stderr)


def _configs(relay: RelayProcess, w: Workload) -> list[tuple[str, dict[str, Any]]]:
    from benchmarks.relays import source_addresses

    sources = source_addresses(w.sources) if w.sources else []
    out: list[tuple[str, dict[str, Any]]] = []
    common = {"framing": relay.kind.framing, "sources": sources}
    for i, n in enumerate(_split(w.subscribers, w.subscriber_procs) if w.subscribers else []):
        out.append(
            (
                f"sub{i}",
                {
                    **common,
                    "role": "subscribe",
                    "url": relay.url("subscribe"),
                    "connections": n,
                    "latency_every": w.latency_every,
                },
            )
        )
    for i, n in enumerate(_split(w.idle, w.idle_procs) if w.idle else []):
        out.append(
            (
                f"idle{i}",
                {
                    **common,
                    "role": "idle",
                    "url": relay.url(w.idle_role),
                    "connections": n,
                    "connect_concurrency": w.connect_concurrency,
                },
            )
        )
    for i, n in enumerate(_split(w.publishers, w.publisher_procs) if w.publishers else []):
        out.append(
            (
                f"pub{i}",
                {
                    **common,
                    "role": "publish",
                    "url": relay.url("publish"),
                    "host": "127.0.0.1",
                    "port": relay.http_port or relay.port,
                    "transport": w.transport,
                    "connections": n,
                    "batch": w.batch,
                    "window": w.window,
                    "prefix": f"dev{i}",
                },
            )
        )
    return out


def _drive(
    relay: RelayProcess,
    w: Workload,
    workdir: Path,
    loadgens: list[_Loadgen],
    profile_to: Path | None,
    on_load: Callable[[RelayProcess], None] | None = None,
) -> RunResult:
    notes: list[str] = []
    idle: dict[str, Any] = {}
    if w.idle:
        time.sleep(0.5)
        idle["rss_before_kib"] = relay.rss_kib()
    started = time.monotonic()
    # Subscribers (and idle connections) first, so they see every position published.
    configs = _configs(relay, w)
    for name, config in configs:
        loadgens.append(_Loadgen(config, workdir, name))
    ready = [lg.receive(timeout=180) for lg in loadgens]
    if w.idle:
        idle["connect_seconds"] = time.monotonic() - started
        time.sleep(1.0)
        idle["rss_after_kib"] = relay.rss_kib()
        idle["connections"] = w.idle
        idle["fd_limits"] = [r.get("fd_limit") for r in ready]

    # The schedule, on the shared monotonic clock.
    t = time.monotonic() + 0.3
    schedule: list[dict[str, Any]] = []
    for spec in w.phases:
        measure = t + spec.warmup
        end = measure + spec.duration
        schedule.append(
            {"mode": spec.mode, "rate": spec.rate, "start": t, "measure": measure, "end": end}
        )
        t = end + 0.5
    stop = (schedule[-1]["end"] if schedule else t) + w.drain
    for lg, (_, config) in zip(loadgens, configs, strict=True):
        phases = schedule
        if config["role"] == "publish" and w.publishers:
            # A phase's rate is the total: each publisher process offers its share.
            share = config["connections"] / w.publishers
            phases = [{**p, "rate": p["rate"] * share} for p in schedule]
        lg.send({"phases": phases, "stop": stop})

    samples: list[
        tuple[procstat.CpuSample, procstat.CpuSample, tuple[float, float], tuple[float, float]]
    ] = []
    profile: dict[str, Any] = {}
    for i, phase in enumerate(schedule):
        if on_load is not None and i == 0:
            _sleep_until(phase["start"])
            on_load(relay)
        _sleep_until(phase["measure"])
        profiler = None
        if profile_to is not None and i == len(schedule) - 1 and not relay.kind.is_node:
            profiler = Profiler(relay.pid, phase["end"] - phase["measure"], profile_to)
        cpu0, busy0 = procstat.cpu(relay.pid), procstat.machine_busy()
        _sleep_until(phase["end"])
        cpu1, busy1 = procstat.cpu(relay.pid), procstat.machine_busy()
        samples.append((cpu0, cpu1, busy0, busy1))
        if profiler is not None:
            profile = profiler.finish()
    if not schedule:
        _sleep_until(stop)
    results = [lg.receive(timeout=max(30.0, stop - time.monotonic() + 30)) for lg in loadgens]
    peak = relay.peak_rss_kib()
    exit_code = relay.stop()
    rows = relay.stored_rows()

    pubs = [r for r in results if r["role"] == "publish"]
    subs = [r for r in results if r["role"] == "subscribe"]
    idles = [r for r in results if r["role"] == "idle"]
    stored_total = sum(p["total_stored"] for p in pubs)
    totals = [n for s in subs for n in s["totals"]]
    phases: list[PhaseResult] = []
    for i, (spec, (cpu0, cpu1, busy0, busy1)) in enumerate(zip(w.phases, samples, strict=True)):
        secs = spec.duration
        pc = [r["phases"][i] for r in results]
        pp = [p["phases"][i] for p in pubs]
        sp = [s["phases"][i] for s in subs]
        buckets: dict[int, int] = {}
        n = 0
        lmax = 0
        for c in sp:
            lat = c["latency"]
            n += lat["n"]
            lmax = max(lmax, lat["max"])
            for k, v in lat["buckets"].items():
                buckets[int(k)] = buckets.get(int(k), 0) + v
        result = PhaseResult(spec.mode, spec.rate, secs)
        result.acked_per_s = sum(c["acked"] for c in pp) / secs
        result.stored_per_s = sum(c["stored"] for c in pp) / secs
        result.sent_per_s = sum(c["sent"] for c in pp) / secs
        received = sum(c["received"] for c in sp)
        result.delivered_total_per_s = received / secs
        result.delivered_per_sub_per_s = received / secs / w.subscribers if w.subscribers else 0.0
        if n and spec.mode == "rate":
            result.latency_ms = {
                "p50": percentile(buckets, n, 0.50) / 1000,
                "p99": percentile(buckets, n, 0.99) / 1000,
                "p999": percentile(buckets, n, 0.999) / 1000,
                "max": lmax / 1000,
            }
            result.latency_samples = n
        wall = cpu1.at - cpu0.at
        result.relay_cpu_pct = 100 * (cpu1.total - cpu0.total) / wall
        result.relay_main_cpu_pct = 100 * (cpu1.main - cpu0.main) / wall
        result.machine_busy_pct = 100 * (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1])
        loadgen_cpu = [100 * c["cpu"] / secs for c in pc]
        result.loadgen_cpu_max_pct = max(loadgen_cpu, default=0.0)
        result.loadgen_cpu_total_pct = sum(loadgen_cpu)
        result.deferred = sum(c["deferred"] for c in pp)
        result.unsent = sum(c["unsent"] for c in pp)
        result.errors = sum(c["errors"] for c in pp)
        result.rejected = sum(c["rejected"] for c in pp)
        phases.append(result)
    closed = sum(r["closed"] for r in subs + idles + pubs)
    codes = sorted({c for r in subs + idles + pubs for c in r["close_codes"]})
    if w.idle:
        idle["held_at_end"] = w.idle - sum(r["closed"] for r in idles)
        idle["connect_retries"] = sum(r.get("connect_retries", 0) for r in idles)
        per = (idle["rss_after_kib"] - idle["rss_before_kib"]) / w.idle
        idle["kib_per_connection"] = per
    if exit_code not in (0, None):
        notes.append(f"relay exited with {exit_code}")
    unanswered = sum(p.get("unanswered_at_exit", 0) for p in pubs)
    if rows != stored_total and pubs:
        notes.append(
            f"{rows - stored_total:+,} rows in the store beyond acks "
            f"({unanswered:,} frames unanswered at exit)"
        )
    return RunResult(
        relay=relay.kind.name,
        phases=phases,
        peak_rss_mib=peak / 1024,
        stored_total=stored_total,
        rows_in_store=rows,
        subscribers_complete=sum(1 for n in totals if n >= stored_total),
        subscribers=len(totals),
        closed_by_relay=closed,
        close_codes=codes,
        relay_exit=exit_code,
        idle=idle,
        notes=notes,
        profile=profile,
    )


def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
