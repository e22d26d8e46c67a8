"""The fences' spatial index and the geometry of one test: inside, outside, or unsure.

:class:`FenceSet` finds, for a whole batch of fixes in one call into shapely (GEOS's
STRtree), the fences whose bounding box meets each fix's accuracy box; only those are
then tested exactly. So 10,000 fences cost a fix about what a handful do.

The exact test (:meth:`FenceSet.classify`) is geodesic where it measures: a circle's
radius and a fix's accuracy are metres on the WGS84 ellipsoid (pyproj's Geod). A fix
whose accuracy circle lies across the edge is UNSURE: it neither enters nor leaves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

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
#: Fixes without an accuracy are looked up with a box this many metres wide.
_MIN_BOX_M: Final = 0.01


class FenceSet:
    """Fences by name, with an STRtree over their bounding boxes. Immutable once built."""

    def __init__(self, fences: Sequence[Fence]) -> None:
        self.fences: tuple[Fence, ...] = tuple(fences)
        self.by_name: dict[str, Fence] = {f.name: f for f in self.fences}
        self._tree = shapely.STRtree([f.envelope() for f in self.fences])

    def __len__(self) -> int:
        return len(self.fences)

    def candidates(
        self, lons: Sequence[float], lats: Sequence[float], accs: Sequence[float]
    ) -> list[list[int]]:
        """For each fix, the indexes of the fences whose box meets its accuracy box.

        A fence not listed for a fix is certainly OUTSIDE for it (accuracy included).
        """
        n = len(lons)
        found: list[list[int]] = [[] for _ in range(n)]
        if not n or not self.fences:
            return found
        lon = np.asarray(lons, dtype=float)
        lat = np.asarray(lats, dtype=float)
        dlat = np.maximum(np.asarray(accs, dtype=float), _MIN_BOX_M) / _M_PER_DEG
        coslat = np.cos(np.radians(np.minimum(89.0, np.abs(lat) + dlat)))
        dlon = np.minimum(180.0, dlat / np.maximum(coslat, 1e-6))
        boxes = shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat)
        fixes, fences = self._tree.query(boxes)
        for i, j in zip(fixes.tolist(), fences.tolist(), strict=True):
            found[i].append(j)
        return found

    @staticmethod
    def classify(fence: Fence, lon: float, lat: float, acc: float) -> int:
        """INSIDE, OUTSIDE, or UNSURE when the accuracy circle (metres) crosses the edge.

        Without an accuracy (0), a fix on the edge counts as inside.
        """
        if fence.radius is not None:
            centre = fence.shape
            _, _, distance = _GEOD.inv(centre.x, centre.y, lon, lat)
            if distance + acc <= fence.radius:
                return INSIDE
            if distance - acc > fence.radius:
                return OUTSIDE
            return UNSURE
        if acc <= 0:
            return INSIDE if shapely.intersects_xy(fence.shape, lon, lat) else OUTSIDE
        circle = accuracy_circle(lon, lat, acc)
        if fence.shape.contains(circle):
            return INSIDE
        if not fence.shape.intersects(circle):
            return OUTSIDE
        return UNSURE


def accuracy_circle(lon: float, lat: float, metres: float) -> shapely.Geometry:
    """A polygon holding every point within ``metres`` (geodesic) of (lon, lat)."""
    n = _SIDES
    lons, lats, _ = _GEOD.fwd(
        np.full(n, lon), np.full(n, lat), _AZIMUTHS, np.full(n, metres * _OUTWARD)
    )
    return shapely.Polygon(np.column_stack([lons, lats]))
