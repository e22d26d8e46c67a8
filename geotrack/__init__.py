"""geotrack: realtime position ingestion and replay over WebSocket.

The public API is exactly ``__all__``: the schema, the store interface, the relay and the
publishing client. The ``geotrack`` command (:mod:`geotrack.cli`) is a thin shell over it.

The relay and the client are imported on first use (``geotrack.Relay``, ``from geotrack
import Publisher``): they bring asyncio, websockets and aiohttp, which would triple the
time ``import geotrack`` takes for a program that only reads a store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from geotrack.errors import (
    FrameError,
    GeotrackError,
    InvalidParameter,
    InvalidPosition,
    RelayError,
    SourceError,
    StoreError,
    StoreNotFound,
    UnsupportedStore,
)
from geotrack.schema import Ack, Position, SubscribeFilter
from geotrack.store import Store, open_store

if TYPE_CHECKING:
    from geotrack.client import Publisher, subscribe
    from geotrack.relay import Relay, RelayConfig

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "FrameError",
    "GeotrackError",
    "InvalidParameter",
    "InvalidPosition",
    "Position",
    "Publisher",
    "Relay",
    "RelayConfig",
    "RelayError",
    "SourceError",
    "Store",
    "StoreError",
    "StoreNotFound",
    "SubscribeFilter",
    "UnsupportedStore",
    "__version__",
    "open_store",
    "subscribe",
]

# Name -> the module that defines it, imported by __getattr__ on first use.
_LAZY = {
    "Publisher": "geotrack.client",
    "Relay": "geotrack.relay",
    "RelayConfig": "geotrack.relay",
    "subscribe": "geotrack.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geotrack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
