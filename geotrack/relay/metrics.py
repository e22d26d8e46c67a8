"""Measurements the relay keeps for operators (exposed by the HTTP listener's /metrics)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Family", "Histogram", "exposition"]

#: Upper bounds, seconds, of the ack-latency histogram buckets (Prometheus ``le``).
ACK_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class Histogram:
    """A cumulative-on-export histogram: counts per bucket, their sum and total."""

    bounds: tuple[float, ...] = ACK_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(``le`` label, cumulative count) pairs, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Family:
    """One metric family of the Prometheus text format 0.0.4, built sample by sample.

    ``name`` is the full name (counters end in ``_total``); a histogram's samples carry
    their suffix (``_bucket``, ``_sum``, ``_count``).
    """

    name: str
    type: str
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        """Add one sample."""
        self.samples.append((suffix, tuple(labels.items()), value))

    def add_histogram(self, histogram: Histogram, **labels: str) -> None:
        """Add the samples of a histogram: cumulative ``_bucket``s, ``_sum``, ``_count``."""
        for le, count in histogram.cumulative():
            self.add(count, "_bucket", **labels, le=le)
        self.add(histogram.sum, "_sum", **labels)
        self.add(histogram.total, "_count", **labels)


def exposition(families: list[Family]) -> str:
    """The Prometheus text format (version 0.0.4) of the families, ending with a newline."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for suffix, labels, value in family.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            selector = f"{{{text}}}" if labels else ""
            lines.append(f"{family.name}{suffix}{selector} {_value(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
