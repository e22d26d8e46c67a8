"""MQTT settings and messages without a broker: URLs, filters, templates, message reading."""

from __future__ import annotations

import json

import pytest

from geotrack.errors import InvalidParameter
from geotrack.relay.mqtt_messages import (
    DEFAULT_FILTER,
    Outcome,
    check_filter,
    check_template,
    client_ids,
    default_client_id,
    parse_broker,
    read_message,
    topic_matches,
)
from tests.factories import T0_S


def owntracks(**extra: object) -> bytes:
    message = {"_type": "location", "lat": 52.5, "lon": 13.4, "tst": T0_S, "tid": "ph"}
    return json.dumps(message | extra).encode()


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "topic_filter"),
    [
        ("mqtt://broker", "broker", 1883, False, DEFAULT_FILTER),
        ("mqtt://broker/", "broker", 1883, False, DEFAULT_FILTER),
        ("mqtts://broker", "broker", 8883, True, DEFAULT_FILTER),
        ("MQTT://broker:1884/owntracks/#", "broker", 1884, False, "owntracks/#"),
        ("mqtt://[::1]:1884/a/+/b", "::1", 1884, False, "a/+/b"),
        ("mqtt://h/#", "h", 1883, False, "#"),
    ],
)
def test_broker_urls_are_read_with_defaults(
    url: str, host: str, port: int, tls: bool, topic_filter: str
) -> None:
    broker = parse_broker(url)
    assert (broker.host, broker.port, broker.tls, broker.topic_filter) == (
        host,
        port,
        tls,
        topic_filter,
    )
    assert broker.username is None


def test_credentials_are_decoded_and_never_shown() -> None:
    broker = parse_broker("mqtts://geo%40track:s3cr%3At@broker.example.org/owntracks/#")
    assert (broker.username, broker.password) == ("geo@track", "s3cr:t")
    assert broker.url == "mqtts://broker.example.org:8883/owntracks/#"
    assert "s3cr" not in repr(broker)
    assert parse_broker("mqtt://user@h").password is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker", "expected mqtt://"),
        ("broker:1883", "expected mqtt://"),
        ("mqtt://", "no host"),
        ("mqtt://h:0", "1..65535"),
        ("mqtt://h:x", "1..65535"),
        ("mqtt://[::1/a", "IPv6"),
        ("mqtt://h/a/#/b", "'#' must be a whole level"),
        ("mqtt://h/a+", r"'\+' must be a whole level"),
    ],
)
def test_bad_urls_name_the_option(url: str, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message) as caught:
        parse_broker(url)
    assert str(caught.value).startswith("--mqtt: ")


def test_a_bad_url_never_repeats_the_password() -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_broker("ws://user:hunter2@broker")
    assert "hunter2" not in str(caught.value)
    assert "…@broker" in str(caught.value)


def test_filters_and_templates_are_checked() -> None:
    check_filter("geotrack/in/#", "--mqtt-json-filter")
    with pytest.raises(InvalidParameter, match="--mqtt-json-filter"):
        check_filter("", "--mqtt-json-filter")
    check_template("geotrack/{device}")
    for bad, message in [
        ("geotrack/all", "no {device}"),
        ("geotrack/{dev}", "{device} only"),
        ("geotrack/{device}/#", "cannot hold"),
        ("geotrack/{device", "{device} only"),
    ]:
        with pytest.raises(InvalidParameter, match=message):
            check_template(bad)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("owntracks/#", "owntracks/alice/phone", True),
        ("owntracks/#", "owntracks", True),
        ("owntracks/+/+", "owntracks/alice/phone", True),
        ("owntracks/+/+", "owntracks/alice/phone/event", False),
        ("owntracks/+", "owntracks/alice/phone", False),
        ("geotrack/in/#", "owntracks/alice/phone", False),
        ("#", "$SYS/broker/uptime", False),
        ("a/b", "a/b", True),
        ("a/b", "a/bc", False),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


def test_the_default_client_id_is_stable_and_distinct() -> None:
    one = default_client_id("host", "sqlite:///a.db", 8765)
    assert one == default_client_id("host", "sqlite:///a.db", 8765)
    assert one != default_client_id("host", "sqlite:///a.db", 8766)
    assert one.startswith("geotrack-") and len(one) <= 23


def test_an_owntracks_location_maps_as_the_http_endpoint_maps_it() -> None:
    reading = read_message(
        "owntracks/alice/phone",
        owntracks(vel=36, cog=90, acc=5, batt=80),
        retain=False,
        json_filter=None,
    )
    assert reading.outcome is Outcome.POSITIONS
    [position] = reading.positions
    assert position.device == "alice:phone"
    assert (position.speed, position.heading, position.acc) == (10.0, 90.0, 5.0)
    assert position.attrs == {"tid": "ph", "batt": 80}


def test_without_user_and_device_in_the_topic_the_tid_names_the_device() -> None:
    [position] = read_message("tracks", owntracks(), retain=False, json_filter=None).positions
    assert position.device == "ph"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"_type": "transition", "event": "enter", "tst": 1}',
        b'{"_type": "lwt", "tst": 1}',
        b'{"_type": "waypoints", "waypoints": []}',
        b"",
    ],
)
def test_other_types_and_empty_payloads_are_ignored(payload: bytes) -> None:
    reading = read_message("owntracks/a/b", payload, retain=False, json_filter=None)
    assert (reading.outcome, reading.positions, reading.rejected) == (Outcome.IGNORED, [], [])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b'{"_type": "encrypted", "data": "x"}', "encrypted"),
        (b'{"_type": "location", "lat": 1}', "lon: required"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_unreadable_messages_are_rejected_with_the_reason(payload: bytes, reason: str) -> None:
    reading = read_message("owntracks/a/b", payload, retain=False, json_filter=None)
    assert reading.outcome is Outcome.REJECTED
    assert reason in reading.rejected[0].error


def test_retained_messages_are_skipped_unless_asked_for() -> None:
    skipped = read_message("owntracks/a/b", owntracks(), retain=True, json_filter=None)
    assert (skipped.outcome, skipped.positions) == (Outcome.RETAINED, [])
    taken = read_message("owntracks/a/b", owntracks(), retain=True, json_filter=None, retained=True)
    assert taken.outcome is Outcome.POSITIONS and len(taken.positions) == 1


def test_geotrack_json_on_the_json_filter_keeps_the_good_positions() -> None:
    frame = [
        {"device": "bus-1", "lat": 1, "lon": 2, "ts": T0_S},
        {"device": "bus-1", "lat": 91, "lon": 2, "ts": T0_S + 1},
    ]
    reading = read_message(
        "geotrack/in/bus-1", json.dumps(frame).encode(), retain=False, json_filter="geotrack/in/#"
    )
    assert reading.outcome is Outcome.POSITIONS
    assert [p.device for p in reading.positions] == ["bus-1"]
    assert [r.index for r in reading.rejected] == [1] and "lat" in reading.rejected[0].error
    broken = read_message("geotrack/in/x", b"[]", retain=False, json_filter="geotrack/in/#")
    assert broken.outcome is Outcome.REJECTED and "empty" in broken.rejected[0].error
    # Outside the JSON filter the same topic tree is read as OwnTracks.
    other = read_message(
        "geotrack/out/x", json.dumps(frame[0]).encode(), retain=False, json_filter="geotrack/in/#"
    )
    assert other.outcome is Outcome.REJECTED and "_type" in other.rejected[0].error


def test_two_urls_to_one_broker_get_two_client_ids() -> None:
    brokers = [parse_broker(u) for u in ("mqtt://a/x/#", "mqtt://b/x/#", "mqtt://a/y/#")]
    given = client_ids(brokers, "relay-1", ())
    assert given == ["relay-1", "relay-1", "relay-1-2"]
    derived = client_ids(brokers, None, ("host", "sqlite:///s.db", 8765))
    assert derived[0] == derived[1] == default_client_id("host", "sqlite:///s.db", 8765)
    assert derived[2] not in derived[:2]
    # The first URL's id does not depend on its filter: changing it keeps the session.
    assert client_ids([parse_broker("mqtt://a/z/#")], None, ("host",)) == [
        default_client_id("host")
    ]
