"""The relay's fence worker on a real SQLite store: retries, saved states, reloads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from geotrack.errors import StoreError
from geotrack.relay.fencing import Fencing
from geotrack.schema import Event, FenceState, Position, ms_to_ts
from geotrack.store.sqlite import SQLiteStore
from tests.conftest import StoreFactory
from tests.factories import T0
from tests.relay_helpers import arun

SQUARE = [[13.395, 52.495], [13.405, 52.495], [13.405, 52.505], [13.395, 52.505], [13.395, 52.495]]


def write_fences(path: Path, *names: str) -> Path:
    features = [
        {
            "type": "Feature",
            "properties": {"name": name},
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
        }
        for name in names
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def at(s: int, lon: float) -> Position:
    return Position(device="van", lat=52.5, lon=lon, ts=ms_to_ts(T0 + s * 1000))


class FlakyStore(SQLiteStore):
    """Fails the first ``failures`` event writes, as an unreachable store would."""

    failures = 2

    def write_events(
        self,
        events: Sequence[Event],
        origin: str | None = None,
        *,
        states: Sequence[FenceState] = (),
        cursor: tuple[str, str] | None = None,
    ) -> list[bool]:
        if events and self.failures:
            self.failures -= 1
            raise StoreError("database is locked")
        return super().write_events(events, origin, states=states, cursor=cursor)


def test_events_are_retried_until_stored_and_states_saved(tmp_path: Path) -> None:
    path = write_fences(tmp_path / "fences.geojson", "depot")

    async def main() -> None:
        with FlakyStore(tmp_path / "db") as store:
            fencing = Fencing.from_file(store, path, 0.0, "relay-test")
            await fencing.start()
            store.write([at(0, 13.30), at(1, 13.40)])
            store.write([at(2, 13.41)])
            await fencing.stop()
            assert fencing.failures == 2
            assert [(e.type, e.ts) for e in store.query_events()] == [
                ("enter", ms_to_ts(T0 + 1000)),
                ("exit", ms_to_ts(T0 + 2000)),
            ]
            assert store.fence_states() == [FenceState("van", "depot", False, None, T0 + 2000)]

    arun(main())


def test_reload_keeps_the_fences_in_use_when_the_file_is_bad(tmp_path: Path) -> None:
    path = write_fences(tmp_path / "fences.geojson", "depot")

    async def main() -> None:
        with SQLiteStore(tmp_path / "db") as store:
            fencing = Fencing.from_file(store, path, 0.0, "relay-test")
            await fencing.start()
            path.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}')
            assert not await fencing.reload()
            assert [f.name for f in fencing.fences] == ["depot"]
            write_fences(path, "depot", "annex")
            assert await fencing.reload()
            assert [f.name for f in fencing.fences] == ["depot", "annex"]
            store.write([at(0, 13.40)])
            await fencing.stop()
            assert sorted(e.fence for e in store.query_events()) == ["annex", "depot"]

    arun(main())


def test_a_restart_takes_the_saved_states(tmp_path: Path) -> None:
    path = write_fences(tmp_path / "fences.geojson", "depot")

    async def run(*fixes: Position) -> list[Event]:
        with SQLiteStore(tmp_path / "db") as store:
            fencing = Fencing.from_file(store, path, 30.0, "relay-test")
            await fencing.start()
            store.write(list(fixes))
            await asyncio.sleep(0)
            await fencing.stop()
            return list(store.query_events())

    # In for 30 s (enter), then out at 40 s: the exit waits for its dwell across the restart.
    assert [e.type for e in arun(run(at(0, 13.40), at(30, 13.40), at(40, 13.30)))] == ["enter"]
    events = arun(run(at(35, 13.30), at(70, 13.30)))  # 35 s is late: before 40 s
    assert [(e.type, e.ts) for e in events] == [
        ("enter", ms_to_ts(T0 + 30_000)),
        ("exit", ms_to_ts(T0 + 70_000)),
    ]


def test_the_first_start_evaluates_from_then_on(tmp_path: Path) -> None:
    path = write_fences(tmp_path / "fences.geojson", "depot")

    async def main() -> None:
        with SQLiteStore(tmp_path / "db") as store:
            store.write([at(0, 13.30), at(1, 13.40)])  # before any fencing: not evaluated
            fencing = Fencing.from_file(store, path, 0.0, "relay-test")
            await fencing.start()
            assert store.saved_cursor("fences") == "sqlite:2"
            store.write([at(2, 13.30), at(3, 13.40)])
            await fencing.stop()
            assert [(e.type, e.ts) for e in store.query_events()] == [
                ("enter", ms_to_ts(T0 + 3000))
            ]
            assert store.saved_cursor("fences") == "sqlite:4"

    arun(main())


def test_what_was_stored_while_no_fencing_ran_is_evaluated_at_the_next_start(
    tmp_path: Path,
) -> None:
    """A relay killed before its worker evaluated (or one down while another wrote)."""
    path = write_fences(tmp_path / "fences.geojson", "depot")

    async def run(*fixes: Position) -> list[tuple[str, str]]:
        with SQLiteStore(tmp_path / "db") as store:
            fencing = Fencing.from_file(store, path, 0.0, "relay-test")
            await fencing.start()
            store.write(list(fixes))
            await fencing.stop()
            return [(e.type, e.ts) for e in store.query_events()]

    assert arun(run(at(0, 13.30))) == []
    with SQLiteStore(tmp_path / "db") as store:  # stored, never evaluated
        store.write([at(1, 13.40), at(2, 13.40)])
    assert arun(run(at(3, 13.30))) == [
        ("enter", ms_to_ts(T0 + 1000)),
        ("exit", ms_to_ts(T0 + 3000)),
    ]
    assert len(arun(run())) == 2  # nothing evaluated twice


def test_resuming_after_a_stop_without_evaluation_on_every_backend(
    tmp_path: Path, store_factory: StoreFactory
) -> None:
    """The saved cursor resumes the evaluation on each backend (a kill -9 leaves the same)."""
    path = write_fences(tmp_path / "fences.geojson", "depot")

    async def main() -> None:
        store = store_factory()
        fencing = Fencing.from_file(store, path, 0.0, "relay-a")
        await fencing.start()
        store.write([at(0, 13.30)])
        await fencing.stop()
        store.write([at(1, 13.40)])  # while no fencing runs
        again = Fencing.from_file(store, path, 0.0, "relay-b")
        await again.start()
        store.write([at(2, 13.30)])
        await again.stop()
        assert [(e.type, e.ts) for e in store.query_events()] == [
            ("enter", ms_to_ts(T0 + 1000)),
            ("exit", ms_to_ts(T0 + 2000)),
        ]

    arun(main())
