"""The web map's files (geotrack/web): built, self-contained, with the contract's DOM.

The page's pure logic (playback interpolation, batching per frame, formatting) is tested
by node in geotrack/web/js/tests/; the first test here runs those, so the README's one
test command runs them too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from geotrack.relay.webmap import WEB_DIR

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="needs Node.js (which building the map needs too)")
def test_the_pages_own_logic_passes_its_node_tests() -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--test", "js/tests/"],
        cwd=WEB_DIR,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^# fail 0$", done.stdout, re.MULTILINE), done.stdout
    assert not re.search(r"^# pass 0$", done.stdout, re.MULTILINE), done.stdout


def test_leaflet_was_built_into_the_installed_package() -> None:
    """The build step (setup.py's build_web) ran: `pip install -e .` or a wheel put it here."""
    leaflet = WEB_DIR / "vendor" / "leaflet"
    for name in ("leaflet.js", "leaflet.css", "images/layers.png", "LICENSE"):
        assert (leaflet / name).is_file(), f"{name} missing: reinstall geotrack with npm"
    assert "Leaflet 1.9.4" in (leaflet / "leaflet.js").read_text()[:500]


def test_leaflet_is_pinned_by_the_lockfile() -> None:
    package = json.loads((WEB_DIR / "package.json").read_text())
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())
    assert package["dependencies"] == {"leaflet": "1.9.4"}
    assert lock["packages"]["node_modules/leaflet"]["version"] == "1.9.4"
    assert lock["packages"]["node_modules/leaflet"]["integrity"].startswith("sha512-")


def _sources() -> list[Path]:
    return [WEB_DIR / "index.html", WEB_DIR / "style.css", *sorted((WEB_DIR / "js").glob("*.js"))]


def test_nothing_is_loaded_from_elsewhere() -> None:
    """Offline and private: every script and style comes from the relay (tiles from config)."""
    for path in _sources():
        text = path.read_text()
        for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text):
            if url == "http://www.w3.org/2000/svg":
                continue  # an SVG's namespace name, never fetched
            pytest.fail(f"{path.name} refers to {url}")
        assert "@import" not in text, path.name


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids[str(found["id"])] = {"tag": tag, **found}


def test_the_page_has_the_contracts_elements() -> None:
    parser = _Ids()
    parser.feed((WEB_DIR / "index.html").read_text())
    ids = parser.ids
    for name in (
        "map",
        "status",
        "devices",
        "filter",
        "history-toggle",
        "history",
        "history-devices",
        "history-load",
        "play",
        "speed",
        "playback-time",
        "playback-speed",
        "track-me",
        "track-device",
        "track-status",
    ):
        assert name in ids, name
    assert ids["history-from"]["type"] == ids["history-to"]["type"] == "datetime-local"
    assert ids["slider"]["type"] == "range"
    assert ids["devices"]["tag"] == "ul"
    speeds = re.findall(r'<option value="(\d+)"', (WEB_DIR / "index.html").read_text())
    assert speeds == ["1", "10", "60", "100", "1000"]
    assert "gt-error" in (ids["banner"].get("class") or "")


def test_the_page_tells_when_the_map_library_was_not_built() -> None:
    main = (WEB_DIR / "js" / "main.js").read_text()
    assert "the map library was not built: install Node.js and npm, then reinstall geotrack" in main
