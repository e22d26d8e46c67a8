"""The relay: WebSocket transport (server), group commit (ingest) and delivery (fanout).

:class:`RelayConfig` holds and checks the settings, :class:`Relay` is one relay bound to a
store, and :func:`serve` runs one with its HTTP listener until SIGINT or SIGTERM, the way
``geotrack serve`` does.
"""

from geotrack.relay.config import RelayConfig
from geotrack.relay.runner import serve
from geotrack.relay.server import Relay

__all__ = ["Relay", "RelayConfig", "serve"]
