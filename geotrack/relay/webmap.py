"""The web map's files and settings, as the HTTP listener serves them (docs/web.md).

The page lives in geotrack/web/ (package data): index.html, style.css, ES modules in js/,
and Leaflet in vendor/leaflet/, copied there from npm at build time (setup.py). Nothing
here does I/O but :func:`static_file`'s path checks; the listener sends the files.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Final

import msgspec

from geotrack.relay.config import DEFAULT_TILES, OSM_ATTRIBUTION, RelayConfig

__all__ = [
    "CACHE_CONTROL",
    "NOT_BUILT",
    "STALE_AFTER_S",
    "WEB_DIR",
    "MapConfig",
    "leaflet_built",
    "map_config",
    "static_file",
]

#: Where the page's files are: geotrack/web/ in the installed package.
WEB_DIR: Final = Path(__file__).resolve().parents[1] / "web"
#: Seconds without a fix after which the page greys a device out.
STALE_AFTER_S: Final = 120
#: Browsers revalidate every file (Last-Modified): an upgraded relay serves its new page.
CACHE_CONTROL: Final = "no-cache"

#: What the page says, and the relay logs, when the build found no npm (setup.py).
NOT_BUILT: Final = "the map library was not built: install Node.js and npm, then reinstall geotrack"

#: What /static may serve, by suffix, with its Content-Type; anything else is a 404.
_TYPES: Final[dict[str, str]] = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
#: Folders of geotrack/web that /static serves (not node_modules, not the JS tests).
_SERVED: Final = ("js", "vendor", "style.css")
#: Path parts never served: escapes, and what is not the page's (the JS tests, npm's tree).
_NEVER: Final = frozenset({"", ".", "..", "tests", "node_modules"})


class MapConfig(msgspec.Struct):
    """The body of GET /map/config.json: what the page needs to know about its relay."""

    ws_port: int
    ws_tls: bool
    tiles: str | None
    attribution: str
    auth: bool
    stale_after_s: int
    version: str


def map_config(config: RelayConfig, ws_port: int, version: str, *, auth: bool) -> bytes:
    """GET /map/config.json for a relay with ``config`` listening (WebSocket) on ``ws_port``.

    ``auth`` says whether the relay or its HTTP listener asks for tokens.
    """
    tiles = config.tiles
    attribution = OSM_ATTRIBUTION if tiles == DEFAULT_TILES else ""
    body = MapConfig(
        ws_port=ws_port,
        ws_tls=config.ssl is not None,
        tiles=tiles,
        attribution=attribution,
        auth=auth,
        stale_after_s=STALE_AFTER_S,
        version=version,
    )
    return msgspec.json.encode(body)


def leaflet_built(root: Path = WEB_DIR) -> bool:
    """Whether the build copied Leaflet into ``root``/vendor (it needs npm)."""
    return (root / "vendor" / "leaflet" / "leaflet.js").is_file()


def static_file(relative: str, root: Path = WEB_DIR) -> tuple[Path, str] | None:
    """The file ``/static/<relative>`` names and its Content-Type; None when it may not be served.

    Only files of the served folders with a known suffix are; ``..``, hidden names,
    backslashes and symbolic links out of ``root`` are refused.
    """
    if "\\" in relative or "\x00" in relative:
        return None
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] not in _SERVED:
        return None
    if any(part in _NEVER or part.startswith(".") for part in parts):
        return None
    content_type = _TYPES.get(PurePosixPath(relative).suffix)
    if content_type is None:
        return None
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path, content_type
