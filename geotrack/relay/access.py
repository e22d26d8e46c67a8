"""What WebSocket and HTTP decide alike: who may do what, with which parameters, and how
refusals are answered and logged.

Each policy lives here once and both transports call it: the token check (401 and 403),
the per-device publish grant, the devices a share link may view, device-id validation,
the query parameters each WebSocket endpoint accepts (docs/protocol.md lists the same),
the bind error messages, and the log of refused handshakes. Sans-I/O but for
:class:`RefusalLog`, which writes log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Final, Literal

from geotrack.auth import Grant, Tokens, presented_token
from geotrack.errors import InvalidParameter, LinkRefused, RelayError
from geotrack.schema import DEVICE_PATTERN, Position, Rejection, SubscribeFilter
from geotrack.schema import EVENTS_PARAMETERS as _EVENT_FILTERS
from geotrack.schema import SUBSCRIBE_PARAMETERS as _FILTER_PARAMETERS

__all__ = [
    "BEARER_CHALLENGE",
    "CHALLENGES",
    "EVENTS_PARAMETERS",
    "HTTP_FEED_PARAMETERS",
    "PARAMETERS",
    "POLL_PARAMETERS",
    "PUBLISH_PARAMETERS",
    "STREAM_PARAMETERS",
    "SUBSCRIBE_PARAMETERS",
    "RefusalLog",
    "Refused",
    "Role",
    "authorize",
    "bind_error",
    "check_parameters",
    "device_ids",
    "enforce_devices",
    "forbidden_device",
    "restrict_devices",
    "restrict_filter",
    "watch_tls_failures",
]

Role = Literal["publish", "subscribe"]

#: Query parameters each WebSocket endpoint accepts; any other refuses the handshake (400).
#: docs/protocol.md documents exactly these (a test holds the two together).
PUBLISH_PARAMETERS: Final[tuple[str, ...]] = ("token",)
SUBSCRIBE_PARAMETERS: Final[tuple[str, ...]] = (*_FILTER_PARAMETERS, "since", "token")
#: /events (geofence events, v1.2): by device and fence, resumable like /subscribe.
EVENTS_PARAMETERS: Final[tuple[str, ...]] = (*_EVENT_FILTERS, "since", "token")
PARAMETERS: Final[Mapping[str, tuple[str, ...]]] = {
    "/publish": PUBLISH_PARAMETERS,
    "/subscribe": SUBSCRIBE_PARAMETERS,
    "/events": EVENTS_PARAMETERS,
}
#: Query parameters of the HTTP live feeds (docs/protocol.md's second table): those of
#: /subscribe, and how long a long poll may be held.
POLL_PARAMETERS: Final[tuple[str, ...]] = (*_FILTER_PARAMETERS, "since", "wait", "token")
STREAM_PARAMETERS: Final[tuple[str, ...]] = SUBSCRIBE_PARAMETERS
HTTP_FEED_PARAMETERS: Final[Mapping[str, tuple[str, ...]]] = {
    "/api/positions/poll": POLL_PARAMETERS,
    "/api/stream": STREAM_PARAMETERS,
}

#: The challenges a 401 carries: bearer tokens, and Basic with the token as password.
CHALLENGES: Final = ('Bearer realm="geotrack"', 'Basic realm="geotrack", charset="UTF-8"')
#: The challenge of a 401 to a request that presented a token other than by Basic auth (a
#: bearer header or ``?token=``, as the web map does): offering Basic there would make a
#: browser pop up its password dialog over the page instead of letting it show the reason.
BEARER_CHALLENGE: Final = ('Bearer realm="geotrack", error="invalid_token"',)
_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)


class Refused(Exception):
    """A request is refused: ``status`` and a one-line ``reason`` to answer with."""

    def __init__(
        self,
        status: int,
        reason: str,
        challenge: bool = False,
        challenges: tuple[str, ...] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        #: The WWW-Authenticate challenges the answer carries (:data:`CHALLENGES` by default
        #: when ``challenge``), none otherwise.
        self.challenges = challenges if challenges is not None else CHALLENGES if challenge else ()
        #: Whether the answer carries WWW-Authenticate.
        self.challenge = bool(self.challenges)
        super().__init__(reason)


def authorize(
    tokens: Tokens | None,
    headers: Mapping[str, str],
    query: Mapping[str, list[str]],
    role: Role,
) -> Grant | None:
    """The grant of the token a request presents (None when auth is off).

    Raises Refused: 401 without a known token or with a share link that is expired or
    does not verify (the reason says which, for the page to show), 403 when its role does
    not allow ``role``.
    """
    if tokens is None:
        return None
    token = presented_token(headers, query)
    header = headers.get("Authorization") or headers.get("authorization") or ""
    # Basic is offered to clients that use it or presented nothing, never to a page.
    by_basic = not token or header.strip().lower().startswith("basic")
    challenges = CHALLENGES if by_basic else BEARER_CHALLENGE
    try:
        grant = tokens.check(token)
    except LinkRefused as exc:
        raise Refused(401, str(exc), challenges=challenges) from None
    if grant is None:
        raise Refused(
            401,
            "a valid token is required (Authorization: Bearer TOKEN, Basic auth with the "
            "token as password, or ?token=TOKEN)",
            challenges=challenges,
        )
    allowed = grant.may_publish if role == "publish" else grant.may_subscribe
    if not allowed:
        raise Refused(403, f"token {grant.name!r} may not {role}")
    return grant


def restrict_devices(grant: Grant | None, devices: Iterable[str]) -> tuple[str, ...]:
    """The devices a request of ``grant`` reads when it asks for ``devices`` (empty: all).

    A grant that views every device (or no auth) reads what it asks for; a share link's
    grant reads its own devices when it asks for none, and asking for any other is
    refused (Refused 403), never silently narrowed.
    """
    asked = tuple(devices)
    if grant is None or grant.views is None:
        return asked
    if not asked:
        return tuple(sorted(grant.views))
    for device in asked:
        if device not in grant.views:
            shown = ", ".join(sorted(grant.views))
            raise Refused(403, f"this link shows only {shown}: not {device[:70]!r}")
    return asked


def restrict_filter(grant: Grant | None, flt: SubscribeFilter) -> SubscribeFilter:
    """The filter a subscriber of ``grant`` gets when it asks for ``flt`` (see above)."""
    if grant is None or grant.views is None:
        return flt
    return replace(flt, devices=frozenset(restrict_devices(grant, flt.devices)))


def forbidden_device(grant: Grant, device: str) -> str:
    """The rejection reason for a position of a device the token may not publish as."""
    return f"device: token {grant.name!r} may not publish as {device!r}"


def enforce_devices(
    grant: Grant | None,
    indexes: Sequence[int],
    positions: list[Position],
    rejected: list[Rejection],
) -> tuple[list[Position], list[Rejection]]:
    """Keep the positions ``grant`` may publish; reject the others, by index in the frame.

    ``indexes`` are the positions' places in their frame; the rejections come back sorted.
    """
    if grant is None or not grant.devices:
        return positions, rejected
    allowed: list[Position] = []
    rejected = list(rejected)
    for index, position in zip(indexes, positions, strict=True):
        if grant.may_publish_as(position.device):
            allowed.append(position)
        else:
            rejected.append(Rejection(index, forbidden_device(grant, position.device)))
    rejected.sort(key=lambda r: r.index)
    return allowed, rejected


def device_ids(values: Iterable[str], name: str = "device") -> tuple[str, ...]:
    """``values`` as device ids; InvalidParameter(name) for the first that is not one."""
    devices = tuple(values)
    for device in devices:
        if not _DEVICE_RE.match(device):
            raise InvalidParameter(
                name, f"{device[:70]!r} is not 1-64 characters of A-Z a-z 0-9 . _ : -"
            )
    return devices


def check_parameters(endpoint: str, given: Iterable[str]) -> None:
    """InvalidParameter for the first parameter ``endpoint`` does not accept."""
    accepted = PARAMETERS[endpoint]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise InvalidParameter(
            unknown[0], f"unknown parameter (accepted by {endpoint}: {', '.join(accepted)})"
        )


def bind_error(exc: OSError, host: str, port: int, what: str = "the relay") -> RelayError:
    """The one-line error for a listener (``what``) that cannot bind ``host:port``."""
    if exc.errno == errno.EADDRINUSE:
        return RelayError(f"port {port} on {host} is already in use ({what})")
    if exc.errno == errno.EADDRNOTAVAIL:
        return RelayError(f"cannot bind {what} to {host}: no such local address")
    if exc.errno == errno.EACCES:
        return RelayError(f"not allowed to bind {what} to {host}:{port}")
    return RelayError(f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}")


class RefusalLog:
    """Log lines for refused handshakes and requests, at most ``limit`` per ``interval``.

    Each line names the peer, the status and the reason; never a token or a query string
    (either may carry one), so callers pass neither. Past the limit, refusals are only
    counted, and one ``... and K more refused handshakes suppressed`` line follows at the
    end of the interval: a flood cannot fill a disk.
    """

    def __init__(
        self,
        logger: logging.Logger,
        limit: int = 20,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._limit = limit
        self._interval = interval
        self._clock = clock
        self._window_start = -float("inf")
        self._logged = 0
        self.suppressed = 0
        #: Refusals seen in all, logged or not.
        self.total = 0
        self._flush_scheduled = False

    def refused(self, peer: str, status: int | str, reason: str, kind: str = "handshake") -> None:
        """Note one refusal: ``status`` is an HTTP status, or a word such as ``tls``.

        ``kind`` names what was refused in the line: a WebSocket ``handshake`` or an HTTP
        ``request``.
        """
        self.total += 1
        now = self._clock()
        if now - self._window_start >= self._interval:
            self.flush()
            self._window_start = now
            self._logged = 0
        if self._logged < self._limit:
            self._logged += 1
            level = logging.INFO if status == 404 else logging.WARNING
            self._log.log(level, "refused %s from %s: %s %s", kind, peer, status, reason)
            return
        self.suppressed += 1
        if not self._flush_scheduled:
            with contextlib.suppress(RuntimeError):  # outside a loop: no timer
                loop = asyncio.get_running_loop()
                loop.call_later(self._window_start + self._interval - now, self._scheduled)
                self._flush_scheduled = True

    def _scheduled(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Log how many refusals were suppressed since the last such line (if any)."""
        if self.suppressed:
            self._log.warning("... and %d more refused handshakes suppressed", self.suppressed)
            self.suppressed = 0


def watch_tls_failures(context: ssl.SSLContext, refusals: RefusalLog) -> None:
    """Report every TLS handshake ``context`` fails to ``refusals``.

    A plain ws:// or http:// request on the TLS port fails there, before any HTTP is read,
    and asyncio logs nothing of it. ``SSLContext.sslobject_class`` is the public hook that
    sees it; the peer's address is not known at that level.
    """

    class _Watched(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                refusals.refused("a client (address unknown at TLS)", "tls", _tls_reason(exc))
                raise

    context.sslobject_class = _Watched


def _tls_reason(exc: ssl.SSLError) -> str:
    if exc.reason == "HTTP_REQUEST":
        return "TLS handshake failed: plain HTTP on the TLS port (ws:// instead of wss://?)"
    return f"TLS handshake failed: {exc.reason or exc}"
