"""Stores: one interface (:mod:`geotrack.store.base`), one module per backend.

:func:`open_store` picks the backend from the URL scheme; a backend whose driver is
optional is imported only when its scheme is used.
"""

from __future__ import annotations

from geotrack.errors import UnsupportedStore
from geotrack.store.base import Change, ChangeFeed, EventChange, EventFeed, Pruned, Store

__all__ = [
    "DEFAULT_STORE",
    "SCHEMES",
    "Change",
    "ChangeFeed",
    "EventChange",
    "EventFeed",
    "Pruned",
    "Store",
    "open_store",
]

DEFAULT_STORE = "sqlite:///geotrack.db"
SCHEMES = ("sqlite", "mongodb", "mongodb+srv")


def open_store(url: str, *, create: bool = True) -> Store:
    """Open the store a URL names: ``sqlite:///path.db`` or ``mongodb://...``.

    ``create=False`` is for commands that only read (``tail``, ``export``): a store that
    does not exist yet raises StoreNotFound and nothing is created — no SQLite file, no
    MongoDB collection or index. Commands that write (``serve``) create the store.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise UnsupportedStore(url, SCHEMES, hint=f"for a file, use sqlite:///{url}")
    if scheme == "sqlite":
        from geotrack.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url, create=create)
    if scheme in ("mongodb", "mongodb+srv"):
        from geotrack.store.mongo import MongoStore

        return MongoStore.from_url(url, create=create)
    raise UnsupportedStore(url, SCHEMES)
