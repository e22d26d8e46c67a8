"""The delivery benchmark's figures as Markdown tables and as an SVG chart.

The chart is SVG text written here (no plotting library): three panels of grouped bars,
one group per mechanism and one bar per workload (watchers x positions/s), on log
scales: latency (bar p50, tick p99), bytes on the wire per delivered position, and the
idle cost of 1,000 watchers.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Final

__all__ = ["markdown", "svg"]

_LABELS: Final = {
    "websocket": "WebSocket",
    "sse": "SSE",
    "long-poll": "long poll",
    "short-poll-1s": "short poll 1 s",
    "short-poll-5s": "short poll 5 s",
}
#: One colour per workload, in the order of :data:`benchmarks.delivery.WORKLOADS`.
_PALETTE: Final = ("#9ecae1", "#4292c6", "#08519c", "#fd8d3c")
_FONT: Final = "font-family='DejaVu Sans, Arial, sans-serif'"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """The delivery table and the idle table."""
    lines = [
        "| workload (watchers x positions/s) | mechanism | delivered/s | p50 ms | p99 ms "
        "| bytes/position | relay CPU µs/position |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['workload']} | {_LABELS[row['mechanism']]} "
            f"| {_num(row['delivered_per_s'])} | {_num(row['p50_ms'], 1)} "
            f"| {_num(row['p99_ms'], 1)} | {_num(row['bytes_per_position'], 1)} "
            f"| {_num(row['cpu_us_per_position'], 1)} |"
        )
    if summary["idle"]:
        lines += [
            "",
            "| mechanism (1,000 idle watchers) | relay CPU % | relay KiB per watcher "
            "| bytes per watcher per minute |",
            "|---|--:|--:|--:|",
        ]
        for row in summary["idle"]:
            lines.append(
                f"| {_LABELS[row['mechanism']]} | {_num(row['cpu_percent'], 1)} "
                f"| {_num(row['kib_per_watcher'], 1)} "
                f"| {_num(row['bytes_per_watcher_minute'])} |"
            )
    if summary.get("short_poll_cost"):
        lines += [
            "",
            "| a short poll when nothing changed | ms (client, p50) | relay CPU ms/request "
            "| bytes/request |",
            "|---|--:|--:|--:|",
        ]
        for row in summary["short_poll_cost"]:
            lines.append(
                f"| {row['variant']} ({row['rows']:,} stored) | {row['ms_p50']:.2f} "
                f"| {row['cpu_ms_per_request']:.2f} | {row['bytes_per_request']:.0f} |"
            )
    return "\n".join(lines)


class _Panel:
    """One panel of grouped bars, on a log scale from ``lo`` to ``hi`` or linear from 0."""

    def __init__(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        lo: float,
        hi: float,
        linear: float | None = None,
    ):
        self.x, self.y, self.width, self.height = x, y, width, height
        #: The step between gridlines of a linear scale (None: log scale).
        self.linear = linear
        if linear is not None:
            self.lo, self.hi = 0.0, math.ceil(hi / linear) * linear
        else:
            self.lo, self.hi = math.log10(lo), math.log10(hi)

    def ypos(self, value: float) -> float:
        if self.linear is not None:
            fraction = max(0.0, value) / self.hi
        else:
            fraction = (math.log10(max(value, 10**self.lo)) - self.lo) / (self.hi - self.lo)
        return self.y + self.height * (1 - fraction)

    def _ticks(self) -> list[tuple[float, str]]:
        if self.linear is not None:
            steps = round(self.hi / self.linear)
            return [(i * self.linear, f"{i * self.linear:,.0f}") for i in range(steps + 1)]
        return [
            (10**e, f"{10**e:,.0f}" if e >= 0 else f"{10**e:g}")
            for e in range(math.ceil(self.lo), math.floor(self.hi) + 1)
        ]

    def axis(self, title: str, unit: str) -> list[str]:
        out = [
            f"<text x='{self.x}' y='{self.y - 14}' font-size='15' font-weight='bold' {_FONT}>"
            f"{escape(title)}</text>",
            f"<text x='{self.x + self.width}' y='{self.y - 14}' font-size='12' "
            f"text-anchor='end' fill='#555' {_FONT}>{escape(unit)}</text>",
        ]
        for value, label in self._ticks():
            y = self.ypos(value)
            out.append(
                f"<line x1='{self.x}' x2='{self.x + self.width}' y1='{y:.1f}' y2='{y:.1f}' "
                "stroke='#ddd'/>"
            )
            out.append(
                f"<text x='{self.x - 6}' y='{y + 4:.1f}' font-size='11' text-anchor='end' "
                f"fill='#555' {_FONT}>{label}</text>"
            )
        out.append(
            f"<line x1='{self.x}' x2='{self.x + self.width}' y1='{self.y + self.height}' "
            f"y2='{self.y + self.height}' stroke='#333'/>"
        )
        return out

    def groups(
        self,
        mechanisms: list[str],
        values: dict[tuple[str, str], tuple[float | None, float | None]],
        series: dict[str, str],
        digits: int,
    ) -> list[str]:
        """Bars of ``values[(mechanism, series)] = (bar, tick)``; ``series`` maps to colours."""
        counts = list(series)
        out = []
        slot = self.width / len(mechanisms)
        bar = min(26.0, slot * 0.8 / max(1, len(counts)))
        for i, mechanism in enumerate(mechanisms):
            left = self.x + i * slot + (slot - bar * len(counts)) / 2
            for j, count in enumerate(counts):
                value, tick = values.get((mechanism, count), (None, None))
                if value is None:
                    continue
                x = left + j * bar
                top = self.ypos(value)
                base = self.y + self.height
                out.append(
                    f"<rect x='{x:.1f}' y='{top:.1f}' width='{bar - 2:.1f}' "
                    f"height='{max(0.5, base - top):.1f}' fill='{series[count]}'>"
                    f"<title>{escape(_LABELS[mechanism])}, {escape(count)}: {value:,.{digits}f}"
                    "</title></rect>"
                )
                out.append(
                    f"<text x='{x + bar / 2 - 1:.1f}' y='{top - 3:.1f}' font-size='9' "
                    f"text-anchor='middle' fill='#222' {_FONT}>{_short(value)}</text>"
                )
                if tick is not None:
                    ty = self.ypos(tick)
                    out.append(
                        f"<line x1='{x:.1f}' x2='{x + bar - 2:.1f}' y1='{ty:.1f}' y2='{ty:.1f}' "
                        "stroke='#d62728' stroke-width='2'/>"
                    )
            out.append(
                f"<text x='{self.x + i * slot + slot / 2:.1f}' y='{self.y + self.height + 16}' "
                f"font-size='12' text-anchor='middle' {_FONT}>{escape(_LABELS[mechanism])}</text>"
            )
        return out


def _short(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _bounds(values: list[float]) -> tuple[float, float]:
    present = [v for v in values if v > 0]
    if not present:
        return 0.1, 10.0
    return 10 ** math.floor(math.log10(min(present))), 10 ** math.ceil(math.log10(max(present)))


def svg(summary: dict[str, Any]) -> str:
    """The chart: latency, bytes per position, and idle cost, by mechanism."""
    rows = summary["rows"]
    mechanisms = [m for m in _LABELS if any(r["mechanism"] == m for r in rows)]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    series = dict(zip(workloads, _PALETTE, strict=False))
    width, panel_w, panel_h = 980, 860, 230
    latency = {(r["mechanism"], r["workload"]): (r["p50_ms"], r["p99_ms"]) for r in rows}
    per_byte = {(r["mechanism"], r["workload"]): (r["bytes_per_position"], None) for r in rows}
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{3 * panel_h + 345}' "
        f"viewBox='0 0 {width} {3 * panel_h + 345}'>",
        f"<rect width='{width}' height='{3 * panel_h + 345}' fill='white'/>",
        f"<text x='20' y='28' font-size='18' font-weight='bold' {_FONT}>What a watcher pays "
        "to stay current: geotrack's delivery mechanisms side by side</text>",
    ]
    legend_x = 20
    for name, colour in series.items():
        out.append(f"<rect x='{legend_x}' y='44' width='14' height='14' fill='{colour}'/>")
        out.append(f"<text x='{legend_x + 20}' y='56' font-size='12' {_FONT}>{escape(name)}</text>")
        legend_x += 140
    out.append(
        f"<line x1='{legend_x}' x2='{legend_x + 14}' y1='51' y2='51' stroke='#d62728' "
        "stroke-width='2'/>"
        f"<text x='{legend_x + 20}' y='56' font-size='12' {_FONT}>p99 (bars: p50)</text>"
    )
    lo, hi = _bounds([v for pair in latency.values() for v in pair if v is not None])
    top = _Panel(90, 100, panel_w, panel_h, lo, hi)
    out += top.axis("Publish → watcher latency", "milliseconds, log scale")
    out += top.groups(mechanisms, latency, series, 1)
    top_bytes = max((v for v, _ in per_byte.values() if v is not None), default=100.0)
    middle = _Panel(90, 100 + panel_h + 90, panel_w, panel_h, 0, top_bytes, linear=100)
    out += middle.axis(
        "Bytes on the wire per delivered position (both directions, headers included)",
        "bytes",
    )
    out += middle.groups(mechanisms, per_byte, series, 1)
    idle = {
        (r["mechanism"], "idle"): (r["bytes_per_watcher_minute"], None) for r in summary["idle"]
    }
    if idle:
        lo, hi = _bounds([v for v, _ in idle.values() if v is not None])
        bottom = _Panel(90, 100 + 2 * (panel_h + 90), panel_w, panel_h, lo, hi)
        out += bottom.axis(
            "Idle: bytes per watcher per minute with nothing to deliver (1,000 watchers)",
            "bytes, log scale",
        )
        out += bottom.groups(mechanisms, idle, {"idle": "#969696"}, 0)
        for i, row in enumerate(
            r for m in mechanisms for r in summary["idle"] if r["mechanism"] == m
        ):
            slot = panel_w / len(mechanisms)
            out.append(
                f"<text x='{90 + i * slot + slot / 2:.1f}' y='{bottom.y + panel_h + 32}' "
                f"font-size='11' text-anchor='middle' fill='#555' {_FONT}>relay CPU "
                f"{row['cpu_percent']:.1f} %</text>"
                f"<text x='{90 + i * slot + slot / 2:.1f}' y='{bottom.y + panel_h + 46}' "
                f"font-size='11' text-anchor='middle' fill='#555' {_FONT}>"
                f"{row['kib_per_watcher']:.1f} KiB each</text>"
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"
