"""The live map in a real browser: what a person sees while devices move.

Positions go to a real relay (``geotrack serve --http-port --tiles none``) through
/publish; the page, opened in headless chromium, shows them through /subscribe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from geotrack.schema import Position, ms_to_ts
from geotrack.store import open_store
from tests.web.browser import Page, publish, screenshot_path, web_relay_process

# Three devices a few hundred metres apart in Berlin, far apart on the screen at zoom 15.
PLACES = {
    "bus-12": (52.5200, 13.4050),
    "car-7": (52.5230, 13.4120),
    "walker": (52.5170, 13.3990),
}


def now_s() -> float:
    return time.time()


def fixes_now(**extra: Any) -> list[dict[str, Any]]:
    """One current fix per device of PLACES."""
    t = now_s()
    return [
        {"device": d, "lat": lat, "lon": lon, "ts": t, "speed": 10.0, "heading": 90.0, **extra}
        for d, (lat, lon) in PLACES.items()
    ]


def marker_offset(page: Page, device: str, lat: float, lon: float) -> float:
    """How far (px) the centre of ``device``'s marker is from where (lat, lon) is drawn."""
    found = page.js(
        """
        const [device, lat, lon] = arguments;
        const map = window.geotrack.map;
        const container = map.getContainer().getBoundingClientRect();
        const element = [...document.querySelectorAll('#map .gt-marker')].find(
            (m) => m.getAttribute('data-device') === device
                || m.querySelector(`[data-device="${CSS.escape(device)}"]`));
        if (!element) return null;
        const box = element.getBoundingClientRect();
        const want = map.latLngToContainerPoint([lat, lon]);
        return Math.hypot(box.left + box.width / 2 - container.left - want.x,
                          box.top + box.height / 2 - container.top - want.y);
        """,
        device,
        lat,
        lon,
    )
    assert found is not None, f"no .gt-marker for {device}"
    return float(found)


def trail_points(page: Page, device: str) -> list[list[float]]:
    """The points of the trail drawn for ``device`` ([lat, lon] each).

    Trails are drawn on a canvas, with no DOM element each: the page gives the points of the
    polyline it drew (``window.geotrack.trail``).
    """
    points = page.js("return window.geotrack.trail(arguments[0])", device)
    return [list(p) for p in points or []]


def trail_painted_at(page: Page, lat: float, lon: float) -> bool:
    """Whether the trails' canvas has a painted pixel where ``lat, lon`` is on the map."""
    return bool(
        page.js(
            """
            const [lat, lon] = arguments;
            const canvas = document.querySelector('#map .leaflet-gtTrails-pane canvas');
            if (!canvas) return false;
            const map = window.geotrack.map;
            const p = map.latLngToContainerPoint([lat, lon]);
            const m = map.getContainer().getBoundingClientRect();
            const c = canvas.getBoundingClientRect();
            const x = Math.round(((m.left + p.x - c.left) * canvas.width) / c.width);
            const y = Math.round(((m.top + p.y - c.top) * canvas.height) / c.height);
            return canvas.getContext('2d').getImageData(x, y, 1, 1).data[3] > 0;
            """,
            lat,
            lon,
        )
    )


def row_texts(page: Page) -> dict[str, dict[str, str]]:
    return dict(
        page.js(
            """
            const rows = {};
            for (const li of document.querySelectorAll('#devices li[data-device]')) {
                const cell = (c) => (li.querySelector(c) || {}).textContent || '';
                rows[li.getAttribute('data-device')] = {
                    id: cell('.id'), time: cell('.time'), age: cell('.age'),
                    speed: cell('.speed'), cls: li.className,
                    visible: li.offsetParent !== null ? 'yes' : 'no',
                };
            }
            return rows;
            """
        )
    )


def test_markers_sit_where_the_positions_are_with_a_list_row_and_a_trail(
    page: Page, tmp_path: Path
) -> None:
    page.open()
    page.js("window.geotrack.map.setView([52.52, 13.405], 15, {animate: false})")
    publish(page.relay.ws_url, fixes_now())
    page.wait(lambda: set(page.devices()) >= set(PLACES), "the three devices")
    for device, (lat, lon) in PLACES.items():
        # Markers move on the next animation frame: wait for them to settle.
        page.wait(lambda d=device, a=lat, o=lon: marker_offset(page, d, a, o) < 3, device)
    # Heading 90: every arrow turned to the east.
    turned = page.js(
        """
        return [...document.querySelectorAll('#map .gt-marker .gt-arrow')].map((arrow) => {
            const t = new DOMMatrix(getComputedStyle(arrow).transform);
            return Math.round((Math.atan2(t.b, t.a) * 180) / Math.PI);
        });
        """
    )
    assert turned == [90, 90, 90], turned
    rows = row_texts(page)
    assert set(rows) == set(PLACES)
    for device, row in rows.items():
        assert row["id"].strip() == device
        assert row["time"].strip() and row["age"].strip(), row
        assert "36" in row["speed"], row  # 10 m/s is 36 km/h
        assert "stale" not in row["cls"].split()

    # The bus moves twice: its marker follows, its trail holds the three points.
    t = now_s()
    moves = [(52.5205, 13.4060), (52.5210, 13.4070)]
    for i, (lat, lon) in enumerate(moves, 1):
        publish(page.relay.ws_url, [{"device": "bus-12", "lat": lat, "lon": lon, "ts": t + i}])
    page.wait(lambda: marker_offset(page, "bus-12", *moves[-1]) < 3, "the bus to move")
    trail = page.wait(
        lambda: len(trail_points(page, "bus-12")) >= 3 and trail_points(page, "bus-12"), "a trail"
    )
    assert [tuple(p) for p in trail[-3:]] == [PLACES["bus-12"], *moves]
    # Drawn on the trails' canvas: painted halfway along its last segment.
    page.wait(
        lambda: trail_painted_at(
            page, (moves[0][0] + moves[1][0]) / 2, (moves[0][1] + moves[1][1]) / 2
        ),
        "the trail painted on the canvas",
    )

    # For the screenshot: the car and the walker go on a few steps, heading where they go.
    steps = [
        [
            {
                "device": "car-7",
                "lat": 52.5230 - i * 3e-4,
                "lon": 13.4120 + i * 4e-4,
                "ts": t + 2 + i,
                "speed": 12.5,
                "heading": 138.0,
            },
            {
                "device": "walker",
                "lat": 52.5170 + i * 1e-4,
                "lon": 13.3990 - i * 3e-4,
                "ts": t + 2 + i,
                "speed": 1.4,
                "heading": 298.0,
            },
        ]
        for i in range(1, 6)
    ]
    for frame in steps:
        publish(page.relay.ws_url, frame)
    page.wait(lambda: len(trail_points(page, "walker")) >= 6, "the walker's trail")
    page.wait(lambda: page.devices()["car-7"]["heading"] == 138.0, "the car's heading")
    time.sleep(0.6)  # trails are redrawn at most twice a second
    page.driver.save_screenshot(str(screenshot_path(tmp_path, "live-map.png")))


def test_a_device_not_heard_from_for_a_while_is_greyed(page: Page) -> None:
    page.open()
    t = now_s()
    publish(
        page.relay.ws_url,
        [
            {"device": "fresh-1", "lat": 52.52, "lon": 13.40, "ts": t},
            {"device": "old-1", "lat": 52.53, "lon": 13.41, "ts": t - 600},  # stale at 120 s
        ],
    )
    page.wait(lambda: set(row_texts(page)) == {"fresh-1", "old-1"}, "both rows")
    page.wait(lambda: "stale" in row_texts(page)["old-1"]["cls"].split(), "old-1 greyed")
    assert "stale" not in row_texts(page)["fresh-1"]["cls"].split()
    assert page.devices()["old-1"]["stale"] is True
    assert page.devices()["fresh-1"]["stale"] is False
    # Greyed: the stale row does not look like the fresh one.
    look = """
        const li = document.querySelector(`#devices li[data-device="${arguments[0]}"]`);
        const s = getComputedStyle(li);
        return [s.color, s.opacity, s.filter, s.backgroundColor].join('|');
    """
    assert page.js(look, "old-1") != page.js(look, "fresh-1")


def test_filter_hides_other_devices_and_a_click_follows_one(page: Page) -> None:
    page.open()
    page.js("window.geotrack.map.setView([52.52, 13.405], 15, {animate: false})")
    publish(page.relay.ws_url, fixes_now())
    page.wait(lambda: set(row_texts(page)) == set(PLACES), "the rows")

    page.find("#filter").send_keys("ca")
    page.wait(
        lambda: {d for d, r in row_texts(page).items() if r["visible"] == "yes"} == {"car-7"},
        "only car-7 listed",
    )
    visible_markers = """
        return [...document.querySelectorAll('#map .gt-marker')]
            .filter((m) => m.offsetParent !== null && getComputedStyle(m).display !== 'none')
            .map((m) => m.getAttribute('data-device')
                 || m.querySelector('[data-device]').getAttribute('data-device'));
    """
    page.wait(lambda: page.js(visible_markers) == ["car-7"], "only car-7's marker")
    page.find("#filter").clear()
    page.js(
        "const f = document.querySelector('#filter'); f.value = '';"
        "f.dispatchEvent(new Event('input', {bubbles: true}))"
    )
    page.wait(lambda: sorted(page.js(visible_markers)) == sorted(PLACES), "every marker back")

    # Follow the walker: the map centres on it, and on it again when it moves.
    page.find('#devices li[data-device="walker"]').click()
    page.wait(lambda: "following" in row_texts(page)["walker"]["cls"].split(), "following")
    centre = "const c = window.geotrack.map.getCenter(); return [c.lat, c.lng];"
    page.wait(lambda: _near(page.js(centre), PLACES["walker"]), "the map on the walker")
    publish(
        page.relay.ws_url, [{"device": "walker", "lat": 52.515, "lon": 13.395, "ts": now_s() + 1}]
    )
    page.wait(lambda: _near(page.js(centre), (52.515, 13.395)), "the map to follow")
    page.find('#devices li[data-device="walker"]').click()
    page.wait(lambda: "following" not in row_texts(page)["walker"]["cls"].split(), "unfollowed")


def _near(got: list[float], want: tuple[float, float]) -> bool:
    return abs(got[0] - want[0]) < 1e-4 and abs(got[1] - want[1]) < 1e-4


def test_after_the_relay_restarts_the_page_reconnects_and_misses_nothing(
    browser: Any, tmp_path: Path
) -> None:
    db = tmp_path / "geotrack.db"
    t = now_s()
    with web_relay_process(db) as relay:
        page = Page(browser, relay).open()
        publish(relay.ws_url, [{"device": "bus-1", "lat": 52.50, "lon": 13.40, "ts": t}])
        page.wait(lambda: "bus-1" in page.devices(), "bus-1")
        ports = relay.port, relay.http_port
    # The relay is gone (killed): the page says so and keeps trying.
    page.wait(lambda: "reconnecting" in page.text("#status").lower(), "reconnecting")
    assert not page.js("return window.geotrack.connected()")
    # Positions stored while the page was away (another relay could have taken them): they
    # reach it only if it asks for what it missed (since=) when it is back.
    with open_store(f"sqlite:///{db}") as store:
        store.write(
            [
                Position(
                    device="bus-1",
                    lat=52.50 + i * 1e-3,
                    lon=13.40,
                    ts=ms_to_ts(int((t + i) * 1000)),
                )
                for i in range(1, 4)
            ]
        )
    with web_relay_process(db, port=ports[0], http_port=ports[1]) as relay:
        page.relay = relay
        page.wait(lambda: "live" in page.text("#status").lower(), "live again", timeout=20)
        # And what comes live after that.
        publish(
            relay.ws_url,
            [
                {"device": "bus-1", "lat": 52.504, "lon": 13.40, "ts": t + 4},
                {"device": "late-1", "lat": 52.51, "lon": 13.41, "ts": t},
            ],
        )
        page.wait(lambda: "late-1" in page.devices(), "late-1")
        page.wait(lambda: abs(page.devices()["bus-1"]["lat"] - 52.504) < 1e-9, "bus-1's last fix")
        trail = trail_points(page, "bus-1")
        assert [round(p[0], 6) for p in trail] == [52.5, 52.501, 52.502, 52.503, 52.504]


# Installed before the page's own scripts: counts markers and trails moved inside an
# animation frame callback and outside one.
_FRAME_PROBE = """
window.__moves = {inFrame: 0, outside: 0};
let inFrame = false;
const raf = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => raf((t) => {
    inFrame = true;
    try { callback(t); } finally { inFrame = false; }
});
const count = () => { window.__moves[inFrame ? 'inFrame' : 'outside'] += 1; };
let leaflet;
Object.defineProperty(window, 'L', {
    configurable: true,
    get() { return leaflet; },
    set(value) {
        leaflet = value;
        for (const [cls, name] of [[value.Marker, 'setLatLng'], [value.Polyline, 'setLatLngs']]) {
            const original = cls.prototype[name];
            cls.prototype[name] = function (...args) {
                if (this._map) count();
                return original.apply(this, args);
            };
        }
    },
});
"""


def test_positions_reach_the_map_in_animation_frames_only(page: Page) -> None:
    """However many frames arrive, markers and trails change in animation frames only."""
    added = page.driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": _FRAME_PROBE}
    )
    try:
        page.open()
        t = now_s()
        for i in range(10):
            publish(
                page.relay.ws_url,
                [
                    {
                        "device": f"dev-{d}",
                        "lat": 52.5 + d * 1e-3,
                        "lon": 13.4 + i * 1e-4,
                        "ts": t + i,
                    }
                    for d in range(50)
                ],
            )
        page.wait(
            lambda: (
                len(page.devices()) == 50
                and all(abs(d["lon"] - (13.4 + 9e-4)) < 1e-9 for d in page.devices().values())
            ),
            "the 50 devices at their last fix",
        )
        time.sleep(1.2)  # trails are redrawn twice a second, or every 2 s when crowded
        moves = page.js("return window.__moves")
        assert moves["inFrame"] >= 50 and moves["outside"] == 0, moves
    finally:
        page.driver.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]}
        )
