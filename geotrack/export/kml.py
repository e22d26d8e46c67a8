"""Write positions as KML 2.2 for Google Earth: one ``gx:Track`` per device, with times.

Each device becomes a ``<Placemark>`` named after it (or after its positions'
``attrs["track"]``, a new placemark where that changes), holding a ``gx:Track``: every
``<when>``, then every ``<gx:coord>`` (``lon lat alt``; ``lon lat`` without an altitude),
then the per-point values Google Earth charts in its elevation profile, as
``gx:SimpleArrayData`` under a ``<Schema>``: ``speed`` (m/s), ``heading``, ``acc`` and
each numeric or text attr (``hr``, ``cad``, ...), an empty ``<gx:value/>`` where a point
lacks it. The device id is also kept in the placemark's ``ExtendedData``
(``geotrack:device``), so :mod:`geotrack.sources.kml` reads positions back with their
device, times, coordinates, elevation, speed, heading, accuracy and numeric attrs (text
that reads as a number comes back as a number; booleans and nulls are not written).

``gx:Track`` wants its times before its coordinates, so a track's values are spooled
(in memory up to about 1 MiB each, on disk beyond) until the track ends: memory stays
flat whatever the number of positions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from decimal import Decimal
from tempfile import SpooledTemporaryFile
from typing import IO, Final, TextIO

from geotrack.schema import Position

__all__ = ["DEVICE_DATA", "write_kml"]

#: The ``<Data name=...>`` of a placemark's ExtendedData that holds its device id.
DEVICE_DATA: Final = "geotrack:device"

_HEADER: Final = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<kml xmlns="http://www.opengis.net/kml/2.2" xmlns:gx="http://www.google.com/kml/ext/2.2">\n'
    "<Document>\n  <name>{name}</name>\n"
)
_SPOOL_BYTES: Final = 1 << 20
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\t": "&#9;"}
)
_FIELDS: Final = ("speed", "heading", "acc")


def write_kml(positions: Iterable[Position], out: TextIO, name: str = "geotrack") -> int:
    """Write positions to ``out`` as KML and return how many were written.

    ``positions`` must come ordered by device, then ts; a device coming back after
    another one starts a second placemark.
    """
    out.write(_HEADER.format(name=_text(name)))
    track: _Track | None = None
    types: dict[str, str] = {}
    count = 0
    try:
        for position in positions:
            title = _track_name(position)
            if track is None or position.device != track.device or title != track.title:
                if track is not None:
                    track.write(out, types)
                    track.close()
                track = _Track(position.device, title)
            track.add(position)
            count += 1
        if track is not None:
            track.write(out, types)
    finally:
        if track is not None:
            track.close()
    for key, kind in types.items():
        out.write(
            f'  <Schema id="{_text(key)}">'
            f'<gx:SimpleArrayField name="{_text(key)}" type="{kind}"/></Schema>\n'
        )
    out.write("</Document>\n</kml>\n")
    return count


class _Track:
    """One placemark's values, spooled until it is written."""

    def __init__(self, device: str, title: str | None) -> None:
        self.device = device
        self.title = title
        self.n = 0
        self.whens = self._spool()
        self.coords = self._spool()
        self.arrays: dict[str, IO[str]] = {}
        self.kinds: dict[str, str] = {}

    @staticmethod
    def _spool() -> IO[str]:
        return SpooledTemporaryFile(_SPOOL_BYTES, mode="w+", encoding="utf-8")

    def add(self, p: Position) -> None:
        self.whens.write(f"      <when>{p.time}</when>\n")
        alt = "" if p.alt is None else f" {_decimal(p.alt)}"
        self.coords.write(f"      <gx:coord>{_decimal(p.lon)} {_decimal(p.lat)}{alt}</gx:coord>\n")
        values: dict[str, str] = {}
        for key in _FIELDS:
            value = getattr(p, key)
            if value is not None:
                values[key] = _decimal(value)
                self.kinds[key] = "float"
        for key, attr in (p.attrs or {}).items():
            if (key == "track" and self.title is not None) or _NOT_XML_CHAR.search(key):
                continue
            if isinstance(attr, bool) or attr is None:
                continue
            if isinstance(attr, int):
                values[key], kind = str(attr), "int"
            elif isinstance(attr, float):
                if not math.isfinite(attr):
                    continue
                values[key], kind = repr(attr), "float"
            elif attr and attr.strip() == attr and not _NOT_XML_CHAR.search(attr):
                values[key], kind = _text(attr), "string"
            else:
                continue
            self.kinds[key] = _merge(self.kinds.get(key), kind)
        for key in values:
            if key not in self.arrays:
                # A value first seen now: the points before lack it.
                self.arrays[key] = self._spool()
                self.arrays[key].write("<gx:value/>" * self.n)
        for key, spool in self.arrays.items():
            spool.write(f"<gx:value>{values[key]}</gx:value>" if key in values else "<gx:value/>")
        self.n += 1

    def write(self, out: TextIO, types: dict[str, str]) -> None:
        out.write(
            f"  <Placemark>\n    <name>{_text(self.title or self.device)}</name>\n"
            f'    <ExtendedData><Data name="{DEVICE_DATA}"><value>{_text(self.device)}'
            "</value></Data></ExtendedData>\n    <gx:Track>\n"
            "      <altitudeMode>absolute</altitudeMode>\n"
        )
        for spool in (self.whens, self.coords):
            spool.seek(0)
            while chunk := spool.read(1 << 16):
                out.write(chunk)
        if self.arrays:
            out.write("      <ExtendedData>\n")
            for key, spool in self.arrays.items():
                types[key] = _merge(types.get(key), self.kinds.get(key, "string"))
                out.write(
                    f'        <SchemaData schemaUrl="#{_text(key)}">'
                    f'<gx:SimpleArrayData name="{_text(key)}">'
                )
                spool.seek(0)
                while chunk := spool.read(1 << 16):
                    out.write(chunk)
                out.write("</gx:SimpleArrayData></SchemaData>\n")
            out.write("      </ExtendedData>\n")
        out.write("    </gx:Track>\n  </Placemark>\n")

    def close(self) -> None:
        for spool in (self.whens, self.coords, *self.arrays.values()):
            spool.close()


def _merge(known: str | None, kind: str) -> str:
    """The array type that holds values of both types."""
    if known is None or known == kind:
        return kind
    return "float" if {known, kind} == {"int", "float"} else "string"


def _track_name(p: Position) -> str | None:
    name = (p.attrs or {}).get("track")
    if isinstance(name, str) and name and name != p.device and not _NOT_XML_CHAR.search(name):
        return name
    return None


def _decimal(x: float) -> str:
    """``repr`` digits in plain notation (KML numbers are ``xsd:double``, but plain reads)."""
    text = repr(x)
    return format(Decimal(text), "f") if "e" in text else text


def _text(s: str) -> str:
    return s.translate(_ESCAPES).encode("ascii", "xmlcharrefreplace").decode("ascii")
