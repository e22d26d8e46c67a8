"""The map opened with a publish-only token (a phone's): no map, but "Track this device".

The relay runs with ``--auth``; the token may publish as ``phone-*`` only. The page says
the token may not view, shows nothing of anyone, and still publishes the browser's
position (set through the DevTools protocol) as a device the token may be.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import PUB, stored, token_file
from tests.web.browser import Page, WebRelay, publish, web_relay_process

PHONE = "phone-token-0123456789"


@pytest.fixture
def auth_relay(tmp_path: Path) -> Iterator[WebRelay]:
    tokens = token_file(tmp_path / "tokens.toml")
    tokens.write_text(
        tokens.read_text()
        + f'\n[[token]]\nname = "phones"\ntoken = "{PHONE}"\nrole = "publish"\n'
        + 'devices = ["phone-*"]\n'
    )
    with web_relay_process(tmp_path / "geotrack.db", "--auth", str(tokens)) as relay:
        yield relay


def acked(page: Page) -> int:
    found = re.search(r"acked (\d+)", page.text("#track-status"))
    return int(found.group(1)) if found else 0


def track(page: Page, device: str) -> None:
    page.find("#track-device").clear()
    page.find("#track-device").send_keys(device)
    page.find("#track-me").click()


def test_a_publish_token_tracks_its_own_device_and_sees_nothing(
    browser: Any, auth_relay: WebRelay
) -> None:
    publish(
        auth_relay.ws_url,
        [{"device": "car-7", "lat": 52.53, "lon": 13.41, "ts": time.time()}],
        token=PUB,
    )
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": auth_relay.page_url.rstrip("/"), "permissions": ["geolocation"]},
    )
    browser.execute_cdp_cmd(
        "Emulation.setGeolocationOverride", {"latitude": 52.52, "longitude": 13.405, "accuracy": 5}
    )
    page = Page(browser, auth_relay).open(f"token={PHONE}", wait_live=False)
    reason = "token 'phones' may not subscribe"
    page.wait(lambda: reason in page.text(".gt-error"), "the refusal to view")
    assert reason in page.text("#status")
    assert not page.js("return window.geotrack.connected()")
    assert page.devices() == {}  # car-7 is not shown

    # Its own device: published and stored.
    page.wait(lambda: page.find("#track-me").is_enabled(), "the button")
    track(page, "phone-1")
    page.wait(lambda: acked(page) >= 1, "the first fix acked", timeout=15)
    assert [p.device for p in stored(auth_relay.db) if p.device.startswith("phone")] == ["phone-1"]
    page.find("#track-me").click()
    page.wait(lambda: page.find("#track-me").text.strip() == "Track this device", "stopped")

    # Another device: refused, and nothing stored.
    track(page, "car-9")
    page.wait(lambda: "car-9" in page.text("#track-status"), "the refusal for car-9", timeout=15)
    assert not [p for p in stored(auth_relay.db) if p.device == "car-9"]
