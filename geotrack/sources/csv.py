"""Read CSV: geotrack's own export losslessly, and the CSVs other tools write.

The header names the columns. geotrack's own header (``device,ts,lat,lon,alt,speed,
heading,acc,attrs``, see :mod:`geotrack.export.csv`) reads back exactly. Any other header
is mapped by name, case and spaces ignored, units in brackets dropped:

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
import math
import re
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import IO, Any, Final

import msgspec

from geotrack.errors import GeotrackError, SourceError
from geotrack.export.csv import HEADER
from geotrack.schema import DEVICE_PATTERN, Position, ms_to_ts, parse_ts, ts_to_ms, validate
from geotrack.sources.base import (
    Format,
    Item,
    Notice,
    ReadOptions,
    Skipped,
    haversine_m,
    open_binary,
)

__all__ = ["FORMAT", "columns", "read_csv", "sniff"]

_DELIMITERS: Final = (",", ";", "\t", "|")
# Rows validated in one call into msgspec; only a batch with a bad row goes row by row.
_BATCH: Final = 2000
_NAMES: Final[dict[str, str]] = {
    **dict.fromkeys(("lat", "latitude"), "lat"),
    **dict.fromkeys(("lon", "lng", "long", "longitude"), "lon"),
    **dict.fromkeys(
        ("time", "timestamp", "datetime", "date_time", "ts", "utc", "time_utc", "gps_time"),
        "time",
    ),
    "date": "date",
    **dict.fromkeys(("speed", "velocity"), "speed"),
    **dict.fromkeys(("course", "heading", "bearing", "direction"), "heading"),
    **dict.fromkeys(("altitude", "elevation", "ele", "alt"), "alt"),
    **dict.fromkeys(("accuracy", "acc", "horizontal_accuracy"), "acc"),
    **dict.fromkeys(("device", "device_id", "name", "id", "tracker", "tid"), "device"),
    **dict.fromkeys(("hdop", "satellites", "sats", "battery"), "attr"),
}
_SPEED_UNITS: Final = (("km/h", 1 / 3.6), ("kmh", 1 / 3.6), ("kph", 1 / 3.6), ("mph", 0.44704))
_KNOTS: Final = re.compile(r"\b(knots?|kn|kts)\b")
_BRACKETS: Final = re.compile(r"[(\[].*?[)\]]")
_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_OFFSET: Final = re.compile(r"(?:[Zz]|[+-]\d\d:?\d\d)\Z")
_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)
_NOT_IN_DEVICE: Final = re.compile(r"[^A-Za-z0-9._:-]+")
_decode_attrs: Final = msgspec.json.Decoder(
    typing.get_type_hints(Position, include_extras=True)["attrs"]
).decode


class _Columns(msgspec.Struct):
    """Which cell holds what: role -> column index, and the names of the ones ignored."""

    roles: dict[str, int]
    attrs: dict[str, int]
    ignored: list[str]
    speed_factor: float = 1.0
    #: The time column's header says UTC (``Time (UTC)``, ``gmt_time``): times without
    #: an offset are UTC, not local.
    utc: bool = False


def _normalize(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", _BRACKETS.sub("", name).strip().lower()).strip("_")


def columns(header: list[str]) -> _Columns:
    """Map a header's cells to position fields (see the module docstring)."""
    roles: dict[str, int] = {}
    attrs: dict[str, int] = {}
    ignored: list[str] = []
    factor = 1.0
    for i, cell in enumerate(header):
        key = _normalize(cell)
        role = _NAMES.get(key)
        if role is None:
            # "speed_kmh", "speed_km/h": a speed with its unit in the name.
            if key.startswith("speed"):
                role = "speed"
            elif key.endswith(("_lat", "_latitude")):
                role = "lat"
            elif key.endswith(("_lon", "_lng", "_longitude")):
                role = "lon"
        if role == "attr":
            attrs[key] = i
        elif role is None or role in roles:
            ignored.append(cell.strip() or f"column {i + 1}")
        else:
            roles[role] = i
            if role == "speed":
                lowered = cell.lower()
                for unit, value in _SPEED_UNITS:
                    if unit in lowered:
                        factor = value
                if _KNOTS.search(lowered):
                    factor = 0.514444
    utc = any(
        re.search(r"\b(utc|gmt)\b", header[roles[role]].lower().replace("_", " "))
        for role in ("time", "date")
        if role in roles
    )
    return _Columns(roles, attrs, ignored, factor, utc)


def _header(text: str) -> tuple[str, list[str], _Columns] | None:
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
            yield from _validated(_other_rows(rows, mapped, delimiter, options, path), path)
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


# What the row converters give: a dict for msgspec to validate, or a Skipped or Notice.
_Row = dict[str, Any] | Skipped | Notice


def _validated(rows: Iterator[tuple[int, _Row]], path: Path) -> Iterator[Item]:
    """Validate the dicts in batches, keeping their order among the skips and notices."""
    batch: list[dict[str, Any]] = []
    lines: list[int] = []
    for line, row in rows:
        if isinstance(row, dict):
            batch.append(row)
            lines.append(line)
            if len(batch) >= _BATCH:
                yield from _convert(batch, lines)
                batch, lines = [], []
        else:
            if batch:
                yield from _convert(batch, lines)
                batch, lines = [], []
            yield row
    if batch:
        yield from _convert(batch, lines)


def _convert(batch: list[dict[str, Any]], lines: list[int]) -> list[Item]:
    try:
        return list(msgspec.convert(batch, list[Position], strict=True))
    except (msgspec.ValidationError, ValueError):
        pass
    items: list[Item] = []
    for row, line in zip(batch, lines, strict=True):
        try:
            items.append(validate(row))
        except GeotrackError as exc:
            items.append(Skipped(str(exc), f"line {line}"))
    return items


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


class _Clock:
    """Times made from distance at a speed, per device (``--retime``)."""

    def __init__(self, kmh: float) -> None:
        self.mps = kmh / 3.6
        self.last: dict[str, tuple[float, float, float]] = {}

    def ms(self, device: str, lat: float, lon: float, first_ms: int | None) -> int:
        last = self.last.get(device)
        if last is None:
            t = float(first_ms or 0)
        else:
            t = last[2] + haversine_m(last[0], last[1], lat, lon) / self.mps * 1000
        self.last[device] = (lat, lon, t)
        return round(t)


def _other_rows(
    rows: Any, mapped: _Columns, delimiter: str, options: ReadOptions, path: Path
) -> Iterator[tuple[int, _Row]]:
    """Any other tool's CSV, through the header's mapping."""
    roles = mapped.roles
    has_time = "time" in roles or "date" in roles
    kmh = options.retime_kmh
    if not has_time and kmh is None:
        raise SourceError(
            str(path),
            "the CSV has no time column (time, timestamp, datetime, or date and time): "
            "give --retime KMH to make times from the distances (and --start to place them)",
        )
    if mapped.ignored:
        yield 1, Notice(f"columns not imported: {', '.join(mapped.ignored[:10])}")
    clock = _Clock(kmh) if kmh is not None else None
    if clock is not None and not has_time:
        yield (
            1,
            Notice(
                f"times made from distance at {kmh:g} km/h from 1970-01-01 "
                "(use --start to place them)"
            ),
        )
    comma = delimiter != ","
    lat_i, lon_i = roles["lat"], roles["lon"]
    time_i, date_i = roles.get("time"), roles.get("date")
    fields = [(name, roles[name]) for name in ("speed", "heading", "alt", "acc") if name in roles]
    device_i = roles.get("device")
    fallback = options.device or _device_id(path.name.split(".", 1)[0])
    devices: dict[str, str] = {}
    tz = options.tz or (UTC if mapped.utc else None)
    factor = mapped.speed_factor
    for cells in rows:
        line = rows.line_num + 1  # the header was read before the csv reader
        if not any(c.strip() for c in cells):
            continue
        try:
            lat = _number(cells[lat_i], comma)
            lon = _number(cells[lon_i], comma)
            if options.device is None and device_i is not None and cells[device_i].strip():
                name = cells[device_i]
                device = devices.get(name) or devices.setdefault(name, _device_id(name))
            else:
                device = fallback
            first_ms = None
            ts: str | None = None
            if has_time:
                ts = _time(cells, time_i, date_i, tz)
            if clock is not None:
                if ts is not None and device not in clock.last:
                    first_ms = ts_to_ms(ts)
                ts = ms_to_ts(clock.ms(device, lat, lon, first_ms))
            row: dict[str, Any] = {"device": device, "ts": ts, "lat": lat, "lon": lon}
            for name, i in fields:
                cell = cells[i].strip()
                if cell:
                    value = _number(cell, comma)
                    if name == "speed":
                        value *= factor
                    elif name == "heading":
                        value %= 360.0
                    row[name] = value
            if mapped.attrs:
                attrs = {k: _attr(cells[i], comma) for k, i in mapped.attrs.items() if cells[i]}
                if attrs:
                    row["attrs"] = attrs
        except IndexError:
            yield line, Skipped("too few cells", f"line {line}")
            continue
        except ValueError as exc:
            yield line, Skipped(str(exc), f"line {line}")
            continue
        yield line, row


def _number(cell: str, comma: bool) -> float:
    text = cell.strip()
    if comma:
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {cell.strip()[:40]!r}" if text else "empty cell") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {cell.strip()[:40]!r}")
    return value


def _attr(cell: str, comma: bool) -> str | float:
    try:
        return _number(cell, comma)
    except ValueError:
        return cell.strip()[:1024]


def _time(cells: list[str], time_i: int | None, date_i: int | None, tz: tzinfo | None) -> str:
    """The canonical ts of a row's time cell (or date and time cells)."""
    text = cells[time_i].strip() if time_i is not None else ""
    if date_i is not None:
        day = cells[date_i].strip()
        if not day:
            raise ValueError("no date")
        text = f"{day}T{text}" if text else day
    if not text:
        raise ValueError("no time")
    if _NUMBER.match(text):
        value = float(text)
        # 1e11 seconds is the year 5138, 1e11 ms is 1973: a larger number is ms.
        return parse_ts(value / 1000 if abs(value) >= 1e11 else value)
    if re.match(r"\d{4}/\d\d/\d\d", text):
        text = text[:10].replace("/", "-") + text[10:]
    if _OFFSET.search(text):
        if text[-5] in "+-" and text[-3] != ":":  # +0200: RFC 3339 wants +02:00
            text = f"{text[:-2]}:{text[-2:]}"
        try:
            return parse_ts(text)
        except ValueError:
            pass
        try:
            return _from_datetime(datetime.fromisoformat(text))
        except ValueError:
            raise ValueError(f"not a time: {text[:40]!r}") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text[:40]!r}") from None
    if tz is None:
        raise ValueError("local time without a zone (give --tz)")
    return _from_datetime(moment.replace(tzinfo=tz))


def _from_datetime(moment: datetime) -> str:
    return parse_ts(moment.timestamp())


def _device_id(name: str) -> str:
    """A valid device id made of a name: other characters become ``-``."""
    if _DEVICE_RE.match(name):
        return name
    return _NOT_IN_DEVICE.sub("-", name.strip()).strip("-")[:64] or "device"


FORMAT: Final = Format(
    name="csv",
    description="CSV with a header: geotrack's own export, or lat/lon/time columns of other tools",
    suffixes=(".csv", ".tsv", ".txt"),
    sniff=sniff,
    read=read_csv,
    gzip=True,
)
