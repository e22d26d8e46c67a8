"""Fixtures of the browser tests: one chromium per session, a relay serving the map per test.

See tests/web/browser.py for the browser, the relay and the page's waits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.browser import (
    Page,
    WebRelay,
    browser_missing,
    new_driver,
    web_relay_process,
)


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless chromium for the session (starting one takes seconds)."""
    reason = browser_missing()
    if reason and os.environ.get("CI"):
        # .ci/run installs the browser: missing there, the install step is broken.
        pytest.fail(f"CI must run the browser tests: {reason}")
    if reason:
        pytest.skip(reason)
    profile = tmp_path_factory.mktemp("chromium-profile")
    driver = new_driver(profile)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(driver: Any) -> Iterator[Any]:
    """The session's chromium, left on a blank page with no stored state after the test."""
    yield driver
    with contextlib.suppress(Exception):
        driver.execute_script("window.localStorage.clear()")
    with contextlib.suppress(Exception):
        driver.execute_cdp_cmd("Emulation.clearGeolocationOverride", {})
    with contextlib.suppress(Exception):
        driver.execute_cdp_cmd("Browser.resetPermissions", {})
    with contextlib.suppress(Exception):
        driver.get("about:blank")


@pytest.fixture
def web_relay(tmp_path: Path) -> Iterator[WebRelay]:
    """A relay serving the map, no auth, its store a fresh SQLite file."""
    with web_relay_process(tmp_path / "geotrack.db") as relay:
        yield relay


@pytest.fixture
def page(browser: Any, web_relay: WebRelay) -> Page:
    return Page(browser, web_relay)
