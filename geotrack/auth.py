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

    [share]                           # optional: lets `geotrack share` sign links
    secret = "at least 32 random characters"

Tokens are compared by their SHA-256 digest, so a lookup takes the same time whatever the
token, and the file may hold digests only. Tokens are never logged; names are.

Share links carry a *signed* token instead (:func:`sign_share`):
``gts1.<payload>.<mac>``, where the payload is base64url JSON
``{"d": [devices], "exp": unix_s, "iat": unix_s}`` and the MAC is HMAC-SHA256 of
``gts1.<payload>`` under the ``[share]`` secret. Any relay reading the same file verifies
one without a lookup; a new secret revokes every link signed with the old one. A share
token may view its devices only, until it expires, and never publish.

This module is sans-I/O except :meth:`Tokens.load`, which reads the file.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from geotrack.errors import InvalidParameter, LinkExpired, LinkInvalid
from geotrack.schema import DEVICE_PATTERN

__all__ = [
    "MAX_SHARE_DEVICES",
    "MAX_SHARE_SECONDS",
    "MIN_SECRET_LENGTH",
    "SHARE_PREFIX",
    "Grant",
    "Role",
    "ShareLink",
    "Tokens",
    "new_secret",
    "presented_token",
    "sign_share",
    "verify_share",
]

Role = Literal["publish", "subscribe", "both"]
_ROLES: Final = ("publish", "subscribe", "both")
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_DEVICE_RE: Final = re.compile(DEVICE_PATTERN)

#: What every share token starts with (its format's version).
SHARE_PREFIX: Final = "gts1."
#: The longest a share link may be valid: a year (and a day), in seconds.
MAX_SHARE_SECONDS: Final = 366 * 86400
#: Devices one link may show: its token must fit in a URL (about 4 KB at 64-character ids).
MAX_SHARE_DEVICES: Final = 50
#: The shortest ``[share] secret`` accepted (``secrets.token_urlsafe(32)`` gives 43).
MIN_SECRET_LENGTH: Final = 32


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    name: str
    role: Role
    devices: tuple[str, ...] = ()  # patterns; empty means any device
    #: The only devices it may view (a share link's); None means any device.
    views: frozenset[str] | None = None
    #: When it stops working, Unix seconds (a share link's); None means never.
    expires: int | None = None

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

    def may_view(self, device: str) -> bool:
        """Whether this token may see positions of ``device`` (live or stored)."""
        return self.may_subscribe and (self.views is None or device in self.views)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The table of known tokens."""

    def __init__(
        self, grants: Mapping[str, Grant], share_secret: str | None = None, source: str = "tokens"
    ) -> None:
        self._by_digest = dict(grants)
        #: The ``[share]`` secret that signs and verifies share links; None: no links.
        self.share_secret = share_secret
        #: Where the table came from (the file's path), for messages.
        self.source = source

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
        return cls.from_entries(data.get("token", []), str(path), share=data.get("share"))

    @classmethod
    def from_entries(
        cls, entries: Iterable[Any], source: str = "tokens", share: Any = None
    ) -> Tokens:
        """Build the table from parsed entries (what the TOML file's ``[[token]]`` hold).

        ``share`` is the file's ``[share]`` table, if any.
        """
        secret = _share_secret(share, source)
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
        if not grants and secret is None:
            raise InvalidParameter("--auth", f"{source} defines no [[token]]")
        return cls(grants, secret, source)

    def check(self, token: str | None, now: float | None = None) -> Grant | None:
        """The grant of a presented token, or None when it is missing or unknown.

        A share token (``gts1.``) is verified with the ``[share]`` secret at ``now``
        (Unix seconds; default: the clock): its grant views its devices only. Raises
        LinkExpired for a genuine link past its expiry, LinkInvalid for one that does not
        verify (mistyped, or signed with a secret since rotated).
        """
        if not token:
            return None
        if token.startswith(SHARE_PREFIX):
            if self.share_secret is None:
                raise LinkInvalid("share links are not enabled on this relay")
            link = verify_share(self.share_secret, token, _now() if now is None else now)
            return link.grant()
        return self._by_digest.get(_digest(token))

    def share(self, devices: Iterable[str], seconds: float, now: float | None = None) -> str:
        """A share token showing ``devices`` for ``seconds`` from ``now`` (default: the clock).

        Raises InvalidParameter when the file has no ``[share]`` secret (naming a new one to
        add), or for devices or a duration a link cannot carry.
        """
        if self.share_secret is None:
            raise InvalidParameter(
                "--auth",
                f"{self.source} has no [share] secret to sign links with: add a [share] "
                f'table with secret = "{new_secret()}" (a new random one) to it, and '
                "restart the relays that use it",
            )
        issued = _now() if now is None else now
        if not 0 < seconds <= MAX_SHARE_SECONDS:
            raise InvalidParameter(
                "--expires",
                f"a link must expire after more than 0 s and at most "
                f"{MAX_SHARE_SECONDS // 86400} days",
            )
        return sign_share(self.share_secret, devices, int(issued + seconds), int(issued))

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


# -- share links ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareLink:
    """What a verified share token says: the devices it shows and its validity."""

    devices: tuple[str, ...]
    expires: int  # Unix seconds
    issued: int  # Unix seconds

    def grant(self) -> Grant:
        """The grant it gives: subscribe, to its devices only, until it expires."""
        return Grant("share link", "subscribe", (), frozenset(self.devices), self.expires)


def new_secret() -> str:
    """A fresh random ``[share]`` secret."""
    return secrets.token_urlsafe(32)


def sign_share(secret: str, devices: Iterable[str], expires: int, issued: int) -> str:
    """A share token for ``devices`` until ``expires`` (Unix seconds), signed by ``secret``.

    Raises InvalidParameter (``--device``) for no devices, too many, or one that is not a
    device id: a link names exact ids, never patterns, so a device added later never
    shows up in a link given out before.
    """
    unique = sorted(set(devices))
    if not unique:
        raise InvalidParameter("--device", "give at least one device the link shows")
    if len(unique) > MAX_SHARE_DEVICES:
        raise InvalidParameter(
            "--device", f"a link shows at most {MAX_SHARE_DEVICES} devices, got {len(unique)}"
        )
    for device in unique:
        if not _DEVICE_RE.match(device):
            raise InvalidParameter(
                "--device",
                f"{device[:70]!r} is not a device id (1-64 characters of A-Z a-z 0-9 . _ : -; "
                "a link names exact ids, not patterns)",
            )
    payload = json.dumps(
        {"d": unique, "exp": int(expires), "iat": int(issued)}, separators=(",", ":")
    )
    signed = SHARE_PREFIX + _b64(payload.encode())
    return f"{signed}.{_mac(secret, signed)}"


def verify_share(secret: str, token: str, now: float) -> ShareLink:
    """The link a share token describes, checked against ``secret`` and the time ``now``.

    The MAC is checked (in constant time) before anything in the payload is read. Raises
    LinkInvalid when the token is malformed or its MAC does not match, LinkExpired when it
    is genuine but ``now`` is at or past its expiry.
    """
    signed, dot, mac = token.rpartition(".")
    if (
        not token.startswith(SHARE_PREFIX)
        or not token.isascii()
        or not dot
        or signed == SHARE_PREFIX[:-1]
    ):
        raise LinkInvalid("it is not a share link (gts1.PAYLOAD.SIGNATURE)")
    if not hmac.compare_digest(_mac(secret, signed).encode(), mac.encode()):
        raise LinkInvalid()
    try:
        data = json.loads(_unb64(signed[len(SHARE_PREFIX) :]))
        devices, expires, issued = data["d"], data["exp"], data["iat"]
    except (ValueError, TypeError, KeyError):
        raise LinkInvalid("its contents cannot be read") from None
    if (
        not isinstance(devices, list)
        or not all(isinstance(d, str) and _DEVICE_RE.match(d) for d in devices)
        or type(expires) is not int
        or type(issued) is not int
    ):
        raise LinkInvalid("its contents cannot be read")
    if now >= expires:
        raise LinkExpired(expires)
    return ShareLink(tuple(devices), expires, issued)


def _share_secret(table: Any, source: str) -> str | None:
    if table is None:
        return None
    where = f"{source}: [share]"
    if not isinstance(table, dict):
        raise InvalidParameter("--auth", f"{where} must be a table")
    unknown = sorted(set(table) - {"secret"})
    if unknown:
        raise InvalidParameter("--auth", f"{where}: unknown key {unknown[0]!r}")
    secret = table.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        raise InvalidParameter(
            "--auth",
            f"{where}: secret must be a string of at least {MIN_SECRET_LENGTH} characters "
            f'(for example secret = "{new_secret()}")',
        )
    return secret


def _mac(secret: str, signed: str) -> str:
    return _b64(hmac.digest(secret.encode(), signed.encode(), hashlib.sha256))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _now() -> float:
    return time.time()
