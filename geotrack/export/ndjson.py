"""Newline-delimited JSON export: one wire-format position per line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TextIO

from geotrack.schema import Position, encode_position

__all__ = ["write_lines", "write_ndjson"]

# Lines are joined in batches: one write per position costs more than the encoding.
_BATCH: Final = 1024


def write_ndjson(positions: Iterable[Position], out: TextIO) -> int:
    """Write each position as its wire form (``encode_position``) on a line of its own.

    Every line, the last one included, ends with ``\\n``; no input writes nothing.
    """
    return write_lines(map(encode_position, positions), out)


def write_lines(encoded: Iterable[bytes], out: TextIO) -> int:
    """Write each JSON document on a line of its own, in batches; return how many."""
    count = 0
    batch: list[bytes] = []
    for line in encoded:
        batch.append(line)
        if len(batch) >= _BATCH:
            count += _flush(batch, out)
    return count + _flush(batch, out)


def _flush(batch: list[bytes], out: TextIO) -> int:
    n = len(batch)
    if n:
        batch.append(b"")
        out.write(b"\n".join(batch).decode())
        batch.clear()
    return n
