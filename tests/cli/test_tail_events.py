"""``geotrack tail --events`` end to end: a real process following a real SQLite file's
events, filtered, stopped, and resumed with the command it prints."""

from __future__ import annotations

import json
import shlex
import signal
import time
from pathlib import Path

from geotrack.schema import Event, ms_to_ts
from geotrack.store import open_store
from tests.cli.test_tail import stop, tail
from tests.cli_helpers import geotrack, only_error
from tests.factories import T0_S


def event(i: int, kind: str = "enter", device: str = "van", fence: str = "depot") -> Event:
    return Event(kind, device, fence, ms_to_ts((T0_S + i) * 1000), 52.5, 13.4 + i / 1000)  # type: ignore[arg-type]


def as_json(e: Event) -> dict[str, object]:
    return {
        "type": e.type,
        "device": e.device,
        "fence": e.fence,
        "ts": e.ts,
        "lat": e.lat,
        "lon": e.lon,
    }


def test_follows_filters_and_resumes_exactly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracks.db'}"
    with open_store(url) as store:
        store.write_events([event(0), event(1, "exit"), event(2, fence="yard")])
    args = ("--events", "--store", url, "--device", "van", "--fence", "depot", "--json")
    # --since a store time: what is stored already replays first, then it goes live.
    with tail(*args, "--since", "1h", cwd=tmp_path) as (proc, out):
        out.wait(lambda ls: len(ls) >= 2)
        with open_store(url) as store:
            store.write_events([event(3, device="bus"), event(4, fence="yard"), event(5)])
        lines = out.wait(lambda ls: len(ls) >= 3)
        time.sleep(0.3)  # anything filtered out would show up by now
        assert [json.loads(x) for x in out.lines] == [
            as_json(e) for e in (event(0), event(1, "exit"), event(5))
        ]
        err = stop(proc, signal.SIGINT, tmp_path)
    assert proc.returncode == 0, err
    (hint,) = [line for line in err.splitlines() if line.startswith("resume with: ")]
    command = shlex.split(hint.removeprefix("resume with: "))
    assert command == [
        "geotrack", "tail", "--events", "--store", url,
        "--device", "van", "--fence", "depot", "--json", "--since", "sqlite:6",
    ]  # fmt: skip
    with open_store(url) as store:
        store.write_events([event(6, "exit"), event(7, device="bus"), event(8)])
    with tail(*command[2:], cwd=tmp_path) as (again, out2):
        lines = out2.wait(lambda ls: len(ls) >= 2)
        time.sleep(0.3)
        assert [json.loads(x) for x in out2.lines] == [as_json(event(6, "exit")), as_json(event(8))]
        stop(again, signal.SIGTERM, tmp_path)
    assert lines


def test_readable_lines(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracks.db'}"
    open_store(url).close()
    with tail("--events", "--store", url, cwd=tmp_path) as (proc, out):
        # Starting from now: write until the tail shows what is written after it opened.
        deadline = time.monotonic() + 20
        i = 0
        while not out.lines:
            assert time.monotonic() < deadline, "tail --events printed nothing"
            with open_store(url) as store:
                store.write_events([event(i, "exit", "north-gate")])
            i += 1
            time.sleep(0.1)
        err = stop(proc, signal.SIGINT, tmp_path)
    assert "following the events of" in err
    first = out.lines[0].split()
    assert first[1:4] == ["north-gate", "exit", "depot"]
    assert first[0].startswith("2025-11-25T12:00:")


def test_fence_needs_events(tmp_path: Path) -> None:
    line = only_error(geotrack("tail", "--fence", "depot", cwd=tmp_path))
    assert line == "Error: --fence: give --events too: positions have no fence"
    line = only_error(geotrack("export", "--fence", "depot", cwd=tmp_path))
    assert line == "Error: --fence: give --events too: positions have no fence"
