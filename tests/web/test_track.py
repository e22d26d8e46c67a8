""" "Track this device" in a real browser: its geolocation, published, lands in the store.

The browser's position is set through the DevTools protocol
(Emulation.setGeolocationOverride, with the geolocation permission granted), so the page's
watchPosition reports it as a phone's would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.factories import BUS, stored, token_file
from tests.web.browser import Page, web_relay_process


def locate(page: Page, lat: float, lon: float) -> None:
    page.driver.execute_cdp_cmd(
        "Emulation.setGeolocationOverride", {"latitude": lat, "longitude": lon, "accuracy": 5}
    )


def acked(page: Page) -> int:
    """How many fixes #track-status says were acked ("sent 3, acked 3")."""
    found = re.search(r"acked (\d+)", page.text("#track-status"))
    return int(found.group(1)) if found else 0


def test_track_this_device_publishes_the_browsers_positions_to_the_store(
    page: Page, browser: Any
) -> None:
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": page.relay.page_url.rstrip("/"), "permissions": ["geolocation"]},
    )
    locate(page, 52.5200, 13.4050)
    page.open()
    button = page.find("#track-me")
    assert button.text.strip() == "Track this device"
    page.find("#track-device").clear()
    page.find("#track-device").send_keys("phone-1")
    button.click()
    page.wait(lambda: page.find("#track-me").text.strip() == "Stop tracking", "Stop tracking")
    page.wait(lambda: acked(page) >= 1, "the first fix acked")
    locate(page, 52.5210, 13.4070)  # the phone moves
    page.wait(lambda: acked(page) >= 2, "the second fix acked", timeout=15)
    status = page.text("#track-status")
    sent = int(re.search(r"sent (\d+)", status).group(1))  # type: ignore[union-attr]
    assert sent >= acked(page), status
    page.find("#track-me").click()
    page.wait(lambda: page.find("#track-me").text.strip() == "Track this device", "stopped")

    # In the store: phone-1 at both places, in that order.
    positions = [p for p in stored(page.relay.db) if p.device == "phone-1"]
    places = [(round(p.lat, 6), round(p.lon, 6)) for p in positions]
    assert (52.52, 13.405) in places and (52.521, 13.407) in places, places
    assert places.index((52.52, 13.405)) < places.index((52.521, 13.407))
    # And on the page's own live map, like any other device.
    page.wait(lambda: "phone-1" in page.devices(), "phone-1 on the map")

    # The device id is remembered for next time.
    page.open()
    assert page.find("#track-device").get_attribute("value") == "phone-1"


def test_a_phones_publish_token_tracks_its_own_devices_only(browser: Any, tmp_path: Path) -> None:
    """A publish-only token (bus-*) cannot view the map, but tracks as bus-3, not car-1."""
    tokens = token_file(tmp_path / "tokens.toml")
    with web_relay_process(tmp_path / "geotrack.db", "--auth", str(tokens)) as relay:
        browser.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": relay.page_url.rstrip("/"), "permissions": ["geolocation"]},
        )
        page = Page(browser, relay).open(f"token={BUS}", wait_live=False)
        locate(page, 52.5200, 13.4050)
        page.wait(lambda: "may not subscribe" in page.text(".gt-error"), "why it cannot view")
        assert not page.js("return window.geotrack.connected()")

        page.find("#track-device").send_keys("car-1")
        page.find("#track-me").click()
        page.wait(lambda: "car-1" in page.text("#track-status"), "car-1 refused")
        refused = page.text("#track-status")
        assert acked(page) == 0 and "may not publish as 'car-1'" in refused, refused
        page.find("#track-me").click()

        page.find("#track-device").clear()
        page.find("#track-device").send_keys("bus-3")
        page.find("#track-me").click()
        page.wait(lambda: acked(page) >= 1, "bus-3 acked")
        page.find("#track-me").click()
    devices = {p.device for p in stored(tmp_path / "geotrack.db")}
    assert devices == {"bus-3"}, (devices, refused)
