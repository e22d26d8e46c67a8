"""The fences' spatial index and the geometry of one test: inside, outside, or unsure.

:class:`FenceSet` finds, for a whole batch of fixes in one call into shapely (GEOS's
STRtree), the fences whose bounding box meets each fix's accuracy box; only those are
then tested exactly. So 10,000 fences cost a fix about what a handful do.

The exact tests (:meth:`FenceSet.sides`) decide as geodesic distances do: a circle's
radius and a fix's accuracy are metres on the WGS84 ellipsoid (pyproj's Geod). A fix
whose accuracy circle lies across the edge is UNSURE: it neither enters nor leaves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import shapely
from pyproj import Geod

from geotrack.fences.loading import Fence

__all__ = ["INSIDE", "OUTSIDE", "UNSURE", "FenceSet"]

INSIDE: Final = 1
OUTSIDE: Final = 0
UNSURE: Final = -1

_GEOD: Final = Geod(ellps="WGS84")
_SIDES: Final = 32
_AZIMUTHS: Final = np.linspace(0.0, 360.0, _SIDES, endpoint=False)
# The polygon through points at distance d lies inside the circle by up to d(1 - cos(pi/n)):
# its vertices go out by 1/cos(pi/n) so that it holds the whole circle.
_OUTWARD: Final = 1 / math.cos(math.pi / _SIDES)
_M_PER_DEG: Final = 110_500.0
#: Circles at least this large are always measured geodesically.
_FLAT_LIMIT_M: Final = 50_000.0
#: How far a flat-earth distance may be off below that, as a share, plus metres.
_FLAT_ERROR: Final = 0.01
_FLAT_SLACK_M: Final = 1.0
_MEAN_RADIUS_M: Final = 6_371_008.8


class FenceSet:
    """Fences by name, with an STRtree over their bounding boxes. Immutable once built."""

    def __init__(self, fences: Sequence[Fence]) -> None:
        self.fences: tuple[Fence, ...] = tuple(fences)
        self.by_name: dict[str, Fence] = {f.name: f for f in self.fences}
        self._tree = shapely.STRtree([f.envelope() for f in self.fences])
        self._shapes = np.array([f.shape for f in self.fences], dtype=object)
        self._circle = np.array([f.radius is not None for f in self.fences], dtype=bool)
        self._radius = np.array([f.radius or 0.0 for f in self.fences], dtype=float)
        self._cx = np.array([f.shape.x if f.radius else 0.0 for f in self.fences], dtype=float)
        self._cy = np.array([f.shape.y if f.radius else 0.0 for f in self.fences], dtype=float)

    def __len__(self) -> int:
        return len(self.fences)

    def sides(
        self, lons: Sequence[float], lats: Sequence[float], accs: Sequence[float]
    ) -> tuple[Any, Any, Any]:
        """The fixes and fences where a fix is INSIDE or UNSURE, and which: three arrays,
        ordered by fix.

        A (fix, fence) pair not listed is OUTSIDE. The work is a few vectorized calls
        per batch: one STRtree query for the candidates (the fences whose box meets each
        fix's accuracy box), then exact tests of all candidate pairs at once (geodesic
        distances for circles, point-in-polygon, accuracy circles against polygons).
        """
        if not len(lons) or not self.fences:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty, np.empty(0, dtype=np.int8)
        lon = np.asarray(lons, dtype=float)
        lat = np.asarray(lats, dtype=float)
        acc = np.asarray(accs, dtype=float)
        spread_fixes = acc > 0
        if spread_fixes.any():
            dlat = np.maximum(acc, 0.01) / _M_PER_DEG
            coslat = np.cos(np.radians(np.minimum(89.0, np.abs(lat) + dlat)))
            dlon = np.minimum(180.0, dlat / np.maximum(coslat, 1e-6))
            query = shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat)
        else:  # points are cheaper to make, and find the same boxes
            query = shapely.points(lon, lat)
        fix, fence = self._tree.query(query)
        order = np.argsort(fix, kind="stable")  # by fix (GEOS gives them so already)
        fix, fence = fix[order], fence[order]
        side = np.full(len(fix), OUTSIDE, dtype=np.int8)
        circle = self._circle[fence]
        if circle.any():
            i, j = fix[circle], fence[circle]
            a, r = acc[i], self._radius[j]
            # A flat-earth distance first (within 1% for circles under 50 km); the
            # geodesic one only where that is too close to the edge to tell.
            distance = _flat_metres(self._cx[j], self._cy[j], lon[i], lat[i])
            near_edge = (r >= _FLAT_LIMIT_M) | (
                np.abs(distance - r) <= a + r * _FLAT_ERROR + _FLAT_SLACK_M
            )
            if near_edge.any():
                k = np.flatnonzero(near_edge)
                _, _, exact = _GEOD.inv(self._cx[j[k]], self._cy[j[k]], lon[i[k]], lat[i[k]])
                distance[k] = exact
            side[circle] = np.where(
                distance + a <= r, INSIDE, np.where(distance - a > r, OUTSIDE, UNSURE)
            )
        point = ~circle & (acc[fix] <= 0)
        if point.any():
            hit = shapely.intersects_xy(
                self._shapes[fence[point]], lon[fix[point]], lat[fix[point]]
            )
            side[point] = np.where(hit, INSIDE, OUTSIDE)
        spread = ~circle & (acc[fix] > 0)
        if spread.any():
            i, j = fix[spread], fence[spread]
            circles = accuracy_circles(lon[i], lat[i], acc[i])
            shapes = self._shapes[j]
            side[spread] = np.where(
                shapely.contains(shapes, circles),
                INSIDE,
                np.where(shapely.intersects(shapes, circles), UNSURE, OUTSIDE),
            )
        keep = side != OUTSIDE
        return fix[keep], fence[keep], side[keep]


def _flat_metres(lon1: Any, lat1: Any, lon2: Any, lat2: Any) -> Any:
    """Equirectangular distances in metres: good to about 0.5% below 50 km."""
    mean = np.radians((lat1 + lat2) / 2)
    dx = np.radians(lon2 - lon1) * np.cos(mean)
    dy = np.radians(lat2 - lat1)
    result: Any = _MEAN_RADIUS_M * np.hypot(dx, dy)
    return result


def accuracy_circles(lons: Any, lats: Any, metres: Any) -> Any:
    """Polygons holding every point within ``metres`` (geodesic) of each (lon, lat)."""
    n = len(lons)
    if not n:
        return np.empty(0, dtype=object)
    each = np.ones(_SIDES)
    end_lons, end_lats, _ = _GEOD.fwd(
        np.outer(lons, each).ravel(),
        np.outer(lats, each).ravel(),
        np.tile(_AZIMUTHS, n),
        np.outer(np.asarray(metres, dtype=float) * _OUTWARD, each).ravel(),
    )
    ring = np.stack(
        [np.asarray(end_lons).reshape(n, _SIDES), np.asarray(end_lats).reshape(n, _SIDES)], axis=-1
    )
    closed = np.concatenate([ring, ring[:, :1]], axis=1)
    return shapely.polygons(closed)
