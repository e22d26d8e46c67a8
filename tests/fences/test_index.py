"""The spatial index and the exact tests, held against pyproj's geodesics pair by pair."""

from __future__ import annotations

import random

from pyproj import Geod

from geotrack.fences import INSIDE, OUTSIDE, UNSURE, FenceSet, fence_from_feature


def circle(name: str, lon: float, lat: float, radius: float):  # type: ignore[no-untyped-def]
    feature = {
        "type": "Feature",
        "properties": {"name": name, "radius": radius},
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }
    return fence_from_feature(feature, "test")


def test_circles_decide_as_the_geodesic_distance_does() -> None:
    rng = random.Random(7)
    geod = Geod(ellps="WGS84")
    fences = [
        circle(f"c{i}", rng.uniform(-170, 170), rng.uniform(-80, 80), radius)
        for i, radius in enumerate([5, 50, 300, 2_000, 40_000, 60_000, 900_000] * 20)
    ]
    fence_set = FenceSet(fences)
    lons, lats, accs = [], [], []
    for fence in fences:
        r = fence.radius
        assert r is not None
        for ratio in (0.0, 0.5, 0.97, 0.999, 1.001, 1.03, 1.5):
            for acc in (0.0, 0.01 * r):
                lon, lat, _ = geod.fwd(fence.shape.x, fence.shape.y, rng.uniform(0, 360), ratio * r)
                lons.append(lon)
                lats.append(lat)
                accs.append(acc)
    # Every fix against every fence, geodesically, one pair at a time.
    expected = set()
    for n, (lon, lat, acc) in enumerate(zip(lons, lats, accs, strict=True)):
        for fence in fences:
            assert fence.radius is not None
            _, _, d = geod.inv(fence.shape.x, fence.shape.y, lon, lat)
            if d + acc <= fence.radius:
                expected.add((n, fence.name, INSIDE))
            elif d - acc <= fence.radius:
                expected.add((n, fence.name, UNSURE))
    fixes, indexes, sides = fence_set.sides(lons, lats, accs)
    got = {(int(i), fences[j].name, int(s)) for i, j, s in zip(fixes, indexes, sides, strict=True)}
    assert got == expected
    assert OUTSIDE not in {s for _, _, s in got}
