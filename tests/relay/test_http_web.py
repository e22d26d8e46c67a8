"""The web map as the HTTP listener serves it (docs/web.md): the page, its files, its settings.

Real relays and listeners on loopback. What the page does in a browser is tested elsewhere
(selenium); the page's pure logic runs under node (tests/web/test_assets.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from geotrack import __version__
from geotrack.auth import Tokens
from geotrack.errors import InvalidParameter
from geotrack.relay import Relay, RelayConfig
from geotrack.relay.config import DEFAULT_TILES
from geotrack.relay.webmap import WEB_DIR, leaflet_built, static_file
from tests.cli_helpers import geotrack
from tests.conftest import free_port
from tests.factories import SUB, stored, tokens
from tests.relay_helpers import arun, relay_process, running_http, wait_listening

JS = "text/javascript; charset=utf-8"


@contextlib.asynccontextmanager
async def serving(
    db: Path, tokens: Tokens | None = None, **config: Any
) -> AsyncIterator[tuple[Relay, aiohttp.ClientSession]]:
    """A relay on a free port, its HTTP listener on another, and a client session for it."""
    async with running_http(db, http_tokens=tokens, **config) as (relay, _, http):
        yield relay, http


async def get(http: aiohttp.ClientSession, path: str | URL) -> tuple[int, dict[str, str], bytes]:
    async with http.get(path) as response:
        return response.status, dict(response.headers), await response.read()


def test_the_page_is_served_at_the_root(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (_, http):
            for path in ("/", "/?token=abc"):
                status, headers, body = await get(http, path)
                assert status == 200, path
                assert headers["Content-Type"] == "text/html; charset=utf-8"
                assert headers["Cache-Control"] == "no-cache"
                assert b'<main id="map">' in body
                assert b'src="/static/js/main.js"' in body

    arun(main())


def test_osmand_at_the_root_still_works_beside_the_page(tmp_path: Path) -> None:
    db = tmp_path / "db"

    async def main() -> None:
        async with serving(db) as (_, http):
            status, _, body = await get(http, "/?id=bus-1&lat=52.5&lon=13.4&timestamp=1764072000")
            assert (status, body) == (200, b"")
            # A parameter besides the token makes it an OsmAnd request, with OsmAnd's errors.
            status, _, body = await get(http, "/?lat=1&lon=2")
            assert status == 400 and body.startswith(b"id: required")
            async with http.post("/", data={"id": "bus-2", "lat": "1", "lon": "2"}) as response:
                assert response.status == 200

    arun(main())
    assert sorted(p.device for p in stored(db)) == ["bus-1", "bus-2"]


def test_the_page_is_served_without_a_token_when_the_api_needs_one(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db", tokens()) as (_, http):
            for path in ("/", "/static/js/main.js", "/map/config.json"):
                assert (await get(http, path))[0] == 200, path
            # The page learns that a token is needed from the config, then from the API.
            assert (await get(http, "/api/devices"))[0] == 401
            assert (await get(http, f"/api/devices?token={SUB}"))[0] == 200

    arun(main())


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/js/main.js", JS),
        ("/static/js/geo.js", JS),
        ("/static/style.css", "text/css; charset=utf-8"),
    ],
)
def test_static_files_carry_their_content_type(
    tmp_path: Path, path: str, content_type: str
) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (_, http):
            status, headers, body = await get(http, path)
            assert status == 200
            assert headers["Content-Type"] == content_type
            assert headers["Cache-Control"] == "no-cache"
            assert body == (WEB_DIR / path.removeprefix("/static/")).read_bytes()

    arun(main())


def test_leaflet_is_served_from_the_relay(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (_, http):
            status, headers, body = await get(http, "/static/vendor/leaflet/leaflet.js")
            assert (status, headers["Content-Type"]) == (200, JS)
            assert b"Leaflet 1.9.4" in body[:500]
            status, headers, _ = await get(http, "/static/vendor/leaflet/leaflet.css")
            assert (status, headers["Content-Type"]) == (200, "text/css; charset=utf-8")
            status, headers, _ = await get(http, "/static/vendor/leaflet/images/layers.png")
            assert (status, headers["Content-Type"]) == (200, "image/png")

    arun(main())


# Raw paths, sent as written (no client-side normalisation of "..").
ESCAPES = [
    "/static/../pyproject.toml",
    "/static/js/../../relay/http.py",
    "/static/%2e%2e/%2e%2e/pyproject.toml",
    "/static/js/%2e%2e/%2e%2e/__init__.py",
    "/static/js%2F..%2F..%2F__init__.py",
    "/static/js/..%5c..%5c__init__.py",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
    "/static/package.json",
    "/static/package-lock.json",
    "/static/node_modules/leaflet/package.json",
    "/static/js/tests/geo.test.js",
    "/static/js/.hidden.js",
    "/static/js/missing.js",
    "/static/index.html%00.js",
]


def test_static_refuses_everything_outside_the_web_files(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (_, http):
            for path in ESCAPES:
                status, _, body = await get(http, URL(path, encoded=True))
                assert status == 404, path
                assert b"__all__" not in body and b"[project]" not in body, path

    arun(main())


def test_static_file_refuses_a_link_out_of_the_web_folder(tmp_path: Path) -> None:
    root = tmp_path / "web"
    (root / "js").mkdir(parents=True)
    (root / "js" / "ok.js").write_text("ok")
    (tmp_path / "secret.js").write_text("secret")
    (root / "js" / "link.js").symlink_to(tmp_path / "secret.js")
    assert static_file("js/ok.js", root) == ((root / "js" / "ok.js").resolve(), JS)
    assert static_file("js/link.js", root) is None
    assert static_file("js/../../secret.js", root) is None
    assert static_file("js", root) is None


def test_map_config_says_what_the_page_needs(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "db") as (relay, http):
            status, headers, body = await get(http, "/map/config.json")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            assert json.loads(body) == {
                "ws_port": relay.port,
                "ws_tls": False,
                "tiles": DEFAULT_TILES,
                "attribution": (
                    '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a>'
                    " contributors"
                ),
                "auth": False,
                "stale_after_s": 120,
                "version": __version__,
            }
        async with serving(tmp_path / "db", tokens(), tiles=None) as (_, http):
            config = json.loads((await get(http, "/map/config.json"))[2])
            assert (config["tiles"], config["attribution"], config["auth"]) == (None, "", True)
        template = "https://tiles.example.org/{z}/{x}/{y}.png"
        async with serving(tmp_path / "db", tiles=template) as (_, http):
            config = json.loads((await get(http, "/map/config.json"))[2])
            assert (config["tiles"], config["attribution"]) == (template, "")

    arun(main())


@pytest.mark.parametrize(
    ("tiles", "reason"),
    [
        ("tiles.example.org/{z}/{x}/{y}.png", "expected an http(s):// URL template or 'none'"),
        ("https://tiles.example.org/{z}/{x}.png", "the URL template has no {y}"),
    ],
)
def test_a_bad_tile_template_is_refused(tiles: str, reason: str) -> None:
    with pytest.raises(InvalidParameter, match=r"^--tiles: ") as caught:
        RelayConfig(tiles=tiles)
    assert reason in str(caught.value)


def test_serve_tiles_end_to_end(tmp_path: Path) -> None:
    """`geotrack serve --tiles none` reaches the page's config; a bad one is one Error line."""
    port, http_port = free_port(), free_port()
    store = f"sqlite:///{tmp_path / 'db'}"
    with relay_process(store, port, "--http-port", str(http_port), "--tiles", "none") as proc:
        wait_listening(http_port, proc)
        url = f"http://127.0.0.1:{http_port}/map/config.json"
        with urllib.request.urlopen(url, timeout=10) as response:
            config = json.load(response)
    assert (config["ws_port"], config["tiles"]) == (port, None)
    done = subprocess.run(
        [sys.executable, "-m", "geotrack", "serve", "--store", store, "--tiles", "x"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: --tiles: expected an http(s):// URL template or 'none', got 'x'"
    ]


def test_serve_help_names_the_tiles_option(tmp_path: Path) -> None:
    result = geotrack("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "--tiles TEMPLATE" in text
    assert "or 'none' for a plain background" in text
    assert "geotrack serve --http-port 8080 --tiles none" in text


def test_without_leaflet_the_relay_runs_and_says_why_the_map_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A build without npm: the relay still serves everything, and its log says what to do."""
    assert not leaflet_built(tmp_path)
    monkeypatch.setattr("geotrack.relay.http.leaflet_built", lambda: False)

    async def main() -> None:
        with caplog.at_level(logging.WARNING, "geotrack.http"):
            async with serving(tmp_path / "db") as (_, http):
                assert (await get(http, "/"))[0] == 200
                assert (await get(http, "/healthz"))[0] == 200

    arun(main())
    assert [r.getMessage() for r in caplog.records] == [
        "the web map at / cannot work: the map library was not built: install Node.js and "
        "npm, then reinstall geotrack"
    ]
