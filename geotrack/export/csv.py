"""CSV export: one row per position under a fixed header."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

import msgspec

from geotrack.schema import Position

__all__ = ["HEADER", "write_csv"]

HEADER: Final = ("device", "ts", "lat", "lon", "alt", "speed", "heading", "acc", "attrs")

_encode: Final = msgspec.json.Encoder().encode


def write_csv(positions: Iterable[Position], out: TextIO) -> int:
    """Write a header row, then one row per position; returns the number of rows.

    The csv module's default dialect applies: minimal quoting and ``\\r\\n`` line ends
    (open a file with ``newline=""``). Numbers are written at full (``repr``) precision,
    an absent field is an empty cell, and ``attrs`` is a compact JSON object (``{}``
    stays ``{}``, so an empty cell means no attrs at all).
    """
    count = 0

    def rows() -> Iterator[tuple[object, ...]]:
        nonlocal count
        for p in positions:
            count += 1
            attrs = "" if p.attrs is None else _encode(p.attrs).decode()
            yield (p.device, p.time, p.lat, p.lon, p.alt, p.speed, p.heading, p.acc, attrs)

    writer = csv.writer(out)
    writer.writerow(HEADER)
    writer.writerows(rows())
    return count
