"""GeoJSON export (RFC 7946): a FeatureCollection with one Feature per device.

A device's feature is a LineString of its fixes in time order, or a Point when it has a
single fix (a LineString needs two positions). Its properties are ``device``, ``start``
and ``end`` (canonical timestamps), ``count`` and ``times``: the canonical timestamp of
each coordinate, in the same order (the "coordTimes" convention). The other fields ride
in ``coordinateProperties`` (togeojson's convention): a list per field, parallel to the
coordinates, ``null`` where a fix lacks it, for each of ``speed``, ``heading``, ``acc``
and ``attrs`` that any fix of the device has, so that :mod:`geotrack.sources.geojson`
reads every position back whole.

Coordinates are ``[lon, lat, alt]`` when every fix of the device has an altitude and
``[lon, lat]`` otherwise: RFC 7946 lets positions of one geometry differ in length, but
consumers handle that badly, so a device with any fix lacking ``alt`` has its altitudes
in ``coordinateProperties.alt`` instead.
"""

from __future__ import annotations

import codecs
import math
from array import array
from collections.abc import Iterable
from tempfile import SpooledTemporaryFile
from types import TracebackType
from typing import IO, Final, TextIO

import msgspec

from geotrack.schema import Position

__all__ = ["write_geojson"]

_encode: Final = msgspec.json.Encoder().encode
# A device's fixes are held in memory up to this many bytes per spool (a quarter of it for
# each coordinateProperties field), then on disk.
_SPOOL_BYTES: Final = 1 << 20
# Fixes gathered before they go to the spools, and read back per chunk: a batch holds its
# positions alive (for their coordinateProperties), so it stays small.
_BATCH: Final = 1024
_RECORD: Final = array("d").itemsize * 3
# The fields that go to coordinateProperties ("alt" only when the coordinates lack it).
_EXTRA_FIELDS: Final = ("alt", "speed", "heading", "acc", "attrs")


def write_geojson(positions: Iterable[Position], out: TextIO) -> int:
    """Write a FeatureCollection of the positions' devices; returns the number of positions.

    Positions must come grouped by device and in time order within a device; a device
    showing up again after another one becomes a second feature. A device's whole track
    is known before its geometry can be written (Point or LineString, 2D or 3D), so its
    fixes go to temporary spools, in memory up to about 1 MiB each and on disk beyond.
    """
    count = 0
    first = True
    out.write('{"type":"FeatureCollection","features":[')
    with _Track() as track:
        # The per-fix work is inlined here, on locals: it runs once per position.
        xyz, stamps, kept = track.xyz, track.stamps, track.kept
        nan = math.nan
        device: str | None = None
        has_alt = True
        for p in positions:
            if p.device != device:
                if track.count:
                    track.write(out, first, has_alt)
                    first = False
                device = p.device
                track.start(device, p.time)
                has_alt = True
            alt = p.alt
            if alt is None:
                has_alt = False
                alt = nan
            xyz.extend((p.lon, p.lat, alt))
            ts = p.ts
            stamps.append(ts if ts.__class__ is str else p.time)
            kept.append(p)
            track.count += 1
            if len(stamps) >= _BATCH:
                track.flush()
            count += 1
        if track.count:
            track.write(out, first, has_alt)
    out.write("\n]}\n")
    return count


class _Track:
    """The fixes of the device being gathered: coordinates and times, spooled.

    ``xyz`` and ``stamps`` take the fixes (lon, lat, alt or NaN; canonical time) and
    ``count`` counts them; ``flush`` moves them to the spools.
    """

    def __init__(self) -> None:
        self.device: str | None = None
        self.count = 0
        self._coords: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self._times: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self.xyz = array("d")
        self.stamps: list[str] = []
        #: The fixes since the last flush, for their coordinateProperties.
        self.kept: list[Position] = []
        self._extras: dict[str, IO[bytes]] = {
            name: SpooledTemporaryFile(max_size=_SPOOL_BYTES // 4)  # noqa: SIM115
            for name in _EXTRA_FIELDS
        }
        self._present: set[str] = set()
        # Per field not present yet: the fixes before its first value.
        self._nulls = dict.fromkeys(_EXTRA_FIELDS, 0)
        self._first_ts = ""
        self._last_ts = ""

    def __enter__(self) -> _Track:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._coords.close()
        self._times.close()
        for spool in self._extras.values():
            spool.close()

    def start(self, device: str, first_ts: str) -> None:
        self.device = device
        self.count = 0
        self._first_ts = first_ts
        self._present.clear()
        self._nulls = dict.fromkeys(_EXTRA_FIELDS, 0)
        for spool in (self._coords, self._times, *self._extras.values()):
            spool.seek(0)
            spool.truncate()

    def flush(self) -> None:
        if not self.stamps:
            return
        self._coords.write(self.xyz.tobytes())
        del self.xyz[:]
        if self._times.tell():
            self._times.write(b",")
        self._times.write(_encode(self.stamps)[1:-1])
        self._last_ts = self.stamps[-1]
        self.stamps.clear()
        kept = self.kept
        columns = (
            ("alt", [p.alt for p in kept]),
            ("speed", [p.speed for p in kept]),
            ("heading", [p.heading for p in kept]),
            ("acc", [p.acc for p in kept]),
            ("attrs", [p.attrs for p in kept]),
        )
        for name, values in columns:
            spool = self._extras[name]
            if name not in self._present:
                if all(v is None for v in values):
                    # Nothing to write yet: the nulls are written if a value ever comes.
                    self._nulls[name] += len(values)
                    continue
                self._present.add(name)
                spool.write(b",".join([b"null"] * self._nulls[name]))
            if spool.tell():
                spool.write(b",")
            spool.write(_encode(values)[1:-1])
        kept.clear()

    def write(self, out: TextIO, first: bool, has_alt: bool) -> None:
        """Write the device's feature, preceded by a comma unless it is the first.

        ``has_alt``: whether every fix had an altitude (coordinates are 3D).
        """
        self.flush()
        kind = "Point" if self.count == 1 else "LineString"
        out.write(f'{"" if first else ","}\n{{"type":"Feature","geometry":{{"type":"{kind}",')
        out.write('"coordinates":' if kind == "Point" else '"coordinates":[')
        self._coords.seek(0)
        sep = ""
        while chunk := self._coords.read(_RECORD * _BATCH):
            xyz = array("d")
            xyz.frombytes(chunk)
            lon, lat, alt = xyz[0::3], xyz[1::3], xyz[2::3]
            coords = list(
                zip(lon, lat, alt, strict=True) if has_alt else zip(lon, lat, strict=True)
            )
            if kind == "Point":
                out.write(_encode(coords[0]).decode())
            else:
                out.write(sep + _encode(coords)[1:-1].decode())
            sep = ","
        props = _encode(
            {"device": self.device, "start": self._first_ts, "end": self._last_ts}
        ).decode()
        out.write(f'{"" if kind == "Point" else "]"}}},"properties":{props[:-1]},')
        out.write(f'"count":{self.count},"times":[')
        self._times.seek(0)
        # Canonical timestamps are ASCII, so a chunk never splits a character.
        while chunk := self._times.read(1 << 16):
            out.write(chunk.decode("ascii"))
        out.write("]")
        extras = [n for n in _EXTRA_FIELDS if n in self._present and (n != "alt" or not has_alt)]
        if extras:
            out.write(',"coordinateProperties":{')
            for i, name in enumerate(extras):
                out.write(f'{"," if i else ""}"{name}":[')
                spool = self._extras[name]
                spool.seek(0)
                # Decoded whole: a chunk boundary may split a character of an attr.
                decoder = codecs.getincrementaldecoder("utf-8")()
                while chunk := spool.read(1 << 16):
                    out.write(decoder.decode(chunk))
                out.write(decoder.decode(b"", final=True) + "]")
            out.write("}")
        out.write("}}")
