"""GeoJSON export (RFC 7946): a FeatureCollection with one Feature per device.

A device's feature is a LineString of its fixes in time order, or a Point when it has a
single fix (a LineString needs two positions). Its properties are ``device``, ``start``
and ``end`` (canonical timestamps), ``count`` and ``times``: the canonical timestamp of
each coordinate, in the same order (the "coordTimes" convention).

Coordinates are ``[lon, lat, alt]`` when every fix of the device has an altitude and
``[lon, lat]`` otherwise: RFC 7946 lets positions of one geometry differ in length, but
consumers handle that badly, so a device with any fix lacking ``alt`` loses its altitudes
here (CSV and NDJSON keep them).
"""

from __future__ import annotations

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
# A device's fixes are held in memory up to this many bytes per spool, then on disk.
_SPOOL_BYTES: Final = 1 << 20
# Fixes gathered before they go to the spools, and read back per chunk.
_BATCH: Final = 4096
_RECORD: Final = array("d").itemsize * 3


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
        for p in positions:
            if p.device != track.device:
                if track.count:
                    track.write(out, first)
                    first = False
                track.start(p.device)
            track.add(p)
            count += 1
        if track.count:
            track.write(out, first)
    out.write("\n]}\n")
    return count


class _Track:
    """The fixes of the device being gathered: coordinates and times, spooled."""

    def __init__(self) -> None:
        self.device: str | None = None
        self.count = 0
        self._coords: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self._times: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self._xyz = array("d")
        self._ts: list[str] = []
        self._has_alt = True
        self._first_ts = ""
        self._last_ts = ""

    def __enter__(self) -> _Track:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._coords.close()
        self._times.close()

    def start(self, device: str) -> None:
        self.device = device
        self.count = 0
        self._has_alt = True
        for spool in (self._coords, self._times):
            spool.seek(0)
            spool.truncate()

    def add(self, p: Position) -> None:
        alt = p.alt
        if alt is None:
            self._has_alt = False
            alt = math.nan
        self._xyz.extend((p.lon, p.lat, alt))
        ts = p.time
        self._ts.append(ts)
        if not self.count:
            self._first_ts = ts
        self._last_ts = ts
        self.count += 1
        if len(self._ts) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._ts:
            return
        self._coords.write(self._xyz.tobytes())
        del self._xyz[:]
        if self._times.tell():
            self._times.write(b",")
        self._times.write(_encode(self._ts)[1:-1])
        self._ts.clear()

    def write(self, out: TextIO, first: bool) -> None:
        """Write the device's feature, preceded by a comma unless it is the first."""
        self._flush()
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
                zip(lon, lat, alt, strict=True) if self._has_alt else zip(lon, lat, strict=True)
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
        out.write("]}}")
