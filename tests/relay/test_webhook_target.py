"""The parts of a webhook that need no network: the key, the shown URL, the URL check,
the backoff, and the cursor file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.relay import RelayConfig
from geotrack.relay.webhook_target import (
    Webhook,
    backoff,
    check_webhook_url,
    idempotency_key,
    webhook_display,
)
from geotrack.schema import Event
from geotrack.store import open_store


def test_key_display_and_url_check() -> None:
    e = Event("exit", "van", "north/yard ü", "2025-11-25T12:00:01Z", 52.5, 13.4)
    assert idempotency_key(e) == "van/north%2Fyard%20%C3%BC/2025-11-25T12:00:01.000Z/exit"
    assert webhook_display("https://user:secret@hooks.example.org:8443/in?token=t") == (
        "https://hooks.example.org:8443/in"
    )
    assert webhook_display("http://[::1]:9/x") == "http://[::1]:9/x"
    check_webhook_url("https://hooks.example.org/in")
    for bad in ("ftp://example.org/x", "hooks.example.org/in", "http:///nohost", "http://h:0/"):
        with pytest.raises(InvalidParameter, match="--webhook"):
            check_webhook_url(bad)
    with pytest.raises(InvalidParameter, match="--webhook-state: give --webhook"):
        RelayConfig(webhook_state=Path("x"))
    assert "secret" not in repr(RelayConfig(webhooks=("https://u:secret@h.example/x",)))


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    for attempt, full in [(0, 0.5), (1, 1.0), (3, 4.0), (7, 60.0), (10_000, 60.0)]:
        delay = backoff(attempt, 0.5, 60.0)
        assert 0.75 * full <= delay <= full


def test_cursor_file_per_store_and_url(tmp_path: Path) -> None:
    with (
        open_store(f"sqlite:///{tmp_path / 'a.db'}") as a,
        open_store(f"sqlite:///{tmp_path / 'b.db'}") as b,
    ):
        url = "https://u:pw@hooks.example.org/in"
        hook = Webhook(url, a, tmp_path / "state")
        assert hook.load_cursor() is None
        hook.cursor = "sqlite:42"
        hook.save_cursor()
        assert json.loads(hook.state_file.read_text()) == {
            "webhook": "https://hooks.example.org/in",
            "store": a.display_url,
            "cursor": "sqlite:42",
        }
        assert [p.name for p in (tmp_path / "state").iterdir()] == [hook.state_file.name]
        assert Webhook(url, a, tmp_path / "state").load_cursor() == "sqlite:42"
        # Another store, or another URL: another file, no cursor yet.
        assert Webhook(url, b, tmp_path / "state").load_cursor() is None
        assert Webhook(url + "2", a, tmp_path / "state").load_cursor() is None
        hook.state_file.write_text("{not json")
        with pytest.raises(GeotrackError, match="delete the file to start with new events"):
            Webhook(url, a, tmp_path / "state").load_cursor()
