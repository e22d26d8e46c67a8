"""Device protocols parsed without a server: the requests real clients send, replayed.

Sources of the requests below (public repositories):

- traccar/traccar ``src/test/java/org/traccar/protocol/OsmAndProtocolDecoderTest.java``
  (query strings and JSON bodies) and ``OsmAndProtocolDecoder.java`` (what each key means);
- traccar/traccar-client-android ``app/src/test/java/org/traccar/client/ProtocolFormatterTest.kt``
  and ``ProtocolFormatter.kt`` (Traccar Client: POST, query string, speed in knots,
  timestamp in seconds);
- traccar/traccar-client ``lib/preferences.dart`` (the newer client's JSON location
  template);
- mendhak/gpslogger ``.../senders/customurl/CustomUrlManager.java`` (GPSLogger's %
  placeholders);
- owntracks/booklet ``docs/tech/json.md`` and ``docs/tech/http.md``, owntracks/android
  ``project/app/src/test/java/org/owntracks/android/support/ParserTest.kt`` and
  ``.../e2e/ContactsAndMapTests.kt`` (OwnTracks location messages).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import MultiDict

from geotrack.errors import InvalidParameter, InvalidPosition
from geotrack.relay.http_devices import (
    KMH,
    KNOT,
    MS_THRESHOLD,
    device_id,
    device_time,
    parse_osmand,
    parse_owntracks,
)
from geotrack.schema import MAX_ATTRS, ms_to_ts
from tests.device_requests import TRACCAR_JSON

NOW_MS = 1_764_072_000_123  # 2025-11-25T12:00:00.123Z: "now" for fixes without a time


def query(url: str) -> MultiDict[str]:
    """The parameters of a request URL, as the server sees them (repeats kept)."""
    return MultiDict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def osmand(url: str) -> Any:
    return parse_osmand(query(url), None, now_ms=NOW_MS)


def error_of(call: Any) -> str:
    with pytest.raises((InvalidParameter, InvalidPosition)) as info:
        call()
    return str(info.value)


# -- OsmAnd query strings: Traccar's decoder tests -------------------------------------------


def test_traccar_decoder_query_with_iso_time_and_hdop() -> None:
    p = osmand(
        "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z"
        "&hdop=6.0&altitude=224.0&speed=0.0"
    )
    assert (p.device, p.lat, p.lon, p.ts) == (
        "902064",
        42.06288,
        -88.23412,
        "2016-01-27T18:55:47.000Z",
    )
    assert (p.alt, p.speed, p.attrs) == (224.0, 0.0, {"hdop": 6.0})


def test_traccar_decoder_query_with_milliseconds() -> None:
    # OsmAnd sends milliseconds: too large for seconds.
    p = osmand(
        "/?id=902064&lat=42.06288&lon=-88.23412&timestamp=1442068686579&hdop=6.0"
        "&altitude=224.0&speed=0.0"
    )
    assert p.ts == "2015-09-12T14:38:06.579Z"


def test_traccar_decoder_query_with_local_time_is_utc() -> None:
    # "2014-06-04+09%3A10%3A11": a space, no offset. Taken as UTC (Traccar: server zone).
    p = osmand(
        "/?lat=49.60688&lon=6.15788&timestamp=2014-06-04+09%3A10%3A11&altitude=384.7"
        "&speed=0.0&id=353861053849681"
    )
    assert (p.device, p.ts, p.alt) == ("353861053849681", "2014-06-04T09:10:11.000Z", 384.7)


def test_traccar_decoder_query_with_seconds_bearing_and_zero_values() -> None:
    p = osmand(
        "/?id=123456&timestamp=1377177267&lat=60.0&lon=30.0&speed=0.0&bearing=0.0"
        "&altitude=0&hdop=0.0"
    )
    assert (p.ts, p.speed, p.heading, p.alt, p.attrs) == (
        "2013-08-22T13:14:27.000Z",
        0.0,
        0.0,
        0.0,
        {"hdop": 0.0},
    )
    bare = osmand("/?id=123456&timestamp=1377177267&lat=60.0&lon=30.0")
    assert bare.attrs is None and bare.speed is None


def test_traccar_decoder_query_without_timestamp_is_now_and_deviceid_names_it() -> None:
    p = osmand("/?lat=60.0&lon=30.0&speed=0.0&heading=0.0&vacc=0&hacc=0&altitude=0&deviceid=123456")
    assert (p.device, p.ts, p.heading) == ("123456", ms_to_ts(NOW_MS), 0.0)
    assert p.attrs == {"vacc": 0, "hacc": 0}


def test_traccar_decoder_query_with_battery_and_location() -> None:
    p = osmand(
        "/?id=861001000719969&lat=41.666667&lon=-0.883333&altitude=350.059479"
        "&speed=0.000000&batt=87"
    )
    assert p.attrs == {"batt": 87}
    assert (p.lat, p.lon) == (41.666667, -0.883333)
    q = osmand("/?id=123456&timestamp=1377177267&location=60.0,30.0")
    assert (q.lat, q.lon) == (60.0, 30.0)


def test_traccar_decoder_query_speed_in_knots_and_other_keys_typed() -> None:
    p = osmand(
        "/?id=123456789012345&timestamp=1504763810&lat=40.7232948571&lon=-74.0061408571"
        "&bearing=7.19889788244&speed=40&ignition=true&rpm=933&fuel=24"
    )
    assert p.speed == pytest.approx(40 * 0.514444444)
    assert p.heading == pytest.approx(7.19889788244)
    assert p.attrs == {"ignition": True, "rpm": 933, "fuel": 24}


def test_traccar_decoder_queries_we_cannot_store_are_refused_with_a_reason() -> None:
    # Traccar falls back to the device's last location; a position needs coordinates.
    cells = (
        "/?id=123456&timestamp=1377177267&cell=257,02,16,2224&cell=257,02,16,2223,-90"
        "&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70"
    )
    assert error_of(lambda: osmand(cells)) == "lat: required"
    # No id: Traccar answers 400 too.
    assert error_of(lambda: osmand("/?timestamp=1377177267&lat=60.0&lon=30.0")).startswith(
        "id: required"
    )


def test_repeated_keys_keep_every_value() -> None:
    p = osmand(
        "/?id=1&lat=1&lon=2&cell=257,02,16,2224&cell=257,02,16,2223,-90"
        "&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70"
    )
    assert p.attrs == {
        "cell": "257,02,16,2224;257,02,16,2223,-90",
        "wifi": "00-14-22-01-23-45,-80;00-1C-B3-09-85-15,-70",
    }


# -- Traccar Client (Android) and GPSLogger --------------------------------------------------


def test_traccar_client_android_request() -> None:
    # ProtocolFormatterTest: a zeroed Location, as the client formats it.
    url = (
        "http://localhost:5055?id=123456789012345&timestamp=0&lat=0.0&lon=0.0&speed=0.0"
        "&bearing=0.0&altitude=0.0&accuracy=0.0&batt=0.0"
    )
    p = osmand(url)
    assert (p.device, p.ts, p.lat, p.lon) == ("123456789012345", "1970-01-01T00:00:00.000Z", 0, 0)
    assert (p.speed, p.heading, p.alt, p.acc, p.attrs) == (0.0, 0.0, 0.0, 0.0, {"batt": 0.0})
    alarm = osmand(url.replace("localhost:5055", "localhost:5055/path") + "&alarm=alert%20message")
    assert alarm.attrs == {"batt": 0.0, "alarm": "alert message"}


def test_traccar_client_android_units() -> None:
    # Position.kt: speed = location.speed * 1.943844 (knots); timestamp = time / 1000.
    mps = 12.5
    p = osmand(
        f"/?id=phone&timestamp=1764072000&lat=52.52&lon=13.405&speed={mps * 1.943844}"
        "&bearing=271.5&altitude=34.0&accuracy=4.0&batt=76.0&mock=true"
    )
    assert p.speed == pytest.approx(mps, rel=1e-6)
    assert (p.ts, p.heading, p.acc, p.attrs) == (
        "2025-11-25T12:00:00.000Z",
        271.5,
        4.0,
        {"batt": 76.0, "mock": True},
    )


def test_gpslogger_custom_url_and_form_body() -> None:
    # GPSLogger fills %LAT %LON %TIMESTAMP (seconds) %ALT %ACC %DIR %BATT %HDOP; an empty
    # %HDOP (no fix data) is skipped, as Traccar skips empty values.
    url = (
        "/?id=gpslogger&lat=52.5200066&lon=13.404954&timestamp=1764072000&altitude=38.0"
        "&accuracy=6.0&bearing=359.9&batt=81.0&hdop=&spd=3.2"
    )
    p = osmand(url)
    assert (p.ts, p.alt, p.acc, p.heading) == ("2025-11-25T12:00:00.000Z", 38.0, 6.0, 359.9)
    assert p.attrs == {"batt": 81.0, "spd": 3.2}
    # The same as a form body (POST with the parameters in the body): the server hands the
    # decoded form the same way.
    form = MultiDict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    assert parse_osmand(form, None, now_ms=NOW_MS) == p
    # %TIME is ISO 8601 with milliseconds and Z.
    iso = osmand("/?id=g&lat=1&lon=2&timestamp=2025-11-25T12:00:00.250Z")
    assert iso.ts == "2025-11-25T12:00:00.250Z"


# -- OsmAnd JSON: the newer Traccar Client ---------------------------------------------------


def osmand_json(body: str | dict[str, Any]) -> Any:
    decoded = json.loads(body) if isinstance(body, str) else body
    return parse_osmand(MultiDict(), decoded, now_ms=NOW_MS)


def test_traccar_json_unknowns_are_left_out_and_battery_is_percent() -> None:
    p = osmand_json(TRACCAR_JSON[0])
    assert (p.device, p.ts, p.lat, p.lon) == (
        "48241179",
        "2025-06-15T13:45:12.862Z",
        37.4219983,
        -122.084,
    )
    # heading -1 means unknown; speed 0 m/s is known.
    assert (p.speed, p.heading, p.alt, p.acc) == (0.0, None, 5.0, 5.0)
    assert p.attrs == {
        "is_moving": False,
        "odometer": 0,
        "event": "motionchange",
        "batt": 100,
        "charging": False,
        "activity": "still",
    }


def test_traccar_json_extras_become_attrs() -> None:
    p = osmand_json(TRACCAR_JSON[1])
    assert p.attrs is not None
    assert {k: p.attrs[k] for k in p.attrs if k.startswith("device_")} == {
        "device_string_test": "long_device_id",
        "device_bool_test": True,
        "device_bool_false_test": False,
        "device_integer_test": 1,
        "device_double_test": 1.345,
        "device_very_long_double_test": 1763636.3442,
    }


def test_traccar_json_from_ios_with_every_unknown() -> None:
    p = osmand_json(TRACCAR_JSON[2])
    assert (p.device, p.ts, p.speed, p.heading, p.acc, p.alt) == (
        "658765",
        "2025-05-09T04:11:30.579Z",
        None,
        None,
        5.0,
        0.0,
    )
    assert p.attrs is not None
    assert "batt" not in p.attrs  # level -1: unknown
    assert p.attrs["floor"] is None
    assert p.attrs["speed_accuracy"] == -1
    assert (p.attrs["mock"], p.attrs["age"], p.attrs["activity"]) == (True, 188, "unknown")


def test_traccar_json_speed_is_already_metres_per_second() -> None:
    p = osmand_json(TRACCAR_JSON[3])
    assert (p.speed, p.heading, p.acc, p.alt) == (18.67, 63.0, 3.8, 35.7)
    assert p.attrs is not None and p.attrs["batt"] == 79


def test_traccar_client_location_template() -> None:
    # lib/preferences.dart's locationTemplate, rendered as the app renders it, posted with
    # params {"device_id": id} at the root.
    body = {
        "location": {
            "timestamp": "2025-11-25T12:00:00.500Z",
            "coords": {
                "latitude": 52.52,
                "longitude": 13.405,
                "accuracy": 12.0,
                "speed": 1.5,
                "heading": 370.0,
                "altitude": 40.0,
            },
            "is_moving": True,
            "odometer": 1234.5,
            "event": "",
            "battery": {"level": 0.5, "is_charging": True},
            "activity": {"type": "walking"},
            "extras": {},
            "_": "&id=12345678&lat=52.52&lon=13.405&timestamp=2025-11-25T12:00:00.500Z&",
        },
        "device_id": "12345678",
    }
    p = osmand_json(body)
    assert (p.device, p.ts, p.speed, p.heading, p.acc) == (
        "12345678",
        "2025-11-25T12:00:00.500Z",
        1.5,
        10.0,
        12.0,
    )
    assert p.attrs == {
        "is_moving": True,
        "odometer": 1234.5,
        "event": "",
        "batt": 50,
        "charging": True,
        "activity": "walking",
    }


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([1, 2], "body: expected a JSON object, got an array"),
        ({"location": {}}, "device_id: required"),
        ({"device_id": True, "location": {}}, "device_id: expected a string, got a boolean"),
        ({"device_id": "a b/c", "location": {}}, "device_id: 'a b/c' cannot be a device id"),
        ({"device_id": "1"}, "location: expected an object, got null"),
        ({"device_id": "1", "location": [{}]}, "location: one location per request"),
        ({"device_id": "1", "location": {}}, "location.coords: expected an object, got null"),
        (
            {"device_id": "1", "location": {"coords": {"longitude": 1}}},
            "location.coords.latitude: required",
        ),
        (
            {"device_id": "1", "location": {"coords": {"latitude": "1", "longitude": 1}}},
            "location.coords.latitude: expected a number, got a string",
        ),
        (
            {
                "device_id": "1",
                "location": {"timestamp": "yesterday", "coords": {"latitude": 1, "longitude": 1}},
            },
            "location.timestamp: expected Unix seconds, Unix milliseconds or an ISO 8601 time",
        ),
        (
            {"device_id": "1", "location": {"coords": {"latitude": 91, "longitude": 1}}},
            "lat: expected `float` <= 90.0",
        ),
    ],
)
def test_traccar_json_bad_requests_name_the_field(body: Any, error: str) -> None:
    assert error_of(lambda: osmand_json(body)).startswith(error)


def test_traccar_json_integer_device_id_and_missing_timestamp() -> None:
    p = osmand_json({"device_id": 42, "location": {"coords": {"latitude": 1, "longitude": 2}}})
    assert (p.device, p.ts) == ("42", ms_to_ts(NOW_MS))


# -- OsmAnd bad requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("/?lat=1&lon=2", "id: required"),
        ("/?id=&lat=1&lon=2", "id: required"),
        ("/?id=a/b&lat=1&lon=2", "id: 'a/b' cannot be a device id: '/' is not allowed"),
        (f"/?id={'x' * 65}&lat=1&lon=2", "id: 'xxxx"),
        ("/?id=a&deviceid=b&lat=1&lon=2", "id: id and deviceid differ"),
        ("/?id=a&lon=2", "lat: required"),
        ("/?id=a&lat=1", "lon: required"),
        ("/?id=a&lat=north&lon=2", "lat: expected a number, got 'north'"),
        ("/?id=a&lat=nan&lon=2", "lat: expected a number, got 'nan'"),
        ("/?id=a&lat=1_0&lon=2", "lat: expected a number, got '1_0'"),
        ("/?id=a&lat=1e999&lon=2", "lat: must be a finite number"),
        ("/?id=a&lat=95&lon=2", "lat: expected `float` <= 90.0"),
        ("/?id=a&lat=1&lon=-181", "lon: expected `float` >= -180.0"),
        ("/?id=a&lat=1&lat=2&lon=2", "lat: given more than once with different values"),
        ("/?id=a&location=60.0", "location: expected lat,lon, got '60.0'"),
        ("/?id=a&location=60.0,30.0&lat=60.0", "location: give either location=lat,lon or lat"),
        ("/?id=a&location=x,30.0", "location: expected a number, got 'x'"),
        ("/?id=a&lat=1&lon=2&timestamp=soon", "timestamp: expected Unix seconds"),
        ("/?id=a&lat=1&lon=2&timestamp=2026-02-30T00:00:00Z", "timestamp: expected Unix seconds"),
        ("/?id=a&lat=1&lon=2&timestamp=1e30", "timestamp: Unix seconds out of range"),
        ("/?id=a&lat=1&lon=2&speed=-1", "speed: must be >= 0 knots, got '-1'"),
        ("/?id=a&lat=1&lon=2&speed=fast", "speed: expected a number, got 'fast'"),
        ("/?id=a&lat=1&lon=2&accuracy=-5", "accuracy: must be >= 0 metres"),
        ("/?id=a&lat=1&lon=2&altitude=high", "altitude: expected a number"),
        ("/?id=a&lat=1&lon=2&bearing=10&heading=20", "heading: bearing and heading differ"),
        ("/?id=a&lat=1&lon=2&bearing=west", "bearing: expected a number"),
    ],
)
def test_osmand_bad_requests_name_the_parameter(url: str, error: str) -> None:
    assert error_of(lambda: osmand(url)).startswith(error)


def test_more_than_max_attrs_is_refused_not_truncated() -> None:
    extra = "".join(f"&k{i}={i}" for i in range(MAX_ATTRS))
    assert len(osmand(f"/?id=a&lat=1&lon=2{extra}").attrs) == MAX_ATTRS
    error = error_of(lambda: osmand(f"/?id=a&lat=1&lon=2{extra}&one=more"))
    assert error.startswith(f"attrs: {MAX_ATTRS + 1} extra fields (")
    assert f"at most {MAX_ATTRS} can be kept" in error


def test_headings_are_normalized_and_knots_converted() -> None:
    def heading(value: str) -> float | None:
        return osmand(f"/?id=a&lat=1&lon=2&bearing={value}").heading  # type: ignore[no-any-return]

    assert heading("-90") == 270.0
    assert heading("360") == 0.0
    assert heading("725") == 5.0
    assert heading("-1e-20") == 0.0  # rounds to 360.0 on the way: still below 360
    assert osmand("/?id=a&lat=1&lon=2&speed=1").speed == pytest.approx(0.514444444)
    assert pytest.approx(0.514444444) == KNOT and pytest.approx(1 / 3.6) == KMH


def test_attribute_values_are_typed_like_traccar() -> None:
    p = osmand(
        "/?id=a&lat=1&lon=2&i=-12&f=2.5&e=1e3&t=true&n=false&s=hello&z=007"
        "&big=99999999999999999999&nan=nan&inf=inf&u=1_000"
    )
    assert p.attrs == {
        "i": -12,
        "f": 2.5,
        "e": 1000.0,
        "t": True,
        "n": False,
        "s": "hello",
        "z": 7,
        "big": "99999999999999999999",  # beyond 64 bits: kept as text, not rounded
        "nan": "nan",
        "inf": "inf",
        "u": "1_000",
    }


# -- times -----------------------------------------------------------------------------------


def test_the_seconds_milliseconds_threshold() -> None:
    assert MS_THRESHOLD == 2_147_483_647
    assert device_time(MS_THRESHOLD - 1) == "2038-01-19T03:14:06.000Z"  # seconds
    assert device_time(MS_THRESHOLD) == "1970-01-25T20:31:23.647Z"  # milliseconds
    assert device_time("1764072000") == "2025-11-25T12:00:00.000Z"
    assert device_time("1764072000123") == "2025-11-25T12:00:00.123Z"
    assert device_time(1764072000.5) == "2025-11-25T12:00:00.500Z"
    assert device_time("1764072000123.9") == "2025-11-25T12:00:00.123Z"


def test_iso_times_with_and_without_offset() -> None:
    assert device_time("2025-11-25T13:00:00.5+01:00") == "2025-11-25T12:00:00.500Z"
    assert device_time("2025-11-25T12:00:00") == "2025-11-25T12:00:00.000Z"  # no offset: UTC
    assert device_time("2025-11-25 12:00:00.25") == "2025-11-25T12:00:00.250Z"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, "timestamp: expected a time, got a boolean"),
        (None, "timestamp: expected a time, got null"),
        ([1], "timestamp: expected a time, got an array"),
        (float("nan"), "timestamp: must be a finite number"),
        ("2025-11-25", "timestamp: expected Unix seconds"),
        ("12:00:00", "timestamp: expected Unix seconds"),
        (10**30, "timestamp: Unix seconds out of range"),
        (10**400, "timestamp: out of range"),
    ],
)
def test_bad_times_name_the_field(value: Any, error: str) -> None:
    assert error_of(lambda: device_time(value)).startswith(error)


# -- device ids ------------------------------------------------------------------------------


def test_device_id_mapping() -> None:
    assert device_id("bike-7") == "bike-7"
    assert device_id("  Jane  Doe ") == "Jane_Doe"
    assert device_id("jane@example.com") == "jane_at_example.com"
    assert device_id("tab\tname") == "tab_name"
    for bad, char in [("a/b", "'/'"), ("Jöhn", "'ö'"), ("a+b", "'+'"), ("#1", "'#'")]:
        assert error_of(lambda bad=bad: device_id(bad)).startswith(
            f"device: {bad!r} cannot be a device id: {char} is not allowed"
        )
    assert error_of(lambda: device_id("   ")) == "device: must not be empty"
    assert "longer than 64 characters" in error_of(lambda: device_id("x" * 65))


# -- OwnTracks -------------------------------------------------------------------------------


def test_owntracks_android_location_with_user_and_device() -> None:
    # ParserTest.kt: "Parser can deserialize a location message".
    message = json.loads(
        '{"_type":"location","tid":"s5","acc":1600,"alt":0.0,"batt":99,"bs":3,"conn":"w",'
        '"lat":52.3153748,"lon":5.0408462,"t":"p","tst":1514455575,"vac":0,'
        '"inregions":["Testregion1","Testregion2"]}'
    )
    p = parse_owntracks(message, user="jane", device="phone")
    assert p is not None
    assert (p.device, p.lat, p.lon, p.ts) == (
        "jane:phone",
        52.3153748,
        5.0408462,
        "2017-12-28T10:06:15.000Z",
    )
    assert (p.acc, p.alt, p.speed, p.heading) == (1600.0, 0.0, None, None)
    assert p.attrs == {
        "tid": "s5",
        "batt": 99,
        "bs": 3,
        "conn": "w",
        "t": "p",
        "vac": 0,
        "inregions": '["Testregion1","Testregion2"]',  # lists are kept as JSON text
    }


def test_owntracks_velocity_is_kmh_and_tid_names_the_device_without_user() -> None:
    # ContactsAndMapTests.kt's location message: vel 7 km/h, no user or device given.
    message = json.loads(
        '{"_type":"location","acc":20,"al":0,"batt":100,"bs":0,"conn":"w","created_at":1610748273,'
        '"lat":51.2,"lon":-4,"tid":"aa","tst":1610799026,"vac":40,"vel":7}'
    )
    p = parse_owntracks(message)
    assert p is not None
    assert p.device == "aa"
    assert p.speed == pytest.approx(7 / 3.6)
    assert p.attrs is not None and p.attrs["created_at"] == 1610748273


def test_owntracks_booklet_fields() -> None:
    # docs/tech/json.md: cog degrees, vel km/h, topic only in HTTP payloads.
    message = {
        "_type": "location",
        "lat": 48.85833,
        "lon": 2.29513,
        "tst": 1455959765,
        "acc": 10,
        "alt": 35,
        "batt": 77,
        "cog": 361,
        "vel": 36,
        "tid": "JJ",
        "t": "u",
        "topic": "owntracks/jane doe/iPhone 12",
        "SSID": "home",
    }
    p = parse_owntracks(message)
    assert p is not None
    assert (p.device, p.heading) == ("jane_doe:iPhone_12", 1.0)
    assert p.speed == pytest.approx(10.0)
    assert p.attrs == {
        "batt": 77,
        "tid": "JJ",
        "t": "u",
        "topic": "owntracks/jane doe/iPhone 12",
        "SSID": "home",
    }
    # X-Limit-U alone (no device) names the device by the user.
    assert parse_owntracks(message, user="jane@example.com").device == "jane_at_example.com"  # type: ignore[union-attr]


def test_owntracks_unknown_speed_and_course_are_left_out() -> None:
    p = parse_owntracks(
        {"_type": "location", "lat": 1, "lon": 2, "tst": 1, "tid": "x", "vel": -1, "cog": -1}
    )
    assert p is not None and (p.speed, p.heading) == (None, None)


@pytest.mark.parametrize(
    "kind",
    ["transition", "waypoint", "waypoints", "lwt", "cmd", "card", "steps", "beacon", "status"],
)
def test_owntracks_other_types_are_ignored(kind: str) -> None:
    assert parse_owntracks({"_type": kind, "tst": 1546871106, "lat": 1, "lon": 2}) is None


@pytest.mark.parametrize(
    ("message", "kwargs", "error"),
    [
        ([], {}, "message: expected a JSON object, got an array"),
        ({"lat": 1}, {}, "_type: required"),
        ({"_type": "encrypted", "data": "x"}, {}, "_type: encrypted payloads cannot be read"),
        ({"_type": "location", "lon": 2, "tst": 1}, {"user": "u"}, "lat: required"),
        ({"_type": "location", "lat": 1, "lon": 2}, {"user": "u"}, "tst: required"),
        (
            {"_type": "location", "lat": "1", "lon": 2, "tst": 1},
            {"user": "u"},
            "lat: expected a number, got a string",
        ),
        (
            {"_type": "location", "lat": 1, "lon": 2, "tst": "x"},
            {"user": "u"},
            "tst: expected Unix seconds",
        ),
        (
            {"_type": "location", "lat": 1, "lon": 2, "tst": 1},
            {},
            "device: unknown: give ?u=USER&d=DEVICE",
        ),
        (
            {"_type": "location", "lat": 1, "lon": 2, "tst": 1},
            {"user": "a/b"},
            "device: 'a/b' cannot be a device id",
        ),
        (
            {"_type": "location", "lat": 1, "lon": 2, "tst": 1, "tid": "?"},
            {},
            "tid: '?' cannot be a device id",
        ),
        (
            {"_type": "location", "lat": 1, "lon": 200, "tst": 1},
            {"user": "u"},
            "lon: expected `float` <= 180.0",
        ),
        (
            {"_type": "location", "lat": 1, "lon": 2, "tst": 1, "vel": True},
            {"user": "u"},
            "vel: expected a number",
        ),
    ],
)
def test_owntracks_bad_messages_name_the_field(
    message: Any, kwargs: dict[str, str], error: str
) -> None:
    assert error_of(lambda: parse_owntracks(message, **kwargs)).startswith(error)


def test_owntracks_too_many_fields() -> None:
    message: dict[str, Any] = {"_type": "location", "lat": 1, "lon": 2, "tst": 1, "tid": "x"}
    message.update({f"k{i}": i for i in range(MAX_ATTRS)})  # tid + 32 = 33 extra fields
    assert error_of(lambda: parse_owntracks(message)).startswith(
        f"attrs: {MAX_ATTRS + 1} extra fields"
    )
