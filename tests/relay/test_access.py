"""The policies WebSocket and HTTP share, without sockets."""

from __future__ import annotations

import errno
import logging

import pytest

from geotrack.errors import InvalidParameter
from geotrack.relay.access import (
    PARAMETERS,
    RefusalLog,
    Refused,
    authorize,
    bind_error,
    check_parameters,
    device_ids,
    enforce_devices,
)
from geotrack.schema import Position, Rejection
from tests.factories import BUS, PUB, SUB, tokens


def test_without_tokens_anyone_may_do_anything() -> None:
    assert authorize(None, {}, {}, "publish") is None


def test_a_missing_or_unknown_token_is_401_with_a_challenge() -> None:
    for headers, query in (({}, {}), ({"Authorization": "Bearer nope"}, {})):
        with pytest.raises(Refused) as info:
            authorize(tokens(bus_role="both"), headers, query, "subscribe")
        assert info.value.status == 401 and info.value.challenge


def test_a_token_without_the_role_is_403_naming_the_token_never_showing_it() -> None:
    with pytest.raises(Refused) as info:
        authorize(tokens(bus_role="both"), {}, {"token": [SUB]}, "publish")
    assert (info.value.status, info.value.reason) == (403, "token 'sub' may not publish")
    assert SUB not in str(info.value)
    grant = authorize(tokens(bus_role="both"), {"Authorization": f"Bearer {PUB}"}, {}, "publish")
    assert grant is not None and grant.name == "pub"


def test_device_grants_reject_by_index_and_keep_the_rest() -> None:
    grant = authorize(tokens(bus_role="both"), {}, {"token": [BUS]}, "publish")
    fixes = [Position(device=d, lat=1, lon=2, ts=1) for d in ("bus-1", "car-1", "bus-2")]
    kept, rejected = enforce_devices(grant, [0, 2, 3], fixes, [Rejection(1, "lat: bad")])
    assert [p.device for p in kept] == ["bus-1", "bus-2"]
    assert rejected == [
        Rejection(1, "lat: bad"),
        Rejection(2, "device: token 'bus' may not publish as 'car-1'"),
    ]
    assert enforce_devices(None, [0], fixes[:1], []) == (fixes[:1], [])


def test_device_ids_are_checked() -> None:
    assert device_ids(["a", "b-1"]) == ("a", "b-1")
    with pytest.raises(InvalidParameter, match=r"^device: 'a b' is not"):
        device_ids(["a", "a b"])


def test_each_endpoint_accepts_its_parameters_only() -> None:
    check_parameters("/subscribe", ["device", "bbox", "since", "token"])
    check_parameters("/publish", ["token"])
    with pytest.raises(InvalidParameter, match=r"^colour: unknown parameter"):
        check_parameters("/subscribe", ["device", "colour"])
    with pytest.raises(InvalidParameter, match=r"^device: .*accepted by /publish: token\)"):
        check_parameters("/publish", ["device"])
    check_parameters("/events", ["device", "fence", "since", "token"])
    with pytest.raises(InvalidParameter, match=r"^bbox: unknown parameter"):
        check_parameters("/events", ["bbox"])
    assert set(PARAMETERS) == {"/publish", "/subscribe", "/events"}


def test_bind_errors_are_one_line_naming_the_address() -> None:
    busy = OSError(errno.EADDRINUSE, "in use")
    assert str(bind_error(busy, "127.0.0.1", 80)) == (
        "port 80 on 127.0.0.1 is already in use (the relay)"
    )
    assert "HTTP listener" in str(bind_error(busy, "::1", 80, "the HTTP listener"))
    assert "no such local address" in str(bind_error(OSError(errno.EADDRNOTAVAIL, "x"), "h", 1))
    assert "not allowed" in str(bind_error(OSError(errno.EACCES, "x"), "h", 1))
    assert "boom" in str(bind_error(OSError(errno.EIO, "boom"), "h", 1))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_refusals_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), limit=5, interval=60, clock=clock)
    with caplog.at_level(logging.INFO, "test.refusals"):
        for i in range(10_000):
            refusals.refused(f"10.0.0.{i % 250}:{1000 + i}", 401, "a valid token is required")
        assert len(caplog.records) == 5
        assert all(r.levelno == logging.WARNING for r in caplog.records)
        assert caplog.records[0].getMessage() == (
            "refused handshake from 10.0.0.0:1000: 401 a valid token is required"
        )
        clock.now = 61  # the next interval: the count of the last one, then lines again
        refusals.refused("10.0.0.1:1", 404, "no such endpoint '/x'")
        messages = [r.getMessage() for r in caplog.records[5:]]
        assert messages == [
            "... and 9995 more refused handshakes suppressed",
            "refused handshake from 10.0.0.1:1: 404 no such endpoint '/x'",
        ]
        assert caplog.records[-1].levelno == logging.INFO  # 404s are scanners, mostly
    assert refusals.total == 10_001
