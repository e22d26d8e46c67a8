"""Fences files: the GeoJSON accepted, and one clear line naming the feature for the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from geotrack.errors import FenceError
from geotrack.fences import load_fences, parse_fences

BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
POLYGON = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}


def feature(name: Any = "a", geometry: Any = POLYGON, **props: Any) -> dict[str, Any]:
    properties = {"name": name, **props} if name is not None else props
    return {"type": "Feature", "properties": properties, "geometry": geometry}


def collection(*features: Any) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


def test_polygons_multipolygons_and_circles(tmp_path: Path) -> None:
    multi = {"type": "MultiPolygon", "coordinates": [POLYGON["coordinates"]]}
    point = {"type": "Point", "coordinates": [13.4, 52.5]}
    path = tmp_path / "fences.geojson"
    path.write_text(collection(feature("a"), feature("b", multi), feature("c", point, radius=150)))
    fences = load_fences(path)
    assert [(f.name, f.is_circle, f.radius) for f in fences] == [
        ("a", False, None),
        ("b", False, None),
        ("c", True, 150.0),
    ]
    assert fences[2].feature["properties"]["radius"] == 150


def test_one_feature_alone_is_a_file_too() -> None:
    assert [f.name for f in parse_fences(json.dumps(feature("solo")), "f")] == ["solo"]


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([feature(None)], "feature 0: properties.name must be"),
        ([feature("a/b")], "without '/'"),
        ([feature("a"), feature("a")], "two fences are named 'a'"),
        ([feature("p", {"type": "Point", "coordinates": [1, 2]})], "needs properties.radius"),
        ([feature("p", {"type": "Point", "coordinates": [1, 2]}, radius=-5)], "radius must be"),
        ([feature("l", {"type": "LineString", "coordinates": [[0, 0], [1, 1]]})], "not LineString"),
        ([feature("x", BOWTIE)], "invalid Polygon: Self-intersection"),
        ([feature("far", {"type": "Point", "coordinates": [200, 0]}, radius=5)], "within [-180"),
        ([feature("ok"), {"type": "Feature", "properties": {"name": "z"}}], "feature 1 ('z')"),
    ],
)
def test_refusals_name_the_feature(features: list[Any], message: str) -> None:
    with pytest.raises(FenceError) as caught:
        parse_fences(collection(*features), "fences.geojson")
    text = str(caught.value)
    assert text.startswith("fences.geojson")
    assert message in text
    assert "\n" not in text


def test_not_geojson_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(FenceError, match="not JSON"):
        parse_fences("{", "f")
    with pytest.raises(FenceError, match="FeatureCollection or Feature"):
        parse_fences("[]", "f")
    with pytest.raises(FenceError, match="cannot read"):
        load_fences(tmp_path / "missing.geojson")
