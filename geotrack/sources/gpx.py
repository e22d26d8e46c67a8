"""Read GPX files (1.0 and 1.1) as tracks of positions, and replay tracks on a schedule.

A ``<trk>`` is one device, however many segments it has; routes stand in for tracks when
a file has no track points. Besides the standard fields, points keep what devices put in
their extensions: Garmin's TrackPointExtension (any version) and any other simple
element land in ``attrs`` under their local name, and our own ``gt`` namespace (what
:mod:`geotrack.export.gpx` writes) restores speed, heading, accuracy and typed attrs.
"""

from __future__ import annotations

import codecs
import heapq
import io
import itertools
import json
import math
import re
import statistics
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import gpxpy
import msgspec

from geotrack._text import plural
from geotrack.errors import InvalidParameter, SourceError
from geotrack.gpx_extensions import GT_NAMESPACE
from geotrack.schema import DEVICE_PATTERN, Position, ms_to_ts
from geotrack.sources.base import Format, Item, Notice, ReadOptions, Skipped
from geotrack.sources.timing import (
    DEFAULT_KMH,
    Anchor,
    RawPoint,
    datetime_ms,
    device_ids,
    file_anchor,
    place_track,
)
from geotrack.sources.xmlstream import declares_doctype

__all__ = ["FORMAT", "GT_NAMESPACE", "Track", "read", "read_gpx", "schedule"]

_GPX_ROOT_RE: Final = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?gpx[\s>/]")
_INT_RE: Final = re.compile(r"[+-]?\d+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_ENCODING_RE: Final = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_MAX_REASONS: Final = 3
_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class Track:
    """The positions of one device read from one ``<trk>`` (or ``<rte>``), sorted by time.

    ``warnings`` says, one line each, what the reader had to do that the file did not
    say: invent or interpolate times, skip ``skipped`` points (that failed validation or
    share their time with another point), find times repeated or going backwards.
    ``positions`` is empty only when every point was skipped.
    """

    device: str
    name: str | None
    positions: list[Position]
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0


def _sniff(head: bytes) -> bool:
    return _GPX_ROOT_RE.search(head) is not None


def read(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The items of a GPX file (the :class:`~geotrack.sources.base.Format` reader)."""
    for _device, _name, items in _tracks(path, options.device, DEFAULT_KMH, options.retime_kmh):
        yield from items


FORMAT: Final = Format(
    name="gpx",
    description="GPX 1.0/1.1 tracks (routes when there are none); track names kept",
    suffixes=(".gpx",),
    sniff=_sniff,
    read=read,
)


def read_gpx(
    path: str | Path,
    device: str | None = None,
    kmh: float = DEFAULT_KMH,
    start_ms: int | None = None,
    retime_kmh: float | None = None,
) -> list[Track]:
    """Read the tracks of a GPX file, one device each.

    Device ids: ``device`` for a file of one track, ``device-1``, ``device-2``, ... for
    several; without ``device``, the id geotrack's own export wrote in the track's
    extensions, else the file's stem (characters a device id cannot hold become ``-``,
    cut to 64) or ``stem-1``, ``stem-2``, ... Tracks without points do not count. A
    track's name is kept in each of its positions' ``attrs["track"]``.

    Times: see :mod:`geotrack.sources.timing`; an untimed track is walked at ``kmh``
    from ``start_ms`` when given, else from the file's own anchor (its metadata time,
    earliest time or modification time), so reading a file twice gives the same times.
    ``retime_kmh`` retimes every point. A time without an offset is read as UTC.

    Raises SourceError (one line, naming the file) when the file cannot be read, is not
    GPX, or holds no track or route point; InvalidParameter for a bad ``device``,
    ``kmh`` or ``start_ms``.
    """
    path = Path(path)
    if not (math.isfinite(kmh) and kmh > 0):
        raise InvalidParameter("kmh", f"must be a positive number of km/h, got {kmh!r}")
    if start_ms is not None:
        try:
            ms_to_ts(start_ms)
        except (OverflowError, ValueError):
            raise InvalidParameter("start_ms", f"out of range (years 1-9999): {start_ms}") from None
    tracks = []
    for device_id, name, track_items in _tracks(path, device, kmh, retime_kmh, start_ms):
        items = list(track_items)
        positions = [i for i in items if isinstance(i, Position)]
        skips = [i for i in items if isinstance(i, Skipped)]
        warnings = [i.text for i in items if isinstance(i, Notice)]
        if skips:
            shown = "; ".join(f"{s.where}: {s.reason}" for s in skips[:_MAX_REASONS])
            more = "; ..." if len(skips) > _MAX_REASONS else ""
            total = len(skips) + len(positions)
            warnings.append(f"skipped {len(skips)} of {plural(total, 'point')} ({shown}{more})")
        tracks.append(Track(device_id, name, positions, warnings, len(skips)))
    return tracks


def _tracks(
    path: Path,
    device: str | None,
    kmh: float,
    retime_kmh: float | None,
    start_ms: int | None = None,
) -> Iterator[tuple[str, str | None, Iterator[Item]]]:
    """(device, track name, items) of each track of a GPX file."""
    gpx, damage = _parse(path)
    groups = [
        (t.name, _gt_device(t), [p for s in t.segments for p in s.points]) for t in gpx.tracks
    ]
    groups = [g for g in groups if g[2]]
    if not groups:
        groups = [(r.name, None, list(r.points)) for r in gpx.routes if r.points]
    if not groups:
        if gpx.waypoints:
            raise SourceError(str(path), "has only waypoints, no track or route")
        raise SourceError(str(path), "has no track or route points")
    ids = device_ids(path.stem, device, len(groups), fallback="gpx")
    if device is None:
        ids = [own or fallback for (_, own, _), fallback in zip(groups, ids, strict=True)]
    if start_ms is not None:
        anchor = Anchor(start_ms, "the start given")
    else:
        times = (p.time for _, _, points in groups for p in points if p.time is not None)
        earliest = min((datetime_ms(t) for t in times), default=None)
        metadata = None if gpx.time is None else datetime_ms(gpx.time)
        anchor = file_anchor(path, metadata, earliest)
    now_ms = time.time_ns() // 1_000_000
    for number, ((name, own, points), device_id) in enumerate(zip(groups, ids, strict=True), 1):
        label = f"track {name!r}" if name else f"track {number}"
        # geotrack's export names a track after its device when the positions had no name.
        track_name = name if name and name != own else None
        raw = [_raw(p, track_name) for p in points]
        items = place_track(
            raw, device_id, label, anchor, kmh=kmh, retime_kmh=retime_kmh, now_ms=now_ms
        )
        yield device_id, name, items
    if damage is not None:
        raise damage


def _gt_device(track: Any) -> str | None:
    """The device id geotrack's export wrote in a track's extensions, if any."""
    for element in getattr(track, "extensions", None) or ():
        if isinstance(element.tag, str) and element.tag == f"{{{GT_NAMESPACE}}}device":
            text = (element.text or "").strip()
            if re.fullmatch(DEVICE_PATTERN, text):
                return text
    return None


def _raw(point: Any, track_name: str | None) -> RawPoint:
    ms = None if point.time is None else datetime_ms(point.time)
    try:
        fields: dict[str, Any] | str = _fields(point)
    except (ValueError, TypeError) as exc:
        fields = _one_line(exc)
    if track_name and isinstance(fields, dict):
        attrs = fields.setdefault("attrs", {})
        attrs.setdefault("track", track_name)
    return RawPoint(point.latitude, point.longitude, ms, fields)


def _parse(path: Path) -> tuple[Any, SourceError | None]:
    """The gpxpy document of a file, or SourceError saying in one line why not.

    A truncated or broken file gives the document of its points before the damage, and
    the error to raise once they are read.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        text = _decode(data)
    except (UnicodeDecodeError, LookupError) as exc:
        raise SourceError(str(path), f"not a text file in its declared encoding: {exc}") from None
    if declares_doctype(text):
        raise SourceError(
            str(path),
            "refused: it declares a document type (DTD), which track files never need, "
            "as its entities could expand without bound or read other files",
        )
    root = _root_tag(text, path)
    if root.rpartition("}")[2] != "gpx":
        raise SourceError(str(path), f"not a GPX file: its root element is <{root}>, not <gpx>")
    try:
        return gpxpy.parse(text), None
    except Exception as exc:  # gpxpy raises bare ValueErrors too, not only GPXException
        error = SourceError(str(path), f"not a valid GPX file: {_one_line(exc)}")
    broken = _xml_error(text)
    if broken is None:
        raise error
    (line, column), message = broken
    error = SourceError(
        str(path), f"truncated or broken at line {line}, column {column}: {message}"
    )
    # Keep the points before the damage: cut after the last whole point, close the rest.
    lines = text.splitlines(keepends=True)
    before = "".join(lines[: line - 1]) + (lines[line - 1][:column] if line <= len(lines) else "")
    end = max(before.rfind("</trkpt>"), before.rfind("</rtept>"))
    if end < 0:
        raise error
    closers = "</trkseg></trk></gpx>" if before.startswith("</trkpt>", end) else "</rte></gpx>"
    try:
        return gpxpy.parse(before[: end + len("</trkpt>")] + closers), error
    except Exception:
        raise error from None


def _xml_error(text: str) -> tuple[tuple[int, int], str] | None:
    """Where and why a text is not well-formed XML, or None if it is."""
    try:
        for _ in ET.iterparse(io.StringIO(text)):
            pass
    except ET.ParseError as exc:
        return exc.position, str(exc).split(":")[0]
    return None


def _decode(data: bytes) -> str:
    # gpxpy decodes bytes as UTF-8 whatever the XML declaration says, so decode here.
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    m = _ENCODING_RE.match(data)
    return data.decode(m.group(1).decode("ascii") if m else "utf-8")


def _root_tag(text: str, path: Path) -> str:
    # gpxpy reads any XML document as an empty GPX, so look at the root element first.
    try:
        for _event, element in ET.iterparse(io.StringIO(text), events=("start",)):
            return str(element.tag)
    except ET.ParseError as exc:
        raise SourceError(str(path), f"not an XML file: {_one_line(exc)}") from None
    raise SourceError(str(path), "not an XML file: it has no root element")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _fields(point: Any) -> dict[str, Any]:
    """A point's position fields (without device and ts); ValueError for a bad extension."""
    fields: dict[str, Any] = {"lat": point.latitude, "lon": point.longitude}
    attrs: dict[str, Any] = {}
    if point.elevation is not None:
        fields["alt"] = point.elevation
    # gpxpy reads <speed> and <course> for GPX 1.0 track points only (the only ones that
    # have them in the standard); other points have no such attribute.
    if getattr(point, "speed", None) is not None:
        fields["speed"] = point.speed
    if getattr(point, "course", None) is not None:
        fields["heading"] = _normalize_heading(point.course)
    if point.horizontal_dilution is not None:
        attrs["hdop"] = point.horizontal_dilution
    for element in point.extensions or ():
        if not isinstance(element.tag, str):
            continue
        namespace, _, local = element.tag.rpartition("}")
        if namespace.lstrip("{") == GT_NAMESPACE:
            _read_gt(element, local, fields, attrs)
        elif len(element):
            # A container such as Garmin's TrackPointExtension: keep its simple children.
            for child in element:
                if isinstance(child.tag, str) and not len(child) and (child.text or "").strip():
                    attrs[child.tag.rpartition("}")[2]] = _value(child.text or "")
        elif (element.text or "").strip():
            attrs[local] = _value(element.text or "")
    if attrs:
        fields["attrs"] = attrs
    return fields


def _normalize_heading(degrees: float) -> float:
    heading = degrees % 360.0
    # A tiny negative angle wraps to exactly 360.0 in floating point.
    return 0.0 if heading >= 360.0 else heading


def _value(text: str) -> str | int | float:
    """A foreign extension's value: an int or float when it reads as one, else the text."""
    s = text.strip()
    if _INT_RE.fullmatch(s) and -(2**63) <= int(s) < 2**63:
        return int(s)
    if _FLOAT_RE.fullmatch(s) and math.isfinite(float(s)):
        return float(s)
    return s


def _read_gt(
    element: ET.Element, local: str, fields: dict[str, Any], attrs: dict[str, Any]
) -> None:
    text = element.text or ""
    if local in ("speed", "heading", "acc"):
        value = _number(float, text, local)
        fields[local] = _normalize_heading(value) if local == "heading" else value
    elif local == "attr":
        key, value = _gt_attr(element.get("name"), element.get("type", "str"), text)
        attrs[key] = value
    # Other gt elements are from a newer writer; ignoring them keeps old readers working.


def _gt_attr(name: str | None, kind: str, text: str) -> tuple[str, Any]:
    if kind == "json":
        # The writer's form for keys or strings that XML cannot hold: [key, value].
        try:
            pair = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"attrs: a gt:attr of type json is not JSON: {exc}") from None
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError("attrs: a gt:attr of type json must hold [key, value]")
        return pair[0], pair[1]
    if name is None:
        raise ValueError("attrs: a gt:attr has no name")
    if kind == "str":
        return name, text
    if kind == "int":
        return name, _number(int, text, f"attrs.{name}")
    if kind == "float":
        return name, _number(float, text, f"attrs.{name}")
    if kind == "bool" and text.strip() in ("true", "false"):
        return name, text.strip() == "true"
    if kind == "null":
        return name, None
    raise ValueError(f"attrs.{name}: cannot read {text[:20]!r} as gt:attr type {kind!r}")


def _number(kind: type[_N], text: str, name: str) -> _N:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}: not a number: {text[:20]!r}") from None


def schedule(tracks: Sequence[Track], loop: bool = False) -> Iterator[tuple[float, Position]]:
    """Yield (offset in seconds, position) of all tracks, merged in offset order.

    Every track starts at offset 0 (its own first point), so tracks recorded on different
    days replay side by side; ties keep the order of ``tracks``. With ``loop`` the tracks
    repeat forever, each repetition shifted, ts and offset alike, by the track's duration
    plus its sampling interval (median gap, at least 1 s), so repeated positions are new
    ones to a relay that deduplicates on (device, ts). Holds nothing beyond the tracks.
    """
    streams = [_replay(track.positions, loop) for track in tracks if track.positions]
    yield from heapq.merge(*streams, key=lambda item: item[0])


def _replay(positions: list[Position], loop: bool) -> Iterator[tuple[float, Position]]:
    times = [p.ts_ms for p in positions]
    first = times[0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    interval = max(1000, math.ceil(statistics.median(gaps))) if gaps else 1000
    period = times[-1] - first + interval
    shift = 0
    while True:
        for position, ms in zip(positions, times, strict=True):
            offset = (ms + shift - first) / 1000
            if shift:
                yield offset, msgspec.structs.replace(position, ts=ms_to_ts(ms + shift))
            else:
                yield offset, position
        if not loop:
            return
        shift += period
