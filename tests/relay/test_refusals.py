"""Refused handshakes leave one log line each (peer and reason, never the token), bounded."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from geotrack.auth import Tokens
from tests.factories import PUB, SUB
from tests.relay_helpers import arun, running_relay, subscriber

WRONG = "wrong-token-that-must-never-be-logged"


def tokens() -> Tokens:
    return Tokens.from_entries(
        [
            {"name": "pub", "token": PUB, "role": "publish"},
            {"name": "sub", "token": SUB, "role": "subscribe"},
        ]
    )


async def refused(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, open_timeout=5, **kwargs)
    status: int = info.value.response.status_code
    return status


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """geotrack's own records (websockets' debug lines show requests, as `serve` never does)."""
    return [r for r in caplog.records if r.name.startswith("geotrack")]


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in ours(caplog) if r.getMessage().startswith("refused ")]


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in ours(caplog))


def test_each_refused_handshake_is_logged_with_peer_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with running_relay(
            tmp_path / "db",
            tokens=tokens(),
            max_connections=1,  # every refused handshake leaves room for the next
            allow_origins=("https://map.example",),
        ) as relay:
            url = relay.url
            assert await refused(f"{url}/subscribe?token={WRONG}") == 401
            assert (
                await refused(
                    f"{url}/subscribe", additional_headers={"Authorization": f"Bearer {WRONG}"}
                )
                == 401
            )
            assert await refused(f"{url}/publish?token={SUB}") == 403
            assert await refused(f"{url}/nowhere?token={WRONG}") == 404
            assert await refused(f"{url}/subscribe?token={SUB}&colour=red") == 400
            assert (
                await refused(
                    f"{url}/subscribe?token={SUB}",
                    additional_headers={"Origin": "https://evil.example"},
                )
                == 403
            )
            held = await subscriber(relay, f"token={SUB}")
            assert await refused(f"{url}/subscribe?token={SUB}") == 503
            await held.close()
            # Plain HTTP, no WebSocket upgrade: websockets' own refusal.
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(f"GET /subscribe?token={WRONG} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 4")
            writer.close()

    arun(main())
    lines = refusal_lines(caplog)
    peer = r"refused handshake from 127\.0\.0\.1:\d+: "
    expected = [
        peer + "401 a valid token is required",
        peer + "401 a valid token is required",
        peer + "403 token 'sub' may not publish",
        peer + "404 no such endpoint '/nowhere'",
        peer + "400 colour: unknown parameter",
        peer + "403 .*Origin",
        peer + "503 too many connections",
        peer + "4\\d\\d .*",
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.match(pattern, line), (pattern, line)
    # Never the token, nor the query string that carried it.
    assert WRONG not in logged_text(caplog) and SUB not in logged_text(caplog)


def test_a_handshake_timeout_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with running_relay(tmp_path / "db", handshake_timeout=0.3) as relay:
            # A port probe that connects and leaves says nothing ...
            _, probe = await asyncio.open_connection("127.0.0.1", relay.port)
            probe.close()
            # ... a client that never completes its request is reported.
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(f"GET /publish?token={WRONG} HTTP/1.1\r\nHost: x\r\n".encode())
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await asyncio.sleep(0.05)

    arun(main())
    lines = refusal_lines(caplog)
    assert len(lines) == 1, lines
    assert re.match(
        r"refused handshake from 127\.0\.0\.1:\d+: timeout no handshake within 0\.3 s", lines[0]
    )
    assert WRONG not in logged_text(caplog)


def test_plain_ws_on_the_tls_port_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    async def main() -> None:
        async with running_relay(tmp_path / "db", ssl=server_ctx) as relay:
            plain = relay.url.replace("wss://", "ws://")
            with pytest.raises(Exception):  # noqa: B017,PT011 - whatever the client makes of it
                await connect(f"{plain}/subscribe?token={WRONG}", open_timeout=2)
            await asyncio.sleep(0.1)

    arun(main())
    lines = refusal_lines(caplog)
    assert len(lines) == 1, lines
    assert "tls TLS handshake failed: plain HTTP on the TLS port" in lines[0]
    assert WRONG not in logged_text(caplog)


def test_a_flood_of_refused_handshakes_logs_a_bounded_number_of_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with running_relay(tmp_path / "db", tokens=tokens(), refusals_logged=5) as relay:
            for _ in range(60):
                assert await refused(f"{relay.url}/subscribe?token={WRONG}") == 401

    arun(main())
    lines = refusal_lines(caplog)
    # Five lines, then one count of the rest (written at the end of the interval, or at
    # the latest when the relay stops).
    assert len(lines) == 5, lines
    suppressed = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
    assert suppressed == ["... and 55 more refused handshakes suppressed"]
    assert WRONG not in logged_text(caplog)
