"""What the browser tests share: headless Debian chromium driven by selenium, real relays.

The browser is Debian's ``chromium`` with its ``chromium-driver``, both found at fixed
paths: selenium is never left to look for (or download) a driver or a browser, so these
tests run with the network closed. Without them every test here is skipped, saying how
to install them; CI installs them (``.ci/run``), so there they run.

Screenshots: with ``GEOTRACK_SCREENSHOTS=docs/img`` the tests that take them write them
there (the ones in docs/web.md); otherwise into the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import free_port
from tests.relay_helpers import Lines, relay_process, wait_listening

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"
ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")

__all__ = [
    "Page",
    "WebRelay",
    "browser_missing",
    "new_driver",
    "publish",
    "screenshot_path",
    "web_relay_process",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        return f"{' and '.join(missing)} missing: install them with `{INSTALL}`"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install -e '.[dev]'"
    return None


def new_driver(user_data_dir: Path, width: int = 1200, height: int = 800) -> Any:
    """A headless chromium that never reaches beyond this machine on its own."""
    # Selenium Manager must not go looking for drivers or browsers (the network is closed);
    # with both paths given it is not run, and SE_OFFLINE keeps it offline if it were.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        f"--window-size={width},{height}",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(argument)
    # The console's messages, read by the tests to say why a page failed.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    return driver


@dataclass
class WebRelay:
    """``geotrack serve --http-port`` as a process: its ports, store file and log."""

    port: int
    http_port: int
    db: Path
    log: Lines
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def get_json(self, path: str, token: str | None = None) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


@contextlib.contextmanager
def web_relay_process(
    db: Path, *extra: str, port: int | None = None, http_port: int | None = None
) -> Iterator[WebRelay]:
    """A relay serving the map (``--tiles none``: no tile is fetched) on free ports."""
    port = port or free_port()
    http_port = http_port or free_port()
    args = ("--http-port", str(http_port), "--tiles", "none", *extra)
    with relay_process(f"sqlite:///{db}", port, *args, cwd=db.parent) as proc:
        assert proc.stdout is not None
        log = Lines(proc.stdout)  # drained, so the relay never blocks on its log
        wait_listening(http_port, proc)
        yield WebRelay(port, http_port, db, log, tuple(extra))


def publish(ws_url: str, fixes: list[dict[str, Any]], token: str | None = None) -> None:
    """Publish ``fixes`` (one frame) and wait for the relay's ack."""
    from websockets.asyncio.client import connect

    async def run() -> None:
        url = ws_url + "/publish" + (f"?token={token}" if token else "")
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps(fixes))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply.get("type") == "ack", reply
            assert not reply.get("rejected"), reply

    asyncio.run(asyncio.wait_for(run(), 20))


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """Where a screenshot goes: GEOTRACK_SCREENSHOTS (e.g. docs/img) if set, else tmp."""
    folder = os.environ.get("GEOTRACK_SCREENSHOTS")
    target = (ROOT / folder) if folder and not Path(folder).is_absolute() else Path(folder or "")
    if not folder:
        target = tmp_path
    target.mkdir(parents=True, exist_ok=True)
    return target / name


class Page:
    """The map page in the browser, with the waits the tests need."""

    def __init__(self, driver: Any, relay: WebRelay) -> None:
        self.driver = driver
        self.relay = relay

    def open(self, query: str = "", *, wait_live: bool = True) -> Page:
        self.driver.get(self.relay.page_url + (f"?{query}" if query else ""))
        if wait_live:
            self.wait(
                lambda: (
                    "live" in self.text("#status").lower()
                    and self.js("return window.geotrack && window.geotrack.connected()")
                ),
                "the page to be live",
            )
        return self

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        found = self.find_all(css)
        return str(found[0].text) if found else ""

    def console(self) -> str:
        try:
            entries = self.driver.get_log("browser")
        except Exception:  # not every driver keeps a log
            return ""
        return "\n".join(str(entry.get("message")) for entry in entries)

    def wait(self, until: Callable[[], T], what: str, timeout: float = 10) -> T:
        """``until()``'s value once it is truthy; fails naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                value = until()
                if value:
                    return value
            except Exception as error:  # the page may be half-loaded: try again
                last_error = error
            if time.monotonic() > deadline:
                status = self.text("#status") if self._alive() else "?"
                raise AssertionError(
                    f"gave up waiting {timeout} s for {what}; #status={status!r}; "
                    f"last error={last_error!r}\nconsole:\n{self.console()}\n"
                    f"relay log:\n" + "\n".join(self.relay.log.lines[-15:])
                )
            time.sleep(0.1)

    def _alive(self) -> bool:
        try:
            self.driver.title  # noqa: B018
        except Exception:
            return False
        return True

    def devices(self) -> dict[str, dict[str, Any]]:
        found = self.js("return window.geotrack.devices()")
        return dict(found or {})
