"""The relay: WebSocket transport (server), group commit (ingest) and delivery (fanout)."""

from geotrack.relay.server import Relay, RelayConfig

__all__ = ["Relay", "RelayConfig"]
