"""The client API: a publisher that loses nothing across relay restarts, a subscriber that
misses nothing across reconnects."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from geotrack.client import Backoff, Publisher, RelayUnreachable, endpoint, subscribe
from geotrack.errors import RelayError
from geotrack.schema import Position
from geotrack.store import open_store
from tests.conftest import free_port
from tests.factories import pos
from tests.relay_helpers import arun, running_relay

FAST = Backoff(base=0.02, cap=0.2, give_up_after=20)


def test_endpoint_urls() -> None:
    assert endpoint("ws://h:1", "/publish") == "ws://h:1/publish"
    assert endpoint("ws://h:1/", "/publish") == "ws://h:1/publish"
    assert endpoint("wss://h:1/publish", "/publish") == "wss://h:1/publish"
    assert endpoint("ws://h:1?token=t", "/subscribe", {"device": ["a", "b"]}) == (
        "ws://h:1/subscribe?device=a&device=b&token=t"
    )
    with pytest.raises(RelayError, match="ws:// or wss://"):
        endpoint("http://h:1", "/publish")


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(base=0.5, cap=4.0)
    delays = [b.delay(n) for n in range(12) for _ in range(20)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # jittered, not a fixed schedule


def test_publisher_survives_relay_restarts_exactly_once(tmp_path: Path) -> None:
    """Stop the relay twice in the middle of a stream: every position is stored once."""
    db = tmp_path / "db"
    port = free_port()
    total = 3000

    async def main() -> None:
        relay_cm = running_relay(db, port=port)
        await relay_cm.__aenter__()
        pub = Publisher(f"ws://127.0.0.1:{port}", window=8, backoff=FAST)
        await pub.connect()
        for start in range(0, total, 50):
            await pub.send([pos("r", i) for i in range(start, start + 50)])
            if start in (1000, 2000):  # an outage: the relay goes away and comes back
                await relay_cm.__aexit__(None, None, None)
                await asyncio.sleep(0.3)
                relay_cm = running_relay(db, port=port)
                await relay_cm.__aenter__()
        await pub.flush()
        await pub.close()
        await relay_cm.__aexit__(None, None, None)
        assert pub.reconnects == 2
        assert pub.stats.stored + pub.stats.duplicates >= total
        assert pub.stats.rejected == 0

    arun(main())
    with open_store(f"sqlite:///{db}") as store:
        keys = [p.key for p in store.query()]
    assert len(keys) == len(set(keys)) == total


def test_publisher_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()

    async def main() -> None:
        async with running_relay(tmp_path / "db", port=port) as relay:
            pub = Publisher(relay.url, backoff=Backoff(base=0.01, cap=0.05, give_up_after=0.5))
            await pub.connect()
            await (await pub.send([pos("g", 0)]))
        # The relay is gone for good: a send waits for the reconnect, which gives up.
        with pytest.raises(RelayError, match="gave up reconnecting"):
            await pub.send([pos("g", 1)])
        with pytest.raises(RelayError, match="gave up reconnecting"):
            await pub.flush()
        assert pub.unacked == []  # nothing was taken that is not stored
        await pub.close()

    arun(main())


def test_first_connection_is_not_retried() -> None:
    async def main() -> None:
        with pytest.raises(RelayError, match="cannot reach relay"):
            await Publisher(f"ws://127.0.0.1:{free_port()}").connect()

    arun(main())


def test_subscriber_resubscribes_and_misses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db"
    port = free_port()

    async def main() -> None:
        got: list[Position] = []
        relay_cm = running_relay(db, port=port)
        relay = await relay_cm.__aenter__()

        async def consume() -> None:
            async for batch in subscribe(f"ws://127.0.0.1:{port}", ["s"], backoff=FAST):
                got.extend(batch)
                if len(got) >= 600:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        async with Publisher(relay.url, backoff=FAST) as pub:
            await pub.send([pos("s", i) for i in range(300)])
        # The relay restarts; meanwhile positions are stored by another relay process
        # (here: straight into the store), and more arrive after it is back.
        await relay_cm.__aexit__(None, None, None)
        with open_store(f"sqlite:///{db}") as store:
            store.write([pos("s", i) for i in range(300, 450)])
        relay_cm = running_relay(db, port=port)
        relay = await relay_cm.__aenter__()
        await asyncio.sleep(0.5)
        async with Publisher(relay.url, backoff=FAST) as pub:
            await pub.send([pos("s", i) for i in range(450, 600)])
        await asyncio.wait_for(consumer, 20)
        await relay_cm.__aexit__(None, None, None)
        keys = [p.key for p in got]
        assert len(keys) == len(set(keys)) == 600

    arun(main())


def test_connect_can_wait_for_a_relay_that_is_not_up_yet(tmp_path: Path) -> None:
    port = free_port()
    heard: list[RelayUnreachable] = []

    async def main() -> None:
        pub = Publisher(f"ws://127.0.0.1:{port}", backoff=FAST)
        connecting = asyncio.create_task(pub.connect(wait=True, on_wait=heard.append))
        await asyncio.sleep(0.5)
        assert not connecting.done()
        async with running_relay(tmp_path / "db", port=port):
            await asyncio.wait_for(connecting, 20)
            await (await pub.send([pos("late", 0)]))
            await pub.close()
        assert pub.stats.stored == 1

    arun(main())
    assert len(heard) == 1  # said once what it waits for, not on every attempt
    assert heard[0].url == f"ws://127.0.0.1:{port}/publish"
    assert "refused" in heard[0].reason.lower()


def test_waiting_for_a_relay_gives_up_after_the_backoff_limit() -> None:
    async def main() -> None:
        pub = Publisher(
            f"ws://127.0.0.1:{free_port()}",
            backoff=Backoff(base=0.01, cap=0.05, give_up_after=0.3),
        )
        with pytest.raises(RelayError, match=r"cannot reach relay .*; gave up waiting after"):
            await pub.connect(wait=True)

    arun(main())


def _tls_relay_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    return server_ctx


@pytest.mark.parametrize(
    ("issue", "says"),
    [
        (
            {"not_after": datetime.now(UTC) - timedelta(days=1)},
            "the relay's certificate has expired: renew it",
        ),
        (
            {"not_before": datetime.now(UTC) + timedelta(days=2)},
            "the relay's certificate is not valid yet",
        ),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_certificate_problems_say_what_is_wrong(
    tmp_path: Path, issue: dict[str, datetime], says: str
) -> None:
    """Bug 6: every verification failure used to end in `give the CA with --cafile`."""
    ca = trustme.CA()
    server_ctx = _tls_relay_context(ca.issue_cert("127.0.0.1", **issue))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> str:
        async with running_relay(tmp_path / "db", ssl=server_ctx) as relay:
            with pytest.raises(RelayError) as failure:
                await Publisher(relay.url, ssl_context=client_ctx).connect(wait=True)
        return str(failure.value)

    message = arun(main())
    assert says in message, message
    assert "--cafile" not in message, message
