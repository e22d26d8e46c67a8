"""Every file format geotrack reads, and recognising a file's format by its content.

Each reader module exposes one :class:`~geotrack.sources.base.Format` named ``FORMAT``;
this module lists them (the order is the order of ``--format``'s choices and of
detection: the first whose ``sniff`` accepts the content wins, the suffix breaking ties).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Final

from geotrack.sources.base import Format

__all__ = ["MODULES", "formats"]

#: The reader modules, each with a ``FORMAT``. Add a reader by adding its module here.
MODULES: Final[tuple[str, ...]] = (
    # JSON: the specific shapes before generic GeoJSON, which an Overland batch also is.
    "geotrack.sources.overland",
    "geotrack.sources.google",
    "geotrack.sources.geojson",
    "geotrack.sources.owntracks_rec",
    "geotrack.sources.fit",
)


@cache
def formats() -> dict[str, Format]:
    """Every readable format by name, in detection order (readers load on first use)."""
    found: dict[str, Format] = {}
    for name in MODULES:
        fmt: Format = importlib.import_module(name).FORMAT
        found[fmt.name] = fmt
    return found
