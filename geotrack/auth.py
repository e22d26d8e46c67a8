"""Who may do what: bearer tokens with a role and, for publishers, the devices they may be.

The token file (``geotrack serve --auth FILE``) is TOML::

    [[token]]
    name = "fleet-trackers"           # shown in logs instead of the token
    token = "c2VjcmV0LXRva2VuLTE"     # or: sha256 = "<hex digest of the token>"
    role = "publish"                  # publish, subscribe or both
    devices = ["bus-*", "van-7"]      # publishers: ids or fnmatch patterns (default: any)

    [[token]]
    name = "dashboard"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    role = "subscribe"

Tokens are compared by their SHA-256 digest, so a lookup takes the same time whatever the
token, and the file may hold digests only. Tokens are never logged; names are. This module
is sans-I/O except :meth:`Tokens.load`, which reads the file.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from geotrack.errors import InvalidParameter

__all__ = ["Grant", "Role", "Tokens", "presented_token"]

Role = Literal["publish", "subscribe", "both"]
_ROLES: Final = ("publish", "subscribe", "both")
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    name: str
    role: Role
    devices: tuple[str, ...] = ()  # patterns; empty means any device

    @property
    def may_publish(self) -> bool:
        return self.role in ("publish", "both")

    @property
    def may_subscribe(self) -> bool:
        return self.role in ("subscribe", "both")

    def may_publish_as(self, device: str) -> bool:
        """Whether this token may publish positions of ``device``."""
        if not self.may_publish:
            return False
        return not self.devices or any(fnmatch.fnmatchcase(device, p) for p in self.devices)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The table of known tokens."""

    def __init__(self, grants: Mapping[str, Grant]) -> None:
        self._by_digest = dict(grants)

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        """Read a token file; raises InvalidParameter naming the file and the entry."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidParameter("--auth", f"cannot read {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidParameter("--auth", f"{path} is not valid TOML: {exc}") from None
        return cls.from_entries(data.get("token", []), str(path))

    @classmethod
    def from_entries(cls, entries: Iterable[Any], source: str = "tokens") -> Tokens:
        """Build the table from parsed entries (what the TOML file's ``[[token]]`` hold)."""
        grants: dict[str, Grant] = {}
        for i, entry in enumerate(entries, 1):
            where = f"{source}: token #{i}"
            if not isinstance(entry, dict):
                raise InvalidParameter("--auth", f"{where} must be a table")
            unknown = sorted(set(entry) - {"name", "token", "sha256", "role", "devices"})
            if unknown:
                raise InvalidParameter("--auth", f"{where}: unknown key {unknown[0]!r}")
            name = entry.get("name", f"token-{i}")
            role = entry.get("role")
            if role not in _ROLES:
                raise InvalidParameter(
                    "--auth", f"{where}: role must be one of {', '.join(_ROLES)}"
                )
            devices = entry.get("devices", [])
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise InvalidParameter("--auth", f"{where}: devices must be a list of strings")
            token, digest = entry.get("token"), entry.get("sha256")
            if (token is None) == (digest is None):
                raise InvalidParameter("--auth", f"{where}: give exactly one of token or sha256")
            if token is not None:
                if not isinstance(token, str) or len(token) < 16:
                    raise InvalidParameter(
                        "--auth", f"{where}: a token must be a string of at least 16 characters"
                    )
                digest = _digest(token)
            elif not isinstance(digest, str) or not _HEX64.match(digest.lower()):
                raise InvalidParameter("--auth", f"{where}: sha256 must be 64 hex digits")
            digest = digest.lower()
            if digest in grants:
                raise InvalidParameter("--auth", f"{where}: the same token appears twice")
            grants[digest] = Grant(str(name), role, tuple(devices))
        if not grants:
            raise InvalidParameter("--auth", f"{source} defines no [[token]]")
        return cls(grants)

    def check(self, token: str | None) -> Grant | None:
        """The grant of a presented token, or None when it is missing or unknown."""
        if not token:
            return None
        return self._by_digest.get(_digest(token))

    def __len__(self) -> int:
        return len(self._by_digest)


def presented_token(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The token a request presents.

    ``Authorization: Bearer TOKEN``, ``Authorization: Basic`` with the token as the password
    (what OwnTracks and other HTTP clients can send), or ``?token=`` (browsers cannot set
    headers on a WebSocket).
    """
    header = headers.get("Authorization") or headers.get("authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip() or None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.partition(":")[2] or None
    tokens = query.get("token")
    return tokens[-1] if tokens else None
