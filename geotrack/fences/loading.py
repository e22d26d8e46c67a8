"""Fences from GeoJSON: what ``serve --fences FILE`` reads and ``PUT /api/fences/NAME`` takes.

A fence is a GeoJSON Feature with ``properties.name`` and either a Polygon or
MultiPolygon geometry (lon, lat, as GeoJSON has it) or a Point with ``properties.radius``
in metres (a circle, measured geodesically). A file holds a FeatureCollection of them (or
one Feature). Every problem is one line naming the feature: its index in the file and its
name when it has one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import shapely
from shapely.geometry import shape

from geotrack.errors import FenceError
from geotrack.schema import FENCE_NAME_MAX

__all__ = [
    "FENCE_NAME_PATTERN",
    "Fence",
    "feature_collection",
    "fence_from_feature",
    "load_fences",
    "parse_fences",
]

#: What a fence name may hold: no slash (it is a URL path segment in the REST API), no
#: control characters (it is written to logs), 1 to 128 characters.
FENCE_NAME_PATTERN: Final = rf"^[^/\x00-\x1f\x7f]{{1,{FENCE_NAME_MAX}}}\Z"
_NAME_RE: Final = re.compile(FENCE_NAME_PATTERN)
#: Metres per degree of latitude (a little under the mean, so boxes err on the large side).
_M_PER_DEG: Final = 110_500.0
#: The largest circle: a quarter of the Earth's circumference.
_MAX_RADIUS: Final = 10_000_000.0


@dataclass(frozen=True, slots=True, eq=False)
class Fence:
    """One fence: a polygon (``radius`` None) or a circle around the Point ``shape``.

    ``shape`` is in (lon, lat) degrees and prepared for repeated tests. ``source`` is
    the GeoJSON Feature it came from as JSON text (REST answers and the web map show it):
    text, not the parsed dicts and lists, because 10,000 fences' worth of those (some
    130,000 objects) made every full garbage collection of the relay slower.
    """

    name: str
    shape: shapely.Geometry
    radius: float | None
    source: str = field(repr=False)

    @property
    def feature(self) -> dict[str, Any]:
        """The GeoJSON Feature (a new dict each time)."""
        feature: dict[str, Any] = json.loads(self.source)
        return feature

    @property
    def is_circle(self) -> bool:
        """Whether this is a circle (a Point and a radius) rather than a polygon."""
        return self.radius is not None

    def envelope(self) -> shapely.Geometry:
        """A (lon, lat) box that holds every point of the fence, for the spatial index."""
        if self.radius is None:
            return shapely.box(*self.shape.bounds)
        return degree_box(self.shape.x, self.shape.y, self.radius)


def degree_box(lon: float, lat: float, metres: float) -> shapely.Geometry:
    """A (lon, lat) box holding every point within ``metres`` of (lon, lat), and a bit more."""
    dlat = metres / _M_PER_DEG
    coslat = math.cos(math.radians(min(89.0, abs(lat) + dlat)))
    dlon = min(180.0, dlat / max(coslat, 1e-6))
    return shapely.box(lon - dlon, max(-90.0, lat - dlat), lon + dlon, min(90.0, lat + dlat))


def fence_from_feature(feature: Any, where: str, name: str | None = None) -> Fence:
    """Check one GeoJSON Feature and build its Fence; FenceError names ``where`` it is.

    ``name``, when given (the REST path's), is the fence's name and the feature's
    ``properties.name`` may be left out (it must agree when present).
    """
    if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
        raise FenceError(where, 'expected a GeoJSON Feature ({"type": "Feature", ...})')
    properties = feature.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise FenceError(where, "properties must be an object")
    given = properties.get("name")
    if name is not None and given is not None and given != name:
        raise FenceError(where, f"properties.name {given!r} differs from the name {name!r}")
    name = name if name is not None else given
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise FenceError(
            where,
            f"properties.name must be 1-{FENCE_NAME_MAX} characters without '/' or control "
            f"characters (got {name!r})",
        )
    where = f"{where} ({name!r})"
    geometry = feature.get("geometry")
    kind = geometry.get("type") if isinstance(geometry, Mapping) else None
    if kind not in ("Polygon", "MultiPolygon", "Point"):
        raise FenceError(
            where, f"geometry must be a Polygon, MultiPolygon or Point (with radius), not {kind}"
        )
    try:
        geom = shape(geometry)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.ShapelyError) as e:
        raise FenceError(where, f"bad {kind} coordinates: {e}") from None
    if geom.is_empty:
        raise FenceError(where, f"the {kind} is empty")
    west, south, east, north = geom.bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise FenceError(where, "coordinates must be [lon, lat] within [-180, 180] x [-90, 90]")
    radius: float | None = None
    if kind == "Point":
        radius = properties.get("radius")
        if isinstance(radius, bool) or not isinstance(radius, int | float):
            raise FenceError(where, "a Point fence needs properties.radius, in metres")
        if not (math.isfinite(radius) and 0 < radius <= _MAX_RADIUS):
            raise FenceError(where, f"properties.radius must be > 0 and <= {_MAX_RADIUS:.0f} m")
        radius = float(radius)
    elif not geom.is_valid:
        raise FenceError(where, f"invalid {kind}: {shapely.is_valid_reason(geom)}")
    shapely.prepare(geom)
    # The name goes into the feature's properties (a REST path may give it alone).
    stored = {**feature, "properties": {**properties, "name": name}}
    return Fence(name, geom, radius, json.dumps(stored, ensure_ascii=False))


def parse_fences(data: bytes | str, source: str) -> list[Fence]:
    """The fences of a GeoJSON FeatureCollection (or one Feature); names must be unique."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FenceError(source, f"not JSON: {exc}") from None
    if isinstance(document, Mapping) and document.get("type") == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise FenceError(source, "a FeatureCollection needs a features array")
    elif isinstance(document, Mapping) and document.get("type") == "Feature":
        features = [document]
    else:
        raise FenceError(source, "expected a GeoJSON FeatureCollection or Feature")
    return _unique(
        (
            fence_from_feature(feature, f"{source}: feature {i}")
            for i, feature in enumerate(features)
        ),
        source,
    )


def _unique(fences: Iterable[Fence], source: str) -> list[Fence]:
    seen: set[str] = set()
    result: list[Fence] = []
    for fence in fences:
        if fence.name in seen:
            raise FenceError(source, f"two fences are named {fence.name!r}")
        seen.add(fence.name)
        result.append(fence)
    return result


def feature_collection(fences: Iterable[Fence]) -> str:
    """The fences as a GeoJSON FeatureCollection, JSON text (their sources joined)."""
    return (
        '{"type": "FeatureCollection", "features": [' + ", ".join(f.source for f in fences) + "]}"
    )


def load_fences(path: str | Path) -> list[Fence]:
    """Read and check a fences file; FenceError when it cannot be read or used."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FenceError(str(path), f"cannot read: {exc.strerror or exc}") from None
    return parse_fences(data, str(path))
