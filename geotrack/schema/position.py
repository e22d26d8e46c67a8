"""Position: one fix of one device, its fields, attrs and device ids (sans-I/O).

A position's ``ts`` is normalized on construction to its canonical form
(:mod:`geotrack.schema.time`), so two positions are duplicates exactly when their ``device``
and canonical ``ts`` are equal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec

from geotrack.errors import InvalidPosition
from geotrack.schema import time as _time
from geotrack.schema.time import _MAX_S, _MIN_S, _TS_CACHED, ms_to_ts, parse_ts, ts_to_ms

__all__ = [
    "DEVICE_PATTERN",
    "MAX_ATTRS",
    "MAX_ATTR_KEY",
    "MAX_ATTR_STRING",
    "AttrValue",
    "Position",
    "validate",
]

MAX_ATTRS: Final = 32
#: Where the contract is silent, geotrack bounds attrs: a key of at most 64 characters and
#: a string value of at most 1024, so one position cannot grow a subscriber's frame
#: beyond what common clients accept.
MAX_ATTR_KEY: Final = 64
MAX_ATTR_STRING: Final = 1024
# \Z, not $: $ also matches before a trailing newline.
DEVICE_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}\Z"
_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)
_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
AttrValue = Annotated[str, msgspec.Meta(max_length=MAX_ATTR_STRING)] | _INT64 | float | bool | None
_AttrKey = Annotated[str, msgspec.Meta(max_length=MAX_ATTR_KEY)]

_floor: Final = math.floor

_SURROGATES_MESSAGE: Final = "attrs: strings must be valid Unicode (no lone surrogates)"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Position(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One fix of one device: the same schema on the wire, in the store and in exports.

    Construction validates every field and normalizes ``ts`` to its canonical string; after
    that ``ts`` is always a ``str`` (the ``float`` in its type is accepted input only).
    """

    # The pattern is checked in __post_init__, mostly by a set look-up: msgspec's check (a
    # call into re per position) was a fifth of decoding a frame. _StrictPosition keeps it
    # in the type, for the messages (see _convert).
    device: str
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]
    ts: str | float
    speed: Annotated[float, msgspec.Meta(ge=0)] | None = None
    heading: Annotated[float, msgspec.Meta(ge=0, lt=360)] | None = None
    alt: float | None = None
    acc: Annotated[float, msgspec.Meta(ge=0)] | None = None
    attrs: Annotated[dict[_AttrKey, AttrValue], msgspec.Meta(max_length=MAX_ATTRS)] | None = None

    def __post_init__(self) -> None:
        device = self.device
        if device not in _known_devices:
            if not (isinstance(device, str) and _DEVICE_RE.match(device)):
                raise ValueError(_DEVICE_MESSAGE)
            if len(_known_devices) >= _DEVICES_CACHED:
                _known_devices.clear()
            _known_devices.add(device)
        # msgspec's range checks let NaN and infinities through where no bound applies (and
        # the lenient decoder can produce them), so check finiteness for every number here.
        # x * 0.0 is 0.0 for a finite x and NaN otherwise: one expression checks them all,
        # and only a failure takes the loop that names the field.
        speed, heading, alt, acc = self.speed, self.heading, self.alt, self.acc
        try:
            finite = (
                self.lat * 0.0
                + self.lon * 0.0
                + (0.0 if speed is None else speed * 0.0)
                + (0.0 if heading is None else heading * 0.0)
                + (0.0 if alt is None else alt * 0.0)
                + (0.0 if acc is None else acc * 0.0)
            ) == 0.0
        except Exception:
            finite = False
        if not finite:
            for name in ("lat", "lon", "speed", "heading", "alt", "acc"):
                value = getattr(self, name)
                if value is not None and not math.isfinite(value):
                    raise ValueError(f"{name}: must be a finite number")
        ts = self.ts
        if type(ts) is float and _MIN_S <= ts <= _MAX_S:
            # parse_ts of a finite number in range (most fixes), inlined, noting the ms in
            # the time module's cache (through the module: a new generation rebinds it).
            ms = _floor(ts * 1000)
            if (ms + 1) / 1000 == ts:
                ms += 1
            text = ms_to_ts(ms)
            if len(_time._ts_ms) >= _TS_CACHED:
                _time._new_ts_ms_generation()
            _time._ts_ms[text] = ms
            self.ts = text
        else:
            try:
                self.ts = parse_ts(ts)
            except ValueError as exc:
                raise ValueError(f"ts: {exc}") from None
        if self.attrs:
            for key, value in self.attrs.items():
                # value - value is 0.0 for a finite float, NaN for NaN and the infinities.
                if isinstance(value, float) and not value - value == 0.0:
                    raise ValueError(f"attrs.{key}: must be a finite number")
                # JSON text may spell lone surrogates (\ud800), which no UTF-8 store holds;
                # ASCII text holds none.
                if not ((type(key) is str and key.isascii()) or _utf8(key)) or (
                    isinstance(value, str) and not (value.isascii() or _utf8(value))
                ):
                    raise ValueError(_SURROGATES_MESSAGE)

    @property
    def time(self) -> str:
        """The canonical timestamp string (``ts`` typed as ``str``)."""
        return self.ts if isinstance(self.ts, str) else parse_ts(self.ts)

    @property
    def ts_ms(self) -> int:
        """The timestamp in Unix milliseconds."""
        return ts_to_ms(self.time)

    @property
    def key(self) -> tuple[str, str]:
        """The identity used for deduplication: (device, canonical ts)."""
        return (self.device, self.time)


# Device names seen valid: most positions skip the regular expression.
_DEVICES_CACHED: Final = 4096
_known_devices: set[str] = set()
# What msgspec says of a device not matching DEVICE_PATTERN.
_DEVICE_MESSAGE: Final = f"device: expected `str` matching regex {DEVICE_PATTERN!r}"


class _StrictPosition(Position):
    """Position with the device pattern in its type: it accepts exactly what Position does
    and fails the same way, except that a bad device fails where msgspec meets it (before
    any field that follows it) instead of after every field. Messages come from here."""

    device: Annotated[str, msgspec.Meta(pattern=DEVICE_PATTERN)]


def _convert(item: Any) -> Position:
    """msgspec.convert to a Position, with the message _StrictPosition gives if it fails."""
    try:
        return msgspec.convert(item, Position, strict=True)
    except Exception:
        msgspec.convert(item, _StrictPosition, strict=True)  # fails as Position did before
        raise


_LOCATION_RE: Final = re.compile(r"^(.*?)(?: - at (`key` in )?`\$(.*)`)?$", re.DOTALL)


def _describe(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's message into one that starts with the field's name."""
    m = _LOCATION_RE.match(str(exc))
    assert m is not None
    reason, in_key, where = m.group(1), m.group(2), m.group(3)
    if where:
        # "$.attrs[...]" -> "attrs"; "$[3].lat" never happens: we decode one position at a time.
        name = where.lstrip(".").split("[", 1)[0] or "position"
        return f"{name}: {'a key: ' if in_key else ''}{reason[:1].lower()}{reason[1:]}"
    unknown = re.match(r"Object contains unknown field `(.*)`", reason, re.DOTALL)
    if unknown:
        name = unknown.group(1)
        # A hostile name can be a megabyte long: an ack must not echo it whole.
        return f"{name if len(name) <= 64 else name[:64] + '…'}: unknown field"
    missing = re.match(r"Object missing required field `(.*)`", reason, re.DOTALL)
    if missing:
        return f"{missing.group(1)}: required field is missing"
    if reason.startswith("Expected `object`"):
        return "position: must be a JSON object"
    return reason


def validate(obj: Mapping[str, Any]) -> Position:
    """Build a Position from a mapping, raising InvalidPosition naming the field."""
    try:
        return _convert(obj)
    except msgspec.ValidationError as exc:
        message = _describe(exc)
        name, _, reason = message.partition(": ")
        raise InvalidPosition(reason or message, name if reason else None) from None
