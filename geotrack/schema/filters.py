"""What a subscriber asks for, and which role a WebSocket path selects (sans-I/O)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from geotrack.errors import InvalidParameter
from geotrack.schema.position import _DEVICE_RE, Position

__all__ = ["SUBSCRIBE_PARAMETERS", "BBox", "SubscribeFilter", "literal_role"]


@dataclass(frozen=True, slots=True)
class BBox:
    """A lon/lat rectangle; ``min_lon > max_lon`` means it crosses the antimeridian."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    @classmethod
    def parse(cls, text: str, name: str = "bbox") -> BBox:
        """Parse ``minLon,minLat,maxLon,maxLat``."""
        parts = text.split(",")
        if len(parts) != 4:
            raise InvalidParameter(name, f"expected minLon,minLat,maxLon,maxLat, got {text!r}")
        try:
            min_lon, min_lat, max_lon, max_lat = (float(p) for p in parts)
        except ValueError:
            raise InvalidParameter(name, f"expected four numbers, got {text!r}") from None
        if not all(math.isfinite(v) for v in (min_lon, min_lat, max_lon, max_lat)):
            raise InvalidParameter(name, "numbers must be finite")
        if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180):
            raise InvalidParameter(name, "longitudes must be within -180..180")
        if not (-90 <= min_lat <= max_lat <= 90):
            raise InvalidParameter(name, "latitudes must be within -90..90 and minLat <= maxLat")
        return cls(min_lon, min_lat, max_lon, max_lat)

    def contains(self, lon: float, lat: float) -> bool:
        """Whether the point lies inside (edges included)."""
        if not self.min_lat <= lat <= self.max_lat:
            return False
        if self.min_lon <= self.max_lon:
            return self.min_lon <= lon <= self.max_lon
        return lon >= self.min_lon or lon <= self.max_lon

    def __str__(self) -> str:
        return f"{self.min_lon},{self.min_lat},{self.max_lon},{self.max_lat}"


#: The query parameters /subscribe understands.
SUBSCRIBE_PARAMETERS: Final = ("device", "bbox")


@dataclass(frozen=True, slots=True)
class SubscribeFilter:
    """What a subscriber asked for: any of ``devices`` (all when empty), inside ``bbox``."""

    devices: frozenset[str] = field(default_factory=frozenset)
    bbox: BBox | None = None

    @classmethod
    def from_query(
        cls, query: Mapping[str, Sequence[str]], others: Sequence[str] = ("since", "token")
    ) -> SubscribeFilter:
        """Build a filter from parsed query parameters (``urllib.parse.parse_qs`` form).

        ``others`` are parameters the caller handles itself. Unknown parameters are errors
        too: a typo must not silently widen a subscription.
        """
        supported = (*SUBSCRIBE_PARAMETERS, *others)
        unknown = sorted(set(query) - set(supported))
        if unknown:
            raise InvalidParameter(
                unknown[0], f"unknown parameter (supported: {', '.join(supported)})"
            )
        devices = list(query.get("device", []))
        for device in devices:
            if not _DEVICE_RE.match(device):
                raise InvalidParameter(
                    "device", f"{device!r} is not 1-64 characters of A-Z a-z 0-9 . _ : -"
                )
        boxes = query.get("bbox", [])
        if len(boxes) > 1:
            raise InvalidParameter("bbox", "give it at most once")
        return cls(frozenset(devices), BBox.parse(boxes[0]) if boxes else None)

    def matches(self, position: Position) -> bool:
        """Whether the position passes the filter."""
        if self.devices and position.device not in self.devices:
            return False
        return self.bbox is None or self.bbox.contains(position.lon, position.lat)

    @property
    def everything(self) -> bool:
        """True when the filter lets every position through."""
        return not self.devices and self.bbox is None


def literal_role(path: str) -> Literal["publish", "subscribe"] | None:
    """The role a WebSocket path selects, or None for any other path."""
    if path == "/publish":
        return "publish"
    if path == "/subscribe":
        return "subscribe"
    return None
