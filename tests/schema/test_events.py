"""Events of the schema: validation, the wire form of /events, the filter."""

from __future__ import annotations

import pytest

from geotrack.schema import (
    Event,
    EventFilter,
    decode_events,
    encode_event,
    encode_events,
    ms_to_ts,
)
from tests.factories import T0


def test_an_event_normalizes_ts_and_has_its_key() -> None:
    event = Event("enter", "van-3", "depot", T0 / 1000 + 0.25, 52.5, 13.4)  # type: ignore[arg-type]
    assert event.ts == ms_to_ts(T0 + 250)
    assert event.key == ("van-3", "depot", ms_to_ts(T0 + 250), "enter")


def test_the_wire_form_is_the_protocols() -> None:
    event = Event("exit", "van-3", "depot", "2026-11-25T12:00:31Z", 52.5001, 13.4002)
    assert encode_event(event) == (
        b'{"type":"exit","device":"van-3","fence":"depot",'
        b'"ts":"2026-11-25T12:00:31.000Z","lat":52.5001,"lon":13.4002}'
    )
    frame = encode_events([event, event])
    assert frame.startswith(b"[{") and decode_events(frame) == [event, event]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("arrive", "van", "depot", "2026-11-25T12:00:00Z", 1.0, 2.0), "type"),
        (("enter", "bad id", "depot", "2026-11-25T12:00:00Z", 1.0, 2.0), "device"),
        (("enter", "van", "", "2026-11-25T12:00:00Z", 1.0, 2.0), "fence"),
        (("enter", "van", "depot", "yesterday", 1.0, 2.0), "ts"),
    ],
)
def test_bad_events_are_refused_naming_the_field(fields: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=f"^{message}"):
        Event(*fields)


def test_decoding_a_bad_frame_says_why() -> None:
    with pytest.raises(ValueError, match="type"):
        decode_events(b'[{"type":"arrive","device":"v","fence":"f","ts":"x","lat":1,"lon":2}]')


def test_the_filter_narrows_by_device_and_fence() -> None:
    event = Event("enter", "van", "depot", "2026-11-25T12:00:00Z", 1.0, 2.0)
    assert EventFilter().matches(event)
    assert EventFilter(frozenset({"van"}), frozenset({"depot"})).matches(event)
    assert not EventFilter(devices=frozenset({"bike"})).matches(event)
    assert not EventFilter(fences=frozenset({"yard"})).matches(event)
