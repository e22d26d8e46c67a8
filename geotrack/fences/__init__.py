"""Geofences: fences from GeoJSON, their spatial index, and the engine that turns stored
positions into ``enter``/``exit`` events (sans-I/O; the relay runs it, docs/fences.md).

- :mod:`~geotrack.fences.loading`: :class:`Fence`, the file format and its checks;
- :mod:`~geotrack.fences.index`: :class:`FenceSet`, the STRtree and the geodesic test;
- :mod:`~geotrack.fences.engine`: :class:`FenceEngine`, the per-device state machine.
"""

from geotrack.fences.engine import FenceEngine
from geotrack.fences.index import INSIDE, OUTSIDE, UNSURE, FenceSet
from geotrack.fences.loading import (
    FENCE_NAME_PATTERN,
    Fence,
    feature_collection,
    fence_from_feature,
    load_fences,
    parse_fences,
)

__all__ = [
    "FENCE_NAME_PATTERN",
    "INSIDE",
    "OUTSIDE",
    "UNSURE",
    "Fence",
    "FenceEngine",
    "FenceSet",
    "feature_collection",
    "fence_from_feature",
    "load_fences",
    "parse_fences",
]
