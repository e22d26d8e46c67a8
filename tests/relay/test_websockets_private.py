"""The websockets internals the relay uses are checked at import, with a clear error."""

from __future__ import annotations

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.server import ServerProtocol
from websockets.version import version

from geotrack.errors import GeotrackError
from geotrack.relay._websockets_private import SUPPORTED, UnsupportedWebsockets, check


def test_the_installed_websockets_passes() -> None:
    check()
    assert SUPPORTED[0] <= int(version.split(".", 1)[0]) < SUPPORTED[1]


@pytest.mark.parametrize("old", ["14.2", "15.0.1", "18.0", "not-a-version"])
def test_a_version_outside_the_range_is_named_with_the_range(old: str) -> None:
    with pytest.raises(UnsupportedWebsockets) as info:
        check(old)
    assert str(info.value).startswith(f"websockets {old} is not supported: ")
    assert f"websockets>={SUPPORTED[0]},<{SUPPORTED[1]}" in str(info.value)
    assert isinstance(info.value, GeotrackError)  # the CLI shows it as one Error: line


def test_a_release_that_renamed_an_internal_is_caught() -> None:
    class Renamed(ServerConnection):
        process_event = None  # type: ignore[assignment]

    with pytest.raises(UnsupportedWebsockets, match=r"has no Renamed.process_event\(\)"):
        check("16.0", Renamed)

    class OldProtocol:  # websockets 15 called it max_size
        state = fail = None

    with pytest.raises(UnsupportedWebsockets, match=r"has no OldProtocol\.max_message_size"):
        check("16.0", ServerConnection, OldProtocol)
    check("16.0", ServerConnection, ServerProtocol)
