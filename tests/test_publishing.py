"""The publishing run's words and checks, without a relay (the runs themselves are in
tests/cli/test_publish.py, end to end)."""

from __future__ import annotations

import ssl

import pytest

from geotrack._text import plural
from geotrack.client import PublishStats
from geotrack.errors import InvalidParameter
from geotrack.publishing import PublishConfig, PublishOutcome, _duration, client_tls


def test_plural() -> None:
    assert [plural(n, "track") for n in (0, 1, 2)] == ["0 tracks", "1 track", "2 tracks"]
    assert plural(1, "mover", "movers") == "1 mover"


def test_summary_and_details() -> None:
    stats = PublishStats(sent=130, stored=100, duplicates=1, rejected=25)
    stats.rejections = [f"d at t{i}: lat: no" for i in range(20)]
    stats.more_rejections = 5
    outcome = PublishOutcome(stats, elapsed=2.04, unacked=4)
    assert outcome.summary == "130 sent, 100 stored, 1 duplicate, 25 rejected in 2.0 s"
    assert outcome.details[-2:] == ["… and 5 more", "4 positions were not acknowledged"]
    assert outcome.failed and outcome.exit_code == 1
    one = PublishOutcome(PublishStats(sent=1), elapsed=0, interrupted=True, unacked=1)
    assert one.details == ["1 position was not acknowledged"]
    assert one.exit_code == 130


def test_errors_beyond_ten_are_counted_too() -> None:
    stats = PublishStats(sent=12, rejected=12, errors=[f"bad frame {i}" for i in range(12)])
    details = PublishOutcome(stats, elapsed=1).details
    assert details == [*(f"bad frame {i}" for i in range(10)), "… and 2 more"]


def test_config_checks_itself() -> None:
    with pytest.raises(InvalidParameter, match="--speed"):
        PublishConfig(speed=-1)
    with pytest.raises(InvalidParameter, match="--batch"):
        PublishConfig(batch=0)
    with pytest.raises(InvalidParameter, match="--window"):
        PublishConfig(window=0)


def test_tls_only_for_wss_and_from_the_system_store_by_default() -> None:
    assert client_tls("ws://h:1") is None
    context = client_tls("wss://h:1")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_durations_read_as_written() -> None:
    assert [_duration(s) for s in (300, 90, 7200, 2.5)] == ["5m", "90s", "2h", "2.5s"]
