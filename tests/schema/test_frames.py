"""geotrack.schema.frames: what the property tests in tests/test_schema.py found."""

from __future__ import annotations

import pytest

from geotrack.errors import FrameError
from geotrack.schema import decode_frame

VALID = b'{"device": "car-1", "lat": 52.52, "lon": 13.405, "ts": 1764072000}'


@pytest.mark.parametrize(
    "data",
    [
        VALID.replace(b'"device"', b'"\xffdevice"'),  # in a key
        VALID.replace(b'"car-1"', b'"car-\xff1"'),  # in a value
        b"[" + VALID + b"," + VALID.replace(b"car-1", b"car-\xc3") + b"]",  # cut short
    ],
)
def test_bytes_that_are_not_utf8_are_a_frame_error(data: bytes) -> None:
    # msgspec before 0.23 raised UnicodeDecodeError from the fast decoder, which escaped
    # decode_frame instead of becoming the FrameError its callers handle (found by the
    # spliced-bytes property in the oldest-versions run, with msgspec 0.18).
    with pytest.raises(FrameError, match="not valid JSON"):
        decode_frame(data)
