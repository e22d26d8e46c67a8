"""What device clients send over HTTP, turned into Positions (sans-I/O).

Two protocols that phones and trackers in the field speak, parsed here without a server:

- **OsmAnd**, as Traccar reads it (``OsmAndProtocolDecoder``): query parameters or a form
  body (Traccar Client, OsmAnd, GPSLogger), or the JSON body of the newer Traccar Client
  (``device_id`` and ``location.coords``). :func:`parse_osmand`.
- **OwnTracks** in HTTP mode: JSON messages with a ``_type``. :func:`parse_owntracks`.

Units become the schema's: OsmAnd ``speed`` is knots, OwnTracks ``vel`` km/h, the JSON
``coords.speed`` already metres per second; headings are normalized to [0, 360). Fields the
schema has no place for land in ``attrs``, numbers as numbers, at most ``MAX_ATTRS`` of
them: more is an error rather than a silent loss. docs/http.md has every mapping.

Every error is an :class:`InvalidParameter` or :class:`InvalidPosition` whose message starts
with the parameter or field it is about, ready to be answered as a one-line 400.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from geotrack.errors import InvalidParameter
from geotrack.schema import (
    DEVICE_PATTERN,
    MAX_ATTRS,
    Position,
    json_type,
    ms_to_ts,
    parse_ts,
    validate,
)

__all__ = [
    "KMH",
    "KNOT",
    "MS_THRESHOLD",
    "device_id",
    "device_time",
    "parse_osmand",
    "parse_owntracks",
]

#: Metres per second in one knot (1852 m per hour).
KNOT: Final = 1852 / 3600
#: Metres per second in one km/h.
KMH: Final = 1000 / 3600
#: A numeric timestamp at or above this is milliseconds, below it seconds: 2**31 - 1, the
#: largest 32-bit second count (2038-01-19T03:14:07Z). Traccar draws the same line, which
#: tells Traccar Client's seconds from OsmAnd's milliseconds.
MS_THRESHOLD: Final = 2**31 - 1

_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)
_BAD_DEVICE_CHAR: Final = re.compile(r"[^A-Za-z0-9._:-]")
_INT_RE: Final = re.compile(r"^[+-]?\d+$")
_FLOAT_RE: Final = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_LOCAL_TIME_RE: Final = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2}(?:\.\d+)?)$")
_INT64: Final = 2**63

_encode_json: Final = msgspec.json.Encoder().encode

#: OsmAnd query parameters with a place in the schema (everything else goes to attrs).
_OSMAND_DEVICE: Final = ("id", "deviceid")
_OSMAND_FIELDS: Final = frozenset(
    {
        *_OSMAND_DEVICE,
        "lat",
        "lon",
        "location",
        "timestamp",
        "speed",
        "bearing",
        "heading",
        "altitude",
        "accuracy",
    }
)
#: OwnTracks location keys with a place in the schema.
_OWNTRACKS_FIELDS: Final = frozenset({"_type", "lat", "lon", "tst", "acc", "alt", "vel", "cog"})


# -- device ids ------------------------------------------------------------------------------


def device_id(raw: str, name: str = "device") -> str:
    """The geotrack device id for a name a client sends.

    Ids are 1-64 characters of ``A-Z a-z 0-9 . _ : -``. Client names are mapped: surrounding
    whitespace is dropped, each run of inner whitespace becomes ``_`` and ``@`` becomes
    ``_at_`` (``Jane Doe`` → ``Jane_Doe``, ``jane@example.com`` → ``jane_at_example.com``).
    Anything else outside the allowed characters raises InvalidParameter(name) naming it,
    rather than being guessed at: two devices must never merge into one track.
    """
    mapped = re.sub(r"\s+", "_", raw.strip()).replace("@", "_at_")
    if _DEVICE_RE.match(mapped):
        return mapped
    if not mapped:
        raise InvalidParameter(name, "must not be empty")
    bad = _BAD_DEVICE_CHAR.search(mapped)
    if bad is not None:
        raise InvalidParameter(
            name,
            f"{raw[:70]!r} cannot be a device id: {bad.group()!r} is not allowed "
            "(use A-Z a-z 0-9 . _ : -; spaces become _ and @ becomes _at_)",
        )
    raise InvalidParameter(name, f"{raw[:70]!r} is longer than 64 characters as a device id")


# -- values ----------------------------------------------------------------------------------


def device_time(value: object, name: str = "timestamp") -> str:
    """The canonical ``ts`` of a time a device sends.

    A number, or a string of one, is Unix seconds, or milliseconds from
    :data:`MS_THRESHOLD` on. A string may also be ISO 8601 with an offset; without one
    (``2014-06-04 09:10:11``, as some trackers send) it is taken as UTC.
    """
    if isinstance(value, bool):
        raise InvalidParameter(name, "expected a time, got a boolean")
    number: float | None = None
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if _FLOAT_RE.match(text):
            number = int(text) if _INT_RE.match(text) else float(text)
        else:
            local = _LOCAL_TIME_RE.match(text)
            if local:
                text = f"{local.group(1)}T{local.group(2)}Z"
            try:
                return parse_ts(text)
            except ValueError:
                raise InvalidParameter(
                    name,
                    "expected Unix seconds, Unix milliseconds or an ISO 8601 time, "
                    f"got {value[:40]!r}",
                ) from None
    else:
        raise InvalidParameter(name, f"expected a time, got {json_type(value)}")
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidParameter(name, "must be a finite number")
    try:
        if number >= MS_THRESHOLD:
            # Whole milliseconds stay exact: no detour through float seconds.
            if isinstance(number, int) and number <= 253402300799999:
                return ms_to_ts(number)
            return parse_ts(number / 1000)
        return parse_ts(number)
    except ValueError as exc:
        raise InvalidParameter(name, str(exc)) from None
    except OverflowError:
        raise InvalidParameter(name, "out of range (years 0001-9999)") from None


def _number(text: str, name: str) -> float:
    """A decimal number from a query parameter: no NaN, infinity, hex or underscores."""
    text = text.strip()
    if not _FLOAT_RE.match(text):
        raise InvalidParameter(name, f"expected a number, got {text[:40]!r}")
    value = float(text)
    if not math.isfinite(value):
        raise InvalidParameter(name, f"must be a finite number, got {text[:40]!r}")
    return value


def _json_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(name, f"expected a number, got {json_type(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any double
        number = math.inf
    if not math.isfinite(number):
        raise InvalidParameter(name, "must be a finite number")
    return number


def _heading(degrees: float) -> float:
    """Degrees normalized to [0, 360)."""
    normalized = degrees % 360.0
    # A tiny negative angle rounds to 360.0 itself.
    return 0.0 if normalized >= 360.0 else normalized


def _text_attr(text: str) -> str | int | float | bool:
    """A query value as an attribute: an integer, a finite number, a boolean, else text."""
    stripped = text.strip()
    if _INT_RE.match(stripped):
        value = int(stripped)
        return value if -_INT64 <= value < _INT64 else text
    if _FLOAT_RE.match(stripped):
        number = float(stripped)
        return number if math.isfinite(number) else text
    if stripped in ("true", "false"):
        return stripped == "true"
    return text


def _json_attr(value: object) -> str | int | float | bool | None:
    """A JSON value as an attribute: scalars as they are, arrays and objects as JSON text."""
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    return _encode_json(value).decode()


def _check_attrs(attrs: dict[str, Any]) -> None:
    if len(attrs) > MAX_ATTRS:
        names = ", ".join(sorted(attrs)[:8])
        raise InvalidParameter(
            "attrs",
            f"{len(attrs)} extra fields ({names}, ...); at most {MAX_ATTRS} can be kept, "
            "send fewer",
        )


# -- OsmAnd ----------------------------------------------------------------------------------


def parse_osmand(params: Mapping[str, str], json_body: Any | None, *, now_ms: int) -> Position:
    """The position in an OsmAnd request: query (or form) parameters, or a JSON body.

    ``params`` may repeat keys (a multidict's ``items()`` yields every pair). When
    ``json_body`` is not None it is the decoded body of a ``Content-Type:
    application/json`` request (the newer Traccar Client) and ``params`` are not read.
    ``now_ms`` is the time of arrival: a fix without a timestamp happened then, as Traccar
    assumes. Raises InvalidParameter or InvalidPosition with the parameter's name.
    """
    if json_body is not None:
        return _parse_osmand_json(json_body, now_ms)
    fields: dict[str, str] = {}
    extra: dict[str, list[str]] = {}
    for key, value in params.items():
        if value == "":
            continue  # a tracker's placeholder with nothing in it, as Traccar skips it
        if key in _OSMAND_FIELDS:
            if key in fields and fields[key] != value:
                raise InvalidParameter(key, "given more than once with different values")
            fields[key] = value
        else:
            extra.setdefault(key, []).append(value)

    ids = {fields[k] for k in _OSMAND_DEVICE if k in fields}
    if not ids:
        raise InvalidParameter("id", "required: the device id (id= or deviceid=)")
    if len(ids) > 1:
        raise InvalidParameter("id", "id and deviceid differ")
    position: dict[str, Any] = {"device": device_id(ids.pop(), "id")}

    if "location" in fields:
        if "lat" in fields or "lon" in fields:
            raise InvalidParameter("location", "give either location=lat,lon or lat and lon")
        parts = fields["location"].split(",")
        if len(parts) != 2:
            raise InvalidParameter("location", f"expected lat,lon, got {fields['location']!r}")
        position["lat"] = _number(parts[0], "location")
        position["lon"] = _number(parts[1], "location")
    else:
        for name in ("lat", "lon"):
            if name not in fields:
                raise InvalidParameter(name, "required")
            position[name] = _number(fields[name], name)

    if "timestamp" in fields:
        position["ts"] = device_time(fields["timestamp"])
    else:
        position["ts"] = ms_to_ts(now_ms)
    if "speed" in fields:
        knots = _number(fields["speed"], "speed")
        if knots < 0:
            raise InvalidParameter("speed", f"must be >= 0 knots, got {fields['speed']!r}")
        position["speed"] = knots * KNOT
    headings = [k for k in ("bearing", "heading") if k in fields]
    if len(headings) == 2 and fields["bearing"] != fields["heading"]:
        raise InvalidParameter("heading", "bearing and heading differ")
    if headings:
        position["heading"] = _heading(_number(fields[headings[0]], headings[0]))
    if "altitude" in fields:
        position["alt"] = _number(fields["altitude"], "altitude")
    if "accuracy" in fields:
        accuracy = _number(fields["accuracy"], "accuracy")
        if accuracy < 0:
            raise InvalidParameter("accuracy", f"must be >= 0 metres, got {fields['accuracy']!r}")
        position["acc"] = accuracy

    if extra:
        # A key given more than once (Traccar's cell= and wifi=) keeps all its values.
        attrs = {
            key: _text_attr(values[0]) if len(values) == 1 else ";".join(values)
            for key, values in extra.items()
        }
        _check_attrs(attrs)
        position["attrs"] = attrs
    return validate(position)


def _parse_osmand_json(body: Any, now_ms: int) -> Position:
    # The template of the newer Traccar Client (flutter_background_geolocation):
    #   {"device_id": "...", "location": {"timestamp": ISO, "coords": {...}, "battery":
    #    {"level": 0..1, "is_charging": b}, "activity": {"type": ...}, "extras": {...}, ...}}
    # It reports -1 for what it does not know (speed, heading, accuracy, battery level).
    if not isinstance(body, dict):
        raise InvalidParameter("body", f"expected a JSON object, got {json_type(body)}")
    raw_id = body.get("device_id")
    if raw_id is None:
        raise InvalidParameter("device_id", "required")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str):
        raise InvalidParameter("device_id", f"expected a string, got {json_type(raw_id)}")
    position: dict[str, Any] = {"device": device_id(raw_id, "device_id")}
    location = body.get("location")
    if isinstance(location, list):
        raise InvalidParameter("location", "one location per request (turn batch sync off)")
    if not isinstance(location, dict):
        raise InvalidParameter("location", f"expected an object, got {json_type(location)}")
    coords = location.get("coords")
    if not isinstance(coords, dict):
        raise InvalidParameter("location.coords", f"expected an object, got {json_type(coords)}")

    for ours, theirs in (("lat", "latitude"), ("lon", "longitude")):
        if theirs not in coords:
            raise InvalidParameter(f"location.coords.{theirs}", "required")
        position[ours] = _json_number(coords[theirs], f"location.coords.{theirs}")
    stamp = location.get("timestamp")
    position["ts"] = ms_to_ts(now_ms) if stamp is None else device_time(stamp, "location.timestamp")
    attrs: dict[str, Any] = {}
    for key, value in coords.items():
        name = f"location.coords.{key}"
        if key in ("latitude", "longitude"):
            continue
        if key == "speed" and value is not None:
            speed = _json_number(value, name)
            if speed >= 0:
                position["speed"] = speed  # already metres per second
        elif key == "heading" and value is not None:
            heading = _json_number(value, name)
            if heading >= 0:
                position["heading"] = _heading(heading)
        elif key == "accuracy" and value is not None:
            accuracy = _json_number(value, name)
            if accuracy >= 0:
                position["acc"] = accuracy
        elif key == "altitude" and value is not None:
            position["alt"] = _json_number(value, name)
        else:
            attrs[key] = _json_attr(value)
    for key, value in location.items():
        if key in ("coords", "timestamp", "_"):
            continue  # "_" repeats id, lat, lon and timestamp for servers without JSON
        if key == "battery" and isinstance(value, dict):
            level = value.get("level")
            if level is not None:
                fraction = _json_number(level, "location.battery.level")
                if fraction >= 0:
                    attrs["batt"] = round(fraction * 100)  # percent, like the query's batt
            if "is_charging" in value:
                attrs["charging"] = _json_attr(value["is_charging"])
        elif key == "activity" and isinstance(value, dict) and "type" in value:
            attrs["activity"] = _json_attr(value["type"])
        elif key == "extras" and isinstance(value, dict):
            for extra_key, extra_value in value.items():
                attrs.setdefault(extra_key, _json_attr(extra_value))
        else:
            attrs[key] = _json_attr(value)
    if attrs:
        _check_attrs(attrs)
        position["attrs"] = attrs
    return validate(position)


# -- OwnTracks -------------------------------------------------------------------------------


def parse_owntracks(
    message: Any, *, user: str | None = None, device: str | None = None
) -> Position | None:
    """The position in one OwnTracks message, or None for a message of another ``_type``.

    ``user`` and ``device`` are what the request names (``?u=&d=`` or the
    ``X-Limit-U``/``X-Limit-D`` headers); the device id is ``user:device`` (either alone
    when only one is given), else from the message's ``topic`` (``owntracks/user/device``),
    else its ``tid``. Raises InvalidParameter or InvalidPosition naming the field; an
    ``encrypted`` message is an error too, since its positions cannot be read.
    """
    if not isinstance(message, dict):
        raise InvalidParameter("message", f"expected a JSON object, got {json_type(message)}")
    kind = message.get("_type")
    if kind is None:
        raise InvalidParameter("_type", "required")
    if kind == "encrypted":
        raise InvalidParameter(
            "_type", "encrypted payloads cannot be read: turn payload encryption off"
        )
    if kind != "location":
        return None

    position: dict[str, Any] = {"device": _owntracks_device(message, user, device)}
    for name in ("lat", "lon"):
        if name not in message:
            raise InvalidParameter(name, "required")
        position[name] = _json_number(message[name], name)
    if "tst" not in message:
        raise InvalidParameter("tst", "required")
    position["ts"] = device_time(message["tst"], "tst")
    # Apps leave out what is zero and iOS reports -1 for an unknown speed or course.
    if message.get("vel") is not None:
        kmh = _json_number(message["vel"], "vel")
        if kmh >= 0:
            position["speed"] = kmh * KMH
    if message.get("cog") is not None:
        cog = _json_number(message["cog"], "cog")
        if cog >= 0:
            position["heading"] = _heading(cog)
    if message.get("alt") is not None:
        position["alt"] = _json_number(message["alt"], "alt")
    if message.get("acc") is not None:
        accuracy = _json_number(message["acc"], "acc")
        if accuracy >= 0:
            position["acc"] = accuracy
    attrs = {
        key: _json_attr(value) for key, value in message.items() if key not in _OWNTRACKS_FIELDS
    }
    if attrs:
        _check_attrs(attrs)
        position["attrs"] = attrs
    return validate(position)


def _owntracks_device(message: dict[str, Any], user: str | None, device: str | None) -> str:
    parts = [p for p in (user, device) if p]
    if parts:
        return ":".join(device_id(p, "device") for p in parts)
    topic = message.get("topic")
    if isinstance(topic, str):
        levels = topic.split("/")
        if len(levels) == 3 and levels[1] and levels[2]:
            return ":".join(device_id(p, "topic") for p in levels[1:])
    tid = message.get("tid")
    if isinstance(tid, str) and tid.strip():
        return device_id(tid, "tid")
    raise InvalidParameter(
        "device",
        "unknown: give ?u=USER&d=DEVICE in the URL, the X-Limit-U and X-Limit-D headers, "
        "or a tid in the message",
    )
