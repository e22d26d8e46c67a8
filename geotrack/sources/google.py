"""Read Google location history: every shape Google has shipped, streamed.

- **Records.json** (Takeout until 2024; ``Location History.json`` before 2019):
  ``{"locations": [{latitudeE7, longitudeE7, timestampMs | timestamp, accuracy, altitude,
  velocity, heading, verticalAccuracy, source, deviceTag, activity, ...}]}``.
- **Semantic Location History** (Takeout's monthly ``2019_MAY.json``):
  ``{"timelineObjects": [{placeVisit | activitySegment}]}`` with E7 locations, durations in
  milliseconds (``startTimestampMs``) or ISO (``startTimestamp``), ``simplifiedRawPath``
  points with their own times and ``waypointPath`` waypoints without any.
- **The on-device Timeline export** (Google Maps, 2024 on): Android's object with
  ``semanticSegments`` (``timelinePath`` points ``"48.85°, 2.29°"`` with ISO times, visits,
  activities) and ``rawSignals`` (``position.LatLng``), and iOS's array of segments whose
  points are ``"geo:48.85,2.29"`` with minutes from the segment's start.

Each fix, raw signal, path point, visit (at its start and at its end) and activity (its
start and end) is a position; a visit's place and an activity's type land in attrs.
Waypoints, which Google stores without times, get times along the segment's duration in
proportion to the distance travelled (said in a notice). The device is ``--device`` or the
file's stem (each further phone of a Records.json ``STEM-TAG``, by its ``deviceTag``).

Google's files can be a gigabyte: this module streams a file's elements one at a time
(ijson), so memory stays flat, and :mod:`geotrack.sources.google_parse` (sans-I/O) turns
each into items.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from geotrack._text import plural
from geotrack.errors import SourceError
from geotrack.sources.base import Format, Item, Notice, ReadOptions
from geotrack.sources.google_parse import Parser
from geotrack.sources.jsonstream import head_text, read_head, stem_device, stream_items

__all__ = ["FORMAT", "read_google", "sniff_google"]


def sniff_google(head: bytes) -> bool:
    """Google location history: one of its top-level keys near the start of the file."""
    text = head_text(head)
    if text.startswith("{"):
        return (
            ('"locations"' in text and '"latitudeE7"' in text)
            or '"timelineObjects"' in text
            or '"semanticSegments"' in text
            or '"rawSignals"' in text
        )
    return (
        text.startswith("[")
        and '"startTime"' in text
        and ('"timelinePath"' in text or '"visit"' in text or '"activity"' in text)
    )


def read_google(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The positions of a Google location history file (any of its shapes)."""
    device = options.device or stem_device(path, "google")
    text = read_head(path)
    parser = Parser(device, options)
    if text.startswith("["):
        for n, segment in enumerate(stream_items(path, "item"), 1):
            yield from parser.once(parser.segment(segment, f"segment {n}"))
    elif '"timelineObjects"' in text:
        for n, item in enumerate(stream_items(path, "timelineObjects.item"), 1):
            yield from parser.once(parser.timeline_object(item, f"timelineObjects {n}"))
    elif '"semanticSegments"' in text or '"rawSignals"' in text:
        # Two passes, one per array: the C parser skips the other fast, and neither is
        # held in memory.
        for n, segment in enumerate(stream_items(path, "semanticSegments.item"), 1):
            yield from parser.once(parser.segment(segment, f"semanticSegments {n}"))
        for n, signal in enumerate(stream_items(path, "rawSignals.item"), 1):
            yield from parser.raw_signal(signal, f"rawSignals {n}")
    elif text.startswith("{"):
        for n, record in enumerate(stream_items(path, "locations.item"), 1):
            yield from parser.record(record, f"locations {n}")
    else:
        raise SourceError(str(path), "not Google location history: expected a JSON object")
    if parser.tags is not None and len(parser.tags) > 1:
        devices = ", ".join(sorted(parser.tags.values()))
        yield Notice(
            f"{len(parser.tags)} phones in the file (deviceTag), stored as {devices}: "
            "give --device to store them as one"
        )
    if parser.shared:
        yield Notice(
            f"{plural(parser.shared, 'segment end')} at the time the next segment starts "
            "read once (the first of the two kept)"
        )
    if parser.waypoints:
        yield Notice(
            f"{plural(parser.waypoints, 'waypoint')} without a time got one along their "
            "segment's duration, in proportion to the distance"
        )


FORMAT: Final = Format(
    name="google",
    description="Google location history: Records.json, Semantic Location History, Timeline",
    suffixes=(".json",),
    sniff=sniff_google,
    read=read_google,
)
