"""Time text: canonical timestamps, RFC 3339, Unix seconds, durations and ages (sans-I/O).

Times are kept to the millisecond. The canonical form of a timestamp is an RFC 3339 UTC
string with milliseconds and ``Z`` (``2026-11-25T12:00:00.123Z``); sub-millisecond digits
are truncated. Canonical strings sort in time order.

Every position crosses these conversions at least twice (validation, storage, reading
back), so both directions are memoized in bounded module-level caches: the text of a day
and of the last few minutes, and the Unix ms of the canonical strings
:class:`~geotrack.schema.position.Position` made of numbers. A miss computes the answer;
a cache is never the only way to one.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Final

from geotrack.errors import InvalidParameter

__all__ = ["ms_to_ts", "parse_duration", "parse_time", "parse_ts", "ts_to_ms"]

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
# Position adds to it through this module (_new_ts_ms_generation rebinds both names).
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
