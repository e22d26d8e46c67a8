"""Write positions as a GPX 1.1 file, streaming, one ``<trk>`` per device.

What GPX has no element for goes into each point's ``<extensions>`` in the ``gt``
namespace (:data:`geotrack.gpx_extensions.GT_NAMESPACE`), which
:func:`geotrack.sources.gpx.read_gpx` reads back losslessly::

    <gt:speed>1.4</gt:speed> <gt:heading>87.5</gt:heading> <gt:acc>4.0</gt:acc>
    <gt:attr name="hr" type="int">113</gt:attr>    (type: str, int, float, bool, null)
    <gt:attr type="json">["key", "value"]</gt:attr>

Heart rate, cadence and temperatures (``attrs`` ``hr``, ``cad``, ``atemp``, ``wtemp``,
``depth``: the names :mod:`geotrack.sources.gpx` gives them) go into Garmin's
TrackPointExtension v2 instead, where Garmin tools, Strava and gpxpy look for them, when
their values fit its schema (``hr`` a whole number 1-255, ``cad`` 0-254); other values stay
``gt:attr``. A track's name (``attrs["track"]``, as readers keep it) becomes the
``<trk>``'s ``<name>``, and the device id goes into the ``<trk>``'s extensions
(``<gt:device>``) so that reading the file back restores both.

The JSON form carries an attr whose key or string value holds characters XML 1.0
cannot (control characters, lone surrogates). Numbers are written with every digit
``repr`` gives, in plain decimal notation as ``xsd:decimal`` requires; the output is
ASCII (other characters as character references), so any text stream can take it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Final, TextIO

from geotrack.gpx_extensions import GT_NAMESPACE
from geotrack.schema import Position

__all__ = ["TPX_NAMESPACE", "write_gpx"]

#: Garmin's TrackPointExtension, version 2.
TPX_NAMESPACE: Final = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"
_HEADER: Final = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<gpx version="1.1" creator="{creator}" xmlns="http://www.topografix.com/GPX/1/1"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xsi:schemaLocation="http://www.topografix.com/GPX/1/1'
    ' http://www.topografix.com/GPX/1/1/gpx.xsd"'
    f' xmlns:gt="{GT_NAMESPACE}"'
    f' xmlns:gpxtpx="{TPX_NAMESPACE}">\n'
)
# Its elements in the order its schema fixes, with the integer range of those that are
# xsd:unsignedByte, as TCX bounds them too (None: any finite number).
_TPX_FIELDS: Final[dict[str, tuple[int, int] | None]] = {
    "atemp": None,
    "wtemp": None,
    "depth": None,
    "hr": (1, 255),
    "cad": (0, 254),
}
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# '"' is escaped in text too: gpxpy finds namespace declarations with a regular expression
# over the whole document, and a value like ` xmlns:x="y"` must not look like one.
_TEXT_ESCAPES: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"}
)
# Parsers turn tabs and newlines in attribute values into spaces unless they are escaped.
_ATTR_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\r": "&#13;",
        "\t": "&#9;",
        "\n": "&#10;",
    }
)


def write_gpx(
    positions: Iterable[Position],
    out: TextIO,
    gap_s: float = 600.0,
    creator: str = "geotrack",
) -> int:
    """Write positions to ``out`` as GPX 1.1 and return how many points were written.

    ``positions`` must come ordered by device, then ts. Each device becomes a ``<trk>``
    named after it (or after its positions' ``attrs["track"]``, a new ``<trk>`` where
    that changes), split into a new ``<trkseg>`` wherever two consecutive points are
    more than ``gap_s`` seconds apart (0 or less: never split). A device that comes back
    after another one starts a second ``<trk>`` of the same name. Memory stays flat
    whatever the number of positions: each point is written as it arrives.
    """
    gap_ms = gap_s * 1000 if gap_s > 0 else math.inf
    out.write(_HEADER.format(creator=_attr(_NOT_XML_CHAR.sub("", creator))))
    device: str | None = None
    track: str | None = None
    last_ms = 0
    count = 0
    for position in positions:
        # Parsing ts is the dearest step per point; skip it when nothing is split.
        ms = position.ts_ms if gap_ms != math.inf else 0
        name = _track_name(position)
        if position.device != device or name != track:
            if device is not None:
                out.write("    </trkseg>\n  </trk>\n")
            out.write(
                f"  <trk>\n    <name>{_text(name or position.device)}</name>\n"
                f"    <extensions><gt:device>{_text(position.device)}</gt:device></extensions>\n"
                "    <trkseg>\n"
            )
            device, track = position.device, name
        elif ms - last_ms > gap_ms:
            out.write("    </trkseg>\n    <trkseg>\n")
        out.write(_trkpt(position, name is not None))
        last_ms = ms
        count += 1
    if device is not None:
        out.write("    </trkseg>\n  </trk>\n")
    out.write("</gpx>\n")
    return count


def _track_name(p: Position) -> str | None:
    """The name a position's track is written under, when it is not its device id."""
    name = (p.attrs or {}).get("track")
    if isinstance(name, str) and name != p.device and name and not _NOT_XML_CHAR.search(name):
        return name
    return None


def _tpx(key: str, value: object) -> bool:
    """Whether an attr goes into Garmin's TrackPointExtension (its schema takes it)."""
    if key not in _TPX_FIELDS or isinstance(value, bool):
        return False
    bounds = _TPX_FIELDS[key]
    if bounds is None:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, int) and bounds[0] <= value <= bounds[1]


def _trkpt(p: Position, named: bool) -> str:
    # GPX 1.1 fixes the order of a point's children: ele, time, ..., extensions.
    parts = [f'      <trkpt lat="{_decimal(p.lat)}" lon="{_decimal(p.lon)}">']
    if p.alt is not None:
        parts.append(f"<ele>{_decimal(p.alt)}</ele>")
    parts.append(f"<time>{p.time}</time>")
    extensions = []
    if p.speed is not None:
        extensions.append(f"<gt:speed>{_decimal(p.speed)}</gt:speed>")
    if p.heading is not None:
        extensions.append(f"<gt:heading>{_decimal(p.heading)}</gt:heading>")
    if p.acc is not None:
        extensions.append(f"<gt:acc>{_decimal(p.acc)}</gt:acc>")
    garmin: dict[str, str] = {}
    for key, value in (p.attrs or {}).items():
        if named and key == "track":
            continue  # the <trk>'s name
        if _tpx(key, value):
            assert isinstance(value, int | float)
            garmin[key] = str(value) if isinstance(value, int) else _decimal(value)
        else:
            extensions.append(_gt_attr(key, value))
    if garmin:
        extensions.append("<gpxtpx:TrackPointExtension>")
        extensions.extend(
            f"<gpxtpx:{key}>{garmin[key]}</gpxtpx:{key}>" for key in _TPX_FIELDS if key in garmin
        )
        extensions.append("</gpxtpx:TrackPointExtension>")
    if extensions:
        parts.append("<extensions>")
        parts.extend(extensions)
        parts.append("</extensions>")
    parts.append("</trkpt>\n")
    return "".join(parts)


def _gt_attr(key: str, value: str | int | float | bool | None) -> str:
    if _NOT_XML_CHAR.search(key) or (isinstance(value, str) and _NOT_XML_CHAR.search(value)):
        return f'<gt:attr type="json">{_text(json.dumps([key, value]))}</gt:attr>'
    name = _attr(key)
    if value is None:
        return f'<gt:attr name="{name}" type="null"/>'
    if isinstance(value, bool):
        return f'<gt:attr name="{name}" type="bool">{"true" if value else "false"}</gt:attr>'
    if isinstance(value, int):
        return f'<gt:attr name="{name}" type="int">{value}</gt:attr>'
    if isinstance(value, float):
        return f'<gt:attr name="{name}" type="float">{value!r}</gt:attr>'
    return f'<gt:attr name="{name}" type="str">{_text(value)}</gt:attr>'


def _decimal(x: float) -> str:
    """``repr`` digits in plain notation: 1e-05 is not an ``xsd:decimal``, 0.00001 is."""
    text = repr(x)
    return format(Decimal(text), "f") if "e" in text else text


def _text(s: str) -> str:
    return s.translate(_TEXT_ESCAPES).encode("ascii", "xmlcharrefreplace").decode("ascii")


def _attr(s: str) -> str:
    return s.translate(_ATTR_ESCAPES).encode("ascii", "xmlcharrefreplace").decode("ascii")
