"""History in a real browser: tracks loaded from the REST API and played back.

A 60 s track is stored through /publish; the page loads it in its history panel and
plays it: at 60x it reaches the end in about a second, the moving marker on the track's
last point, the time and speed shown.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

# T0_S, 2025-11-25T12:00:00Z: history, long past the live view's staleness.
from tests.factories import T0_S
from tests.web.browser import Page, publish, screenshot_path

SECONDS = 60


def track(device: str, lat0: float, lon0: float, dlat: float, dlon: float) -> list[dict[str, Any]]:
    """A fix a second for 60 s (61 fixes) from (lat0, lon0), a step of (dlat, dlon) each."""
    return [
        {
            "device": device,
            "lat": round(lat0 + i * dlat, 7),
            "lon": round(lon0 + i * dlon, 7),
            "ts": T0_S + i,
            "speed": 10.0,
        }
        for i in range(SECONDS + 1)
    ]


def local_input(seconds: float) -> str:
    """A datetime-local value (the panel's times are UTC)."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def set_input(page: Page, css: str, value: str) -> None:
    """Set an input's value as a person would, so that the page's listeners hear it."""
    page.js(
        """
        const [css, value] = arguments;
        const input = document.querySelector(css);
        input.value = value;
        input.dispatchEvent(new Event('input', {bubbles: true}));
        input.dispatchEvent(new Event('change', {bubbles: true}));
        """,
        css,
        value,
    )


def load_history(page: Page, devices: str) -> dict[str, Any]:
    """Open the history panel, ask for ``devices`` over the track's span, wait for it."""
    page.find("#history-toggle").click()
    page.wait(lambda: page.find("#history").is_displayed(), "the history panel")
    set_input(page, "#history-devices", devices)
    set_input(page, "#history-from", local_input(T0_S - 60))
    set_input(page, "#history-to", local_input(T0_S + SECONDS + 60))
    page.find("#history-load").click()
    page.wait(lambda: page.find_all("#map path.gt-history-track"), "the tracks drawn")
    state: dict[str, Any] = page.wait(
        lambda: (p := page.js("return window.geotrack.playback()")) and p["end_ms"] and p,
        "the playback to be ready",
    )
    return state


def playback(page: Page) -> dict[str, Any]:
    return dict(page.js("return window.geotrack.playback()"))


def test_a_60_s_track_at_60x_plays_to_its_end_in_about_a_second(page: Page, tmp_path: Path) -> None:
    publish(page.relay.ws_url, track("walker", 52.5200, 13.4000, 1e-4, 1.5e-4))
    publish(page.relay.ws_url, track("runner", 52.5230, 13.4080, -1e-4, 0.5e-4))
    page.open()
    state = load_history(page, "walker")
    assert state["start_ms"] == T0_S * 1000
    assert state["end_ms"] == (T0_S + SECONDS) * 1000
    assert not state["playing"]
    assert len(page.find_all("#map path.gt-history-track")) == 1  # the walker's only

    from selenium.webdriver.support.ui import Select

    Select(page.find("#speed")).select_by_value("60")
    page.wait(lambda: playback(page)["speed"] == 60, "speed 60x")
    assert page.find("#play").text.strip() == "Play"
    started = time.monotonic()
    page.find("#play").click()
    page.wait(lambda: page.find("#play").text.strip() == "Pause", "Pause on the button")
    page.wait(lambda: playback(page)["t_ms"] >= state["end_ms"], "the end", timeout=15)
    took = time.monotonic() - started
    # 60 s of track at 60x is 1 s: not a jump to the end, and not crawling (a slow, shared
    # machine may take a few seconds more).
    assert 0.8 <= took <= 8, f"playback took {took:.2f} s"
    page.wait(lambda: not playback(page)["playing"], "playback to stop at the end")
    assert page.find("#play").text.strip() == "Play"
    assert "2025-11-25T12:01:00" in page.text("#playback-time")
    assert "36" in page.text("#playback-speed")  # 10 m/s
    # The moving marker stands on the last point of the track.
    offset = page.js(
        """
        const map = window.geotrack.map;
        const box = map.getContainer().getBoundingClientRect();
        const m = document.querySelector('#map .gt-playback-marker').getBoundingClientRect();
        const want = map.latLngToContainerPoint(arguments[0]);
        return Math.hypot(m.left + m.width / 2 - box.left - want.x,
                          m.top + m.height / 2 - box.top - want.y);
        """,
        [52.5260, 13.4090],
    )
    assert offset < 3, offset


def test_the_slider_moves_the_markers_and_all_devices_play_together(
    page: Page, tmp_path: Path
) -> None:
    publish(page.relay.ws_url, track("walker", 52.5200, 13.4000, 1e-4, 1.5e-4))
    publish(page.relay.ws_url, track("runner", 52.5230, 13.4080, -1e-4, 0.5e-4))
    publish(page.relay.ws_url, track("cyclist", 52.5180, 13.4150, 0.6e-4, -2e-4))
    page.open()
    state = load_history(page, "")  # empty: every device
    assert len(page.find_all("#map path.gt-history-track")) == 3
    # A quarter along the slider: every marker at its 15th second.
    set_input(page, "#slider", str(state["start_ms"] + 15_000))
    page.wait(lambda: playback(page)["t_ms"] == state["start_ms"] + 15_000, "the cursor")
    assert "2025-11-25T12:00:15" in page.text("#playback-time")
    page.wait(lambda: len(page.find_all("#map .gt-playback-marker")) == 3, "three markers")
    # Each moving marker's arrow points along its track (bearing from the fixes around it).
    turned = page.js(
        """
        const found = {};
        for (const m of document.querySelectorAll('#map .gt-playback-marker')) {
            const t = new DOMMatrix(getComputedStyle(m.querySelector('.gt-arrow')).transform);
            const angle = (Math.atan2(t.b, t.a) * 180) / Math.PI;
            found[m.getAttribute('data-device')] = (angle + 360) % 360;
        }
        return found;
        """
    )
    for device, want in {"walker": 42.5, "runner": 163.0, "cyclist": 296.3}.items():
        assert abs(turned[device] - want) < 1.5, (device, turned)
    page.js(
        "window.geotrack.map.fitBounds(arguments[0], {animate: false, padding: [40, 40]})",
        [[52.5170, 13.4000], [52.5265, 13.4160]],
    )
    page.driver.save_screenshot(str(screenshot_path(tmp_path, "history-playback.png")))
