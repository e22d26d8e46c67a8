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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import gpxpy
import msgspec

from geotrack._text import plural
from geotrack.errors import InvalidParameter, InvalidPosition, SourceError
from geotrack.gpx_extensions import GT_NAMESPACE
from geotrack.schema import DEVICE_PATTERN, Position, ms_to_ts, validate

__all__ = ["GT_NAMESPACE", "Track", "read_gpx", "schedule"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_EARTH_RADIUS_M: Final = 6_371_008.8
_NOT_IN_DEVICE_ID: Final = re.compile(r"[^A-Za-z0-9._:-]")
_INT_RE: Final = re.compile(r"[+-]?\d+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_ENCODING_RE: Final = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_MAX_REASONS: Final = 3
_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class Track:
    """The positions of one device read from one ``<trk>`` (or ``<rte>``), sorted by time.

    ``warnings`` says, one line each, what the reader had to do that the file did not
    say: invent or interpolate times, skip ``skipped`` points that failed validation, keep
    points that share a time. ``positions`` is empty only when every point was skipped.
    """

    device: str
    name: str | None
    positions: list[Position]
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0


def read_gpx(
    path: str | Path,
    device: str | None = None,
    kmh: float = 5.0,
    start_ms: int | None = None,
) -> list[Track]:
    """Read the tracks of a GPX file, one device each.

    Device ids: ``device`` for a file of one track, ``device-1``, ``device-2``, ... for
    several; without ``device``, the file's stem (characters a device id cannot hold
    become ``-``, cut to 64) or ``stem-1``, ``stem-2``, ... Tracks without points do
    not count.

    Times: a track without any ``<time>`` is walked at ``kmh`` along its great-circle
    distance, starting at ``start_ms`` (default: now), each point at least 1 ms after
    the one before. In a track where only some points have a time, those between two
    timed points are interpolated by distance, and those before the first or after the
    last timed point are placed at the average speed of the timed part (``kmh`` if that
    is unknown). A time without an offset is read as UTC. Each track says what was
    invented in its ``warnings``.

    Raises SourceError (one line, naming the file) when the file cannot be read, is not
    GPX, or holds no track or route point; InvalidParameter for a bad ``device``,
    ``kmh`` or ``start_ms``.
    """
    path = Path(path)
    if device is not None and not re.fullmatch(DEVICE_PATTERN, device):
        raise InvalidParameter(
            "device", f"{device!r} is not 1-64 characters of A-Z a-z 0-9 . _ : -"
        )
    if not (math.isfinite(kmh) and kmh > 0):
        raise InvalidParameter("kmh", f"must be a positive number of km/h, got {kmh!r}")
    if start_ms is None:
        start_ms = time.time_ns() // 1_000_000
    try:
        ms_to_ts(start_ms)
    except (OverflowError, ValueError):
        raise InvalidParameter("start_ms", f"out of range (years 1-9999): {start_ms}") from None

    gpx = _parse(path)
    groups = [(t.name, [p for s in t.segments for p in s.points]) for t in gpx.tracks]
    groups = [g for g in groups if g[1]]
    if not groups:
        groups = [(r.name, list(r.points)) for r in gpx.routes if r.points]
    if not groups:
        if gpx.waypoints:
            raise SourceError(str(path), "has only waypoints, no track or route")
        raise SourceError(str(path), "has no track or route points")
    ids = _device_ids(path.stem, device, len(groups))
    return [
        _track(device_id, name, points, kmh, start_ms)
        for device_id, (name, points) in zip(ids, groups, strict=True)
    ]


def _parse(path: Path) -> Any:
    """The gpxpy document of a file, or SourceError saying in one line why not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        text = _decode(data)
    except (UnicodeDecodeError, LookupError) as exc:
        raise SourceError(str(path), f"not a text file in its declared encoding: {exc}") from None
    root = _root_tag(text, path)
    if root.rpartition("}")[2] != "gpx":
        raise SourceError(str(path), f"not a GPX file: its root element is <{root}>, not <gpx>")
    try:
        return gpxpy.parse(text)
    except Exception as exc:  # gpxpy raises bare ValueErrors too, not only GPXException
        raise SourceError(str(path), f"not a valid GPX file: {_one_line(exc)}") from None


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


def _device_ids(stem: str, device: str | None, n: int) -> list[str]:
    if device is not None:
        if n == 1:
            return [device]
        ids = [f"{device}-{i}" for i in range(1, n + 1)]
        if len(ids[-1]) > 64:
            raise InvalidParameter(
                "device", f"{device!r} is too long to number {n} tracks as {device}-<n> (64 max)"
            )
        return ids
    base = _NOT_IN_DEVICE_ID.sub("-", stem) or "gpx"
    if n == 1:
        return [base[:64]]
    base = base[: 64 - len(f"-{n}")]
    return [f"{base}-{i}" for i in range(1, n + 1)]


def _track(device: str, name: str | None, points: list[Any], kmh: float, start_ms: int) -> Track:
    warnings: list[str] = []
    known = [None if p.time is None else _datetime_ms(p.time) for p in points]
    coords = [(p.latitude, p.longitude) for p in points]
    times, note = _fill_times(coords, known, kmh, start_ms)
    if note:
        warnings.append(note)

    timed: list[tuple[int, Position]] = []
    reasons: list[str] = []
    for number, (point, ms) in enumerate(zip(points, times, strict=True), 1):
        try:
            fields = _fields(point)
            fields["device"] = device
            fields["ts"] = ms_to_ts(ms)
            timed.append((ms, validate(fields)))
        except (InvalidPosition, ValueError, TypeError) as exc:
            reasons.append(f"point {number}: {_one_line(exc)}")
        except OverflowError:
            reasons.append(f"point {number}: ts: out of range (years 1-9999)")
    if reasons:
        shown = "; ".join(reasons[:_MAX_REASONS]) + ("; ..." if len(reasons) > _MAX_REASONS else "")
        warnings.append(
            f"skipped {len(reasons)} of {plural(len(points), 'point')} that failed validation "
            f"({shown})"
        )
    timed.sort(key=lambda item: item[0])
    same = sum(1 for a, b in itertools.pairwise(timed) if a[0] == b[0])
    if same:
        warnings.append(
            f"{plural(same, 'point')} {'has' if same == 1 else 'have'} the same time as the "
            f"point before {'it' if same == 1 else 'them'} "
            "(a relay keeps one position per device and time)"
        )
    return Track(device, name, [p for _, p in timed], warnings, len(reasons))


def _datetime_ms(dt: datetime) -> int:
    # Integer arithmetic on the datetime: going through float seconds turns .123 into .122.
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def _fill_times(
    coords: list[tuple[float, float]], known: list[int | None], kmh: float, start_ms: int
) -> tuple[list[int], str | None]:
    """Every point's time in ms, and a warning saying what was invented (None if nothing)."""
    timed = [i for i, t in enumerate(known) if t is not None]
    if len(timed) == len(known):
        return [t for t in known if t is not None], None
    cum = _cumulative_metres(coords)
    if not timed:
        ms_per_m = 3600.0 / kmh
        times: list[int] = []
        for d in cum:
            # Repeated points would otherwise share a time, and relays keep only one.
            times.append(max(start_ms + round(d * ms_per_m), times[-1] + 1 if times else start_ms))
        return times, (f"no point has a time: walked at {kmh:g} km/h from {ms_to_ts(start_ms)}")

    filled: list[int | None] = list(known)
    for a, b in itertools.pairwise(timed):
        ta, tb = known[a], known[b]
        assert ta is not None
        assert tb is not None
        span = cum[b] - cum[a]
        for i in range(a + 1, b):
            frac = (cum[i] - cum[a]) / span if span > 0 else (i - a) / (b - a)
            filled[i] = ta + math.floor((tb - ta) * frac)
    first, last = timed[0], timed[-1]
    t_first, t_last = known[first], known[last]
    assert t_first is not None
    assert t_last is not None
    metres, duration = cum[last] - cum[first], t_last - t_first
    ms_per_m = duration / metres if metres > 0 and duration > 0 else 3600.0 / kmh
    for i in range(first - 1, -1, -1):
        previous = filled[i + 1]
        assert previous is not None
        filled[i] = min(t_first - round((cum[first] - cum[i]) * ms_per_m), previous - 1)
    for i in range(last + 1, len(known)):
        previous = filled[i - 1]
        assert previous is not None
        filled[i] = max(t_last + round((cum[i] - cum[last]) * ms_per_m), previous + 1)

    missing = len(known) - len(timed)
    note = f"{missing} of {len(known)} points have no time: interpolated by distance"
    if first > 0 or last < len(known) - 1:
        note += f", and at {3600.0 / ms_per_m:.1f} km/h before or after the timed points"
    return [t for t in filled if t is not None], note


def _cumulative_metres(coords: list[tuple[float, float]]) -> list[float]:
    cum = [0.0]
    for (lat1, lon1), (lat2, lon2) in itertools.pairwise(coords):
        cum.append(cum[-1] + _haversine_m(lat1, lon1, lat2, lon2))
    return cum


def _haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle metres; 0 for coordinates that are not finite (validation drops them)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    d = 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, max(0.0, h))))
    return d if math.isfinite(d) else 0.0


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
