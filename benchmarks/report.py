"""The printed tables and the targets of issue 6, judged from the medians."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from benchmarks.scenarios import Outcome


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(row: dict[str, Any], key: str) -> str:
    return _n(row.get(key), 2) if key in row else "-"


def _pair(row: dict[str, Any], first: str, second: str) -> str:
    return f"{_n(row.get(first))} ({_n(row.get(second))})"


def main_table(outcomes: list[Outcome]) -> Table:
    table = Table(
        title="Throughput and latency: medians of interleaved rounds (positions/s)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for name, justify in (
        ("#", "right"),
        ("variant", "left"),
        ("phase", "left"),
        ("stored/s", "right"),
        ("deliv/s/sub", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("max ms", "right"),
        ("relay CPU% (main)", "right"),
        ("RSS MiB", "right"),
        ("loadgen CPU% max (sum)", "right"),
        ("busy%", "right"),
        ("n", "right"),
        ("notes", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for o in outcomes:
        if o.number in (5, 8):
            continue
        for label, rows in o.medians.items():
            for row in rows:
                phase = row.get("mode", "")
                if phase == "rate":
                    phase = f"{row['rate']:,.0f}/s"
                notes = []
                if row["closed_by_relay"]:
                    notes.append(f"{row['closed_by_relay']} closed {row['close_codes']}")
                if row["subscribers"] and not row["complete"]:
                    notes.append(f"complete {row['subscribers_complete_min']}/{row['subscribers']}")
                elif row["subscribers"] >= 100:
                    notes.append(f"all {row['subscribers']} complete")
                if row.get("unsent"):
                    notes.append(f"{row['unsent']:,} not offered")
                notes += row["notes"]
                table.add_row(
                    str(o.number),
                    label,
                    phase,
                    _n(row.get("stored_per_s")),
                    _n(row.get("delivered_per_sub_per_s")),
                    _ms(row, "p50"),
                    _ms(row, "p99"),
                    _ms(row, "max"),
                    _pair(row, "relay_cpu_pct", "relay_main_cpu_pct"),
                    _n(row.get("peak_rss_mib")),
                    _pair(row, "loadgen_cpu_max_pct", "loadgen_cpu_total_pct"),
                    _n(row.get("machine_busy_pct")),
                    str(row["rounds"]),
                    "; ".join(notes),
                )
        for label, reason in o.skipped.items():
            table.add_row(
                str(o.number), label, "", "", "", "", "", "", "", "", "", "", "", reason[:60]
            )
        for note in o.notes:
            table.add_row(str(o.number), "", "", "", "", "", "", "", "", "", "", "", "", note)
    return table


def idle_table(outcome: Outcome) -> Table:
    table = Table(title=f"5. {outcome.title}", box=box.SIMPLE_HEAVY, title_justify="left")
    for name in (
        "relay",
        "held",
        "KiB/connection",
        "RSS with them MiB",
        "connect s",
        "retried",
        "n",
    ):
        table.add_column(name, justify="left" if name == "relay" else "right")
    for label, rows in outcome.medians.items():
        row = rows[0]
        table.add_row(
            label,
            f"{row['held']:,}/{row['connections']:,}",
            _n(row["kib_per_connection"], 1),
            _n(row["rss_after_mib"]),
            _n(row["connect_seconds"], 1),
            str(row.get("connect_retries", 0)),
            str(row["rounds"]),
        )
    for label, reason in outcome.skipped.items():
        table.add_row(label, "skipped", reason[:60], "", "", "", "")
    return table


def ratio_table(outcomes: list[Outcome]) -> Table:
    table = Table(
        title="Ratios: A ÷ B within each round, median across rounds",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for name in ("#", "metric", "A ÷ B", "median", "per round"):
        table.add_column(name, justify="right" if name in ("#", "median") else "left")
    for o in outcomes:
        for r in o.ratios:
            table.add_row(
                str(r["scenario"]),
                f"{r['metric']} ({r['phase']})",
                f"{r['baseline']} ÷ {r['other']}",
                f"{r['ratio']:.2f}x",
                ", ".join(f"{x:.2f}" for x in r["per_round"]),
            )
    return table


#: How the before/after table names a figure, its digits, and which way is better.
_FIGURES: dict[str, tuple[str, int, str]] = {
    "stored_per_s": ("stored/s", 0, "higher"),
    "delivered_per_sub_per_s": ("delivered/s per subscriber", 0, "higher"),
    "p50": ("p50 ms", 2, "lower"),
    "p99": ("p99 ms", 2, "lower"),
    "kib_per_connection": ("KiB per connection", 1, "lower"),
}


def before_after(outcomes: list[Outcome], label: str) -> list[dict[str, Any]]:
    """Current ÷ baseline (``label``, e.g. ``geotrack@6b2e768``) for every figure compared.

    ``ratio`` is the median across rounds of the ratio within each round (after ÷ before,
    whatever the figure: above 1 is better for rates, worse for latency and memory);
    ``before`` and ``after`` are the medians of the figure itself.
    """
    out: list[dict[str, Any]] = []
    for o in outcomes:
        for r in o.ratios:
            if r["other"] != label or r["baseline"] != "geotrack":
                continue
            name, _, better = _FIGURES.get(r["metric"], (r["metric"], 2, "higher"))
            medians: list[float | None] = []
            for variant in ("geotrack", label):
                rows = o.medians.get(variant, [])
                row = next((x for x in rows if x.get("mode", "idle") == r["phase"]), {})
                medians.append(row.get(r["metric"]))
            out.append(
                {
                    "scenario": o.number,
                    "name": o.name,
                    "phase": r["phase"],
                    "metric": r["metric"],
                    "figure": name,
                    "before": medians[1],
                    "after": medians[0],
                    "after_over_before": r["ratio"],
                    "per_round": r["per_round"],
                    "better": better,
                }
            )
    return out


def _change(ratio: float, better: str) -> str:
    gain = ratio - 1 if better == "higher" else 1 - ratio
    if abs(gain) < 0.0005:
        return "same"
    return f"{abs(gain) * 100:.1f} % {'better' if gain > 0 else 'worse'}"


def before_after_table(items: list[dict[str, Any]], label: str) -> Table:
    table = Table(
        title=f"Before and after: geotrack ÷ {label} within each round, median across rounds",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for name in (
        "#",
        "scenario",
        "figure",
        f"before ({label})",
        "after (geotrack)",
        "after ÷ before",
        "per round",
        "change",
    ):
        table.add_column(name, justify="left" if name in ("scenario", "figure") else "right")
    for item in items:
        digits = _FIGURES.get(item["metric"], ("", 2, ""))[1]
        table.add_row(
            str(item["scenario"]),
            item["name"],
            f"{item['figure']} ({item['phase']}, {item['better']} is better)",
            _n(item["before"], digits),
            _n(item["after"], digits),
            f"{item['after_over_before']:.3f}",
            ", ".join(f"{x:.3f}" for x in item["per_round"]),
            _change(item["after_over_before"], item["better"]),
        )
    return table


def export_table(export: dict[str, Any]) -> Table:
    small, large = export["sizes"]
    table = Table(
        title=f"8. Export of {small:,} and {large:,} stored positions (geotrack export)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for name in ("format", "rows", "seconds", "rows/s", "peak RSS MiB", "file MiB", "n"):
        table.add_column(name, justify="left" if name == "format" else "right")
    for fmt, per in export["medians"].items():
        for rows in (small, large):
            m = per[str(rows)]
            table.add_row(
                fmt,
                f"{rows:,}",
                _n(m["seconds"], 1),
                _n(m["rows_per_s"]),
                _n(m["peak_rss_mib"], 1),
                _n(m["mib"]),
                str(m["rounds"]),
            )
    return table


def _ratio(outcome: Outcome | None, metric: str, other: str, phase: str) -> float | None:
    if outcome is None:
        return None
    for r in outcome.ratios:
        if r["metric"] == metric and r["other"] == other and r["phase"] == phase:
            value: float = r["ratio"]
            return value
    return None


def _row(outcome: Outcome | None, label: str = "geotrack") -> dict[str, Any] | None:
    if outcome is None or label not in outcome.medians:
        return None
    return outcome.medians[label][-1]


def targets(outcomes: list[Outcome], export: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each target of issue 6, one line per condition, with what was measured and if met."""
    by = {o.number: o for o in outcomes}
    out: list[dict[str, Any]] = []

    def add(number: int, target: str, measured: str, met: bool | None) -> None:
        out.append({"scenario": number, "target": target, "measured": measured, "met": met})

    if (row := _row(by.get(1))) is not None:
        rate = min(row["stored_per_s"], row["delivered_per_sub_per_s"])
        add(1, ">= 40,000/s stored and delivered", f"{rate:,.0f}/s", rate >= 40_000)
        vs = _ratio(by[1], "stored_per_s", "socketio", "saturate")
        if vs is not None:
            add(1, ">= 4x the socket.io relay", f"{vs:.2f}x", vs >= 4)
    if (row := _row(by.get(2))) is not None:
        rate = min(row["stored_per_s"], row["delivered_per_sub_per_s"])
        ok = rate >= 150_000 and row["complete"]
        add(2, ">= 150,000/s stored and delivered", f"{rate:,.0f}/s", ok)
    if (row := _row(by.get(3))) is not None:
        add(3, "p99 <= 5 ms including the durable write", f"{row['p99']:.2f} ms", row["p99"] <= 5)
        if (ws := _row(by.get(3), "node-ws")) is not None:
            vs = _ratio(by[3], "p99", "node-ws", "rate") or math.nan
            text = f"{row['p99']:.2f} vs {ws['p99']:.2f} ms ({vs:.2f}x)"
            add(3, "p99 below the Node ws relay", text, row["p99"] < ws["p99"])
    if (row := _row(by.get(4))) is not None:
        add(4, "every subscriber gets every position",
            f"{row['subscribers_complete_min']:,}/{row['subscribers']:,} in every round",
            row["complete"])  # fmt: skip
        add(4, "p99 <= 50 ms at 1,000/s", f"{row['p99']:.1f} ms", row["p99"] <= 50)
    if (row := _row(by.get(5))) is not None:
        add(5, "10,000 connections held", f"{row['held']:,}/{row['connections']:,}",
            row["held"] >= 10_000)  # fmt: skip
        add(5, "<= 20 KiB per connection", f"{row['kib_per_connection']:.1f} KiB",
            row["kib_per_connection"] <= 20)  # fmt: skip
    if (o6 := by.get(6)) is not None:
        for other, name in (("http-keepalive", "keep-alive"), ("http-close", "no keep-alive")):
            ratio = _ratio(o6, "stored_per_s", other, "saturate")
            target = f">= 10x WS vs HTTP {name} (throughput)"
            if ratio is None:
                add(6, target, "skipped: relay has no HTTP listener", None)
            else:
                add(6, target, f"{ratio:.2f}x", ratio >= 10)
    if export is not None:
        large_rows = export["sizes"][1]
        for fmt in ("geojson", "csv"):
            per = export["medians"][fmt]
            rate = per[str(large_rows)]["rows_per_s"]
            add(8, f"{fmt}: >= 200,000 positions/s", f"{rate:,.0f}/s at {large_rows:,}",
                rate >= 200_000)  # fmt: skip
        flat = max(export["medians"][fmt]["rss_ratio_large_small"] for fmt in export["medians"])
        add(8, "memory flat in the row count (4x the rows)", f"peak RSS x{flat:.2f}", flat <= 1.15)
    return out


def targets_table(items: list[dict[str, Any]], quick: bool = False) -> Table:
    title = "Targets of issue 6" + (
        " (a --quick run is scaled down: judge the targets on a full run)" if quick else ""
    )
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
    for name in ("#", "target", "measured (medians)", "met"):
        table.add_column(name)
    for t in items:
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        table.add_row(str(t["scenario"]), t["target"], t["measured"], met)
    return table


def profile_lines(
    outcomes: list[Outcome], export: dict[str, Any] | None, top: int = 6
) -> list[str]:
    """Where geotrack's time went, per scenario (py-spy), as plain lines."""
    lines: list[str] = []
    blocks: list[tuple[str, dict[str, Any]]] = [
        (f"{o.number}. {o.name} ({p.get('variant', '')})", p) for o in outcomes for p in o.profiles
    ]
    if export:
        blocks += [(f"8. export {fmt}", p) for fmt, p in export.get("profiles", {}).items()]
    for title, profile in blocks:
        if "error" in profile:
            lines.append(f"{title}: {profile['error']}")
            continue
        lines.append(f"{title}:")
        for t in profile.get("threads", []):
            own = ", ".join(f"{n} {p}%" for n, p in t["self_pct"][:top])
            inc = ", ".join(f"{n} {p}%" for n, p in t["inclusive_pct"][:top])
            lines.append(f"  {t['thread']} busy {t['busy_pct']}% | self: {own}")
            lines.append(f"  {' ' * len(t['thread'])} inclusive: {inc}")
    return lines


def print_all(
    console: Console,
    outcomes: list[Outcome],
    export: dict[str, Any] | None,
    target_items: list[dict[str, Any]],
    quick: bool = False,
) -> None:
    console.print(main_table(outcomes))
    for o in outcomes:
        if o.number == 5 and o.medians:
            console.print(idle_table(o))
    console.print(ratio_table(outcomes))
    if export is not None:
        console.print(export_table(export))
    console.print(targets_table(target_items, quick))
    lines = profile_lines(outcomes, export)
    if lines:
        console.print("[bold]Where geotrack's time goes (py-spy, % of each thread's samples)[/]")
        for line in lines:
            console.print(line, markup=False, highlight=False)
