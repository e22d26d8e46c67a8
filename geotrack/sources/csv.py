"""Read CSV: geotrack's own export losslessly, and the CSVs other tools write.

The header names the columns. geotrack's own header (``device,ts,lat,lon,alt,speed,
heading,acc,attrs``, see :mod:`geotrack.export.csv`) reads back exactly. Any other header
is mapped by name (:mod:`geotrack.sources.csv_columns`), case and spaces ignored, units
in brackets dropped:

- latitude: ``lat``, ``latitude``; longitude: ``lon``, ``lng``, ``long``, ``longitude``;
- time: ``time``, ``timestamp``, ``datetime``, ``ts``, ``date_time``, ``utc`` — or a
  ``date`` column and a ``time`` column;
- ``speed`` (m/s, or km/h, mph or knots when the header says so), ``course``/``heading``/
  ``bearing``, ``altitude``/``elevation``/``ele``/``alt``, ``accuracy``/``acc``, and
  ``device``/``device_id``/``name``/``id``/``tracker`` for the device; ``hdop``,
  ``satellites`` and ``battery`` are kept in attrs. Other columns are ignored (a notice
  names them).

Times are Unix seconds or milliseconds (told apart by magnitude: from 1e11 on, a number
is milliseconds), RFC 3339, or local times without an offset, which need a zone
(``ReadOptions.tz``, ``--tz``) unless the time column's header says UTC or GMT. The
delimiter is whichever of ``,`` ``;`` tab ``|`` maps the header; with ``;``, tab or ``|``
a decimal comma is read as a point. A UTF-8 BOM and quoted headers are fine; a file that
is not UTF-8 is read as Windows-1252. Rows are streamed with the csv module; a row that
is not a valid position is a Skipped naming its line.
"""

from __future__ import annotations

import csv
import io
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

import msgspec

from geotrack.errors import GeotrackError, SourceError
from geotrack.export.csv import HEADER
from geotrack.schema import DEVICE_PATTERN, Position, validate
from geotrack.sources.base import Format, Item, ReadOptions, Skipped, open_binary
from geotrack.sources.csv_columns import Columns, columns, other_rows, validated

__all__ = ["FORMAT", "read_csv", "sniff"]

_DELIMITERS: Final = (",", ";", "\t", "|")
_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)
_decode_attrs: Final = msgspec.json.Decoder(
    typing.get_type_hints(Position, include_extras=True)["attrs"]
).decode


def _header(text: str) -> tuple[str, list[str], Columns] | None:
    """The delimiter, the cells and their mapping of a header line that has lat and lon."""
    for delimiter in _DELIMITERS:
        cells = next(csv.reader([text], delimiter=delimiter), [])
        mapped = columns(cells)
        if "lat" in mapped.roles and "lon" in mapped.roles:
            return delimiter, cells, mapped
    return None


def _first_line(head: bytes) -> str:
    text = _decode(head)
    return text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")


def _decode(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:  # a character cut at the end of the sample
            return head[: exc.start].decode("utf-8")
        return head.decode("cp1252", errors="replace")


def _encoding(head: bytes) -> str:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return "cp1252"
    return "utf-8-sig"


def sniff(head: bytes) -> bool:
    """Whether the first line is a header naming a latitude and a longitude column."""
    if b"\0" in head[:4096]:
        return False
    return _header(_first_line(head)) is not None


def read_csv(path: Path, options: ReadOptions) -> Iterator[Item]:
    """Stream the positions of a CSV file (see the module docstring)."""
    where = str(path)
    device = options.device
    if device is not None and not _DEVICE_RE.match(device):
        raise SourceError(where, f"--device {device!r} is not a valid device id")
    try:
        with open_binary(path) as probe:
            head = probe.read(65536)
        binary = open_binary(path)
    except OSError as exc:
        raise SourceError(where, f"cannot read: {exc.strerror or exc}") from None
    text = io.TextIOWrapper(binary, encoding=_encoding(head), newline="", errors="replace")
    with text:
        line = text.readline().rstrip("\r\n")
        found = _header(line)
        if found is None:
            raise SourceError(where, _unmapped(line))
        delimiter, cells, mapped = found
        if [c.strip().lower() for c in cells] == list(HEADER) and delimiter == ",":
            lines = _Lines(text)
            try:
                yield from _own_rows(lines, device)
            except OSError as exc:
                raise SourceError(where, f"cannot read past line {lines.number}: {exc}") from None
            return
        rows = csv.reader(text, delimiter=delimiter)
        try:
            yield from validated(other_rows(rows, mapped, delimiter, options, path))
        except csv.Error as exc:
            raise SourceError(where, f"line {rows.line_num + 1}: {exc}") from None
        except OSError as exc:
            raise SourceError(where, f"cannot read past line {rows.line_num + 1}: {exc}") from None


class _Lines:
    """The rows of geotrack's own CSV, split without the csv module where it can be.

    Rows written by geotrack quote only the attrs cell (and a device id no valid
    position has): a line without quotes is split at its commas, and one whose only
    quoted cell is the last is unquoted here; anything else goes through the csv
    module. ``number`` is the line of the row last given; ``cut`` the number of a last
    line that ends without a newline (0 if none).
    """

    def __init__(self, text: IO[str]) -> None:
        self.text = text
        self.number = 1  # the header's
        self.cut = 0

    def __iter__(self) -> Iterator[list[str]]:
        rest = ""
        reader = csv.reader
        while True:
            # Not larger: a read that fails (damaged gzip) loses what it had decoded.
            block = self.text.read(1 << 16)
            if not block:
                break
            lines = (rest + block).replace("\r\n", "\n").split("\n")
            rest = lines.pop()
            for line in lines:
                self.number += 1
                if '"' not in line:
                    yield line.split(",")
                    continue
                cells = line.split(",", 8)
                last = cells[-1]
                if (
                    len(cells) == 9
                    and last[:1] == '"' == last[-1:]
                    and len(last) > 1
                    and '"' not in line[: len(line) - len(last)]
                ):
                    cells[8] = last[1:-1].replace('""', '"')
                    yield cells
                else:
                    yield next(reader([line]), [])
        if rest.strip():
            self.number += 1
            self.cut = self.number
            yield next(reader([rest]), [])


def _unmapped(line: str) -> str:
    cells = max((next(csv.reader([line], delimiter=d), []) for d in _DELIMITERS), key=len)
    found = ", ".join(repr(c.strip()) for c in cells[:20]) or "none"
    return (
        f"cannot map the CSV columns to positions: found {found}; expected a latitude "
        "(lat, latitude), a longitude (lon, lng, long, longitude) and a time (time, "
        "timestamp, datetime, or date and time)"
    )


def _own_rows(rows: _Lines, device: str | None) -> Iterator[Item]:
    """geotrack's own export: every cell as it was written, checked as the schema checks.

    Positions are built directly (a validated dict per row through msgspec would cost
    twice as much), with the schema's bounds checked here; a row that fails them goes
    through :func:`~geotrack.schema.validate` for the message.
    """
    make = Position
    for cells in rows:
        if len(cells) != 9:
            if any(cells):
                yield _skip(rows, f"expected 9 cells, found {len(cells)}")
            continue
        name, ts, lat_text, lon_text, alt, speed, heading, acc, attrs = cells
        try:
            lat = float(lat_text)
            lon = float(lon_text)
            alt_v = float(alt) if alt else None
            speed_v = float(speed) if speed else None
            heading_v = float(heading) if heading else None
            acc_v = float(acc) if acc else None
            attrs_v = _decode_attrs(attrs) if attrs else None
        except (ValueError, msgspec.DecodeError) as exc:
            yield _skip(rows, _number_reason(exc))
            continue
        if (
            -90.0 <= lat <= 90.0
            and -180.0 <= lon <= 180.0
            and (speed_v is None or speed_v >= 0.0)
            and (heading_v is None or 0.0 <= heading_v < 360.0)
            and (acc_v is None or acc_v >= 0.0)
        ):
            try:
                yield make(
                    device or name,
                    lat,
                    lon,
                    ts,
                    speed_v,
                    heading_v,
                    alt_v,
                    acc_v,
                    attrs_v,
                )
                continue
            except (ValueError, TypeError):
                pass
        row = {"device": device or name, "ts": ts, "lat": lat, "lon": lon}
        for key, value in (
            ("speed", speed_v),
            ("heading", heading_v),
            ("alt", alt_v),
            ("acc", acc_v),
            ("attrs", attrs_v),
        ):
            if value is not None:
                row[key] = value
        try:
            yield validate(row)
        except GeotrackError as exc:
            yield _skip(rows, str(exc))


def _skip(rows: _Lines, reason: str) -> Skipped:
    """A skip of the current row; of a cut last line, whatever failed in it."""
    if rows.cut and rows.cut == rows.number:
        return Skipped("truncated last line", f"line {rows.number}")
    return Skipped(reason, f"line {rows.number}")


def _number_reason(exc: Exception) -> str:
    if isinstance(exc, msgspec.ValidationError):
        return f"attrs: {exc}"
    if isinstance(exc, msgspec.DecodeError):
        return "attrs: not valid JSON"
    return "not a number: " + str(exc).rpartition(": ")[2][:40]


FORMAT: Final = Format(
    name="csv",
    description="CSV with a header: geotrack's own export, or lat/lon/time columns of other tools",
    suffixes=(".csv", ".tsv", ".txt"),
    sniff=sniff,
    read=read_csv,
    gzip=True,
)
