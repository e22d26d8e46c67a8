"""Overland batches (sans-I/O parsing), from a file or from the app's HTTP upload.

Overland (iOS, and its Android port) sends ``{"locations": [Feature, ...], "current":
Feature, "trip": {...}}``: each location a GeoJSON Point feature whose properties carry
``timestamp`` (ISO 8601, offsets like ``-0700`` too), ``altitude``, ``speed`` (m/s),
``course``, ``horizontal_accuracy`` (-1 for unknown, as Core Location says), ``device_id``,
``battery_level`` (0-1) and more. :func:`parse_location` maps one of them;
``geotrack serve``'s ``POST /overland`` and the ``overland`` file format both use it.

Mapping: ``speed`` -> speed, ``course`` -> heading, ``horizontal_accuracy`` -> acc,
``altitude`` -> alt (all dropped when negative, except altitude); ``battery_level`` becomes
attr ``batt`` in percent (as the OsmAnd endpoint has it), ``motion`` a comma-separated
attr, the other properties attrs under their own names. ``current`` is a location too (the
newest fix, which a later batch repeats: dedupe keeps one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.schema import MAX_ATTRS, Position, validate
from geotrack.sources.base import Format, Item, ReadOptions
from geotrack.sources.jsonstream import (
    as_device,
    file_time,
    head_text,
    number,
    skip,
    stem_device,
    stream_items,
)

__all__ = ["FORMAT", "parse_location", "parse_overland", "read_overland", "sniff_overland"]

_encode: Final = msgspec.json.Encoder().encode
#: Properties with a place in the schema (or consumed otherwise).
_FIELDS: Final = frozenset(
    {
        "timestamp",
        "altitude",
        "speed",
        "course",
        "horizontal_accuracy",
        "device_id",
        "battery_level",
        "motion",
    }
)


def sniff_overland(head: bytes) -> bool:
    """An Overland batch: an object with ``locations`` of GeoJSON Point features."""
    text = head_text(head)
    return (
        text.startswith("{")
        and '"locations"' in text
        and '"Feature"' in text
        and '"latitudeE7"' not in text
    )


def parse_location(feature: Any, device: str | None = None) -> Position:
    """The position of one Overland location (a GeoJSON Point feature).

    ``device`` names the device and wins over the feature's ``device_id``; with neither,
    InvalidParameter("device_id"). Every error names its field.
    """
    if not isinstance(feature, dict):
        raise InvalidParameter("location", "expected a GeoJSON feature object")
    geometry = feature.get("geometry")
    coordinates = geometry.get("coordinates") if isinstance(geometry, dict) else None
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        raise InvalidParameter("geometry.coordinates", "expected [lon, lat]")
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        raise InvalidParameter("properties", "expected an object")
    if device is None:
        raw = properties.get("device_id")
        if raw in (None, ""):
            raise InvalidParameter(
                "device_id",
                "empty: set a Device ID in Overland's settings, or add ?device=ID to the "
                "receiver URL",
            )
        device = as_device(raw, "device_id")
    if properties.get("timestamp") is None:
        raise InvalidParameter("timestamp", "required")
    position: dict[str, Any] = {
        "device": device,
        "lon": number(coordinates[0], "geometry.coordinates"),
        "lat": number(coordinates[1], "geometry.coordinates"),
        "ts": file_time(properties["timestamp"], "timestamp"),
    }
    if properties.get("altitude") is not None:
        position["alt"] = number(properties["altitude"], "altitude")
    for ours, theirs in (("speed", "speed"), ("heading", "course"), ("acc", "horizontal_accuracy")):
        if properties.get(theirs) is not None:
            value = number(properties[theirs], theirs)
            if value >= 0:
                position[ours] = value % 360 if ours == "heading" else value
    attrs: dict[str, Any] = {}
    if properties.get("battery_level") is not None:
        level = number(properties["battery_level"], "battery_level")
        if level >= 0:
            attrs["batt"] = round(level * 100)
    motion = properties.get("motion")
    if isinstance(motion, list) and motion:
        attrs["motion"] = ",".join(str(m) for m in motion)
    for key, value in properties.items():
        if key in _FIELDS or value is None or value == "":
            continue
        # Lists and objects (a newer app's extras) as JSON text, as the OwnTracks endpoint.
        scalar = isinstance(value, str | int | float | bool)
        attrs[key] = value if scalar else _encode(value).decode()
    if len(attrs) > MAX_ATTRS:
        raise InvalidParameter("properties", f"{len(attrs)} properties; at most {MAX_ATTRS}")
    if attrs:
        position["attrs"] = attrs
    return validate(position)


def parse_overland(
    body: Any, device: str | None = None
) -> tuple[list[Position], list[tuple[str, str]]]:
    """The positions of an Overland upload, and (where, reason) of each location refused.

    ``body`` is the decoded JSON; anything but an object with a ``locations`` list raises
    InvalidParameter. A location that fails is refused alone: the batch's others are kept.
    """
    if not isinstance(body, dict) or not isinstance(body.get("locations"), list):
        raise InvalidParameter("locations", 'expected {"locations": [GeoJSON features]}')
    positions: list[Position] = []
    refused: list[tuple[str, str]] = []
    located = [(f"locations[{i}]", f) for i, f in enumerate(body["locations"])]
    if body.get("current") is not None:
        located.append(("current", body["current"]))
    for where, feature in located:
        try:
            positions.append(parse_location(feature, device))
        except (GeotrackError, ValueError) as exc:
            refused.append((where, skip(exc, where).reason))
    return positions, refused


def read_overland(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The positions of a file holding one Overland batch (as the app uploads it).

    The device is ``--device``, else each location's ``device_id``, else the file's stem.
    """
    stem = stem_device(path, "overland")
    for n, feature in enumerate(stream_items(path, "locations.item"), 1):
        device = options.device
        if device is None:
            props = feature.get("properties") if isinstance(feature, dict) else None
            if not (isinstance(props, dict) and props.get("device_id") not in (None, "")):
                device = stem
        try:
            yield parse_location(feature, device)
        except (GeotrackError, ValueError) as exc:
            yield skip(exc, f"location {n}")


FORMAT: Final = Format(
    name="overland",
    description='Overland batches: {"locations": [GeoJSON Point features]}',
    suffixes=(".json",),
    sniff=sniff_overland,
    read=read_overland,
)
