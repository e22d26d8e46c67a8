"""Read KML and KMZ files: Google Earth tracks, timed lines and timed placemarks.

What becomes a track, one per ``<Placemark>`` (in any nesting of Folders and Documents):

- ``gx:Track`` points, each ``<when>`` with its ``<gx:coord>``; the several tracks of a
  ``gx:MultiTrack`` (or a ``MultiGeometry``) make one track, as a GPX track's segments
  do. The track's ``ExtendedData`` arrays (``gx:SimpleArrayData``) become attrs, under the
  names GPX gives them: ``heartrate`` -> ``hr``, ``cadence`` -> ``cad``, ``temperature``
  -> ``atemp``; ``speed`` (m/s), ``heading`` and ``acc`` become those fields.
- a ``LineString`` with a ``TimeSpan``: its first point at ``begin``, its last at ``end``,
  the others interpolated by distance (see :mod:`geotrack.sources.timing`); without a
  ``TimeSpan`` it is walked like an untimed GPX track.
- ``Point`` placemarks with a ``TimeStamp`` (or ``TimeSpan``), in a file without tracks:
  together one track, sorted by time (beside tracks they are start, end and stop
  markers, and ignored). Points without a time are places, not positions. Both are
  counted in a notice.

Device ids: ``--device`` (the second track ``DEVICE-2``, and so on: the file is read as
it streams); else the ``geotrack:device`` that our own export writes; else the
placemark's name made a valid id (``Morning run`` -> ``Morning-run``), else the file's
stem, made unique with ``-2``, ``-3``... A placemark's name is kept in each position's
``attrs["track"]``. A time without an offset is read in ``--tz``, else as UTC.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from geotrack._text import plural
from geotrack.errors import SourceError
from geotrack.schema import DEVICE_PATTERN
from geotrack.sources.base import Format, Item, Notice, ReadOptions, open_binary
from geotrack.sources.timing import DEFAULT_KMH, Anchor, RawPoint, file_anchor, place_track
from geotrack.sources.xmlstream import XmlBroken, events, parse_xml_time

__all__ = ["DEVICE_DATA", "FORMAT", "read"]

#: The ``<Data name=...>`` of a placemark's ExtendedData that holds its device id.
DEVICE_DATA: Final = "geotrack:device"

_KML_ROOT_RE: Final = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?kml[\s>/]")
_NOT_IN_DEVICE_ID: Final = re.compile(r"[^A-Za-z0-9._:-]+")
_INT_RE: Final = re.compile(r"[+-]?\d+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
#: Array names other tools write, as GPX's Garmin extension names them.
_ATTR_NAMES: Final = {
    "heartrate": "hr",
    "heart_rate": "hr",
    "heartRate": "hr",
    "cadence": "cad",
    "temperature": "atemp",
}
_FIELDS: Final = {"speed": "speed", "heading": "heading", "acc": "acc", "accuracy": "acc"}
# The elements whose text is read.
_TEXT: Final = frozenset({"name", "when", "begin", "end", "coord", "coordinates", "value"})


@dataclass
class _Placemark:
    name: str | None = None
    device: str | None = None
    times: list[str] = field(default_factory=list)  # TimeStamp when, or TimeSpan begin
    span_end: str | None = None
    # The points of its gx:Tracks and LineStrings, and where each LineString's are.
    raw: list[RawPoint] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    points: list[tuple[float, float, float | None]] = field(default_factory=list)


def _sniff(head: bytes) -> bool:
    if head.startswith(b"PK\x03\x04"):
        # A KMZ's entries' names are in their local headers: doc.kml, usually first.
        return b".kml" in head.lower()
    return _KML_ROOT_RE.search(head) is not None


def read(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The items of a KML or KMZ file (the :class:`~geotrack.sources.base.Format` reader)."""
    reader = _Reader(path, options)
    with _open(path) as stream:
        try:
            yield from reader.walk(events(stream))
        except XmlBroken as exc:
            yield from reader.finish(broken=True)
            where = f" at line {exc.line}, column {exc.column}" if exc.line else ""
            if exc.reason.startswith("declares"):
                raise SourceError(str(path), f"refused: it {exc.reason}") from None
            raise SourceError(str(path), f"truncated or broken{where}: {exc.reason}") from None
    yield from reader.finish()


FORMAT: Final = Format(
    name="kml",
    description="KML/KMZ: gx:Track, LineString with TimeSpan, timed Point placemarks",
    suffixes=(".kml", ".kmz"),
    sniff=_sniff,
    read=read,
    gzip=True,
)


@contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    """The KML stream of a file: itself, or a KMZ's ``doc.kml`` (else its first .kml)."""
    try:
        with open(path, "rb") as probe:
            is_zip = probe.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise SourceError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if not is_zip:
        with open_binary(path) as stream:
            yield stream
        return
    try:
        with zipfile.ZipFile(path) as kmz:
            names = [n for n in kmz.namelist() if n.lower().endswith(".kml")]
            if not names:
                raise SourceError(str(path), "a ZIP archive without a .kml file: not a KMZ")
            name = "doc.kml" if "doc.kml" in names else names[0]
            with kmz.open(name) as stream:
                yield stream
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise SourceError(str(path), f"a broken KMZ (ZIP) file: {exc}") from None


class _Reader:
    """The walk over a KML file's events: a placemark at a time, untimed ones kept."""

    def __init__(self, path: Path, options: ReadOptions) -> None:
        self.path = path
        self.options = options
        self.used: set[str] = set()
        self.tracks = 0
        self.earliest: int | None = None
        self.untimed: list[tuple[str, str, list[RawPoint]]] = []
        self.timed_points: list[RawPoint] = []
        self.places = 0

    def walk(self, stream: Iterator[tuple[str, str, object]]) -> Iterator[Item]:
        stack: list[str] = []
        text: list[str] = []
        pm: _Placemark | None = None
        data_name: str | None = None
        array: list[str] | None = None
        arrays: dict[str, list[str]] = {}
        whens: list[str] = []
        coords: list[str] = []
        for kind, name, value in stream:
            if kind == "text":
                text.append(str(value))
                continue
            if kind == "start":
                if not stack and name != "kml":
                    raise SourceError(
                        str(self.path), f"not a KML file: its root element is <{name}>"
                    )
                stack.append(name)
                text.clear()
                attrs = value if isinstance(value, dict) else {}
                if name == "Placemark":
                    pm = _Placemark()
                elif name == "Track" and pm is not None:
                    whens, coords, arrays = [], [], {}
                elif name == "SimpleArrayData" and pm is not None:
                    array = arrays.setdefault(str(attrs.get("name", "")), [])
                elif name == "Data":
                    data_name = str(attrs.get("name", ""))
                continue
            # end
            content = "".join(text).strip() if name in _TEXT else ""
            text.clear()
            parent = stack[-2] if len(stack) > 1 else ""
            stack.pop()
            if pm is None:
                continue
            if name == "name" and parent == "Placemark":
                pm.name = content or None
            elif name in ("when", "begin") and parent in ("TimeStamp", "TimeSpan"):
                pm.times.append(content)
            elif name == "end" and parent == "TimeSpan":
                pm.span_end = content
            elif name == "when" and parent == "Track":
                whens.append(content)
            elif name == "coord" and parent == "Track":
                coords.append(content)
            elif name == "value" and parent == "SimpleArrayData" and array is not None:
                array.append(content)
            elif name == "SimpleArrayData":
                array = None
            elif name == "value" and parent == "Data" and data_name == DEVICE_DATA:
                pm.device = content
            elif name == "Track":
                pm.raw.extend(self._track(whens, coords, arrays, _track_name(pm)))
                whens, coords, arrays = [], [], {}
            elif name == "coordinates" and parent == "LineString":
                start = len(pm.raw)
                track = _track_name(pm)
                pm.raw.extend(self._raw(*c, None, {}, track) for c in _coordinates(content))
                pm.spans.append((start, len(pm.raw)))
            elif name == "coordinates" and parent == "Point":
                pm.points.extend(_coordinates(content))
            elif name == "Placemark":
                yield from self._placemark(pm)
                pm = None

    def _track(
        self,
        whens: list[str],
        coords: list[str],
        arrays: dict[str, list[str]],
        track: str | None,
    ) -> Iterator[RawPoint]:
        for i, coord in enumerate(coords):
            parts = coord.split()
            lon = _float(parts[0]) if parts else math.nan
            lat = _float(parts[1]) if len(parts) > 1 else math.nan
            alt = _float(parts[2]) if len(parts) > 2 else None
            extra: dict[str, Any] = {}
            for key, values in arrays.items():
                if i < len(values) and values[i]:
                    extra[key] = values[i]
            yield self._raw(lon, lat, alt, whens[i] if i < len(whens) else None, extra, track)

    def _time(self, text: str | None) -> int | str | None:
        """Unix ms of a KML time, None for none, or the reason it cannot be read."""
        if not text:
            return None
        try:
            ms = parse_xml_time(text, self.options.tz)
        except (ValueError, OverflowError):
            return f"time: not a date and time: {text[:40]!r}"
        self.earliest = ms if self.earliest is None else min(self.earliest, ms)
        return ms

    def _raw(
        self,
        lon: float,
        lat: float,
        alt: float | None,
        when: str | None,
        extra: dict[str, Any],
        track: str | None,
    ) -> RawPoint:
        ms = self._time(when)
        fields: dict[str, Any] | str = {"lat": lat, "lon": lon}
        if isinstance(ms, str):
            fields, ms = ms, None
        else:
            assert isinstance(fields, dict)
            if alt is not None:
                fields["alt"] = alt
            attrs: dict[str, Any] = {"track": track} if track else {}
            for key, text in extra.items():
                if key in _FIELDS:
                    fields[_FIELDS[key]] = _float(text)
                else:
                    attrs[_ATTR_NAMES.get(key, key)] = _value(text)
            if attrs:
                fields["attrs"] = attrs
        return RawPoint(lat, lon, ms, fields)

    def _placemark(self, pm: _Placemark) -> Iterator[Item]:
        own = _own_device(pm)
        track = _track_name(pm)
        raw = pm.raw
        if raw:
            for start, end in pm.spans:
                if end > start:
                    begin = pm.times[0] if pm.times else None
                    raw[start] = _timed(raw[start], self._time(begin))
                if end > start + 1:
                    raw[end - 1] = _timed(raw[end - 1], self._time(pm.span_end))
            # Our own export's ids stand as written: a device's tracks share it.
            device = own if own and not self.options.device else self._device(pm.name)
            self.used.add(device)
            label = f"track {pm.name!r}" if pm.name else f"track {self.tracks + 1}"
            self.tracks += 1
            if all(p.ms is None for p in raw):
                self.untimed.append((device, label, raw))
                return
            yield from place_track(
                raw, device, label, _NO_ANCHOR, retime_kmh=self.options.retime_kmh
            )
        when = self._time(pm.times[0] if pm.times else None)
        for lon, lat, alt in pm.points:
            if when is None:
                self.places += 1
            else:
                raw_point = self._raw(lon, lat, alt, None, {}, track)
                self.timed_points.append(_timed(raw_point, when))

    def _device(self, name: str | None) -> str:
        """A unique device id for the next track (module doc)."""
        base = self.options.device or _NOT_IN_DEVICE_ID.sub("-", name or "").strip("-")
        stem = Path(self.path.name.removesuffix(".gz").removesuffix(".GZ")).stem
        base = base or _NOT_IN_DEVICE_ID.sub("-", stem).strip("-") or "kml"
        device, n = base[:64], 1
        while device in self.used:
            n += 1
            device = f"{base[: 64 - len(str(n)) - 1]}-{n}"
        self.used.add(device)
        return device

    def finish(self, broken: bool = False) -> Iterator[Item]:
        """The tracks held back: untimed ones (anchored now) and the timed points."""
        anchor = file_anchor(self.path, None, self.earliest)
        for device, label, raw in self.untimed:
            yield from place_track(
                raw, device, label, anchor, kmh=DEFAULT_KMH, retime_kmh=self.options.retime_kmh
            )
        self.untimed.clear()
        if self.timed_points and self.tracks:
            # Beside tracks, timed points are their start, end or stop markers.
            yield Notice(
                f"{plural(len(self.timed_points), 'timed placemark point')} beside the "
                "file's tracks ignored (start, end and stop markers)"
            )
        elif self.timed_points:
            device = self._device(None)
            self.timed_points.sort(key=lambda p: p.ms or 0)
            yield from place_track(
                self.timed_points,
                device,
                "timed placemarks",
                anchor,
                kmh=DEFAULT_KMH,
                retime_kmh=self.options.retime_kmh,
            )
            self.timed_points = []
        if self.places and not broken:
            yield Notice(
                f"{self.places} placemark points without a time ignored (places, not positions)"
            )
            self.places = 0


def _own_device(pm: _Placemark) -> str | None:
    """The device id our own export wrote in a placemark, if valid."""
    return pm.device if pm.device and re.fullmatch(DEVICE_PATTERN, pm.device) else None


def _track_name(pm: _Placemark) -> str | None:
    """The name kept in ``attrs["track"]``: the placemark's, unless it is the device id."""
    return pm.name if pm.name and pm.name != _own_device(pm) else None


#: Timed tracks never walk from an anchor (their own times anchor them).
_NO_ANCHOR: Final = Anchor(0, "")


def _timed(point: RawPoint, ms: int | str | None) -> RawPoint:
    if isinstance(ms, str):
        return RawPoint(point.lat, point.lon, None, ms)
    return RawPoint(point.lat, point.lon, ms, point.fields)


def _coordinates(text: str) -> list[tuple[float, float, float | None]]:
    """KML's ``lon,lat[,alt]`` tuples, separated by white space."""
    out = []
    for item in text.split():
        parts = item.split(",")
        lon = _float(parts[0])
        lat = _float(parts[1]) if len(parts) > 1 else math.nan
        alt = _float(parts[2]) if len(parts) > 2 and parts[2] else None
        out.append((lon, lat, alt))
    return out


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # validation refuses the point, naming the field


def _value(text: str) -> str | int | float:
    """An array value: an int or float when it reads as one, else the text."""
    s = text.strip()
    if _INT_RE.fullmatch(s) and -(2**63) <= int(s) < 2**63:
        return int(s)
    if _FLOAT_RE.fullmatch(s) and math.isfinite(float(s)):
        return float(s)
    return s
