"""geotrack: realtime position ingestion and replay over WebSocket.

The public API is exactly ``__all__``: the schema, the store interface, the relay and the
publishing client. The ``geotrack`` command (:mod:`geotrack.cli`) is a thin shell over it.
"""

from geotrack.errors import (
    FrameError,
    GeotrackError,
    InvalidParameter,
    InvalidPosition,
    RelayError,
    SourceError,
    StoreError,
)
from geotrack.schema import Ack, Position, SubscribeFilter
from geotrack.store import Store, open_store

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "FrameError",
    "GeotrackError",
    "InvalidParameter",
    "InvalidPosition",
    "Position",
    "RelayError",
    "SourceError",
    "Store",
    "StoreError",
    "SubscribeFilter",
    "__version__",
    "open_store",
]
