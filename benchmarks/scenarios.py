"""The scenarios of issue 6, run interleaved (A B C A B C ...) and summarized by medians.

Each scenario is a list of variants (a relay and a workload); a round runs every variant
once, and the rounds are repeated, so slow drifts of a noisy machine hit every variant
alike; every other round runs the variants in reverse order (A B C, C B A, A B C, ...), so
a drift within a round does not always favour the same one. Ratios are taken within a
round (the variants ran seconds apart) and then their median across rounds is reported.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.relays import GEOTRACK, NODE_WS, SOCKETIO, RelayKind, SetupError
from benchmarks.runner import PhaseSpec, RunResult, Workload, run

#: Figures compared across variants: (phase metric, higher is better).
THROUGHPUT = ("stored_per_s", "delivered_per_sub_per_s")
LATENCY = ("p50", "p99")


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how often to run; what to include."""

    rounds: int = 3
    warmup: float = 1.0
    duration: float = 3.0
    quick: bool = False
    references: bool = True
    profile: bool = True
    #: A geotrack relay from another revision, run next to the current one in scenarios
    #: 1-5 (``--baseline REV``, see :mod:`benchmarks.baseline`).
    baseline: RelayKind | None = None
    results_dir: Path = Path("benchmarks/results")
    stamp: str = "run"


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    kind: RelayKind
    workload: Workload


@dataclass(slots=True)
class Scenario:
    number: int
    name: str
    title: str
    variants: list[Variant]
    rounds: int
    #: The variant every other one is compared with.
    baseline: str = "geotrack"
    #: Variants profiled with py-spy in one extra run each (not counted in the figures).
    profile: tuple[str, ...] = ("geotrack",)
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What a scenario measured: every run, the medians and the ratios."""

    number: int
    name: str
    title: str
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    medians: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "name": self.name,
            "title": self.title,
            "runs": {k: [asdict(r) for r in v] for k, v in self.runs.items()},
            "medians": self.medians,
            "ratios": self.ratios,
            "profiles": self.profiles,
            "skipped": self.skipped,
            "notes": self.notes,
            "extra": self.extra,
        }


def _relays(settings: Settings) -> tuple[RelayKind, ...]:
    before = () if settings.baseline is None else (settings.baseline,)
    return (GEOTRACK, *before, *((NODE_WS, SOCKETIO) if settings.references else ()))


def build(settings: Settings, http_available: bool) -> list[Scenario]:
    """Scenarios 1-6 (7 is the side-by-side view of 1-4, 8 the export: see cli)."""
    s = settings
    quick = s.quick
    saturate = (PhaseSpec("saturate", warmup=s.warmup, duration=s.duration),)

    def rate(r: float) -> tuple[PhaseSpec, ...]:
        return (PhaseSpec("rate", rate=r, warmup=s.warmup, duration=s.duration),)

    relays = _relays(s)
    out: list[Scenario] = []

    # 1: 100 publishers sending single-position frames as fast as acks allow.
    single = Workload(publishers=100, window=8, subscribers=10, phases=saturate)
    out.append(
        Scenario(
            1,
            "single",
            "Single-position frames, 100 publishers, 10 subscribers, persistence on",
            [Variant(k.name, k, single) for k in relays],
            s.rounds,
        )
    )
    # 2: the same with 100-position frames. One frame in flight per publisher: 10,000
    # positions in flight in all (see docs/benchmarks.md: more makes geotrack drop every
    # subscriber, because one commit can exceed the subscriber queue).
    batched = Workload(publishers=100, batch=100, window=1, subscribers=10, phases=saturate)
    out.append(
        Scenario(
            2,
            "batched",
            "Batched frames (100 positions), 100 publishers, 10 subscribers",
            [Variant(k.name, k, batched) for k in relays],
            s.rounds,
        )
    )
    # 3: a fixed 5,000 positions/s (100 publishers x 50/s); every subscriber times every fix.
    fixed = Workload(publishers=100, window=8, subscribers=10, latency_every=1, phases=rate(5000))
    out.append(
        Scenario(
            3,
            "latency",
            "Fixed load 5,000 positions/s: publisher->subscriber latency (incl. durable write)",
            [Variant(k.name, k, fixed) for k in relays],
            s.rounds,
        )
    )
    # 4: one publisher at 1,000/s to 1,000 subscribers (every 10th one times what it gets).
    fan = Workload(
        publishers=1,
        window=64,
        subscribers=200 if quick else 1000,
        subscriber_procs=2,
        latency_every=10,
        phases=rate(1000),
        drain=3.0,
    )
    out.append(
        Scenario(
            4,
            "fanout",
            f"Fan-out: 1 publisher at 1,000/s, {fan.subscribers:,} subscribers",
            [Variant(k.name, k, fan) for k in relays],
            s.rounds,
        )
    )
    # 5: idle connections (subscribers), memory per connection. RSS does not suffer from CPU
    # noise the way rates do, so one round is enough; three cost two minutes.
    idle = Workload(
        idle=1000 if quick else 10_000,
        idle_procs=2,
        sources=10,
        # geotrack listens with asyncio's default backlog of 100: keep fewer handshakes
        # than that in flight (Node listens with 511).
        connect_concurrency=40,
        drain=0.5,
    )
    out.append(
        Scenario(
            5,
            "idle",
            f"{idle.idle:,} idle WebSocket connections (subscribers): memory per connection",
            [Variant(k.name, k, idle) for k in relays],
            1,
            profile=(),
        )
    )
    # 6: the same positions over WebSocket and HTTP REST (POST /api/positions).
    phases6 = (
        PhaseSpec("rate", rate=1000, warmup=s.warmup, duration=s.duration),
        PhaseSpec("saturate", warmup=s.warmup, duration=s.duration),
    )
    base6 = Workload(publishers=100, subscribers=10, latency_every=1, sources=10, phases=phases6)
    variants6 = [
        Variant("ws", GEOTRACK, base6),
        Variant("ws-lockstep", GEOTRACK, _replace(base6, window=1)),
    ]
    scenario6 = Scenario(
        6,
        "http",
        "WebSocket frames vs HTTP REST requests (keep-alive and not), same relay",
        variants6,
        s.rounds,
        baseline="ws",
        profile=("ws", "http-keepalive"),
    )
    if http_available:
        variants6 += [
            Variant("http-keepalive", GEOTRACK, _replace(base6, transport="http-keepalive")),
            # Connections refused from a full accept queue are retried by TCP after 1 s
            # and more: give the last requests time to be answered.
            Variant("http-close", GEOTRACK, _replace(base6, transport="http-close", drain=4.0)),
        ]
    else:
        scenario6.notes.append("skipped: relay has no HTTP listener (geotrack serve --http-port)")
    out.append(scenario6)
    return out


def _replace(w: Workload, **changes: Any) -> Workload:
    return dataclasses.replace(w, **changes)


def run_scenario(scenario: Scenario, settings: Settings, log: Callable[[str], None]) -> Outcome:
    """Run every variant ``rounds`` times, interleaved; then medians, ratios, a profile."""
    outcome = Outcome(scenario.number, scenario.name, scenario.title, notes=list(scenario.notes))
    for variant in scenario.variants:
        outcome.runs[variant.label] = []
    for r in range(scenario.rounds):
        for variant in scenario.variants if r % 2 == 0 else scenario.variants[::-1]:
            if variant.label in outcome.skipped:
                continue
            try:
                result = run(variant.kind, variant.workload)
            except SetupError as exc:
                outcome.skipped[variant.label] = str(exc)
                log(f"  [{scenario.number}] {variant.label}: skipped: {exc}")
                continue
            outcome.runs[variant.label].append(result)
            where = f"[{scenario.number}] round {r + 1}/{scenario.rounds} {variant.label}"
            log(f"  {where}: {brief(result)}")
    for label, runs in outcome.runs.items():
        if runs:
            outcome.medians[label] = medians(runs)
    outcome.ratios = ratios(scenario, outcome)
    if settings.profile:
        for target in scenario.variants:
            if target.label not in scenario.profile or target.label in outcome.skipped:
                continue
            out = (
                settings.results_dir
                / f"{settings.stamp}-profile-{scenario.number}-{target.label}.txt"
            )
            try:
                result = run(target.kind, target.workload, profile_to=out)
                outcome.profiles.append({"variant": target.label, **result.profile})
                log(f"  [{scenario.number}] profiled {target.label} with py-spy: {out}")
            except SetupError as exc:
                outcome.profiles.append({"variant": target.label, "error": str(exc)})
    return outcome


def brief(result: RunResult) -> str:
    """One line for the progress log."""
    if result.idle:
        i = result.idle
        return (
            f"{i['held_at_end']:,} held, {i['kib_per_connection']:.1f} KiB/connection, "
            f"connected in {i['connect_seconds']:.1f} s"
        )
    parts = []
    for p in result.phases:
        text = f"{p.mode}: {p.stored_per_s:,.0f} stored/s, {p.delivered_per_sub_per_s:,.0f}/s/sub"
        if p.latency_ms:
            text += f", p50 {p.latency_ms['p50']:.2f} ms, p99 {p.latency_ms['p99']:.2f} ms"
        text += f", relay CPU {p.relay_cpu_pct:.0f}%, load-gen max {p.loadgen_cpu_max_pct:.0f}%"
        parts.append(text)
    if result.closed_by_relay:
        parts.append(f"{result.closed_by_relay} closed by relay {result.close_codes}")
    return "; ".join(parts)


_PHASE_FIELDS = (
    "acked_per_s",
    "stored_per_s",
    "sent_per_s",
    "delivered_per_sub_per_s",
    "delivered_total_per_s",
    "relay_cpu_pct",
    "relay_main_cpu_pct",
    "machine_busy_pct",
    "loadgen_cpu_max_pct",
    "loadgen_cpu_total_pct",
)


def _median(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def medians(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Per phase, the median of every figure across rounds (plus run-level ones)."""
    out: list[dict[str, Any]] = []
    for i, phase in enumerate(runs[0].phases or [None]):  # type: ignore[list-item]
        row: dict[str, Any] = {"rounds": len(runs)}
        if phase is not None:
            row["mode"] = phase.mode
            row["rate"] = phase.rate
            for name in _PHASE_FIELDS:
                row[name] = _median([getattr(r.phases[i], name) for r in runs])
            if phase.latency_ms:
                for q in ("p50", "p99", "p999", "max"):
                    row[q] = _median([r.phases[i].latency_ms.get(q, float("nan")) for r in runs])
            row["deferred"] = max(r.phases[i].deferred for r in runs)
            row["unsent"] = max(r.phases[i].unsent for r in runs)
        row["peak_rss_mib"] = _median([r.peak_rss_mib for r in runs])
        row["closed_by_relay"] = max(r.closed_by_relay for r in runs)
        row["close_codes"] = sorted({c for r in runs for c in r.close_codes})
        row["complete"] = all(r.subscribers_complete == r.subscribers for r in runs)
        row["subscribers_complete_min"] = min(r.subscribers_complete for r in runs)
        row["subscribers"] = runs[0].subscribers
        row["notes"] = sorted({n for r in runs for n in r.notes})
        if runs[0].idle:
            row["kib_per_connection"] = _median([r.idle["kib_per_connection"] for r in runs])
            row["held"] = min(r.idle["held_at_end"] for r in runs)
            row["connections"] = runs[0].idle["connections"]
            row["connect_seconds"] = _median([r.idle["connect_seconds"] for r in runs])
            row["connect_retries"] = max(r.idle.get("connect_retries", 0) for r in runs)
            row["rss_after_mib"] = _median([r.idle["rss_after_kib"] / 1024 for r in runs])
        out.append(row)
    return out


def _figure(result: RunResult, phase: int, metric: str) -> float:
    p = result.phases[phase]
    if metric in LATENCY:
        return p.latency_ms.get(metric, float("nan"))
    value: float = getattr(p, metric)
    return value


def ratios(scenario: Scenario, outcome: Outcome) -> list[dict[str, Any]]:
    """baseline ÷ other, per round, for throughput (saturate) and latency (rate) phases."""
    base = outcome.runs.get(scenario.baseline) or []
    out: list[dict[str, Any]] = []
    if not base:
        return out
    for label, runs in outcome.runs.items():
        if label == scenario.baseline or not runs:
            continue
        if base[0].idle:
            per_round = [
                b.idle["kib_per_connection"] / o.idle["kib_per_connection"]
                for b, o in zip(base, runs, strict=False)
                if o.idle.get("kib_per_connection")
            ]
            if per_round:
                out.append(
                    {
                        "scenario": scenario.number,
                        "phase": "idle",
                        "metric": "kib_per_connection",
                        "baseline": scenario.baseline,
                        "other": label,
                        "ratio": statistics.median(per_round),
                        "per_round": per_round,
                    }
                )
            continue
        for i, phase in enumerate(base[0].phases):
            metrics = THROUGHPUT if phase.mode == "saturate" else LATENCY
            if phase.mode == "rate" and not phase.latency_ms:
                continue
            for metric in metrics:
                per_round = []
                for b, o in zip(base, runs, strict=False):
                    num, den = _figure(b, i, metric), _figure(o, i, metric)
                    if den and not math.isnan(den) and not math.isnan(num):
                        per_round.append(num / den)
                if per_round:
                    out.append(
                        {
                            "scenario": scenario.number,
                            "phase": phase.mode,
                            "metric": metric,
                            "baseline": scenario.baseline,
                            "other": label,
                            "ratio": statistics.median(per_round),
                            "per_round": per_round,
                        }
                    )
    return out


def log_to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
