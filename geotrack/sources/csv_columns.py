"""The CSVs other tools write: mapping a header's columns and converting their cells.

:func:`columns` maps a header row to position fields by name (see
:mod:`geotrack.sources.csv` for the names, the time forms and the delimiters);
:func:`other_rows` turns the rows under it into dicts for the schema to validate, and
:func:`validated` validates them in batches, a row that fails becoming a Skipped naming
its line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Final

import msgspec

from geotrack.errors import GeotrackError, SourceError
from geotrack.schema import DEVICE_PATTERN, Position, ms_to_ts, parse_ts, ts_to_ms, validate
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped, haversine_m

__all__ = ["Columns", "Row", "columns", "device_id", "other_rows", "validated"]

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


class Columns(msgspec.Struct):
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


def columns(header: list[str]) -> Columns:
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
    return Columns(roles, attrs, ignored, factor, utc)


#: What the row converters give: a dict for msgspec to validate, or a Skipped or Notice.
Row = dict[str, Any] | Skipped | Notice


def validated(rows: Iterator[tuple[int, Row]]) -> Iterator[Item]:
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


def other_rows(
    rows: Any, mapped: Columns, delimiter: str, options: ReadOptions, path: Path
) -> Iterator[tuple[int, Row]]:
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
    fallback = options.device or device_id(path.name.split(".", 1)[0])
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
                device = devices.get(name) or devices.setdefault(name, device_id(name))
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
                # Some tools leave out the empty cells at the end of a row.
                cell = cells[i].strip() if i < len(cells) else ""
                if cell:
                    value = _number(cell, comma)
                    if name == "speed":
                        value *= factor
                    elif name == "heading":
                        value %= 360.0
                    row[name] = value
            if mapped.attrs:
                attrs = {
                    k: _attr(cells[i], comma)
                    for k, i in mapped.attrs.items()
                    if i < len(cells) and cells[i].strip()
                }
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


def device_id(name: str) -> str:
    """A valid device id made of a name: other characters become ``-``."""
    if _DEVICE_RE.match(name):
        return name
    return _NOT_IN_DEVICE.sub("-", name.strip()).strip("-")[:64] or "device"
