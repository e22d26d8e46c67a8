"""``geotrack serve --retain``: a real relay process pruning a real SQLite file."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from geotrack.errors import InvalidParameter
from geotrack.relay import RelayConfig
from geotrack.relay.retention import Retention
from geotrack.schema import Position
from geotrack.store import open_store
from tests.conftest import free_port
from tests.relay_helpers import Lines, arun, collect, relay_process, roundtrip

DAY = 86_400


def _fix(device: str, ts: float) -> dict[str, object]:
    return {"device": device, "lat": 52.5, "lon": 13.4, "ts": round(ts, 3)}


def test_a_relay_with_retain_deletes_old_fixes_and_keeps_new_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    now = time.time()
    with open_store(url) as store:
        store.write(
            [Position(device="old", lat=1, lon=2, ts=now - 3 * DAY + i) for i in range(3)]
            + [Position(device="kept", lat=1, lon=2, ts=now - 3600 + i) for i in range(2)]
        )
    port = free_port()
    with relay_process(url, port, "--retain", "1d", "--retain-every", "0.2s") as proc:
        assert proc.stdout is not None
        log = Lines(proc.stdout)
        # At start: the three old fixes go, the recent ones stay.
        log.wait(
            lambda lines: any("retention: deleted 3 positions of 1 device" in x for x in lines)
        )

        async def publish_and_watch() -> list[dict[str, object]]:
            base = f"ws://127.0.0.1:{port}"
            async with (
                connect(f"{base}/subscribe", open_timeout=5) as sub,
                connect(f"{base}/publish", open_timeout=5) as pub,
            ):
                # A fix from two days ago is stored and delivered like any other, then
                # deleted by the next check; the subscriber stays connected throughout.
                first = [_fix("live", time.time()), _fix("late", time.time() - 2 * DAY)]
                assert (await roundtrip(pub, first))["stored"] == 2
                got = await collect(sub, 2)
                for _ in range(100):
                    if sum("retention: deleted 1 position" in x for x in log.lines) >= 1:
                        break
                    await asyncio.sleep(0.1)
                second = [_fix("live", time.time() + 0.5)]
                assert (await roundtrip(pub, second))["stored"] == 1
                return got + await collect(sub, 1)

        got = arun(publish_and_watch())
        assert [g["device"] for g in got] == ["live", "late", "live"]
        assert any("retention: deleted 1 position of 1 device" in x for x in log.lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        log.join()
    assert "Traceback" not in log.text
    with open_store(url, create=False) as store:
        assert [p.device for p in store.query()] == ["kept", "kept", "live", "live"]


def test_retention_checks_and_counts_and_stops_between_batches(tmp_path: Path) -> None:
    now = time.time()
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.write([Position(device="d", lat=1, lon=2, ts=now - 2 * DAY + i) for i in range(50)])
        store.write([Position(device="d", lat=1, lon=2, ts=now)])
        retention = Retention(store, keep=DAY, every=3600)
        assert retention.check() == {"d": 50}
        assert retention.check() == {}
        assert (retention.pruned, retention.checks) == (50, 2)

        async def started_then_stopped() -> None:
            store.write([Position(device="e", lat=1, lon=2, ts=now - 2 * DAY)])
            retention.start()
            for _ in range(100):
                if retention.checks == 3:
                    break
                await asyncio.sleep(0.02)
            await asyncio.wait_for(retention.stop(), 10)  # not the hour until the next check

        arun(started_then_stopped())
        assert retention.pruned == 51
        assert [p.device for p in store.query()] == ["d"]


@pytest.mark.parametrize(("retain", "says"), [(30.0, "keep at least 1m"), (0.0, "at least 1m")])
def test_a_retention_under_a_minute_is_refused(retain: float, says: str) -> None:
    with pytest.raises(InvalidParameter, match=says) as caught:
        RelayConfig(retain=retain)
    assert caught.value.name == "--retain"


def test_a_bad_retain_is_one_error_line(tmp_path: Path) -> None:
    from tests.cli_helpers import geotrack, only_error

    line = only_error(geotrack("serve", "--retain", "soon", cwd=tmp_path))
    assert line.startswith("Error: --retain: expected a duration like 90s")
    line = only_error(geotrack("serve", "--retain", "30s", cwd=tmp_path))
    assert line == "Error: --retain: keep at least 1m of fixes, got 30 s"
    assert list(tmp_path.iterdir()) == []  # refused before any store was made
