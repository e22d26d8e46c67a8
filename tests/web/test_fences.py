"""Fences on the live map in a real browser: drawn with their names from GET /api/fences,
and events from /events flashed as they happen (the fence lights up, the marker pulses,
the event tops the list).

A real relay (``geotrack serve --fences FILE --http-port --tiles none``) decides the events
from positions published on /publish.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.relay.test_events import IN, OUT, SQUARE, fences_file
from tests.web.browser import Page, publish, screenshot_path, web_relay_process


def fences(page: Page) -> dict[str, Any]:
    return dict(page.js("return window.geotrack.fences()") or {})


def event_rows(page: Page) -> list[str]:
    return [str(li.text) for li in page.find_all("#events li")]


def test_fences_are_drawn_and_events_flash(browser: Any, tmp_path: Path) -> None:
    path = fences_file(tmp_path)
    with web_relay_process(tmp_path / "geotrack.db", "--fences", str(path)) as relay:
        page = Page(browser, relay).open()
        drawn = page.wait(lambda: fences(page), "the fences")
        assert set(drawn) == {"depot", "yard"}
        depot = drawn["depot"]
        assert depot["kind"] == "polygon"
        lons = [lon for lon, _ in SQUARE]
        lats = [lat for _, lat in SQUARE]
        assert (depot["west"], depot["east"]) == (min(lons), max(lons))
        assert (depot["south"], depot["north"]) == (min(lats), max(lats))
        assert drawn["yard"]["kind"] == "circle" and drawn["yard"]["radius"] == 100
        labels = sorted(str(e.text) for e in page.find_all("#map .gt-fence-label"))
        assert labels == ["depot", "yard"]
        assert not page.find("#events-panel").get_attribute("hidden")
        assert page.find_all("#map .leaflet-gtFences-pane path.gt-fence")

        now = time.time()
        publish(
            relay.ws_url,
            [
                {"device": "van", "lat": 52.498, "lon": OUT, "ts": now - 2},
                {"device": "van", "lat": 52.498, "lon": IN + 0.002, "ts": now - 1},
            ],
        )
        page.wait(lambda: page.js("return window.geotrack.events().length") == 1, "the event")
        (event,) = page.js("return window.geotrack.events()")
        assert (event["type"], event["device"], event["fence"], event["live"]) == (
            "enter",
            "van",
            "depot",
            True,
        )
        # Flashing now: the fence in the enter colour, the marker pulsing, the row on top.
        assert fences(page)["depot"]["flashing"] == "enter"
        assert fences(page)["yard"]["flashing"] is None
        page.wait(lambda: page.js("return window.geotrack.pulsing('van')"), "the marker pulse")
        row = event_rows(page)[0].split()
        assert row[:3] == ["entered", "van", "depot"]
        # Both fences in view (the map fits itself to the first device's fix).
        page.js(
            "window.geotrack.map.fitBounds([[52.494, 13.393], [52.506, 13.478]],"
            " {animate: false, padding: [30, 30]})"
        )
        page.driver.save_screenshot(str(screenshot_path(tmp_path, "map-fences.png")))
        # The flash ends by itself.
        page.wait(lambda: fences(page)["depot"]["flashing"] is None, "the flash to end", 6)
        assert not page.js("return window.geotrack.pulsing('van')")

        publish(relay.ws_url, [{"device": "van", "lat": 52.50, "lon": OUT, "ts": time.time()}])
        page.wait(lambda: fences(page)["depot"]["flashing"] == "exit", "the exit flash")
        assert event_rows(page)[0].split()[:3] == ["left", "van", "depot"]
        assert len(event_rows(page)) == 2


def test_reloaded_page_lists_past_events_without_flashing(browser: Any, tmp_path: Path) -> None:
    path = fences_file(tmp_path)
    with web_relay_process(tmp_path / "geotrack.db", "--fences", str(path)) as relay:
        hour_ago = time.time() - 3600 + 120
        publish(
            relay.ws_url,
            [
                {"device": "bus", "lat": 52.50, "lon": OUT, "ts": hour_ago},
                {"device": "bus", "lat": 52.50, "lon": IN, "ts": hour_ago + 1},
            ],
        )
        # The relay decides the event in the background: wait for it to be stored.
        deadline = time.monotonic() + 10
        while not relay.log.lines or not any("depot" in x for x in _events(relay)):
            assert time.monotonic() < deadline, "no event stored"
            time.sleep(0.1)
        page = Page(browser, relay).open()
        page.wait(lambda: event_rows(page), "the past event listed")
        (event,) = page.js("return window.geotrack.events()")
        assert (event["type"], event["device"], event["live"]) == ("enter", "bus", False)
        assert fences(page)["depot"]["flashing"] is None


def _events(relay: Any) -> list[str]:
    from geotrack.store import open_store

    with open_store(f"sqlite:///{relay.db}") as store:
        return [e.fence for e in store.query_events()]


def test_a_relay_without_fences_shows_no_fence_panel(page: Page) -> None:
    page.open()
    time.sleep(0.5)  # the 404 from /api/fences has come by now
    assert page.find("#events-panel").get_attribute("hidden") is not None
    assert page.js("return window.geotrack.fences()") is None
    assert not page.find_all("#map .gt-fence")


def test_under_auth_the_page_reads_fences_and_events_with_its_token(
    browser: Any, tmp_path: Path
) -> None:
    from tests.factories import PUB, SUB, token_file

    tokens = token_file(tmp_path / "tokens.toml")
    path = fences_file(tmp_path)
    extra = ("--fences", str(path), "--auth", str(tokens))
    with web_relay_process(tmp_path / "geotrack.db", *extra) as relay:
        page = Page(browser, relay).open(f"token={SUB}")
        page.wait(lambda: set(fences(page)) == {"depot", "yard"}, "the fences")
        now = time.time()
        publish(
            relay.ws_url,
            [
                {"device": "van", "lat": 52.50, "lon": OUT, "ts": now - 2},
                {"device": "van", "lat": 52.50, "lon": IN, "ts": now - 1},
            ],
            token=PUB,
        )
        page.wait(lambda: fences(page)["depot"]["flashing"] == "enter", "the enter flash")
        assert event_rows(page)[0].split()[:3] == ["entered", "van", "depot"]


def test_a_fence_added_through_rest_is_drawn_when_its_first_event_comes(
    browser: Any, tmp_path: Path
) -> None:
    import json
    import urllib.request

    path = fences_file(tmp_path)
    with web_relay_process(tmp_path / "geotrack.db", "--fences", str(path)) as relay:
        page = Page(browser, relay).open()
        page.wait(lambda: set(fences(page)) == {"depot", "yard"}, "the fences")
        square = [[13.30, 52.60], [13.31, 52.60], [13.31, 52.61], [13.30, 52.61], [13.30, 52.60]]
        feature = {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [square]},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{relay.http_port}/api/fences/north",
            data=json.dumps(feature).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
        now = time.time()
        publish(
            relay.ws_url,
            [
                {"device": "cab", "lat": 52.59, "lon": 13.305, "ts": now - 2},
                {"device": "cab", "lat": 52.605, "lon": 13.305, "ts": now - 1},
            ],
        )
        page.wait(lambda: (fences(page).get("north") or {}).get("flashing") == "enter", "north")
        assert fences(page)["north"]["kind"] == "polygon"
