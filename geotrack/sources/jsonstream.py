"""What the JSON-family readers share: streaming a file's records, device ids, skips.

The JSON formats geotrack reads (GeoJSON, Google location history, Overland) keep their
points in one big array inside one document, so reading the document whole would hold the
file in memory several times over. :func:`stream_items` hands out the array's elements one
at a time with ijson (its C backend, yajl, when installed): memory stays flat in the file's
size, and the elements of a truncated file are all read before the error is raised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Final

from geotrack.errors import GeotrackError, InvalidParameter, InvalidPosition, SourceError
from geotrack.schema import DEVICE_PATTERN, ms_to_ts, parse_ts
from geotrack.sources.base import Skipped, open_binary

__all__ = [
    "E7",
    "MS_THRESHOLD",
    "as_device",
    "file_time",
    "head_text",
    "number",
    "optional",
    "read_head",
    "required",
    "skip",
    "stem_device",
    "stream_items",
]

#: Google's coordinates are integers of 1e-7 degrees (``latitudeE7``).
E7: Final = 10_000_000
#: A numeric time at or above this is Unix milliseconds, below it seconds: 2**31 - 1, the
#: last 32-bit second (2038-01-19), the line the HTTP endpoints draw too.
MS_THRESHOLD: Final = 2**31 - 1
_NOT_IN_DEVICE_ID: Final = re.compile(r"[^A-Za-z0-9._:-]")
_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)
_READ_SIZE: Final = 1 << 16
# ISO 8601 variants RFC 3339 lacks: an offset without its colon (Overland's -0700).
_OFFSET_NO_COLON: Final = re.compile(r"([+-]\d\d)(\d\d)\Z")
_HAS_OFFSET: Final = re.compile(r"(?:[Zz]|[+-]\d\d:?\d\d)\Z")


def stem_device(path: Path, fallback: str) -> str:
    """A device id from a file's name: characters an id cannot hold become ``-``, cut to 64."""
    return _NOT_IN_DEVICE_ID.sub("-", path.stem)[:64] or fallback


def as_device(raw: object, name: str) -> str:
    """A device id from a name a file gives: kept when valid, else its bad characters
    become ``-`` (spaces ``_``); InvalidParameter when nothing is left."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise InvalidParameter(name, "expected a device name")
    if _DEVICE_RE.match(raw):
        return raw
    mapped = _NOT_IN_DEVICE_ID.sub("-", re.sub(r"\s+", "_", raw.strip()))[:64]
    if not mapped:
        raise InvalidParameter(name, "must not be empty")
    return mapped


def file_time(value: object, name: str, tz: tzinfo | None = None) -> str:
    """The canonical ``ts`` of a time in a file.

    A number is Unix seconds, or milliseconds from :data:`MS_THRESHOLD` on (a string of
    digits too: Google's ``timestampMs``). A string is ISO 8601 with an offset (``Z``,
    ``+01:00`` or ``-0700``); without one it is a local time in ``tz``, and an error when
    no ``tz`` was given.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").replace(".", "", 1).isdigit():
            value = float(text) if "." in text else int(text)
        else:
            try:
                return parse_ts(text)  # RFC 3339, what most files hold: no detours
            except ValueError:
                pass
            text = _OFFSET_NO_COLON.sub(r"\1:\2", text) if "T" in text or " " in text else text
            if not _HAS_OFFSET.search(text):
                if tz is None:
                    raise InvalidParameter(name, "a time without a UTC offset (give --tz)")
                try:
                    text = datetime.fromisoformat(text).replace(tzinfo=tz).isoformat()
                except ValueError:
                    raise InvalidParameter(name, "not an ISO 8601 time") from None
            try:
                return parse_ts(text)
            except ValueError:
                raise InvalidParameter(name, "not an ISO 8601 time") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(name, "expected a time")
    if not math.isfinite(value):
        raise InvalidParameter(name, "must be a finite number")
    try:
        if abs(value) >= MS_THRESHOLD:
            if isinstance(value, int):
                return ms_to_ts(value)
            return parse_ts(value / 1000)
        return parse_ts(value)
    except (ValueError, OverflowError):
        raise InvalidParameter(name, "out of range (years 0001-9999)") from None


def head_text(head: bytes) -> str:
    """The first bytes of a file as text for sniffing (a UTF-8 BOM dropped, bad bytes kept)."""
    return head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").lstrip()


def read_head(path: Path) -> str:
    """The first 64 KiB of a file as text (see :func:`head_text`); SourceError if unreadable."""
    try:
        with open_binary(path) as file:
            return head_text(file.read(_READ_SIZE))
    except (OSError, EOFError) as exc:
        raise SourceError(str(path), _os_reason(exc)) from None


def stream_items(path: Path, prefix: str) -> Iterator[Any]:
    """The elements at ``prefix`` (ijson's notation: ``locations.item``) one at a time.

    Numbers with a fraction come as floats, integers as ints. A file that is not JSON,
    or ends early, raises SourceError naming where, after every complete element before
    that point was given out.
    """
    import ijson  # imported on first use: geotrack starts without it

    backend: Any = ijson
    given = 0
    while True:
        try:
            with open_binary(path) as file:
                items = backend.items(file, prefix, use_float=True, buf_size=_READ_SIZE)
                for n, item in enumerate(items):
                    if n >= given:
                        given += 1
                        yield item
            return
        except ijson.IncompleteJSONError as exc:
            if "integer overflow" in str(exc) and backend is ijson:
                # The C parser reads integers as 64-bit, and fails on -2**63 itself and
                # on anything wider; the Python one reads any integer. From the start,
                # past the elements already given (rare: such numbers are).
                backend = ijson.get_backend("python")
                continue
            raise SourceError(str(path), _json_reason(exc)) from None
        except ijson.JSONError as exc:
            raise SourceError(str(path), f"not valid JSON: {_one_line(exc)}") from None
        except (OSError, EOFError) as exc:  # EOFError: a gzip file cut short
            raise SourceError(str(path), _os_reason(exc)) from None


def _os_reason(exc: OSError | EOFError) -> str:
    if isinstance(exc, EOFError):
        return "the compressed file ends early (is it truncated?)"
    return exc.strerror or _one_line(exc)


def _json_reason(exc: Exception) -> str:
    text = _one_line(exc)
    if "premature EOF" in text or "Incomplete JSON" in text or not text:
        return "the JSON ends early (is the file truncated?)"
    return f"not valid JSON: {text}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def number(value: object, name: str) -> float:
    """A finite JSON number (a numeric string too, as some exports write them)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidParameter(name, "expected a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(name, "expected a number")
    result = float(value)
    if not math.isfinite(result):
        raise InvalidParameter(name, "must be a finite number")
    return result


def required(holder: Any, key: str) -> Any:
    """``holder[key]``; InvalidParameter(key, "required") when it is missing or null."""
    value = holder.get(key) if isinstance(holder, dict) else None
    if value is None:
        raise InvalidParameter(key, "required")
    return value


def optional(holder: dict[str, Any], key: str) -> float | None:
    """``holder[key]`` as a finite number, or None when it is missing or null."""
    value = holder.get(key)
    return None if value is None else number(value, key)


def skip(exc: Exception, where: str) -> Skipped:
    """The Skipped item for a point that failed: its reason short and the same per cause.

    Errors that name a field keep the field and the reason; a ValueError from building a
    Position (the schema's checks) keeps its first line.
    """
    if isinstance(exc, InvalidParameter | InvalidPosition):
        reason = str(exc)
    elif isinstance(exc, GeotrackError | ValueError | TypeError):
        reason = _one_line(exc)
    else:  # pragma: no cover - callers catch only the errors above
        raise exc
    return Skipped(reason[:1].lower() + reason[1:120], where)
