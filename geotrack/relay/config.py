"""A relay's settings, checked once, where they are made.

:class:`RelayConfig` validates itself on construction and raises
:class:`~geotrack.errors.InvalidParameter` naming the ``geotrack serve`` option at fault
(``--max-batch: must be within 1..1000, got 0``), so a relay started from Python code
refuses the same settings the command line does. Like uvicorn's ``Config``, it also loads
what its file settings point to: the TLS context from ``certfile``/``keyfile`` and the
token table from ``auth``.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import TYPE_CHECKING, TypeVar

from geotrack.auth import Tokens
from geotrack.errors import InvalidParameter
from geotrack.relay.mqtt_messages import Broker, check_filter, check_template, parse_broker
from geotrack.schema import MAX_BATCH

if TYPE_CHECKING:
    from geotrack.fences import Fence

__all__ = ["DEFAULT_TILES", "OSM_ATTRIBUTION", "RelayConfig", "is_loopback", "server_tls"]

#: The web map's base tiles unless ``--tiles`` says otherwise: OpenStreetMap's standard layer.
DEFAULT_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
#: The attribution OpenStreetMap's tile usage policy asks for.
OSM_ATTRIBUTION = (
    '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
)

_N = TypeVar("_N", int, float)


@dataclass(slots=True)
class RelayConfig:
    """Settings of a relay; every limit here is documented in docs/protocol.md."""

    host: str = "127.0.0.1"
    port: int = 8765
    #: Largest frame accepted from a client; larger ones close the connection with 1009.
    max_frame: int = 1 << 20
    #: Positions queued for one subscriber before it is dropped as too slow.
    subscriber_queue: int = 10_000
    #: Frames a publisher may have unacknowledged before the relay stops reading from it.
    max_inflight: int = 64
    #: Seconds between rate summaries in the log (0 turns them off).
    stats_interval: float = 10.0
    #: Deliver what other relays sharing the store stored (scale-out); seconds per poll.
    follow_interval: float = 0.5
    #: Most positions in one publish frame (the protocol allows at most 1000).
    max_batch: int = MAX_BATCH
    #: Frames per second one connection may send, sustained (bursts of twice that pass);
    #: a faster sender is read more slowly (TCP backpressure), nothing is dropped. HTTP
    #: requests that carry positions count against the same rate, per token or peer.
    max_rate: float = 1000.0
    #: WebSocket connections held at once; handshakes beyond it get HTTP 503. The HTTP
    #: listener holds at most as many connections of its own.
    max_connections: int = 10_000
    #: Seconds a client has to complete its opening handshake.
    handshake_timeout: float = 10.0
    #: Connections the kernel queues before the relay accepts them.
    backlog: int = 1024
    #: Who may publish and subscribe (``--auth``); None lets anyone do both.
    tokens: Tokens | None = None
    #: TLS settings to serve wss:// (``--certfile``/``--keyfile``).
    ssl: ssl.SSLContext | None = None
    #: Origins browsers may connect from (``--allow-origin``); None allows any. Clients
    #: that send no Origin header (devices, servers) are always allowed.
    allow_origins: tuple[str, ...] | None = None
    #: Also serve HTTP (device clients, REST, /healthz, /metrics) on this port; None: off.
    http_port: int | None = None
    #: Address of the HTTP listener; None: the same as ``host``.
    http_host: str | None = None
    #: A token file to load into ``tokens`` (``--auth``).
    auth: Path | None = None
    #: A certificate chain and key (PEM) to load into ``ssl`` (``--certfile``/``--keyfile``).
    certfile: Path | None = None
    keyfile: Path | None = None
    #: Refused handshakes logged per ``refusal_interval`` seconds; the rest are counted.
    refusals_logged: int = 20
    refusal_interval: float = 60.0
    #: Keep this many seconds of fixes (``--retain``): older ones are deleted at start and
    #: every ``retain_every`` seconds (docs/operations.md, "Retention"); None keeps all.
    retain: float | None = None
    retain_every: float = 300.0
    #: The web map's tile URL template (``--tiles``); None: a plain background.
    tiles: str | None = DEFAULT_TILES
    #: MQTT brokers to take positions from (``--mqtt``), as given:
    #: ``mqtt[s]://[user:pass@]host[:port][/filter]``; read into ``mqtt_brokers``. Left
    #: out of the repr: the URLs may hold passwords.
    mqtt: tuple[str, ...] = field(default=(), repr=False)
    #: A second topic filter carrying geotrack's own JSON (``--mqtt-json-filter``).
    mqtt_json_filter: str | None = None
    #: Also store retained messages (``--mqtt-retained``): stale positions otherwise.
    mqtt_retained: bool = False
    #: The broker session's client id (``--mqtt-client-id``); None: one derived from the
    #: host name, the store and the port, the same at every restart.
    mqtt_client_id: str | None = None
    #: Publish every stored position to this topic template (``--mqtt-publish``).
    mqtt_publish: str | None = None
    #: A CA certificate (PEM) to trust for mqtts:// brokers (``--cafile``); None: the system's.
    cafile: Path | None = None
    #: ``mqtt``, read (filled in from it).
    mqtt_brokers: tuple[Broker, ...] = ()
    #: The TLS context for mqtts:// brokers (made from ``cafile`` when one is mqtts://).
    mqtt_tls: SSLContext | None = None
    #: A GeoJSON file of fences (``--fences``): stored positions are checked against them
    #: and enter/exit events stored and sent on /events (docs/fences.md). Loaded into
    #: ``fence_list`` here, so a bad file is refused before the relay starts.
    fences: Path | None = None
    #: Seconds a device must be seen inside before ``enter``, outside before ``exit``.
    fence_dwell: float = 0.0
    #: ``fences``, read (filled in from it).
    fence_list: tuple[Fence, ...] = ()
    #: False: the fences are served and changed through REST but evaluated elsewhere
    #: (``serve --workers``: by worker 0 only, docs/fences.md).
    fence_evaluation: bool = True
    #: Bind with SO_REUSEPORT, sharing the ports with sibling processes (set for each
    #: worker of ``serve --workers``, geotrack/relay/workers.py).
    reuse_port: bool = False
    #: POST every stored event to these URLs (``--webhook``), at least once
    #: (geotrack/relay/webhooks.py). Left out of the repr: the URLs may hold passwords.
    webhooks: tuple[str, ...] = field(default=(), repr=False)
    #: The directory of the webhooks' delivery cursors (``--webhook-state``); None: the
    #: default, ``$XDG_STATE_HOME/geotrack/webhooks``.
    webhook_state: Path | None = None

    def __post_init__(self) -> None:
        _within("--port", self.port, 0, 65535)
        if self.http_port is not None:
            _within("--http-port", self.http_port, 0, 65535)
        _within("--max-frame", self.max_frame, 1, 1 << 40)
        _within("--max-batch", self.max_batch, 1, MAX_BATCH)
        # A subscriber must hold at least two frames' worth, or one frame drops it.
        _within("--subscriber-queue", self.subscriber_queue, 2 * self.max_batch, 10**9)
        _within("--max-rate", self.max_rate, 0.001, float("inf"))
        _within("--max-connections", self.max_connections, 1, 10**9)
        _within("--handshake-timeout", self.handshake_timeout, 0.001, 3600.0)
        _within("--stats-interval", self.stats_interval, 0.0, float("inf"))
        _within("max_inflight", self.max_inflight, 1, 10**6)
        _within("follow_interval", self.follow_interval, 0.0, 3600.0)
        _within("backlog", self.backlog, 1, 1 << 20)
        if self.retain is not None and not 60.0 <= self.retain < float("inf"):
            # Less than a minute would delete fixes still arriving from buffered devices.
            raise InvalidParameter("--retain", f"keep at least 1m of fixes, got {self.retain:g} s")
        _within("--retain-every", self.retain_every, 0.01, 86400.0)
        if self.tiles is not None:
            _check_tiles(self.tiles)
        if self.certfile is None and self.keyfile is not None:
            raise InvalidParameter("--keyfile", "give --certfile too")
        if self.ssl is None and self.certfile is not None:
            self.ssl = server_tls(self.certfile, self.keyfile)
        if self.tokens is None and self.auth is not None:
            self.tokens = Tokens.load(self.auth)
        self._check_mqtt()
        self._check_fences()
        self._check_webhooks()

    def _check_fences(self) -> None:
        """Load ``fences`` (FenceError naming the feature) and check ``fence_dwell``."""
        _within("--fence-dwell", self.fence_dwell, 0.0, 86400.0)
        if self.fences is None:
            if self.fence_dwell:
                raise InvalidParameter("--fence-dwell", "give --fences FILE too")
            return
        if not self.fence_list:
            from geotrack.fences import load_fences

            self.fence_list = tuple(load_fences(self.fences))

    def _check_webhooks(self) -> None:
        """Check each ``--webhook`` URL; ``--webhook-state`` needs one."""
        from geotrack.relay.webhook_target import check_webhook_url

        for url in self.webhooks:
            check_webhook_url(url)
        if self.webhook_state is not None and not self.webhooks:
            raise InvalidParameter("--webhook-state", "give --webhook URL too")

    def _check_mqtt(self) -> None:
        """Read ``mqtt`` and check the options that only make sense with it."""
        if not self.mqtt_brokers:
            self.mqtt_brokers = tuple(parse_broker(url) for url in self.mqtt)
        if not self.mqtt_brokers:
            for name, value in (
                ("--mqtt-json-filter", self.mqtt_json_filter),
                ("--mqtt-publish", self.mqtt_publish),
                ("--mqtt-client-id", self.mqtt_client_id),
                ("--mqtt-retained", self.mqtt_retained or None),
            ):
                if value is not None:
                    raise InvalidParameter(name, "give --mqtt BROKER_URL too")
            return
        if self.mqtt_json_filter is not None:
            check_filter(self.mqtt_json_filter, "--mqtt-json-filter")
        if self.mqtt_publish is not None:
            check_template(self.mqtt_publish)
        if self.mqtt_client_id is not None and not 0 < len(self.mqtt_client_id) <= 65535:
            raise InvalidParameter("--mqtt-client-id", "must not be empty")
        if self.mqtt_tls is None and any(b.tls for b in self.mqtt_brokers):
            self.mqtt_tls = mqtt_client_tls(self.cafile)

    @property
    def http_address(self) -> str:
        """The address the HTTP listener binds."""
        return self.http_host or self.host

    def open_addresses(self) -> list[str]:
        """Addresses reachable from other machines that anyone may use (no ``tokens``)."""
        if self.tokens is not None:
            return []
        hosts = [self.host, self.http_address if self.http_port is not None else ""]
        return list(dict.fromkeys(h for h in hosts if h and not is_loopback(h)))


def server_tls(certfile: Path, keyfile: Path | None) -> ssl.SSLContext:
    """A TLS server context serving ``certfile``; InvalidParameter when it cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidParameter("--certfile", f"cannot load {certfile}: {reason}") from None
    return context


def mqtt_client_tls(cafile: Path | None) -> ssl.SSLContext:
    """The TLS context for mqtts:// brokers: ``cafile``, else the system's trust store."""
    try:
        return ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidParameter("--cafile", f"cannot load {cafile}: {reason}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_tiles(template: str) -> None:
    if not template.startswith(("https://", "http://")):
        raise InvalidParameter(
            "--tiles", f"expected an http(s):// URL template or 'none', got {template!r}"
        )
    missing = [p for p in ("{z}", "{x}", "{y}") if p not in template]
    if missing:
        raise InvalidParameter("--tiles", f"the URL template has no {', '.join(missing)}")


def _within(name: str, value: _N, low: _N, high: _N) -> None:
    if not low <= value <= high:
        raise InvalidParameter(name, f"must be within {low}..{high}, got {value}")
