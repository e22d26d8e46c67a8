"""The message schema: positions, frames, acks and subscription filters (sans-I/O).

This module parses, validates and serializes every message of the wire contract
(``docs/protocol.md``) and nothing else: it touches no socket, file or database, and
everything else in geotrack imports it.

Times are kept to the millisecond. A position's ``ts`` is normalized on construction to
its canonical form, an RFC 3339 UTC string with milliseconds and ``Z``
(``2026-11-25T12:00:00.123Z``); sub-millisecond digits are truncated. Canonical strings sort
in time order and two positions are duplicates exactly when their ``device`` and canonical
``ts`` are equal.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import msgspec

from geotrack.errors import FrameError, InvalidParameter, InvalidPosition

__all__ = [
    "MAX_ATTRS",
    "MAX_BATCH",
    "Ack",
    "BBox",
    "ParsedFrame",
    "Position",
    "Rejection",
    "SubscribeFilter",
    "decode_frame",
    "encode_ack",
    "encode_batch",
    "encode_error",
    "encode_position",
    "json_type",
    "ms_to_ts",
    "parse_duration",
    "parse_time",
    "parse_ts",
    "ts_to_ms",
]

MAX_BATCH: Final = 1000
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
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
# Unix seconds of 0001-01-01 and 9999-12-31T23:59:59.999: the range a canonical string holds.
_MIN_S: Final = -62135596800.0
_MAX_S: Final = 253402300799.999
_RFC3339_RE: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z",
    re.ASCII,  # \d is 0-9 only, not every Unicode digit
)


_DAY_MS: Final = 86_400_000
# The canonical form exactly: these strings take the fast paths below.
_CANONICAL_RE: Final = re.compile(
    r"^\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z\Z", re.ASCII
)


# Every position crosses these conversions at least twice (validation, storage, reading
# back), and fixes of one day share a date: caching the date part makes both directions
# a few slices and integer operations instead of datetime arithmetic.
@functools.lru_cache(maxsize=4096)
def _day_text(day: int) -> str:
    d = date(1970, 1, 1) + timedelta(days=day)
    # Not strftime: %Y does not zero-pad years before 1000 on every platform.
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"


@functools.lru_cache(maxsize=4096)
def _day_ms(text: str) -> int:
    """Unix ms of midnight UTC of a ``YYYY-MM-DD`` date; ValueError if there is no such day."""
    d = date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    return (d - date(1970, 1, 1)).days * _DAY_MS


# Fixes arrive in time order, several to a minute: the text of the last few minutes is
# cached, and that of a second and of a millisecond is one of 60 and one of 1000.
_MINUTES_CACHED: Final = 256
_SECOND_TEXT: Final = tuple(f"{second:02d}." for second in range(60))
_MILLI_TEXT: Final = tuple(f"{milli:03d}Z" for milli in range(1000))
_minute_text: dict[int, str] = {}
# The canonical strings Position made of numbers (the common ts on the wire) -> their Unix
# ms, so that a store does not parse them back: a store's writer thread shares the GIL with
# the event loop. Two generations: bounded, and what was added last is always kept. Strings
# given in canonical form are not kept (positions made from stored rows, exports).
_TS_CACHED: Final = 8192
_ts_ms: dict[str, int] = {}
_ts_ms_old: dict[str, int] = {}


def ms_to_ts(ms: int) -> str:
    """Format Unix milliseconds as a canonical RFC 3339 UTC string."""
    minute, rest = divmod(ms, 60_000)
    head = _minute_text.get(minute)
    if head is None:
        head = _minute_head(minute)
    second, milli = divmod(rest, 1000)
    return f"{head}{_SECOND_TEXT[second]}{_MILLI_TEXT[milli]}"


def _minute_head(minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of a minute since the epoch, cached."""
    day, rest = divmod(minute, 1440)
    hour, minute_of_hour = divmod(rest, 60)
    head = f"{_day_text(day)}{hour:02d}:{minute_of_hour:02d}:"
    if len(_minute_text) >= _MINUTES_CACHED:
        _minute_text.clear()
    _minute_text[minute] = head
    return head


def _new_ts_ms_generation() -> None:
    global _ts_ms, _ts_ms_old
    _ts_ms_old, _ts_ms = _ts_ms, {}


def ts_to_ms(ts: str) -> int:
    """Unix milliseconds of a canonical (or any RFC 3339) timestamp string."""
    ms = _ts_ms.get(ts)
    if ms is None:
        ms = _ts_ms_old.get(ts)
        if ms is None:
            if _CANONICAL_RE.match(ts):
                return _canonical_ms(ts)
            return _rfc3339_ms(ts)
    return ms


def _canonical_ms(ts: str) -> int:
    """Unix ms of a string already matching the canonical pattern; ValueError for a bad date."""
    return (
        _day_ms(ts[:10])
        + int(ts[11:13]) * 3_600_000
        + int(ts[14:16]) * 60_000
        + int(ts[17:19]) * 1000
        + int(ts[20:23])
    )


def _rfc3339_ms(text: str) -> int:
    m = _RFC3339_RE.match(text)
    if m is None:
        raise ValueError(
            f"not an RFC 3339 time with an offset (like 2026-11-25T12:00:00.123Z): {text[:40]!r}"
        )
    year, month, day, hour, minute, second, frac, offset = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError as exc:
        raise ValueError(f"not a valid calendar time: {text[:40]!r} ({exc})") from None
    ms = (dt.replace(tzinfo=UTC) - _EPOCH) // _MS + (int((frac or "0")[:3].ljust(3, "0")))
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        ms -= sign * (int(offset[1:3]) * 60 + int(offset[4:6])) * 60_000
    if not _MIN_S * 1000 <= ms <= _MAX_S * 1000:
        raise ValueError(f"time out of range (years 0001-9999): {text[:40]!r}")
    return ms


def parse_ts(value: str | float) -> str:
    """Canonical timestamp string of an RFC 3339 string or a number of Unix seconds.

    Raises ValueError with a reason when the value is neither.
    """
    if isinstance(value, str):
        if _CANONICAL_RE.match(value):
            try:
                _canonical_ms(value)  # the calendar check: no February 30
            except ValueError as exc:
                raise ValueError(f"not a valid calendar time: {value!r} ({exc})") from None
            return value
        return ms_to_ts(_rfc3339_ms(value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected an RFC 3339 string or a number of Unix seconds")
    if not math.isfinite(value):
        raise ValueError("must be finite")
    if not _MIN_S <= value <= _MAX_S:
        raise ValueError("Unix seconds out of range (years 0001-9999)")
    ms = math.floor(value * 1000)
    # value * 1000 rounds in binary: 1093077386.909 * 1000 is 1093077386908.9999. Keep the
    # millisecond the number spells when it spells one exactly.
    if (ms + 1) / 1000 == value:
        ms += 1
    return ms_to_ts(ms)


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
            # parse_ts of a finite number in range (most fixes), inlined, noting the ms.
            ms = _floor(ts * 1000)
            if (ms + 1) / 1000 == ts:
                ms += 1
            text = ms_to_ts(ms)
            if len(_ts_ms) >= _TS_CACHED:
                _new_ts_ms_generation()
            _ts_ms[text] = ms
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


class Rejection(msgspec.Struct):
    """One position of a frame that failed validation."""

    index: int
    error: str


class Ack(msgspec.Struct, tag_field="type", tag="ack"):
    """The answer to one publish frame, sent after its valid positions are stored."""

    stored: int
    duplicates: int
    rejected: list[Rejection] = msgspec.field(default_factory=list)


class _ErrorFrame(msgspec.Struct, tag_field="type", tag="error"):
    error: str


@dataclass(slots=True)
class ParsedFrame:
    """What one publish frame holds: its valid positions and its rejections.

    ``indexes[i]`` is the place in the frame of ``positions[i]``; ``count`` is the number of
    positions the frame held, valid or not.
    """

    positions: list[Position]
    indexes: list[int]
    rejected: list[Rejection]
    count: int


_encoder: Final = msgspec.json.Encoder()
_fast_decoder: Final = msgspec.json.Decoder(Position | list[Position])
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


def _check_size(n: int, limit: int = MAX_BATCH) -> None:
    if n == 0:
        raise FrameError(f"a batch must hold 1 to {limit} positions; got an empty array")
    if n > limit:
        raise FrameError(f"a batch must hold 1 to {limit} positions; got {n}")


def decode_frame(data: bytes | str, max_batch: int = MAX_BATCH) -> ParsedFrame:
    """Parse one publish frame: a Position or an array of 1 to ``max_batch`` Positions.

    Raises FrameError when the frame as a whole is unusable (not JSON, neither an object
    nor an array, an empty or too large array). Otherwise every position is either valid
    or rejected with a reason naming its field; valid ones are returned whatever the rest.
    """
    try:
        decoded = _fast_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _decode_slow(data, max_batch)
    if isinstance(decoded, Position):
        return ParsedFrame([decoded], [0], [], 1)
    _check_size(len(decoded), max_batch)
    return ParsedFrame(decoded, list(range(len(decoded))), [], len(decoded))


def _decode_slow(data: bytes | str, max_batch: int) -> ParsedFrame:
    # The lenient stdlib parser accepts NaN and Infinity literals (Python's json.dumps
    # writes them), so such a value is reported against its field instead of failing the
    # whole frame, and the frame's valid positions are still stored.
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise FrameError(f"frame is not valid JSON: {reason}") from None
    items: list[Any]
    if isinstance(value, dict):
        items = [value]
    elif isinstance(value, list):
        _check_size(len(value), max_batch)
        items = value
    else:
        raise FrameError(
            f"a frame must be a JSON object or an array of objects, not {json_type(value)}"
        )
    positions: list[Position] = []
    indexes: list[int] = []
    rejected: list[Rejection] = []
    for i, item in enumerate(items):
        try:
            positions.append(_convert(item))
            indexes.append(i)
        except msgspec.ValidationError as exc:
            rejected.append(Rejection(i, _describe(exc)))
        except RecursionError:
            rejected.append(Rejection(i, "position: nested too deeply"))
        except UnicodeEncodeError:
            # msgspec cannot even report on a string with a lone surrogate (\ud800).
            rejected.append(Rejection(i, _surrogate_error(item)))
    return ParsedFrame(positions, indexes, rejected, len(items))


def _surrogate_error(item: object) -> str:
    """The rejection of a position with a lone surrogate, naming the field holding it."""
    where = "position"
    if isinstance(item, dict):
        for key, value in item.items():
            text = json.dumps([key, value], ensure_ascii=False)
            if not _utf8(text):
                where = key if _utf8(str(key)) else "position"
                break
    return f"{where}: strings must be valid Unicode (no lone surrogates)"


def json_type(value: object) -> str:
    """How to name a decoded JSON value's type in an error message ("a number", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate(obj: Mapping[str, Any]) -> Position:
    """Build a Position from a mapping, raising InvalidPosition naming the field."""
    try:
        return _convert(obj)
    except msgspec.ValidationError as exc:
        message = _describe(exc)
        name, _, reason = message.partition(": ")
        raise InvalidPosition(reason or message, name if reason else None) from None


def encode_position(position: Position) -> bytes:
    """The wire form of one position (canonical ``ts``, absent fields omitted)."""
    return _encoder.encode(position)


def encode_batch(encoded: Iterable[bytes]) -> bytes:
    """Join already-encoded positions into one JSON array frame."""
    return b"[" + b",".join(encoded) + b"]"


def encode_ack(ack: Ack) -> bytes:
    """The wire form of an ack."""
    return _encoder.encode(ack)


def encode_error(message: str) -> bytes:
    """The wire form of a frame-level error."""
    return _encoder.encode(_ErrorFrame(message))


def decode_positions(data: bytes | str) -> list[Position]:
    """Parse what a relay sends a subscriber: a JSON array of positions (or one position)."""
    decoded = _fast_decoder.decode(data)
    return [decoded] if isinstance(decoded, Position) else decoded


def decode_ack(data: bytes | str) -> Ack:
    """Parse a relay's answer to a publish frame; raises FrameError for an error frame."""
    reply = msgspec.json.decode(data, type=Ack | _ErrorFrame)
    if isinstance(reply, _ErrorFrame):
        raise FrameError(reply.error)
    return reply


@dataclass(frozen=True, slots=True)
class BBox:
    """A lon/lat rectangle; ``min_lon > max_lon`` means it crosses the antimeridian."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    @classmethod
    def parse(cls, text: str, name: str = "bbox") -> BBox:
        """Parse ``minLon,minLat,maxLon,maxLat``."""
        parts = text.split(",")
        if len(parts) != 4:
            raise InvalidParameter(name, f"expected minLon,minLat,maxLon,maxLat, got {text!r}")
        try:
            min_lon, min_lat, max_lon, max_lat = (float(p) for p in parts)
        except ValueError:
            raise InvalidParameter(name, f"expected four numbers, got {text!r}") from None
        if not all(math.isfinite(v) for v in (min_lon, min_lat, max_lon, max_lat)):
            raise InvalidParameter(name, "numbers must be finite")
        if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180):
            raise InvalidParameter(name, "longitudes must be within -180..180")
        if not (-90 <= min_lat <= max_lat <= 90):
            raise InvalidParameter(name, "latitudes must be within -90..90 and minLat <= maxLat")
        return cls(min_lon, min_lat, max_lon, max_lat)

    def contains(self, lon: float, lat: float) -> bool:
        """Whether the point lies inside (edges included)."""
        if not self.min_lat <= lat <= self.max_lat:
            return False
        if self.min_lon <= self.max_lon:
            return self.min_lon <= lon <= self.max_lon
        return lon >= self.min_lon or lon <= self.max_lon

    def __str__(self) -> str:
        return f"{self.min_lon},{self.min_lat},{self.max_lon},{self.max_lat}"


#: The query parameters /subscribe understands.
SUBSCRIBE_PARAMETERS: Final = ("device", "bbox")


@dataclass(frozen=True, slots=True)
class SubscribeFilter:
    """What a subscriber asked for: any of ``devices`` (all when empty), inside ``bbox``."""

    devices: frozenset[str] = field(default_factory=frozenset)
    bbox: BBox | None = None

    @classmethod
    def from_query(
        cls, query: Mapping[str, Sequence[str]], others: Sequence[str] = ("since", "token")
    ) -> SubscribeFilter:
        """Build a filter from parsed query parameters (``urllib.parse.parse_qs`` form).

        ``others`` are parameters the caller handles itself. Unknown parameters are errors
        too: a typo must not silently widen a subscription.
        """
        supported = (*SUBSCRIBE_PARAMETERS, *others)
        unknown = sorted(set(query) - set(supported))
        if unknown:
            raise InvalidParameter(
                unknown[0], f"unknown parameter (supported: {', '.join(supported)})"
            )
        devices = list(query.get("device", []))
        for device in devices:
            if not _DEVICE_RE.match(device):
                raise InvalidParameter(
                    "device", f"{device!r} is not 1-64 characters of A-Z a-z 0-9 . _ : -"
                )
        boxes = query.get("bbox", [])
        if len(boxes) > 1:
            raise InvalidParameter("bbox", "give it at most once")
        return cls(frozenset(devices), BBox.parse(boxes[0]) if boxes else None)

    def matches(self, position: Position) -> bool:
        """Whether the position passes the filter."""
        if self.devices and position.device not in self.devices:
            return False
        return self.bbox is None or self.bbox.contains(position.lon, position.lat)

    @property
    def everything(self) -> bool:
        """True when the filter lets every position through."""
        return not self.devices and self.bbox is None


_DURATION_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, name: str = "duration") -> float:
    """Seconds in ``90s``, ``15m``, ``2h``, ``1d``, ``250ms`` or a bare number of seconds."""
    text = text.strip()
    m = _DURATION_RE.match(text)
    try:
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)] if m else float(text)
    except ValueError:
        raise InvalidParameter(
            name, f"expected a duration like 90s, 15m, 2h or 1d, got {text!r}"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidParameter(name, f"must be a non-negative duration, got {text!r}")
    return seconds


def parse_time(text: str, now_ms: int, name: str = "time") -> int:
    """Unix milliseconds of an RFC 3339 time, Unix seconds, or an age like ``15m`` (ago)."""
    text = text.strip()
    if _DURATION_RE.match(text):
        return now_ms - round(parse_duration(text, name) * 1000)
    try:
        return ts_to_ms(parse_ts(float(text)))
    except ValueError:
        pass
    try:
        return ts_to_ms(text)
    except ValueError:
        raise InvalidParameter(
            name,
            f"expected an RFC 3339 time (2026-11-25T12:00:00Z), Unix seconds or an age "
            f"like 15m, got {text!r}",
        ) from None


def literal_role(path: str) -> Literal["publish", "subscribe"] | None:
    """The role a WebSocket path selects, or None for any other path."""
    if path == "/publish":
        return "publish"
    if path == "/subscribe":
        return "subscribe"
    return None
