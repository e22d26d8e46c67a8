"""Google location history's elements as positions (sans-I/O: decoded JSON in, items out).

:mod:`geotrack.sources.google` streams a file's elements and hands each to a
:class:`Parser` method for its shape; docs/import.md has the mapping of every field.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any, Final

from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.schema import Position, ms_to_ts, ts_to_ms, validate
from geotrack.sources.base import Item, ReadOptions, haversine_m
from geotrack.sources.jsonstream import E7, file_time, number, optional, required, skip

__all__ = ["Parser", "parse_point"]

# Google's E7 integers were sometimes written as unsigned 32-bit numbers: a latitude
# above 90° (longitude above 180°) is that overflow, and 2**32 below it the real value.
_OVERFLOW: Final = 2**32
_POINT_RE: Final = re.compile(
    r"^\s*(?:geo:)?\s*([+-]?\d+(?:\.\d*)?)\s*°?\s*,\s*([+-]?\d+(?:\.\d*)?)\s*°?\s*$"
)
# Keys of a Records.json location that have a place in the schema.
_RECORD_FIELDS: Final = frozenset(
    {
        "latitudeE7",
        "longitudeE7",
        "timestampMs",
        "timestamp",
        "accuracy",
        "altitude",
        "velocity",
        "heading",
        "activity",
    }
)


def parse_point(text: object, name: str) -> tuple[float, float]:
    """(lat, lon) of a Timeline point: ``"48.8584°, 2.2945°"`` or ``"geo:48.8584,2.2945"``."""
    if isinstance(text, dict):
        text = text.get("latLng") or text.get("LatLng")
    match = _POINT_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidParameter(name, 'expected a point like "48.85°, 2.29°" or "geo:48.85,2.29"')
    return float(match.group(1)), float(match.group(2))


def _e7(value: object, name: str, limit: int) -> float:
    raw = value if isinstance(value, int) and not isinstance(value, bool) else number(value, name)
    if raw > limit * E7:
        raw -= _OVERFLOW  # before dividing, so that the degrees come out as exact as written
    return raw / E7


class Parser:
    """Turns the elements of one file into items; counts what the notices report.

    Each method takes one decoded JSON element of its shape (a Records.json location, a
    ``timelineObjects`` entry, a Timeline segment or raw signal) and yields its items.
    """

    def __init__(self, device: str, options: ReadOptions) -> None:
        self.device = device
        self.tz = options.tz
        self.waypoints = 0
        # Records.json's deviceTag -> device id, unless --device merges them (see record()).
        self.tags: dict[object, str] | None = None if options.device else {}
        self.shared = 0
        self._last_ts = ""

    def once(self, items: Iterator[Item]) -> Iterator[Item]:
        """The items, less a position at the very time of the one before it.

        A segment ends when the next one starts: an activity's end and the visit after it
        (or a path's last point) are two points at one time, which a store keeps once and a
        replay cannot place; the first is kept.
        """
        for item in items:
            if isinstance(item, Position):
                if item.time == self._last_ts:
                    self.shared += 1
                    continue
                self._last_ts = item.time
            yield item

    def _position(
        self, lat: float, lon: float, ts: str, device: str | None = None, **rest: Any
    ) -> Position:
        fields = {k: v for k, v in rest.items() if v is not None}
        attrs = {k: v for k, v in fields.pop("attrs", {}).items() if v is not None}
        if attrs:
            fields["attrs"] = attrs
        position = {"device": device or self.device, "lat": lat, "lon": lon, "ts": ts}
        return validate(position | fields)

    def tagged(self, tag: object) -> str | None:
        """The device of a Records.json ``deviceTag``: each phone of the account its own.

        The first tag in the file is the file's device, each other one ``DEVICE-TAG``, so
        two phones' fixes do not zigzag as one track; with ``--device`` all are that one.
        """
        if self.tags is None or not isinstance(tag, int | str) or isinstance(tag, bool):
            return None
        found = self.tags.get(tag)
        if found is None:
            found = self.tags[tag] = f"{self.device[:40]}-{tag}"[:64] if self.tags else self.device
        return found

    # -- Records.json ------------------------------------------------------------------

    def record(self, record: Any, where: str) -> Iterator[Item]:
        try:
            if not isinstance(record, dict):
                raise InvalidParameter("location", "expected an object")
            stamp = record.get("timestamp", record.get("timestampMs"))
            if stamp is None:
                raise InvalidParameter("timestamp", "required")
            attrs: dict[str, Any] = {
                k: v for k, v in record.items() if k not in _RECORD_FIELDS and _scalar(v)
            }
            activity = _top_activity(record.get("activity"))
            if activity:
                attrs["activity"] = activity
            heading = optional(record, "heading")
            speed = optional(record, "velocity")
            accuracy = optional(record, "accuracy")
            yield self._position(
                _e7(required(record, "latitudeE7"), "latitudeE7", 90),
                _e7(required(record, "longitudeE7"), "longitudeE7", 180),
                file_time(stamp, "timestamp", self.tz),
                device=self.tagged(record.get("deviceTag")),
                alt=optional(record, "altitude"),
                acc=accuracy if accuracy is None or accuracy >= 0 else None,
                speed=speed if speed is None or speed >= 0 else None,
                heading=None if heading is None or heading < 0 else heading % 360,
                attrs=attrs,
            )
        except (GeotrackError, ValueError) as exc:
            yield skip(exc, where)

    # -- Semantic Location History -----------------------------------------------------

    def timeline_object(self, item: Any, where: str) -> Iterator[Item]:
        if not isinstance(item, dict):
            yield skip(InvalidParameter("timelineObject", "expected an object"), where)
            return
        if isinstance(item.get("placeVisit"), dict):
            yield from self._place_visit(item["placeVisit"], f"{where} placeVisit")
        if isinstance(item.get("activitySegment"), dict):
            yield from self._activity_segment(item["activitySegment"], f"{where} activitySegment")

    def _duration(self, holder: dict[str, Any]) -> tuple[str, str]:
        duration = holder.get("duration")
        if not isinstance(duration, dict):
            raise InvalidParameter("duration", "required")
        ends = []
        for edge in ("start", "end"):
            stamp = duration.get(f"{edge}Timestamp", duration.get(f"{edge}TimestampMs"))
            if stamp is None:
                raise InvalidParameter(f"duration.{edge}Timestamp", "required")
            ends.append(file_time(stamp, f"duration.{edge}Timestamp", self.tz))
        return ends[0], ends[1]

    def _place_visit(self, visit: dict[str, Any], where: str) -> Iterator[Item]:
        try:
            start, end = self._duration(visit)
            location = visit.get("location")
            if not isinstance(location, dict):
                location = {}
            lat = location.get("latitudeE7", visit.get("centerLatE7"))
            lon = location.get("longitudeE7", visit.get("centerLngE7"))
            if lat is None or lon is None:
                raise InvalidParameter("location.latitudeE7", "required")
            attrs = {
                "visit": True,
                "place": location.get("name"),
                "address": location.get("address"),
                "placeId": location.get("placeId"),
            }
            point = (_e7(lat, "latitudeE7", 90), _e7(lon, "longitudeE7", 180))
            for ts in dict.fromkeys((start, end)):
                yield self._position(*point, ts, attrs=attrs)
        except (GeotrackError, ValueError) as exc:
            yield skip(exc, where)
        yield from self._raw_path(visit, where, {"visit": True})

    def _activity_segment(self, segment: dict[str, Any], where: str) -> Iterator[Item]:
        activity = segment.get("activityType")
        guesses = segment.get("activities")
        if activity is None and isinstance(guesses, list) and guesses:
            activity = guesses[0].get("activityType") if isinstance(guesses[0], dict) else None
        attrs = {"activity": activity if isinstance(activity, str) else None}
        try:
            start, end = self._duration(segment)
        except (GeotrackError, ValueError) as exc:
            yield skip(exc, where)
            yield from self._raw_path(segment, where, attrs)
            return
        for edge, ts in (("startLocation", start), ("endLocation", end)):
            location = segment.get(edge)
            if not isinstance(location, dict) or not location:
                continue  # Google leaves them out, or empty ({}), where it did not know
            try:
                point = (
                    _e7(required(location, "latitudeE7"), f"{edge}.latitudeE7", 90),
                    _e7(required(location, "longitudeE7"), f"{edge}.longitudeE7", 180),
                )
                yield self._position(*point, ts, attrs=attrs)
            except (GeotrackError, ValueError) as exc:
                yield skip(exc, f"{where} {edge}")
        yield from self._raw_path(segment, where, attrs)
        waypoints = (segment.get("waypointPath") or {}).get("waypoints")
        if isinstance(waypoints, list) and len(waypoints) > 2:
            yield from self._waypoints(waypoints, start, end, attrs, f"{where} waypointPath")

    def _raw_path(
        self, holder: dict[str, Any], where: str, attrs: dict[str, Any]
    ) -> Iterator[Item]:
        points = (holder.get("simplifiedRawPath") or {}).get("points")
        if not isinstance(points, list):
            return
        for n, point in enumerate(points, 1):
            try:
                if not isinstance(point, dict):
                    raise InvalidParameter("point", "expected an object")
                stamp = point.get("timestamp", point.get("timestampMs"))
                if stamp is None:
                    raise InvalidParameter("timestamp", "required")
                yield self._position(
                    _e7(required(point, "latE7"), "latE7", 90),
                    _e7(required(point, "lngE7"), "lngE7", 180),
                    file_time(stamp, "timestamp", self.tz),
                    acc=optional(point, "accuracyMeters"),
                    attrs=attrs,
                )
            except (GeotrackError, ValueError) as exc:
                yield skip(exc, f"{where} simplifiedRawPath point {n}")

    def _waypoints(
        self, waypoints: list[Any], start: str, end: str, attrs: dict[str, Any], where: str
    ) -> Iterator[Item]:
        """The waypoints between the first and the last, timed by distance along the path."""
        try:
            points = [
                (_e7(required(w, "latE7"), "latE7", 90), _e7(required(w, "lngE7"), "lngE7", 180))
                for w in waypoints
            ]
        except (GeotrackError, ValueError, TypeError, AttributeError) as exc:
            yield skip(InvalidParameter("waypoints", str(exc)), where)
            return
        along = [0.0]
        for a, b in itertools.pairwise(points):
            along.append(along[-1] + haversine_m(*a, *b))
        start_ms, end_ms = ts_to_ms(start), ts_to_ms(end)
        total = along[-1]
        if total <= 0 or end_ms - start_ms < len(points):
            return
        for n in range(1, len(points) - 1):
            ms = start_ms + round((end_ms - start_ms) * along[n] / total)
            if start_ms < ms < end_ms:
                self.waypoints += 1
                timed = {**attrs, "waypoint": True}
                try:
                    yield self._position(*points[n], ms_to_ts(ms), attrs=timed)
                except (GeotrackError, ValueError) as exc:
                    yield skip(exc, f"{where} {n + 1}")

    # -- the on-device Timeline export -------------------------------------------------

    def segment(self, segment: Any, where: str) -> Iterator[Item]:
        if not isinstance(segment, dict):
            yield skip(InvalidParameter("segment", "expected an object"), where)
            return
        try:
            start = file_time(required(segment, "startTime"), "startTime", self.tz)
            end = file_time(segment.get("endTime", segment["startTime"]), "endTime", self.tz)
        except (GeotrackError, ValueError) as exc:
            yield skip(exc, where)
            return
        path = segment.get("timelinePath")
        if isinstance(path, list):
            for n, point in enumerate(path, 1):
                yield from self._path_point(point, start, f"{where} timelinePath {n}")
        visit = segment.get("visit")
        if isinstance(visit, dict):
            candidate = visit.get("topCandidate") or {}
            attrs = {
                "visit": True,
                "semanticType": candidate.get("semanticType"),
                "placeId": candidate.get("placeId", candidate.get("placeID")),
            }
            try:
                point = parse_point(candidate.get("placeLocation"), "visit.placeLocation")
                for ts in dict.fromkeys((start, end)):
                    yield self._position(*point, ts, attrs=attrs)
            except (GeotrackError, ValueError) as exc:
                yield skip(exc, f"{where} visit")
        activity = segment.get("activity")
        if isinstance(activity, dict):
            kind = (activity.get("topCandidate") or {}).get("type")
            attrs = {"activity": kind if isinstance(kind, str) else None}
            for edge, ts in (("start", start), ("end", end)):
                try:
                    point = parse_point(activity.get(edge), f"activity.{edge}")
                    yield self._position(*point, ts, attrs=attrs)
                except (GeotrackError, ValueError) as exc:
                    yield skip(exc, f"{where} activity {edge}")

    def _path_point(self, point: Any, start: str, where: str) -> Iterator[Item]:
        try:
            if not isinstance(point, dict):
                raise InvalidParameter("point", "expected an object")
            if point.get("time") is not None:
                ts = file_time(point["time"], "time", self.tz)
            else:
                minutes = number(
                    required(point, "durationMinutesOffsetFromStartTime"),
                    "durationMinutesOffsetFromStartTime",
                )
                ts = ms_to_ts(ts_to_ms(start) + round(minutes * 60_000))
            yield self._position(*parse_point(point.get("point"), "point"), ts)
        except (GeotrackError, ValueError) as exc:
            yield skip(exc, where)

    def raw_signal(self, signal: Any, where: str) -> Iterator[Item]:
        position = signal.get("position") if isinstance(signal, dict) else None
        if not isinstance(position, dict):
            return  # wifiScan, activityRecord: no position in them
        try:
            speed = optional(position, "speedMetersPerSecond")
            yield self._position(
                *parse_point(position.get("LatLng", position.get("latLng")), "position.LatLng"),
                file_time(required(position, "timestamp"), "position.timestamp", self.tz),
                acc=optional(position, "accuracyMeters"),
                alt=optional(position, "altitudeMeters"),
                speed=speed if speed is None or speed >= 0 else None,
                attrs={"source": position.get("source")},
            )
        except (GeotrackError, ValueError) as exc:
            yield skip(exc, where)


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _top_activity(activity: object) -> str | None:
    """The most likely activity type of a Records.json location's first activity guess."""
    if not isinstance(activity, list) or not activity or not isinstance(activity[0], dict):
        return None
    guesses = activity[0].get("activity")
    if not isinstance(guesses, list) or not guesses or not isinstance(guesses[0], dict):
        return None
    kind = guesses[0].get("type")
    return kind if isinstance(kind, str) else None
