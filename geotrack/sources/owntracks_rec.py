"""Read OwnTracks Recorder ``.rec`` files: one message per line, stored as the Recorder got it.

A line is ``2019-03-07T08:00:00Z<TAB>*                 <TAB>{json}``: when the Recorder
stored it, the subtopic it came on (``*`` for the device's own topic), and the OwnTracks
message. ``_type: location`` messages become positions exactly as ``POST /owntracks`` maps
them (:func:`~geotrack.relay.http_devices.parse_owntracks`: ``vel`` km/h, ``cog``, ``acc``,
the rest in attrs); other types (``lwt``, ``transition``, ``waypoint``, ...) are what a
Recorder file is expected to hold besides locations: they are counted in one notice at the
end, not refused (as MQTT ingestion counts and ignores them).

The device is ``--device``; else the Recorder's layout names it: a file at
``rec/USER/DEVICE/YYYY-MM.rec`` is device ``USER:DEVICE``, as ``POST /owntracks?u=USER&d=DEVICE``
would be; else the message's ``topic`` or ``tid``; else the file's stem. Lines stream one
at a time.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from geotrack.errors import GeotrackError, InvalidParameter, SourceError
from geotrack.sources.base import Format, Item, Notice, ReadOptions, Skipped, open_binary
from geotrack.sources.jsonstream import head_text, skip, stem_device

__all__ = ["FORMAT", "read_rec", "recorder_device", "sniff_rec"]

_LINE_RE: Final = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ?)\t([^\t]*)\t(.*)$", re.DOTALL)
_MONTH_FILE_RE: Final = re.compile(r"^\d{4}-\d\d$")
# A file with no recorder line among its first lines is not a .rec file at all.
_LINES_TO_TRUST: Final = 20
_decode: Final = msgspec.json.decode


def sniff_rec(head: bytes) -> bool:
    """A .rec file: its first non-blank line is ``TIME<TAB>SUBTOPIC<TAB>{...``."""
    for line in head_text(head).splitlines()[:5]:
        if line.strip():
            return _LINE_RE.match(line) is not None and line.split("\t", 2)[2].startswith("{")
    return False


def recorder_device(path: Path) -> tuple[str, str] | None:
    """(user, device) of a file in the Recorder's layout ``rec/USER/DEVICE/YYYY-MM.rec``."""
    parts = path.resolve().parts
    if len(parts) >= 4 and parts[-4] == "rec" and _MONTH_FILE_RE.match(path.stem):
        return parts[-3], parts[-2]
    return None


def read_rec(path: Path, options: ReadOptions) -> Iterator[Item]:
    """The positions of an OwnTracks Recorder ``.rec`` file (see the module's docstring)."""
    # The mapping is the HTTP endpoint's own, imported on first use (it lives with the relay).
    from geotrack.relay.http_devices import parse_owntracks

    names: dict[str, Any] = {}
    if options.device:
        names = {"device": options.device}
    elif (layout := recorder_device(path)) is not None:
        names = {"user": layout[0], "device": layout[1]}
    stem = stem_device(path, "owntracks")
    recognised = 0
    others: Counter[str] = Counter()
    try:
        with open_binary(path) as file:
            for number, raw in enumerate(file, 1):
                where = f"line {number}"
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line.strip():
                    continue
                match = _LINE_RE.match(line)
                if match is None:
                    if not recognised and number >= _LINES_TO_TRUST:
                        raise SourceError(
                            str(path), "not an OwnTracks .rec file: no TIME<TAB>TOPIC<TAB>JSON line"
                        )
                    yield Skipped("not a recorder line (TIME<TAB>TOPIC<TAB>JSON)", where)
                    continue
                recognised += 1
                try:
                    message = _decode(match.group(3))
                except msgspec.DecodeError:
                    yield Skipped("not valid JSON (a cut line?)", where)
                    continue
                try:
                    position = parse_owntracks(message, **names)
                except InvalidParameter as exc:
                    if exc.name != "device":
                        yield skip(exc, where)
                        continue
                    position = _with_stem(parse_owntracks, message, stem, where)
                    if isinstance(position, Skipped):
                        yield position
                        continue
                except (GeotrackError, ValueError) as exc:
                    yield skip(exc, where)
                    continue
                if position is None:
                    kind = message.get("_type") if isinstance(message, dict) else None
                    others[str(kind)[:20]] += 1
                else:
                    yield position
    except (OSError, EOFError) as exc:  # EOFError: a gzip file cut short
        raise SourceError(
            str(path), str(exc.strerror if isinstance(exc, OSError) else exc)
        ) from None
    if not recognised:
        raise SourceError(str(path), "not an OwnTracks .rec file: no TIME<TAB>TOPIC<TAB>JSON line")
    if others:
        kinds = ", ".join(f"{n} {kind}" for kind, n in others.most_common())
        total = others.total()
        noun = "message" if total == 1 else "messages"
        yield Notice(f"{total} {noun} other than locations ignored ({kinds})")


def _with_stem(parse: Any, message: Any, stem: str, where: str) -> Any:
    """The message as the stem's device (no user, topic or tid named one)."""
    try:
        return parse(message, device=stem)
    except (GeotrackError, ValueError) as exc:
        return skip(exc, where)


FORMAT: Final = Format(
    name="owntracks",
    description="OwnTracks Recorder .rec files (TIME, topic and JSON message per line)",
    suffixes=(".rec",),
    sniff=sniff_rec,
    read=read_rec,
)
