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
    └── RelayError           a relay cannot be reached or refused us
"""

from __future__ import annotations

__all__ = [
    "FrameError",
    "GeotrackError",
    "InvalidParameter",
    "InvalidPosition",
    "RelayError",
    "SourceError",
    "StoreError",
    "StoreNotFound",
    "UnsupportedStore",
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
