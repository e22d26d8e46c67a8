"""docs/protocol.md and the relay agree on the query parameters of each endpoint.

The doc's table of parameters is parsed and held against the relay's own list
(geotrack.relay.access.PARAMETERS), and against real handshakes: every documented
parameter is accepted, an undocumented one is refused with 400. The same holds for the
HTTP live feeds (long polling, Server-Sent Events) and the doc's second table
(HTTP_FEED_PARAMETERS), against real requests to the HTTP listener.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from geotrack.auth import Tokens
from geotrack.relay.access import HTTP_FEED_PARAMETERS, PARAMETERS
from tests.relay_helpers import arun, running_http, running_relay

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
TOKEN = "both-roles-token-0123456789"
#: A valid value of each parameter, to try it in a real handshake.
VALUES = {
    "token": TOKEN,
    "device": "car-1",
    "bbox": "13,52,14,53",
    "since": "10m",
    "fence": "depot",
}


def documented() -> dict[str, set[str]]:
    """The parameters docs/protocol.md gives each endpoint, from its table of them."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    header = [i for i, line in enumerate(lines) if re.match(r"^\s*\| endpoint \| query par", line)]
    assert len(header) == 1, "docs/protocol.md needs one `| endpoint | query parameters |` table"
    table: dict[str, set[str]] = {}
    for line in lines[header[0] + 2 :]:
        row = re.match(r"^\s*\|\s*`(/\w+)`\s*\|(.*)\|\s*$", line)
        if row is None:
            break
        table[row.group(1)] = set(re.findall(r"`(\w+)`", row.group(2)))
    return table


def test_the_doc_lists_exactly_the_relays_parameters() -> None:
    table = documented()
    assert table, "docs/protocol.md has no table of query parameters"
    assert table == {endpoint: set(names) for endpoint, names in PARAMETERS.items()}


def test_the_doc_explains_every_subscribe_parameter() -> None:
    section = DOC.read_text(encoding="utf-8").split("## Subscribing")[1].split("\n## ")[0]
    for name in PARAMETERS["/subscribe"]:
        assert f"`{name}=" in section, f"docs/protocol.md does not explain {name}="


@pytest.mark.parametrize("endpoint", sorted(PARAMETERS))
def test_documented_parameters_are_accepted_and_others_refused(
    tmp_path: Path, endpoint: str
) -> None:
    tokens = Tokens.from_entries([{"name": "both", "token": TOKEN, "role": "both"}])

    async def main() -> None:
        async with running_relay(tmp_path / "db", tokens=tokens) as relay:
            names = sorted(documented()[endpoint])
            query = "&".join(f"{name}={VALUES[name]}" for name in names)
            async with connect(f"{relay.url}{endpoint}?{query}", open_timeout=5):
                pass
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{relay.url}{endpoint}?{query}&colour=red", open_timeout=5)
            response = info.value.response
            assert response.status_code == 400
            assert response.body.decode().startswith("colour: unknown parameter")

    arun(main())


def documented_http() -> dict[str, set[str]]:
    """The parameters docs/protocol.md gives each HTTP live feed, from its second table."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    header = [
        i for i, line in enumerate(lines) if re.match(r"^\| HTTP endpoint \| query par", line)
    ]
    assert len(header) == 1, "docs/protocol.md needs one `| HTTP endpoint | query parameters |`"
    table: dict[str, set[str]] = {}
    for line in lines[header[0] + 2 :]:
        row = re.match(r"^\|\s*`(/[\w/]+)`\s*\|(.*)\|\s*$", line)
        if row is None:
            break
        table[row.group(1)] = set(re.findall(r"`(\w+)`", row.group(2)))
    return table


def test_the_doc_lists_exactly_the_http_feeds_parameters() -> None:
    assert documented_http() == {e: set(names) for e, names in HTTP_FEED_PARAMETERS.items()}


@pytest.mark.parametrize("endpoint", sorted(HTTP_FEED_PARAMETERS))
def test_documented_http_feed_parameters_are_accepted_and_others_refused(
    tmp_path: Path, endpoint: str
) -> None:
    tokens = Tokens.from_entries([{"name": "both", "token": TOKEN, "role": "both"}])
    values = {**VALUES, "wait": "0"}

    async def main() -> None:
        async with running_http(tmp_path / "db", tokens=tokens) as (_, _, http):
            names = sorted(documented_http()[endpoint])
            query = "&".join(f"{name}={values[name]}" for name in names)
            async with http.get(f"{endpoint}?{query}") as response:
                assert response.status == 200, await response.text()
            async with http.get(f"{endpoint}?{query}&colour=red") as response:
                assert response.status == 400
                assert (await response.text()).startswith("colour: unknown parameter")

    arun(main())
