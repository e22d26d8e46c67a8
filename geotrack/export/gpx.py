"""Write positions as a GPX 1.1 file, streaming, one ``<trk>`` per device.

What GPX has no element for goes into each point's ``<extensions>`` in the ``gt``
namespace (:data:`geotrack.gpx_extensions.GT_NAMESPACE`), which
:func:`geotrack.sources.gpx.read_gpx` reads back losslessly::

    <gt:speed>1.4</gt:speed> <gt:heading>87.5</gt:heading> <gt:acc>4.0</gt:acc>
    <gt:attr name="hr" type="int">113</gt:attr>    (type: str, int, float, bool, null)
    <gt:attr type="json">["key", "value"]</gt:attr>

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

__all__ = ["write_gpx"]

_HEADER: Final = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<gpx version="1.1" creator="{creator}" xmlns="http://www.topografix.com/GPX/1/1"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xsi:schemaLocation="http://www.topografix.com/GPX/1/1'
    ' http://www.topografix.com/GPX/1/1/gpx.xsd"'
    f' xmlns:gt="{GT_NAMESPACE}">\n'
)
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
    named after it, split into a new ``<trkseg>`` wherever two consecutive points are
    more than ``gap_s`` seconds apart (0 or less: never split). A device that comes back
    after another one starts a second ``<trk>`` of the same name. Memory stays flat
    whatever the number of positions: each point is written as it arrives.
    """
    gap_ms = gap_s * 1000 if gap_s > 0 else math.inf
    out.write(_HEADER.format(creator=_attr(_NOT_XML_CHAR.sub("", creator))))
    device: str | None = None
    last_ms = 0
    count = 0
    for position in positions:
        # Parsing ts is the dearest step per point; skip it when nothing is split.
        ms = position.ts_ms if gap_ms != math.inf else 0
        if position.device != device:
            if device is not None:
                out.write("    </trkseg>\n  </trk>\n")
            out.write(f"  <trk>\n    <name>{_text(position.device)}</name>\n    <trkseg>\n")
            device = position.device
        elif ms - last_ms > gap_ms:
            out.write("    </trkseg>\n    <trkseg>\n")
        out.write(_trkpt(position))
        last_ms = ms
        count += 1
    if device is not None:
        out.write("    </trkseg>\n  </trk>\n")
    out.write("</gpx>\n")
    return count


def _trkpt(p: Position) -> str:
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
    for key, value in (p.attrs or {}).items():
        extensions.append(_gt_attr(key, value))
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
