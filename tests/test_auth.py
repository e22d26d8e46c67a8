"""Share links (geotrack.auth): signing, verification, and the token file's [share] table."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from geotrack.auth import (
    MAX_SHARE_DEVICES,
    MAX_SHARE_SECONDS,
    SHARE_PREFIX,
    Tokens,
    sign_share,
    verify_share,
)
from geotrack.errors import InvalidParameter, LinkExpired, LinkInvalid, expiry_text
from tests.factories import SUB, token_file

SECRET = "s" * 40
OTHER = "o" * 40
NOW = 1_796_000_000  # 2026-11-30T00:53:20Z


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def table(secret: str | None = SECRET) -> Tokens:
    entries = [{"name": "sub", "token": SUB, "role": "subscribe"}]
    return Tokens.from_entries(entries, share={"secret": secret} if secret else None)


# -- signing and verifying ----------------------------------------------------------


def test_a_signed_link_verifies_to_its_devices_and_expiry() -> None:
    token = sign_share(SECRET, ["bus-12", "bus-1", "bus-12"], NOW + 3600, NOW)
    assert token.startswith(SHARE_PREFIX) and token.count(".") == 2
    link = verify_share(SECRET, token, NOW + 3599)
    assert (link.devices, link.expires, link.issued) == (("bus-1", "bus-12"), NOW + 3600, NOW)
    payload = json.loads(unb64(token.split(".")[1]))
    assert payload == {"d": ["bus-1", "bus-12"], "exp": NOW + 3600, "iat": NOW}
    # URL-safe as it is: it goes into ?token= unescaped.
    assert all(c.isalnum() or c in "-_." for c in token)


def test_a_link_gives_a_subscribe_grant_restricted_to_its_devices() -> None:
    token = sign_share(SECRET, ["bus-12"], NOW + 60, NOW)
    grant = table().check(token, now=NOW)
    assert grant is not None
    assert grant.may_subscribe and not grant.may_publish
    assert not grant.may_publish_as("bus-12")
    assert grant.may_view("bus-12") and not grant.may_view("bus-13")
    assert grant.views == frozenset({"bus-12"}) and grant.expires == NOW + 60
    # Ordinary tokens still view everything and never expire.
    ordinary = table().check(SUB)
    assert ordinary is not None and ordinary.views is None and ordinary.expires is None
    assert ordinary.may_view("anything")


def test_an_expired_link_says_when_it_expired() -> None:
    token = sign_share(SECRET, ["bus-12"], NOW, NOW - 60)
    with pytest.raises(LinkExpired) as info:
        verify_share(SECRET, token, NOW)  # at the second it expires, it no longer works
    assert info.value.expires == NOW
    assert str(info.value) == f"this link expired at {expiry_text(NOW)}"
    assert expiry_text(NOW) == "2026-11-30T00:53:20Z"
    with pytest.raises(LinkExpired):
        table().check(token, now=NOW + 1)


def test_a_tampered_payload_does_not_verify() -> None:
    token = sign_share(SECRET, ["bus-12"], NOW + 60, NOW)
    prefix, payload, mac = token.split(".")
    data = json.loads(unb64(payload))
    for changed in (
        {**data, "d": ["bus-12", "bus-13"]},  # another device
        {**data, "exp": NOW + 10**6},  # a later expiry
    ):
        forged = f"{prefix}.{b64(json.dumps(changed, separators=(',', ':')).encode())}.{mac}"
        with pytest.raises(LinkInvalid):
            verify_share(SECRET, forged, NOW)
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    with pytest.raises(LinkInvalid):
        verify_share(SECRET, f"{prefix}.{payload}.{flipped}", NOW)


def test_a_link_signed_with_another_secret_does_not_verify() -> None:
    token = sign_share(OTHER, ["bus-12"], NOW + 60, NOW)
    with pytest.raises(LinkInvalid) as info:
        verify_share(SECRET, token, NOW)
    assert str(info.value) == "this link is not valid: it was mistyped, or revoked by a new secret"


def test_rotating_the_secret_revokes_every_link_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(f'[share]\nsecret = "{SECRET}"\n', encoding="utf-8")
    links = [Tokens.load(path).share([d], 3600, now=NOW) for d in ("bus-1", "bus-2")]
    assert all(Tokens.load(path).check(link, now=NOW) is not None for link in links)
    path.write_text(f'[share]\nsecret = "{OTHER}"\n', encoding="utf-8")
    rotated = Tokens.load(path)
    for link in links:
        with pytest.raises(LinkInvalid):
            rotated.check(link, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "gts1.",
        "gts1..",
        "gts1.abc",
        "gts1.abc.def",
        "gts1.!!!.def",
        "gts1.a.b.c",
        "gts1.\udcff.x",
        "gts1." + "A" * 5000 + ".x",
    ],
)
def test_malformed_links_are_invalid_not_errors(token: str) -> None:
    with pytest.raises(LinkInvalid):
        verify_share(SECRET, token, NOW)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"d":["bus-1"],"exp":1}',
        b'{"d":"bus-1","exp":1,"iat":0}',
        b'{"d":["bus *"],"exp":1,"iat":0}',
        b'{"d":["bus-1"],"exp":"1","iat":0}',
        b'{"d":["bus-1"],"exp":true,"iat":0}',
        b"\xff\xfe",
    ],
)
def test_a_well_signed_payload_of_the_wrong_shape_is_invalid(payload: bytes) -> None:
    # Only we sign, so this means a bug or a leaked secret: refused all the same.
    import hashlib
    import hmac

    signed = SHARE_PREFIX + b64(payload)
    mac = b64(hmac.digest(SECRET.encode(), signed.encode(), hashlib.sha256))
    with pytest.raises(LinkInvalid, match="contents cannot be read"):
        verify_share(SECRET, f"{signed}.{mac}", 0)


def test_a_table_without_a_secret_refuses_share_tokens() -> None:
    token = sign_share(SECRET, ["bus-12"], NOW + 60, NOW)
    with pytest.raises(LinkInvalid, match="share links are not enabled"):
        table(secret=None).check(token, now=NOW)


# -- what may be signed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ([], "--device: give at least one device"),
        (["bus-*"], "--device: 'bus-*' is not a device id"),
        (["a" * 65], "is not a device id"),
        ([f"d{i}" for i in range(MAX_SHARE_DEVICES + 1)], "at most 50 devices"),
    ],
)
def test_devices_must_be_exact_ids(devices: list[str], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message.replace("*", r"\*")):
        sign_share(SECRET, devices, NOW + 60, NOW)


@pytest.mark.parametrize("seconds", [0, -1, MAX_SHARE_SECONDS + 1])
def test_expiry_must_be_within_a_year(seconds: float) -> None:
    with pytest.raises(InvalidParameter, match="--expires: a link must expire"):
        table().share(["bus-12"], seconds, now=NOW)


def test_share_expires_relative_to_now() -> None:
    link = verify_share(SECRET, table().share(["bus-12"], 86400, now=NOW), NOW)
    assert (link.issued, link.expires) == (NOW, NOW + 86400)
    fresh = table().check(table().share(["bus-12"], 60))
    assert fresh is not None and fresh.expires is not None
    assert abs(fresh.expires - (time.time() + 60)) < 5


def test_share_without_a_secret_says_how_to_add_one(tmp_path: Path) -> None:
    path = token_file(tmp_path / "tokens.toml", [{"name": "s", "token": SUB, "role": "subscribe"}])
    with pytest.raises(InvalidParameter) as info:
        Tokens.load(path).share(["bus-12"], 60)
    message = str(info.value)
    assert message.startswith(f"--auth: {path} has no [share] secret")
    assert "\n" not in message
    # The secret it proposes is accepted as it is.
    secret = message.split('secret = "')[1].split('"', maxsplit=1)[0]
    path.write_text(path.read_text() + f'\n[share]\nsecret = "{secret}"\n')
    assert Tokens.load(path).share_secret == secret


# -- the [share] table -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("share", "message"),
    [
        ("secret = 'short'", "secret must be a string of at least 32 characters"),
        ("secret = 42", "secret must be a string"),
        (f"secret = '{SECRET}'\nsecrets = 'x'", "unknown key 'secrets'"),
        ("", "secret must be a string"),
    ],
)
def test_a_bad_share_table_is_one_error_naming_the_file(
    tmp_path: Path, share: str, message: str
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(f"[share]\n{share}\n")
    with pytest.raises(InvalidParameter, match=message) as info:
        Tokens.load(path)
    assert str(info.value).startswith(f"--auth: {path}: [share]")


def test_a_file_with_only_a_share_secret_is_a_table_of_links() -> None:
    tokens = Tokens.from_entries([], share={"secret": SECRET})
    assert len(tokens) == 0
    assert tokens.check(SUB) is None
    with pytest.raises(InvalidParameter, match="defines no"):
        Tokens.from_entries([])
