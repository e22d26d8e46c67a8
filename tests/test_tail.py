"""The logic behind ``geotrack tail``: where a follow starts, and the command to resume."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from geotrack.errors import InvalidParameter
from geotrack.store import Change, open_store
from geotrack.store.mongo import encode_cursor
from geotrack.tail import follow, parse_since, resume_command
from tests.factories import pos

NOW = 1_764_072_000_000  # 2025-11-25T12:00:00Z
SQLITE = "sqlite:///geotrack.db"
MONGO = "mongodb://127.0.0.1/fleet"


def test_times_and_ages_are_unix_milliseconds() -> None:
    assert parse_since("15m", SQLITE, NOW) == NOW - 15 * 60_000
    assert parse_since("2025-11-25T11:00:00Z", MONGO, NOW) == NOW - 3_600_000
    assert parse_since("1764072000", SQLITE, NOW) == NOW


def test_a_cursor_of_the_store_is_kept_as_it_is() -> None:
    assert parse_since("sqlite:42", SQLITE, NOW) == "sqlite:42"
    cursor = encode_cursor({"_data": "8263"})
    assert parse_since(cursor, "mongodb+srv://cluster.example.com/x", NOW) == cursor


@pytest.mark.parametrize(
    ("since", "url", "says"),
    [
        ("sqlite:x1", SQLITE, "--since: 'sqlite:x1' is not a SQLite cursor"),
        ("mongo:!!", MONGO, "--since: 'mongo:!!' is not a MongoDB cursor"),
        ("sqlite:5", MONGO, "is a cursor of a SQLite store, and the store is MongoDB"),
        ("mongo:AAAA", SQLITE, "is a cursor of a MongoDB store, and the store is SQLite"),
        ("tomorrow", SQLITE, "--since: expected an RFC 3339"),
    ],
)
def test_bad_starts_name_the_option(since: str, url: str, says: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_since(since, url, NOW)
    assert caught.value.name == "--since"
    assert says in str(caught.value)


def test_resume_command_repeats_the_filters_quoted() -> None:
    command = resume_command(
        "sqlite:7", ["bus-12", "tram:3"], json=True, store="sqlite:////var/lib/my store.db"
    )
    assert command == (
        "geotrack tail --store 'sqlite:////var/lib/my store.db' --device bus-12 "
        "--device tram:3 --json --since sqlite:7"
    )
    assert shlex.split(command)[-2:] == ["--since", "sqlite:7"]
    assert resume_command("sqlite:0") == "geotrack tail --since sqlite:0"


def test_a_stop_asked_for_while_emitting_ends_right_after_that_change(tmp_path: Path) -> None:
    # What tail's first Ctrl-C does: the cursor returned is exactly past the last change
    # emitted, even in the middle of a batch, so the resume command repeats nothing.
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.write([pos(i=i) for i in range(10)])
        emitted: list[Change] = []

        def emit(change: Change) -> None:
            emitted.append(change)

        cursor = follow(store, emit, since="sqlite:0", running=lambda: len(emitted) < 3)
        assert [c.position for c in emitted] == [pos(i=i) for i in range(3)]
        assert cursor == emitted[-1].cursor == "sqlite:3"
        rest: list[Change] = []
        follow(store, rest.append, since=cursor, running=lambda: len(rest) < 7)
        assert [c.position for c in rest] == [pos(i=i) for i in range(3, 10)]


def test_events_resume_command_and_a_stop_mid_batch(tmp_path: Path) -> None:
    from geotrack.schema import Event, ms_to_ts
    from geotrack.store import EventChange
    from geotrack.tail import follow_events, format_event_json, format_event_line

    command = resume_command("sqlite:4", ["van"], store=None, events=True, fences=["north gate"])
    assert command == "geotrack tail --events --device van --fence 'north gate' --since sqlite:4"
    events = [
        Event(
            "enter" if i % 2 == 0 else "exit",
            "van",
            "depot",
            ms_to_ts(1_700_000_000_000 + i),
            1.0,
            2.0,
        )
        for i in range(6)
    ]
    assert format_event_json(events[0]).startswith('{"type":"enter","device":"van","fence":"depot"')
    assert format_event_line(events[1]).split()[1:4] == ["van", "exit", "depot"]
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.write_events(events)
        emitted: list[EventChange] = []
        cursor = follow_events(
            store, emitted.append, since="sqlite:0", running=lambda: len(emitted) < 2
        )
        assert [c.event for c in emitted] == events[:2] and cursor == "sqlite:2"
        rest: list[EventChange] = []
        follow_events(store, rest.append, since=cursor, running=lambda: len(rest) < 4)
        assert [c.event for c in rest] == events[2:]
