"""``geotrack prune`` end to end: real processes on a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geotrack.schema import Event, ms_to_ts
from geotrack.store import open_store
from tests.cli_helpers import background, geotrack, only_error
from tests.factories import T0, pos

CUT = ms_to_ts(T0 + 3000)  # fixes 0, 1 and 2 of each device are older


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A directory whose default store holds walk (5 fixes) and bus-3 (1,500 fixes)."""
    with open_store(f"sqlite:///{tmp_path / 'geotrack.db'}") as store:
        store.write([pos("walk", i) for i in range(5)] + [pos("bus-3", i) for i in range(1500)])
    return tmp_path


def _keys(db: Path) -> list[tuple[str, int]]:
    with open_store(f"sqlite:///{db}", create=False) as store:
        return [(p.device, (p.ts_ms - T0) // 1000) for p in store.query()]


def test_dry_run_counts_then_prune_deletes_per_device(stored: Path) -> None:
    before = _keys(stored / "geotrack.db")
    result = geotrack("prune", "--before", CUT, "--dry-run", cwd=stored)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == (
        f"bus-3  3\nwalk   3\nwould delete 6 positions of 2 devices with fixes before {CUT}\n"
    )
    assert _keys(stored / "geotrack.db") == before

    result = geotrack("prune", "--before", CUT, cwd=stored)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == (
        f"bus-3  3\nwalk   3\ndeleted 6 positions of 2 devices with fixes before {CUT}\n"
    )
    assert _keys(stored / "geotrack.db") == [k for k in before if k[1] >= 3]

    result = geotrack("prune", "--before", CUT, cwd=stored)
    assert result.stdout == f"nothing to delete: no fixes before {CUT}\n"


def test_many_batches_and_one_device(stored: Path) -> None:
    # 1,497 of bus-3's fixes go (more than one batch); walk is left alone.
    cut = ms_to_ts(T0 + 1497_000)
    result = geotrack("prune", "--before", cut, "-d", "bus-3", "-d", "ghost", "-q", cwd=stored)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"deleted 1,497 positions of 1 device with fixes before {cut}\n"
    keys = _keys(stored / "geotrack.db")
    assert keys == [("bus-3", 1497), ("bus-3", 1498), ("bus-3", 1499)] + [
        ("walk", i) for i in range(5)
    ]
    result = geotrack("prune", "--before", cut, "--device", "ghost", cwd=stored)
    assert result.stdout == f"nothing to delete: no fixes of ghost before {cut}\n"


def test_bad_input_is_one_error_line_and_changes_nothing(stored: Path, tmp_path: Path) -> None:
    before = _keys(stored / "geotrack.db")
    assert only_error(geotrack("prune", "--before", "2099-01-01T00:00:00Z", cwd=stored)) == (
        "Error: --before: 2099-01-01T00:00:00.000Z is in the future: that would delete "
        "fixes being stored now"
    )
    assert only_error(geotrack("prune", "--before", "soon", cwd=stored)).startswith(
        "Error: --before: expected an RFC 3339 time"
    )
    missing = tmp_path / "none"
    missing.mkdir()
    assert only_error(geotrack("prune", "--before", "90d", cwd=missing)).startswith(
        "Error: no store at "
    )
    assert list(missing.iterdir()) == []  # no store was created to prune
    assert only_error(geotrack("prune", cwd=stored)) == (
        "Error: --before: say which fixes to delete, e.g. --before 90d"
    )
    assert _keys(stored / "geotrack.db") == before


def test_tail_resumes_from_a_cursor_across_a_prune(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'geotrack.db'}"
    with open_store(url) as store:
        store.write([pos(i=0)])
        with store.follow() as feed:
            store.write([pos(i=1)])
            changes: list[object] = []
            while not changes:
                changes = list(feed.poll(1.0))
            cursor = feed.cursor
        store.write([pos(i=2), pos(i=3)])
    # The cursor's row and the one before it go; fixes 2 and 3 stay.
    result = geotrack("prune", "--before", ms_to_ts(T0 + 2000), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with background("tail", "--json", "--since", cursor, cwd=tmp_path) as child:
        got = child.out.wait(lambda lines: len(lines) >= 2)
        with open_store(url) as store:
            store.write([pos(i=4)])
        got = child.out.wait(lambda lines: len(lines) >= 3)
    assert [json.loads(line)["ts"] for line in got] == [pos(i=i).ts for i in (2, 3, 4)]


def test_old_geofence_events_go_with_the_positions(stored: Path) -> None:
    with open_store(f"sqlite:///{stored / 'geotrack.db'}") as store:
        store.write_events(
            [Event("enter", "walk", "park", ms_to_ts(T0 + i * 1000), 52.5, 13.4) for i in (1, 4)]
        )
    result = geotrack("prune", "--before", CUT, "-q", cwd=stored)
    assert result.stdout == (
        f"deleted 6 positions of 2 devices and 1 geofence event with fixes before {CUT}\n"
    )
    with open_store(f"sqlite:///{stored / 'geotrack.db'}", create=False) as store:
        assert [e.ts for e in store.query_events()] == [ms_to_ts(T0 + 4000)]
