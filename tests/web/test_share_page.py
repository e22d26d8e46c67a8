"""Share links in a real browser: a link shows only its devices; an expired one says so.

The relay runs with ``--auth``: a token file with the standard grants and a ``[share]``
secret, with which the test signs links as ``geotrack share`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geotrack.auth import sign_share
from tests.factories import PUB, SUB, token_file
from tests.web.browser import Page, WebRelay, publish, web_relay_process

SECRET = "a-share-secret-of-at-least-32-characters-0123"


@pytest.fixture
def auth_relay(tmp_path: Path) -> Iterator[WebRelay]:
    tokens = token_file(tmp_path / "tokens.toml")
    tokens.write_text(tokens.read_text() + f'\n[share]\nsecret = "{SECRET}"\n')
    with web_relay_process(tmp_path / "geotrack.db", "--auth", str(tokens)) as relay:
        yield relay


def share_token(devices: list[str], expires: float) -> str:
    issued = min(time.time() - 60, expires - 3600)
    token: str = sign_share(SECRET, devices, int(expires), int(issued))
    return token


def test_a_share_link_shows_only_its_devices(browser: Any, auth_relay: WebRelay) -> None:
    link = share_token(["bus-12"], time.time() + 3600)
    page = Page(browser, auth_relay).open(f"token={link}")
    t = time.time()
    publish(
        auth_relay.ws_url,
        [
            {"device": "bus-12", "lat": 52.52, "lon": 13.40, "ts": t},
            {"device": "car-7", "lat": 52.53, "lon": 13.41, "ts": t},
        ],
        token=PUB,
    )
    page.wait(lambda: "bus-12" in page.devices(), "bus-12")
    # car-7 was published in the same frame: had the page been sent it, it would be there.
    time.sleep(0.5)
    assert set(page.devices()) == {"bus-12"}
    rows = [li.get_attribute("data-device") for li in page.find_all("#devices li[data-device]")]
    assert rows == ["bus-12"]
    assert not [e for e in page.find_all(".gt-error") if e.is_displayed() and e.text.strip()]


def test_an_expired_link_says_when_it_expired(browser: Any, auth_relay: WebRelay) -> None:
    expired = 1_764_072_000  # 2025-11-25T12:00:00Z
    link = share_token(["bus-12"], expired)
    page = Page(browser, auth_relay).open(f"token={link}", wait_live=False)
    message = "this link expired at 2025-11-25T12:00:00Z"
    page.wait(lambda: message in page.text(".gt-error"), "the expiry message")
    assert message in page.text("#status")
    assert not page.js("return window.geotrack.connected()")


def test_without_a_token_the_page_asks_for_one_and_says_when_it_is_wrong(
    browser: Any, auth_relay: WebRelay
) -> None:
    page = Page(browser, auth_relay).open(wait_live=False)
    page.wait(lambda: page.find("#token-form").is_displayed(), "the token form")
    assert not page.js("return window.geotrack.connected()")
    page.find("#token-input").send_keys("not-a-token")
    page.find("#token-input").submit()
    page.wait(lambda: "a valid token is required" in page.text(".gt-error"), "the refusal")
    assert "token" in page.text("#status")  # "token needed": the form asks again
    # Asked again; the right token opens the live map.
    page.wait(lambda: page.find("#token-form").is_displayed(), "the form again")
    page.find("#token-input").clear()
    page.find("#token-input").send_keys(SUB)
    page.find("#token-input").submit()
    page.wait(lambda: "live" in page.text("#status").lower(), "live")
    publish(
        auth_relay.ws_url, [{"device": "car-7", "lat": 52.5, "lon": 13.4, "ts": time.time()}], PUB
    )
    page.wait(lambda: "car-7" in page.devices(), "car-7")
    assert not [e for e in page.find_all(".gt-error") if e.is_displayed()]
