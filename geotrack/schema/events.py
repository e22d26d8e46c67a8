"""Geofence events: what ``/events`` sends, what the store keeps (sans-I/O).

An :class:`Event` says that a device entered or left a fence, decided by one of its fixes:
``ts``, ``lat`` and ``lon`` are that fix's. Its identity is (device, fence, ts, type): two
relays that decide the same transition from the same fix produce the same event, and the
store keeps it once (``docs/protocol.md``, section Events).

A :class:`FenceState` is what the fence engine remembers of one device and one fence
between fixes, so that it survives a restart: whether the device is inside, and since
when (device time) it has been seen on the other side without the dwell having passed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from geotrack.schema import position as _position
from geotrack.schema import time as _time
from geotrack.schema.position import DEVICE_PATTERN
from geotrack.schema.time import parse_ts

__all__ = [
    "EVENTS_PARAMETERS",
    "EVENT_TYPES",
    "FENCE_NAME_MAX",
    "Event",
    "EventFilter",
    "FenceState",
    "decode_events",
    "encode_event",
    "encode_events",
]

EVENT_TYPES: Final = ("enter", "exit")
#: The query parameters ``/events`` takes besides ``since`` (and ``token``).
EVENTS_PARAMETERS: Final = ("device", "fence")
#: A fence name: what a URL path segment and a log line carry without quoting trouble.
FENCE_NAME_MAX: Final = 128

_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)

EventType = Literal["enter", "exit"]


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One transition of one device across one fence, decided by the fix at ``ts``.

    ``ts`` is normalized to the canonical timestamp string (as a Position's), so two
    events are the same transition exactly when (device, fence, ts, type) are equal.
    """

    type: EventType
    device: str
    fence: str
    ts: str
    lat: float
    lon: float

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"type: must be one of {', '.join(EVENT_TYPES)}")
        if not self.fence or len(self.fence) > FENCE_NAME_MAX:
            raise ValueError(f"fence: must be 1 to {FENCE_NAME_MAX} characters")
        # The engine makes events of stored positions: their device and ts were checked
        # then, and the schema's memo caches know them.
        device = self.device
        if device not in _position._known_devices and not (
            isinstance(device, str) and _DEVICE_RE.match(device)
        ):
            raise ValueError("device: must match " + DEVICE_PATTERN)
        ts = self.ts
        if not (type(ts) is str and (ts in _time._ts_ms or ts in _time._ts_ms_old)):
            try:
                msgspec.structs.force_setattr(self, "ts", parse_ts(ts))
            except ValueError as exc:
                raise ValueError(f"ts: {exc}") from None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The identity the store deduplicates on: (device, fence, ts, type)."""
        return (self.device, self.fence, self.ts, self.type)


class FenceState(msgspec.Struct, frozen=True):
    """What the engine remembers of one device and one fence.

    ``inside`` is the state last reported (the last event was ``enter``). ``pending_ms``
    is the device time (Unix ms) of the first fix seen clearly on the other side since
    then, while the dwell has not yet passed; None when there is none. ``last_ms`` is the
    device time of the latest fix evaluated for this device: a fix older than it is late
    and decides nothing.
    """

    device: str
    fence: str
    inside: bool = False
    pending_ms: int | None = None
    last_ms: int | None = None


class EventFilter(msgspec.Struct, frozen=True):
    """Which events a subscriber of ``/events`` wants: these devices, these fences.

    An empty set means no narrowing on that field.
    """

    devices: frozenset[str] = frozenset()
    fences: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes both filters."""
        return (not self.devices or event.device in self.devices) and (
            not self.fences or event.fence in self.fences
        )


_encoder: Final = msgspec.json.Encoder()
_events_decoder: Final = msgspec.json.Decoder(list[Event])


def encode_event(event: Event) -> bytes:
    """One event as JSON: ``{"type":…,"device":…,"fence":…,"ts":…,"lat":…,"lon":…}``."""
    return _encoder.encode(event)


def encode_events(events: Iterable[Event]) -> bytes:
    """A frame of ``/events``: a JSON array of events."""
    return _encoder.encode(list(events))


def decode_events(data: bytes | str) -> list[Event]:
    """The events of an ``/events`` frame; ValueError naming what is wrong."""
    try:
        return _events_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
