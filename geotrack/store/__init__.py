"""Stores: one interface (:mod:`geotrack.store.base`), one module per backend.

:func:`open_store` picks the backend from the URL scheme; a backend whose driver is
optional is imported only when its scheme is used.
"""

from __future__ import annotations

from geotrack.errors import UnsupportedStore
from geotrack.store.base import Change, ChangeFeed, Store

__all__ = ["DEFAULT_STORE", "SCHEMES", "Change", "ChangeFeed", "Store", "open_store"]

DEFAULT_STORE = "sqlite:///geotrack.db"
SCHEMES = ("sqlite", "mongodb", "mongodb+srv")


def open_store(url: str) -> Store:
    """Open the store a URL names: ``sqlite:///path.db`` or ``mongodb://...``."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise UnsupportedStore(url, SCHEMES, hint=f"for a file, use sqlite:///{url}")
    if scheme == "sqlite":
        from geotrack.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if scheme in ("mongodb", "mongodb+srv"):
        from geotrack.store.mongo import MongoStore

        return MongoStore.from_url(url)
    raise UnsupportedStore(url, SCHEMES)
