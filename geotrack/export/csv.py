"""CSV export: one row per position under a fixed header."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Final, TextIO

import msgspec

from geotrack.schema import Position

__all__ = ["HEADER", "write_csv"]

HEADER: Final = ("device", "ts", "lat", "lon", "alt", "speed", "heading", "acc", "attrs")

_encode: Final = msgspec.json.Encoder().encode
# Rows are joined in batches: one write per row costs more than formatting it.
_BATCH: Final = 1024
# Text the csv module writes as it is: nothing to quote in it.
_PLAIN: Final = re.compile(r"[^,\"\r\n]*\Z")


def write_csv(positions: Iterable[Position], out: TextIO) -> int:
    """Write a header row, then one row per position; returns the number of rows.

    The csv module's default dialect applies: minimal quoting and ``\\r\\n`` line ends
    (open a file with ``newline=""``). Numbers are written at full (``repr``) precision,
    an absent field is an empty cell, and ``attrs`` is a compact JSON object (``{}``
    stays ``{}``, so an empty cell means no attrs at all).
    """
    # Rows are formatted here, in batches of one device, byte for byte as csv.writer would
    # write them: see _cells for ts and the numbers; a device name needs quotes only in a
    # Position built without validation.
    out.write(_cell_text(HEADER))
    count = 0
    cells: list[tuple[str | float | None, ...]] = []
    # What follows a row's cells: its attrs, the line end, the next row's device cell.
    tails: list[str] = []
    device: str | None = None
    name = plain_tail = empty_tail = next_line = ""
    for p in positions:
        if p.device != device:
            count += _flush(name, cells, tails, out)
            device = p.device
            name = device if _PLAIN.match(device) else _cell_text((device,))[:-2]
            next_line = f"\r\n{name},"
            plain_tail = "," + next_line
            empty_tail = ",{}" + next_line
        ts = p.ts
        if ts.__class__ is not str:  # only if set to a number after construction
            ts = p.time
        cells.append((ts, p.lat, p.lon, p.alt, p.speed, p.heading, p.acc))
        attrs = p.attrs
        if attrs is None:
            tails.append(plain_tail)
        elif attrs:
            # A JSON object with a key has quotes: quoted, its quotes doubled.
            tails.append(',"' + _encode(attrs).decode().replace('"', '""') + '"' + next_line)
        else:
            tails.append(empty_tail)
        if len(cells) >= _BATCH:
            count += _flush(name, cells, tails, out)
    return count + _flush(name, cells, tails, out)


def _flush(
    name: str, cells: list[tuple[str | float | None, ...]], tails: list[str], out: TextIO
) -> int:
    """Write the rows of one device gathered so far; how many."""
    n = len(cells)
    if n:
        text = "".join(map(str.__add__, _cells(cells), tails))
        out.write(f"{name},{text[: -len(name) - 1]}")
        cells.clear()
        tails.clear()
    return n


def _cells(rows: list[tuple[str | float | None, ...]]) -> list[str]:
    """Each row's ts and numbers as csv.writer writes them: ``repr``, None as empty.

    msgspec encodes a float with the same shortest round-trip digits as ``repr``, and much
    faster; the two differ only where ``repr`` uses an exponent (below 1e-4 or from 1e16
    on), and there msgspec's text has an ``e`` or a ``0.0000`` (a canonical ts has
    neither): such rows take ``repr``. A canonical ts needs no escaping in JSON.
    """
    text = _encode(rows).replace(b"null", b"").replace(b'"', b"").decode()
    cells = text[2:-2].split("],[")
    if "e" in text or "0.0000" in text:
        for i, cell in enumerate(cells):
            if "e" in cell or "0.0000" in cell:
                ts, *numbers = rows[i]
                cells[i] = ",".join([str(ts), *("" if x is None else repr(x) for x in numbers)])
    return cells


def _cell_text(cells: tuple[object, ...]) -> str:
    """What csv.writer writes for one row of ``cells``, line end included."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue()
