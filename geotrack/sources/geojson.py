"""Read GeoJSON: geotrack's own export back, timed points, and lines with parallel times.

What becomes positions (coordinates are ``[lon, lat]`` or ``[lon, lat, alt]``):

- A ``LineString`` or ``MultiPoint`` whose times come as a parallel list: in
  ``properties.times`` (what :mod:`geotrack.export.geojson` writes), ``properties.coordTimes``
  (togeojson, older) or ``coordinateProperties.times`` (togeojson, newer; in the feature or
  its properties). A ``MultiLineString`` likewise, with a list of lists. Other parallel
  lists in ``coordinateProperties`` (``speed``, ``heading``, ``acc``, ``attrs`` and any
  other, togeojson's ``heart``, ``cads``, ``atemps``... as ``hr``, ``cad``, ``atemp``) give
  each point those fields, ``alt`` too for 2D coordinates. A ``Point`` with
  such a list of one time is read the same way (the export's device with one fix).
- A ``Point`` with a time in its properties (``time``, ``timestamp``, ``datetime``,
  ``date``, ``ts``, ``when``); its properties ``speed``, ``heading``/``course``,
  ``accuracy``/``acc``, ``altitude``/``ele`` fill those fields and the other scalar
  properties become attrs.

The device is ``--device``, else the feature's ``device`` (or ``device_id``) property, else
the file's stem. A line feature's ``name`` property is its track's name: its points carry
it in ``attrs["track"]``, as GPX, KML and TCX tracks' points do. A FeatureCollection
streams feature by feature: memory holds one feature.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from geotrack.errors import InvalidParameter, InvalidPosition, SourceError
from geotrack.schema import MAX_ATTRS, Position, validate
from geotrack.sources.base import Format, Item, Notice, ReadOptions, Skipped
from geotrack.sources.jsonstream import (
    as_device,
    file_time,
    head_text,
    number,
    read_head,
    skip,
    stem_device,
    stream_items,
)

__all__ = ["FORMAT", "read_geojson", "sniff_geojson"]

#: Property names that carry a Point feature's time, in the order they are looked for.
TIME_KEYS: Final = ("time", "timestamp", "datetime", "date", "ts", "when")
_DEVICE_KEYS: Final = ("device", "device_id")
_FIELD_KEYS: Final = {
    "speed": "speed",
    "heading": "heading",
    "course": "heading",
    "accuracy": "acc",
    "acc": "acc",
    "altitude": "alt",
    "alt": "alt",
    "ele": "alt",
    "elevation": "alt",
}
# togeojson's names for the lists it makes of GPX extensions and TCX fields, as the fields
# and attrs GPX's Garmin TrackPointExtension names (hr, cad, atemp) everywhere in geotrack.
_TOGEOJSON_NAMES: Final = {
    "heart": "hr",
    "heartRates": "hr",
    "cads": "cad",
    "cadences": "cad",
    "atemps": "atemp",
    "wtemps": "wtemp",
    "powers": "power",
    "speeds": "speed",
    "courses": "heading",
}
# Properties of a line feature that describe the feature, not its points.
_LINE_KEYS: Final = frozenset(
    {"times", "coordTimes", "coordinateProperties", "start", "end", "count", *_DEVICE_KEYS}
)
_encode: Final = msgspec.json.Encoder().encode
_TYPE_RE: Final = re.compile(
    r'"type"\s*:\s*"(FeatureCollection|Feature|Point|MultiPoint|LineString|MultiLineString)"'
)


def sniff_geojson(head: bytes) -> bool:
    """GeoJSON: a JSON object whose ``type`` is a GeoJSON type (FeatureCollection, ...)."""
    text = head_text(head)
    return text.startswith("{") and any(
        f'"{kind}"' in text
        for kind in ("FeatureCollection", "Feature", "LineString", "MultiLineString", "Point")
    )


def read_geojson(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The positions of a GeoJSON file's timed features (see the module's docstring)."""
    reader = _Reader(path, options)
    features = 0
    for feature in stream_items(path, "features.item"):
        features += 1
        yield from reader.feature(feature, f"feature {features}")
    if features:
        return
    # Not a FeatureCollection with features: one Feature, a bare geometry, or an empty
    # collection. Only a Feature or a geometry is read whole (it is one track), never a
    # large file of another kind given with --format geojson.
    kind_match = _TYPE_RE.search(read_head(path))
    kind = kind_match.group(1) if kind_match else None
    if kind == "FeatureCollection":
        yield Notice("the FeatureCollection has no features")
        return
    document = next(stream_items(path, ""), None) if kind else None
    if not isinstance(document, dict) or "type" not in document:
        raise SourceError(str(path), 'not GeoJSON: expected an object with a "type"')
    if document["type"] == "Feature":
        yield from reader.feature(document, "the feature")
    else:
        yield from reader.feature({"type": "Feature", "geometry": document}, "the geometry")


class _Reader:
    """Turns features into items, noting once what the user should know."""

    def __init__(self, path: Path, options: ReadOptions) -> None:
        self.options = options
        self.stem = stem_device(path, "geojson")
        self.dropped_attrs = False

    def feature(self, feature: Any, where: str) -> Iterator[Item]:
        if not isinstance(feature, dict):
            yield Skipped("not a GeoJSON feature", where)
            return
        geometry = feature.get("geometry")
        properties = feature.get("properties") or {}
        if not isinstance(geometry, dict) or not isinstance(properties, dict):
            yield Skipped("feature without a geometry", where)
            return
        try:
            device = self._device(properties)
        except InvalidParameter as exc:
            yield skip(exc, where)
            return
        kind = geometry.get("type")
        coordinates = geometry.get("coordinates")
        if not isinstance(coordinates, list):
            yield Skipped(f"{kind} without coordinates", where)
            return
        if kind == "Point" and _times(feature, properties) is not None:
            # geotrack's export writes a device's single fix so, with its times list.
            extra = _coordinate_properties(feature, properties)
            times = _times(feature, properties)
            yield from self._line(device, [coordinates], times, extra, properties, where)
        elif kind == "Point":
            yield from self._point(device, coordinates, properties, where)
        elif kind in ("LineString", "MultiPoint"):
            extra = _coordinate_properties(feature, properties)
            times = _times(feature, properties)
            yield from self._line(device, coordinates, times, extra, properties, where)
        elif kind == "MultiLineString":
            extra = _coordinate_properties(feature, properties)
            times = _times(feature, properties)
            for n, line in enumerate(coordinates):
                line_times = times[n] if isinstance(times, list) and n < len(times) else None
                line_extra = {
                    k: v[n] for k, v in extra.items() if isinstance(v, list) and n < len(v)
                }
                yield from self._line(
                    device, line, line_times, line_extra, properties, f"{where} line {n + 1}"
                )
        else:
            yield Skipped(f"a {kind} geometry has no track", where)

    def _device(self, properties: dict[str, Any]) -> str:
        if self.options.device:
            return self.options.device
        for key in _DEVICE_KEYS:
            raw = properties.get(key)
            if raw not in (None, ""):
                return as_device(raw, key)
        return self.stem

    def _point(
        self, device: str, coordinates: list[Any], properties: dict[str, Any], where: str
    ) -> Iterator[Item]:
        stamp = next((properties[k] for k in TIME_KEYS if properties.get(k) is not None), None)
        if stamp is None:
            yield Skipped("no time", where)
            return
        fields: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for key, value in properties.items():
            if key in TIME_KEYS or key in _LINE_KEYS or value is None:
                continue
            if key in _FIELD_KEYS and isinstance(value, int | float):
                fields.setdefault(_FIELD_KEYS[key], value)
            elif key == "attrs" and isinstance(value, dict):
                attrs.update(value)
            else:
                attrs[key] = _attr(value)
        if len(attrs) > MAX_ATTRS:
            if not self.dropped_attrs:
                self.dropped_attrs = True
                yield Notice(
                    f"features have more than {MAX_ATTRS} properties: the first "
                    f"{MAX_ATTRS} of each are kept as attrs"
                )
            attrs = dict(list(attrs.items())[:MAX_ATTRS])
        try:
            yield _position(device, coordinates, stamp, fields, attrs, self.options)
        except (InvalidParameter, InvalidPosition, ValueError) as exc:
            yield skip(exc, where)

    def _line(
        self,
        device: str,
        coordinates: Any,
        times: Any,
        extra: dict[str, Any],
        properties: dict[str, Any],
        where: str,
    ) -> Iterator[Item]:
        if not isinstance(coordinates, list):
            yield Skipped("coordinates are not a list", where)
            return
        if not isinstance(times, list):
            yield Skipped("no times", f"{where} ({len(coordinates)} points)")
            return
        # A line's name is its track's, kept as GPX, KML and TCX tracks keep theirs.
        name = properties.get("name")
        track = name if isinstance(name, str) and name else None
        if len(times) != len(coordinates):
            yield Notice(
                f"{where}: {len(coordinates)} coordinates but {len(times)} times; "
                "points without a time are skipped"
            )
        for i, point in enumerate(coordinates):
            at = f"{where} point {i + 1}"
            if i >= len(times) or times[i] is None:
                yield Skipped("no time", at)
                continue
            fields: dict[str, Any] = {}
            attrs: dict[str, Any] = {}
            for name, values in extra.items():
                value = values[i] if isinstance(values, list) and i < len(values) else None
                if value is None:
                    continue
                key = _TOGEOJSON_NAMES.get(name, name)
                if key in ("alt", "speed", "heading", "acc"):
                    fields[key] = value
                elif key == "attrs" and isinstance(value, dict):
                    attrs.update(value)
                else:
                    attrs[key] = _attr(value)
            if track is not None:
                attrs.setdefault("track", track)
            try:
                yield _position(device, point, times[i], fields, attrs, self.options)
            except (InvalidParameter, InvalidPosition, ValueError) as exc:
                yield skip(exc, at)


def _times(feature: dict[str, Any], properties: dict[str, Any]) -> Any:
    for holder in (properties, feature):
        nested = holder.get("coordinateProperties")
        if isinstance(nested, dict) and nested.get("times") is not None:
            return nested["times"]
    for key in ("times", "coordTimes"):
        if properties.get(key) is not None:
            return properties[key]
    return None


def _coordinate_properties(feature: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for holder in (feature, properties):
        nested = holder.get("coordinateProperties")
        if isinstance(nested, dict):
            found.update({k: v for k, v in nested.items() if k != "times"})
    return found


def _attr(value: Any) -> Any:
    """A property as an attr: scalars as they are, lists and objects as JSON text."""
    if isinstance(value, list | dict):
        return _encode(value).decode()
    return value


def _position(
    device: str,
    point: Any,
    stamp: Any,
    fields: dict[str, Any],
    attrs: dict[str, Any],
    options: ReadOptions,
) -> Position:
    if not isinstance(point, list) or len(point) < 2:
        raise InvalidParameter("coordinates", "expected [lon, lat] or [lon, lat, alt]")
    position: dict[str, Any] = {
        "device": device,
        "lon": number(point[0], "lon"),
        "lat": number(point[1], "lat"),
        "ts": file_time(stamp, "time", options.tz),
    }
    if len(point) > 2 and point[2] is not None:
        position["alt"] = number(point[2], "alt")
    elif fields.get("alt") is not None:
        position["alt"] = number(fields["alt"], "alt")
    for key in ("speed", "heading", "acc"):
        if key in fields:
            position[key] = number(fields[key], key)
    if attrs:
        position["attrs"] = attrs
    return validate(position)


FORMAT: Final = Format(
    name="geojson",
    description="GeoJSON: geotrack's export, timed Point features, lines with parallel times",
    suffixes=(".geojson", ".json"),
    sniff=sniff_geojson,
    read=read_geojson,
)
