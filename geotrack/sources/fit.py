"""Read FIT files (Garmin and other sports devices' activities) with fitdecode.

Each ``record`` message with a position is a position: ``position_lat``/``position_long``
in semicircles (2**31 of them to 180°) become degrees, ``enhanced_altitude`` (else
``altitude``) the altitude, ``enhanced_speed`` (else ``speed``) the speed. Heart rate,
cadence and temperature become the attrs ``hr``, ``cad`` and ``atemp``, the names
Garmin's TrackPointExtension gives them in GPX (so the same walk reads the same from
either file); ``power`` (W) and ``distance`` (m) keep their names. Records without a
position (indoor rides, a watch still looking for satellites) are skipped with that
reason. The device is ``--device`` or the file's stem.

Why fitdecode: MIT-licensed, no dependencies, and it reads a file frame by frame (memory
stays flat) and keeps the frames read before a truncated end or a bad checksum. Garmin's
own SDK (garmin-fit-sdk) decodes the whole file into memory and comes under Garmin's
FIT licence agreement, a click-through licence rather than an open-source one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from geotrack.errors import GeotrackError, SourceError
from geotrack.schema import ms_to_ts, validate
from geotrack.sources.base import Format, Item, ReadOptions, Skipped, open_binary
from geotrack.sources.jsonstream import skip, stem_device

__all__ = ["FORMAT", "SEMICIRCLE", "read_fit", "sniff_fit"]

#: Degrees in one semicircle: 180° is 2**31 semicircles.
SEMICIRCLE: Final = 180 / 2**31
#: FIT fields kept as attrs, by the attr name they get.
_ATTRS: Final = (("heart_rate", "hr"), ("cadence", "cad"), ("temperature", "atemp"))
_KEPT: Final = ("power", "distance")


def sniff_fit(head: bytes) -> bool:
    """A FIT file: a 12- or 14-byte header with ``.FIT`` at bytes 8-11."""
    return len(head) >= 12 and head[0] in (12, 14) and head[8:12] == b".FIT"


def read_fit(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The positions of a FIT file's ``record`` messages (see the module's docstring)."""
    import fitdecode  # imported on first use, like every reader's library

    device = options.device or stem_device(path, "fit")
    records = 0
    try:
        with (
            open_binary(path) as file,
            fitdecode.FitReader(
                file,
                check_crc=fitdecode.CrcCheck.RAISE,
                error_handling=fitdecode.ErrorHandling.RAISE,
                keep_raw_chunks=False,
            ) as fit,
        ):
            for frame in fit:
                if frame.frame_type != fitdecode.FIT_FRAME_DATA or frame.name != "record":
                    continue
                records += 1
                yield _record(frame, device, f"record {records}")
    except fitdecode.FitError as exc:
        reason = " ".join(str(exc).split())[:160]
        if isinstance(exc, fitdecode.FitEOFError):
            reason = f"the FIT file ends early (is it truncated?): {reason}"
        raise SourceError(str(path), reason or type(exc).__name__) from None
    except (OSError, EOFError) as exc:  # EOFError: a gzip file cut short
        raise SourceError(
            str(path), str(exc.strerror if isinstance(exc, OSError) else exc)
        ) from None


def _first(values: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = values.get(name)
        if value is not None:
            return value
    return None


def _record(frame: Any, device: str, where: str) -> Item:
    # One pass over the fields: fitdecode's get_value looks each name up by a scan.
    values = {field.name: field.value for field in frame.fields}
    lat, lon = values.get("position_lat"), values.get("position_long")
    if lat is None or lon is None:
        return Skipped("no position", where)
    stamp = values.get("timestamp")
    if not isinstance(stamp, datetime):
        return Skipped("no time", where)
    position: dict[str, Any] = {
        "device": device,
        "lat": lat * SEMICIRCLE,
        "lon": lon * SEMICIRCLE,
        # Integer milliseconds: a float of seconds would turn .123 into .122.
        "ts": ms_to_ts(_epoch_ms(stamp)),
    }
    alt = _first(values, "enhanced_altitude", "altitude")
    # Scaled integers come out as floats with binary noise (278.20000000000005): the
    # fields' resolutions are far coarser than a millimetre.
    if isinstance(alt, int | float):
        position["alt"] = round(float(alt), 3)
    speed = _first(values, "enhanced_speed", "speed")
    if isinstance(speed, int | float) and speed >= 0:
        position["speed"] = round(float(speed), 3)
    attrs: dict[str, Any] = {}
    for theirs, ours in (*_ATTRS, *((k, k) for k in _KEPT)):
        value = values.get(theirs)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[ours] = round(value, 3) if isinstance(value, float) else value
    if attrs:
        position["attrs"] = attrs
    try:
        return validate(position)
    except (GeotrackError, ValueError) as exc:
        return skip(exc, where)


def _epoch_ms(stamp: datetime) -> int:
    delta = stamp - datetime(1970, 1, 1, tzinfo=stamp.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


FORMAT: Final = Format(
    name="fit",
    description="FIT activity files (Garmin, Wahoo, ...): record messages with positions",
    suffixes=(".fit",),
    sniff=sniff_fit,
    read=read_fit,
)
