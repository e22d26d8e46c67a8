"""Exceptions raised by geotrack.

Every error geotrack raises on purpose derives from :class:`GeotrackError`. Each subclass
carries the fields that describe the failure and builds its own message from them, so a
caller can either show ``str(error)`` to a person or inspect the fields. Only the CLI turns
these into ``Error: ...`` lines and exit codes.

    GeotrackError
    ├── InvalidPosition      one position failed validation (names the field)
    ├── FrameError           a whole frame is unusable (not JSON, wrong shape, bad size)
    ├── InvalidParameter     a command-line or query parameter is malformed
    ├── SourceError          an input file (GPX, ...) cannot be used
    ├── StoreError           the store cannot be opened, read or written
    │   ├── UnsupportedStore the store URL names no backend we have
    │   └── StoreNotFound    a command that only reads names a store that does not exist
    ├── RelayError           a relay cannot be reached or refused us
    ├── LinkRefused          a share link opens nothing (the message says why)
    │   ├── LinkInvalid      mistyped, cut short, or revoked by a new secret
    │   └── LinkExpired      genuine, past its expiry
    └── NotATerminal         the live view was asked for where stdout is not a terminal
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = [
    "FenceError",
    "FrameError",
    "GeotrackError",
    "InvalidParameter",
    "InvalidPosition",
    "LinkExpired",
    "LinkInvalid",
    "LinkRefused",
    "NotATerminal",
    "RelayError",
    "SourceError",
    "StoreError",
    "StoreNotFound",
    "UnsupportedStore",
    "expiry_text",
]


class GeotrackError(Exception):
    """Base class of every error geotrack raises on purpose."""


class InvalidPosition(GeotrackError):
    """A position failed validation; ``field`` names the offending field when known."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class FrameError(GeotrackError):
    """A frame cannot be read as positions at all (the relay answers an error frame)."""


class InvalidParameter(GeotrackError):
    """A parameter (query string, option, time, bbox) is malformed."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class SourceError(GeotrackError):
    """An input file cannot be used as a source of positions."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class FenceError(GeotrackError):
    """A fence (a GeoJSON feature of ``--fences``, or one given over REST) is unusable.

    ``where`` names it (the file and the feature's index or name), ``reason`` says why.
    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class StoreError(GeotrackError):
    """The store cannot be opened, read or written."""


class UnsupportedStore(StoreError):
    """The store URL's scheme names no backend."""

    def __init__(self, url: str, known: tuple[str, ...], hint: str | None = None) -> None:
        self.url = url
        self.known = known
        super().__init__(
            f"unsupported store URL {url!r}: use one of {', '.join(s + '://' for s in known)}"
            + (f" ({hint})" if hint else "")
        )


class StoreNotFound(StoreError):
    """A command that only reads was pointed at a store that does not exist.

    ``where`` names the missing thing (a file, a database's collection) for a person;
    ``url`` is the store's display URL.
    """

    def __init__(
        self, where: str, url: str, reason: str = "nothing has been stored there yet"
    ) -> None:
        self.where = where
        self.url = url
        self.reason = reason
        super().__init__(f"no store at {where} ({url}): {reason}; check --store")


class RelayError(GeotrackError):
    """A relay cannot be reached, refused the connection, or broke the protocol."""


class LinkRefused(GeotrackError):
    """A share token does not open anything; the message says why, for the person holding it."""


class LinkInvalid(LinkRefused):
    """A share token that does not verify: mistyped, cut short, or its secret was rotated."""

    def __init__(self, detail: str = "it was mistyped, or revoked by a new secret") -> None:
        self.detail = detail
        super().__init__(f"this link is not valid: {detail}")


class LinkExpired(LinkRefused):
    """A genuine share token past its expiry (``expires``, Unix seconds)."""

    def __init__(self, expires: int) -> None:
        self.expires = expires
        super().__init__(f"this link expired at {expiry_text(expires)}")


class NotATerminal(GeotrackError):
    """The live view was asked for where stdout is not a terminal."""

    def __init__(self) -> None:
        super().__init__(
            "geotrack watch draws a live table on a terminal, and stdout is not one: "
            "use --once for one table of each device's last fix, or `geotrack tail --json` "
            "for a stream of positions"
        )


def expiry_text(seconds: int) -> str:
    """A link's expiry (Unix seconds) as people read it: RFC 3339, ``2026-12-01T10:00:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
