"""The message schema: positions, frames, acks and subscription filters (sans-I/O).

This package parses, validates and serializes every message of the wire contract
(``docs/protocol.md``) and nothing else: it touches no socket, file or database, and
everything else in geotrack imports it. Its public names are all here; the modules say
where each lives:

- :mod:`~geotrack.schema.time`: canonical timestamps, RFC 3339, durations, with their
  memo caches;
- :mod:`~geotrack.schema.position`: :class:`Position`, its attrs and device ids;
- :mod:`~geotrack.schema.frames`: publish frames (:func:`decode_frame`), acks, encoding;
- :mod:`~geotrack.schema.filters`: subscription filters and the role of a path;
- :mod:`~geotrack.schema.events`: geofence events, their filter and the engine's state.
"""

from geotrack.schema.events import (
    EVENT_TYPES,
    EVENTS_PARAMETERS,
    FENCE_NAME_MAX,
    Event,
    EventFilter,
    FenceState,
    decode_events,
    encode_event,
    encode_events,
)
from geotrack.schema.filters import SUBSCRIBE_PARAMETERS, BBox, SubscribeFilter, literal_role
from geotrack.schema.frames import (
    MAX_BATCH,
    Ack,
    ParsedFrame,
    Rejection,
    decode_ack,
    decode_frame,
    decode_positions,
    encode_ack,
    encode_batch,
    encode_error,
    encode_position,
    json_type,
)
from geotrack.schema.position import (
    DEVICE_PATTERN,
    MAX_ATTR_KEY,
    MAX_ATTR_STRING,
    MAX_ATTRS,
    AttrValue,
    Position,
    validate,
)
from geotrack.schema.time import ms_to_ts, parse_duration, parse_time, parse_ts, ts_to_ms

__all__ = [
    "DEVICE_PATTERN",
    "EVENTS_PARAMETERS",
    "EVENT_TYPES",
    "FENCE_NAME_MAX",
    "MAX_ATTRS",
    "MAX_ATTR_KEY",
    "MAX_ATTR_STRING",
    "MAX_BATCH",
    "SUBSCRIBE_PARAMETERS",
    "Ack",
    "AttrValue",
    "BBox",
    "Event",
    "EventFilter",
    "FenceState",
    "ParsedFrame",
    "Position",
    "Rejection",
    "SubscribeFilter",
    "decode_ack",
    "decode_events",
    "decode_frame",
    "decode_positions",
    "encode_ack",
    "encode_batch",
    "encode_error",
    "encode_event",
    "encode_events",
    "encode_position",
    "json_type",
    "literal_role",
    "ms_to_ts",
    "parse_duration",
    "parse_time",
    "parse_ts",
    "ts_to_ms",
    "validate",
]
