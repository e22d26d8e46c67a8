"""MQTT settings and messages, sans I/O: broker URLs, topic filters, message → positions.

Everything here is pure: :func:`parse_broker` reads what ``--mqtt`` names,
:func:`check_filter` and :func:`check_template` check topics, and :func:`read_message`
turns one received message into positions (or says why not), the way the HTTP
``/owntracks`` endpoint and ``POST /api/positions`` read the same JSON. The connection
that feeds it lives in :mod:`geotrack.relay.mqtt`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final
from urllib.parse import unquote

import msgspec

from geotrack.errors import FrameError, InvalidParameter, InvalidPosition
from geotrack.relay.http_devices import parse_owntracks
from geotrack.schema import MAX_BATCH, Position, Rejection, decode_frame

__all__ = [
    "DEFAULT_FILTER",
    "Broker",
    "Outcome",
    "Reading",
    "check_filter",
    "check_template",
    "client_ids",
    "default_client_id",
    "parse_broker",
    "read_message",
    "topic_matches",
]

#: What ``--mqtt`` subscribes to when its URL names no filter: every OwnTracks message.
DEFAULT_FILTER: Final = "owntracks/#"
_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
_decode_json: Final = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Broker:
    """One ``--mqtt`` URL, read: where to connect, as whom, and what to subscribe to.

    ``url`` is for display: it never holds the user name or password.
    """

    host: str
    port: int
    tls: bool
    topic_filter: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``mqtt[s]://host:port/filter``, without credentials: safe to log."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}/{self.topic_filter}"


def parse_broker(text: str, option: str = "--mqtt") -> Broker:
    """Read ``mqtt[s]://[user:pass@]host[:port][/filter]``; InvalidParameter naming ``option``.

    The filter is taken as written after the first ``/`` (``#`` and ``+`` included, which a
    URL parser would cut as a fragment); user and password may be percent-encoded. Error
    messages never repeat the password.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in _PORTS:
        raise InvalidParameter(
            option, f"expected mqtt://HOST[:PORT][/FILTER] or mqtts://..., got {_safe(text)!r}"
        )
    scheme = scheme.lower()
    netloc, slash, topic_filter = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user)
        password = unquote(secret) if colon else None
    host, port = _host_port(hostport, _PORTS[scheme], option)
    topic_filter = topic_filter if slash and topic_filter else DEFAULT_FILTER
    check_filter(topic_filter, option)
    return Broker(host, port, scheme == "mqtts", topic_filter, username, password)


def _safe(text: str) -> str:
    """``text`` with any ``user:password@`` part replaced, for error messages."""
    scheme, sep, rest = text.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "…@" + netloc.rpartition("@")[2]
    return f"{scheme}{sep}{netloc}{slash}{path}"


def _host_port(text: str, default: int, option: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise InvalidParameter(option, f"bad IPv6 address in {text!r}")
        port_text = after[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise InvalidParameter(option, "the URL names no host")
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise InvalidParameter(option, f"port must be within 1..65535, got {port_text!r}")
    return host, int(port_text)


def check_filter(topic_filter: str, option: str) -> None:
    """Raise InvalidParameter unless ``topic_filter`` is a valid MQTT subscription filter."""
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise InvalidParameter(
                option, f"'#' must be a whole level, and the last: {topic_filter!r}"
            )
        if "+" in level and level != "+":
            raise InvalidParameter(option, f"'+' must be a whole level: {topic_filter!r}")
    if not topic_filter or "\0" in topic_filter or len(topic_filter.encode()) > 65535:
        raise InvalidParameter(option, f"not a valid topic filter: {topic_filter!r}")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the subscription filter (``+`` one level, ``#`` the rest).

    As MQTT says, a filter starting with a wildcard does not match topics starting with
    ``$`` (the broker's own, such as ``$SYS/...``).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted = topic_filter.split("/")
    levels = topic.split("/")
    for i, want in enumerate(wanted):
        if want == "#":
            return True  # also matches the parent level itself ("a/#" matches "a")
        if i >= len(levels) or (want != "+" and want != levels[i]):
            return False
    return len(levels) == len(wanted)


def check_template(template: str, option: str = "--mqtt-publish") -> None:
    """Raise InvalidParameter unless ``template`` makes a topic from ``{device}``."""
    try:
        topic = template.format(device="d")
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidParameter(
            option, f"a topic template may use {{device}} only, got {template!r} ({exc})"
        ) from None
    if "{device}" not in template:
        raise InvalidParameter(option, f"the template has no {{device}}: {template!r}")
    if "+" in topic or "#" in topic or not topic:
        raise InvalidParameter(option, f"a topic cannot hold '+' or '#': {template!r}")


def default_client_id(*stable: object) -> str:
    """A client id that stays the same across restarts of the same relay.

    The broker keeps a session (subscriptions, unacknowledged messages) under this id; the
    parts (host name, store, port) make it differ between relays on one machine.
    """
    digest = hashlib.sha256("|".join(map(str, stable)).encode()).hexdigest()
    return f"geotrack-{digest[:12]}"  # 21 characters: MQTT 3.1.1 servers must allow 23


def client_ids(brokers: Sequence[Broker], given: str | None, stable: Sequence[object]) -> list[str]:
    """The session client id for each broker: distinct wherever two share a host and port.

    A broker allows one connection per client id, so two ``--mqtt`` URLs to one broker
    (other filters) need two. The first URL to each host and port gets ``given``
    (``--mqtt-client-id``), later ones ``given-2``, ``given-3``...; without ``given``,
    :func:`default_client_id` of ``stable``, plus the filter for a later URL.
    """
    seen: Counter[tuple[str, int]] = Counter()
    ids = []
    for broker in brokers:
        seen[broker.host, broker.port] += 1
        n = seen[broker.host, broker.port]
        if given is not None:
            ids.append(given if n == 1 else f"{given}-{n}")
        else:
            ids.append(default_client_id(*stable, *(() if n == 1 else (broker.topic_filter,))))
    return ids


class Outcome(Enum):
    """What became of one received message."""

    #: Its positions (possibly none valid) went to the store.
    POSITIONS = "positions"
    #: Another OwnTracks ``_type`` (transition, waypoint, lwt, card...) or an empty payload.
    IGNORED = "ignored"
    #: A retained message, read only with ``--mqtt-retained``.
    RETAINED = "retained"
    #: Unreadable as a whole (not JSON, encrypted, no location fields): counted as rejected.
    REJECTED = "rejected"


@dataclass(slots=True)
class Reading:
    """One message, read: its outcome, positions and the rejections to count."""

    outcome: Outcome
    positions: list[Position] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def read_message(
    topic: str,
    payload: bytes,
    *,
    retain: bool,
    json_filter: str | None,
    retained: bool = False,
    max_batch: int = MAX_BATCH,
) -> Reading:
    """Read one message received on ``topic``.

    On ``json_filter`` the payload is geotrack's own JSON (a Position or an array, as on
    ``/publish``); anywhere else an OwnTracks message, whose device is ``USER:DEVICE`` from
    a topic ``owntracks/USER/DEVICE`` (any first level), else from its ``tid``. Retained
    messages are stale positions replayed at every subscription: they are skipped unless
    ``retained``.
    """
    if retain and not retained:
        return Reading(Outcome.RETAINED)
    if not payload.strip():  # an empty retained message clears a topic
        return Reading(Outcome.IGNORED)
    if json_filter is not None and topic_matches(json_filter, topic):
        try:
            frame = decode_frame(payload, max_batch)
        except FrameError as exc:
            return Reading(Outcome.REJECTED, rejected=[Rejection(0, str(exc))])
        return Reading(Outcome.POSITIONS, frame.positions, frame.rejected)
    return _read_owntracks(topic, payload)


def _read_owntracks(topic: str, payload: bytes) -> Reading:
    levels = topic.split("/")
    user, device = (levels[1], levels[2]) if len(levels) >= 3 else (None, None)
    try:
        message: Any = _decode_json(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Reading(Outcome.REJECTED, rejected=[Rejection(0, f"not valid JSON: {exc}")])
    try:
        position = parse_owntracks(message, user=user or None, device=device or None)
    except (InvalidParameter, InvalidPosition) as exc:
        return Reading(Outcome.REJECTED, rejected=[Rejection(0, str(exc))])
    if position is None:
        return Reading(Outcome.IGNORED)
    return Reading(Outcome.POSITIONS, [position])
