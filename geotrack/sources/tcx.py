"""Read Garmin Training Center (TCX) files: activities and courses, one track each.

Every ``<Trackpoint>`` with a ``<Position>`` of an ``<Activity>`` (all its laps) or a
``<Course>`` becomes a position: ``Time``, ``LatitudeDegrees``/``LongitudeDegrees``,
``AltitudeMeters`` as ``alt``, and, under the names GPX's Garmin extension gives them,
``HeartRateBpm`` as ``attrs["hr"]``, ``Cadence`` (or the extension's ``RunCadence``) as
``attrs["cad"]``, the extension's ``Watts`` as ``attrs["power"]`` and its ``Speed`` (m/s)
as ``speed``. Trackpoints without a position (sensor readings during a pause, indoor
rides) are counted in a notice, not refused.

Device ids: ``--device`` (a second activity ``DEVICE-2``...), else the course's name made
a valid id, else the file's stem, made unique with ``-2``, ``-3``. A course's name is kept
in ``attrs["track"]``. Times are handled as for GPX (:mod:`geotrack.sources.timing`); an
untimed course is walked from the activity's ``<Id>`` time or the file's earliest time or
modification time. Streams: memory holds one activity.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from geotrack._text import plural
from geotrack.errors import SourceError
from geotrack.sources.base import Format, Item, Notice, ReadOptions, open_binary
from geotrack.sources.timing import RawPoint, file_anchor, place_track
from geotrack.sources.xmlstream import XmlBroken, events, parse_xml_time

__all__ = ["FORMAT", "read"]

_TCX_ROOT_RE: Final = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?TrainingCenterDatabase[\s>/]")
_NOT_IN_DEVICE_ID: Final = re.compile(r"[^A-Za-z0-9._:-]+")
_TRACKS: Final = frozenset({"Activity", "Course"})
# Leaf elements of a Trackpoint whose text is read, and the field or attr each becomes.
_LEAVES: Final = {
    "Time": "time",
    "LatitudeDegrees": "lat",
    "LongitudeDegrees": "lon",
    "AltitudeMeters": "alt",
    "Speed": "speed",
    "Watts": "power",
    "Cadence": "cad",
    "RunCadence": "cad",
}


def _sniff(head: bytes) -> bool:
    return _TCX_ROOT_RE.search(head) is not None


def read(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The items of a TCX file (the :class:`~geotrack.sources.base.Format` reader)."""
    reader = _Reader(path, options)
    try:
        with open_binary(path) as stream:
            yield from reader.walk(events(stream))
    except OSError as exc:
        raise SourceError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except XmlBroken as exc:
        yield from reader.flush()
        if exc.reason.startswith("declares"):
            raise SourceError(str(path), f"refused: it {exc.reason}") from None
        where = f" at line {exc.line}, column {exc.column}" if exc.line else ""
        raise SourceError(str(path), f"truncated or broken{where}: {exc.reason}") from None
    if reader.sensor_only:
        yield Notice(
            f"{plural(reader.sensor_only, 'trackpoint')} without a position skipped "
            "(sensor readings only)"
        )


FORMAT: Final = Format(
    name="tcx",
    description="Garmin Training Center: activities and courses, heart rate and cadence",
    suffixes=(".tcx",),
    sniff=_sniff,
    read=read,
    gzip=True,
)


class _Reader:
    """The walk over a TCX file's events: an activity or course at a time."""

    def __init__(self, path: Path, options: ReadOptions) -> None:
        self.path = path
        self.options = options
        self.used: set[str] = set()
        self.count = 0
        self.sensor_only = 0
        self.earliest: int | None = None
        self.start_ms: int | None = None
        self.name: str | None = None
        self.points: list[RawPoint] = []

    def walk(self, stream: Iterator[tuple[str, str, object]]) -> Iterator[Item]:
        stack: list[str] = []
        text: list[str] = []
        point: dict[str, str] | None = None
        for kind, name, value in stream:
            if kind == "text":
                text.append(str(value))
                continue
            if kind == "start":
                if not stack and name != "TrainingCenterDatabase":
                    raise SourceError(
                        str(self.path),
                        f"not a TCX file: its root element is <{name}>, "
                        "not <TrainingCenterDatabase>",
                    )
                stack.append(name)
                text.clear()
                if name in _TRACKS:
                    self.points, self.name, self.start_ms = [], None, None
                elif name == "Trackpoint":
                    point = {}
                continue
            content = "".join(text).strip()
            text.clear()
            stack.pop()
            parent = stack[-1] if stack else ""
            if point is not None and name in _LEAVES:
                point[_LEAVES[name]] = content
            elif point is not None and name == "Value" and parent == "HeartRateBpm":
                point["hr"] = content
            elif name == "Trackpoint" and point is not None:
                self._point(point)
                point = None
            elif name == "Id" and parent == "Activity":
                self.start_ms = self._ms(content)
            elif name == "Name" and parent == "Course":
                self.name = content or None
            elif name in _TRACKS:
                yield from self.flush()

    def _ms(self, text: str) -> int | None:
        try:
            ms = parse_xml_time(text, self.options.tz)
        except (ValueError, OverflowError):
            return None
        self.earliest = ms if self.earliest is None else min(self.earliest, ms)
        return ms

    def _point(self, point: dict[str, str]) -> None:
        if "lat" not in point and "lon" not in point:
            self.sensor_only += 1
            return
        fields: dict[str, Any] | str = {
            "lat": _number(point.get("lat", "")),
            "lon": _number(point.get("lon", "")),
        }
        assert isinstance(fields, dict)
        attrs: dict[str, Any] = {"track": self.name} if self.name else {}
        for key in ("alt", "speed"):
            if key in point:
                fields[key] = _number(point[key])
        for key in ("hr", "cad", "power"):
            if key in point:
                attrs[key] = _number(point[key], whole=True)
        if attrs:
            fields["attrs"] = attrs
        ms = self._ms(point["time"]) if point.get("time") else None
        if point.get("time") and ms is None:
            fields = f"time: not a date and time: {point['time'][:40]!r}"
        self.points.append(RawPoint(_lat(fields), _lon(fields), ms, fields))

    def flush(self) -> Iterator[Item]:
        """The items of the activity or course read so far."""
        if not self.points:
            return
        self.count += 1
        device = self._device()
        label = f"course {self.name!r}" if self.name else f"activity {self.count}"
        anchor = file_anchor(self.path, self.start_ms, self.earliest)
        yield from place_track(
            self.points, device, label, anchor, retime_kmh=self.options.retime_kmh
        )
        self.points = []

    def _device(self) -> str:
        stem = Path(self.path.name.removesuffix(".gz").removesuffix(".GZ")).stem
        base = self.options.device or _NOT_IN_DEVICE_ID.sub("-", self.name or "").strip("-")
        base = base or _NOT_IN_DEVICE_ID.sub("-", stem).strip("-") or "tcx"
        device, n = base[:64], 1
        while device in self.used:
            n += 1
            device = f"{base[: 64 - len(str(n)) - 1]}-{n}"
        self.used.add(device)
        return device


def _lat(fields: dict[str, Any] | str) -> float:
    value = fields.get("lat") if isinstance(fields, dict) else None
    return value if isinstance(value, float) else float("nan")


def _lon(fields: dict[str, Any] | str) -> float:
    value = fields.get("lon") if isinstance(fields, dict) else None
    return value if isinstance(value, float) else float("nan")


def _number(text: str, whole: bool = False) -> float | int | str:
    """A number from a TCX element; the text itself when it is none (validation says)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if whole and value.is_integer() else value
