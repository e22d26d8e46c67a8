"""Read newline-delimited JSON: one wire-format position per line (what export writes).

geotrack's own NDJSON export reads back losslessly: each line is decoded straight into a
:class:`~geotrack.schema.Position` by msgspec, with the same validation as a position on
the wire. Lines are decoded a block at a time (a block's complete lines as one JSON
array, one call into msgspec); only a block with a bad line is decoded line by line, to
find which line and why. A line that is not a valid position is a Skipped naming its
line number; a last line cut short (no newline, not valid JSON) is ``truncated last
line``; blank lines are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from geotrack.errors import GeotrackError, SourceError
from geotrack.schema import DEVICE_PATTERN, Position, validate
from geotrack.sources.base import (
    Format,
    Item,
    ReadOptions,
    Skipped,
    blocks,
    open_binary,
    retime,
)

__all__ = ["FORMAT", "read_ndjson", "sniff"]

# Bytes read at a time: a block's lines are decoded in one call.
_BLOCK: Final = 1 << 20
_decode_block: Final = msgspec.json.Decoder(list[Position]).decode
_decode_any: Final = msgspec.json.Decoder().decode
_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)
_BOM: Final = b"\xef\xbb\xbf"
_NOT_IN_DEVICE: Final = re.compile(r"[^A-Za-z0-9._:-]+")


def sniff(head: bytes) -> bool:
    """Whether the first non-blank line is a JSON object with ``lat``, ``lon`` and ``ts``."""
    for raw in head.removeprefix(_BOM).splitlines()[:50]:
        line = raw.strip()
        if not line:
            continue
        if not line.startswith(b"{"):
            return False
        try:
            obj = _decode_any(line)
        except (msgspec.DecodeError, RecursionError):
            return False
        return isinstance(obj, dict) and {"lat", "lon", "ts"} <= obj.keys()
    return False


def read_ndjson(path: Path, options: ReadOptions) -> Iterator[Item]:
    """Stream the positions of an NDJSON file (see the module docstring).

    With ``retime_kmh``, each device's times after its first are made from distances.
    """
    items = _read(path, options)
    if options.retime_kmh is not None:
        return retime(items, options.retime_kmh)
    return items


def _read(path: Path, options: ReadOptions) -> Iterator[Item]:
    device = options.device
    if device is not None and not _DEVICE_RE.match(device):
        raise SourceError(str(path), f"--device {device!r} is not a valid device id")
    fallback = device or _device_from_name(path)
    try:
        f = open_binary(path)
    except OSError as exc:
        raise SourceError(str(path), f"cannot read: {exc.strerror or exc}") from None
    with f:
        rest = b""
        line_no = 1  # the number of the first line in `rest`
        chunks = blocks(f, _BLOCK)
        while True:
            try:
                chunk = next(chunks, b"")
            except (OSError, EOFError) as exc:
                # A damaged gzip stream or a failing disk: what came before is kept.
                raise SourceError(str(path), f"cannot read past line {line_no}: {exc}") from None
            if not chunk:
                break
            data = rest + chunk
            if line_no == 1 and not rest:
                data = data.removeprefix(_BOM)  # written by some Windows tools
            end = data.rfind(b"\n")
            if end < 0:
                rest = data
                continue
            block, rest = data[: end + 1], data[end + 1 :]
            yield from _block(block, line_no, device, fallback)
            line_no += block.count(b"\n")
        if rest.strip():
            items = list(_lines([rest], line_no, device, fallback))
            if isinstance(items[0], Skipped) and _cut_short(rest):
                yield Skipped("truncated last line", f"line {line_no}")
            else:
                yield from items


def _block(block: bytes, first: int, device: str | None, fallback: str) -> Iterator[Item]:
    """The items of a run of complete lines, ``first`` being the number of the first."""
    lines = block.split(b"\n")
    lines.pop()  # after the last newline
    try:
        positions = _decode_block(b"[" + b",".join(lines) + b"]")
    except (msgspec.DecodeError, RecursionError):
        # A bad or blank line somewhere: find it, and keep every good line around it.
        yield from _lines(lines, first, device, fallback)
        return
    if device is not None:
        replace = msgspec.structs.replace
        positions = [replace(p, device=device) for p in positions]
    yield from positions


def _lines(lines: list[bytes], first: int, device: str | None, fallback: str) -> Iterator[Item]:
    """Decode line by line, so a bad line costs only itself."""
    for number, line in enumerate(lines, first):
        if not line.strip():
            continue
        try:
            obj = _decode_any(line)
        except (msgspec.DecodeError, RecursionError) as exc:
            yield Skipped(_json_reason(exc), f"line {number}")
            continue
        yield _position(obj, number, device, fallback)


def _position(obj: Any, number: int, device: str | None, fallback: str) -> Item:
    if not isinstance(obj, dict):
        return Skipped("not a JSON object", f"line {number}")
    if device is not None or "device" not in obj:
        obj["device"] = device or fallback
    try:
        return validate(obj)
    except GeotrackError as exc:
        return Skipped(str(exc), f"line {number}")


def _json_reason(exc: Exception) -> str:
    text = str(exc)
    return "not valid JSON" if "JSON" in text or "truncated" in text else f"not valid JSON: {text}"


def _cut_short(line: bytes) -> bool:
    """Whether a last line without a newline is JSON cut off (not merely invalid)."""
    try:
        _decode_any(line)
    except msgspec.DecodeError as exc:
        return "truncated" in str(exc)
    return False


def _device_from_name(path: Path) -> str:
    """A device id from a file name, for lines that name no device."""
    stem = path.name.split(".", 1)[0]
    return _NOT_IN_DEVICE.sub("-", stem).strip("-")[:64] or "device"


FORMAT: Final = Format(
    name="ndjson",
    description="newline-delimited JSON, one position per line (geotrack export --format ndjson)",
    suffixes=(".ndjson", ".jsonl"),
    sniff=sniff,
    read=read_ndjson,
    gzip=True,
)
