"""The model and the drawing behind ``geotrack watch``: rates, staleness, order, rows that fit."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import pytest
from rich.console import Console

from geotrack.errors import InvalidParameter, NotATerminal, StoreNotFound
from geotrack.watch import (
    Board,
    WatchConfig,
    format_age,
    format_heading,
    render,
    watch,
)
from tests.factories import T0_S, pos

#: A clock for the board: T0 in wall-clock seconds.
NOW = float(T0_S)


def text(board: Board, now: float, columns: int = 100, **kwargs: object) -> str:
    """What a person sees of the board on a terminal ``columns`` wide, colors aside."""
    console = Console(width=columns, record=True, color_system=None, file=io.StringIO())
    console.print(render(board, now, **kwargs))  # type: ignore[arg-type]
    return console.export_text()


def styled(board: Board, now: float, **kwargs: object) -> str:
    """The same with the ANSI styles kept, to see what is dimmed."""
    console = Console(width=100, record=True, color_system="standard", file=io.StringIO())
    console.print(render(board, now, **kwargs))  # type: ignore[arg-type]
    return console.export_text(styles=True)


def row(screen: str, device: str) -> str:
    (line,) = [line for line in screen.splitlines() if line.strip().startswith(device + " ")]
    return line


def test_a_device_appears_with_its_last_fix() -> None:
    board = Board(stale=120, started=NOW)
    board.add([pos("car-1", 0, speed=10.0, heading=270.0)], NOW)
    board.add([pos("car-1", 1, speed=12.5, heading=275.0)], NOW + 1)
    (state,) = board.rows()
    assert state.device == "car-1"
    assert state.last == pos("car-1", 1, speed=12.5, heading=275.0)
    assert state.total == 2
    assert state.per_minute(NOW + 1) == 2
    line = row(text(board, NOW + 3), "car-1")
    # time, age from the fix's own time, lat, lon, km/h, heading, /min, total
    assert re.search(r"12:00:01\s+2s\s+52\.50010\s+13\.40010\s+45\s+275° W\s+2\s+2$", line), line


def test_a_late_older_fix_counts_but_does_not_replace_the_last() -> None:
    board = Board(started=NOW)
    board.add([pos("car-1", 5)], NOW)
    board.add([pos("car-1", 2)], NOW + 1)
    (state,) = board.rows()
    assert state.last == pos("car-1", 5)
    assert state.total == 2
    assert state.heard == NOW + 1


def test_fixes_per_minute_count_the_last_minute_only() -> None:
    board = Board(started=NOW)
    for i in range(30):  # one every 2 s for a minute
        board.add([pos("car-1", i)], NOW + 2 * i)
    (state,) = board.rows()
    assert state.per_minute(NOW + 58) == 30
    assert state.per_minute(NOW + 90) == 14  # fixes of the last 60 s: t = 32..58
    assert state.per_minute(NOW + 200) == 0
    assert state.total == 30


def test_the_overall_rate_is_over_the_last_ten_seconds() -> None:
    board = Board(started=NOW)
    for second in range(20):
        board.add([pos(f"d{k}", second) for k in range(5)], NOW + second)
    assert board.total == 100
    assert board.rate(NOW + 19) == pytest.approx(5.0)
    assert board.rate(NOW + 25) == pytest.approx(2.0)  # t = 16..19 within the last 10 s
    # Before ten seconds have passed, since the start.
    early = Board(started=NOW)
    early.add([pos("a", i) for i in range(6)], NOW + 1)
    assert early.rate(NOW + 2) == pytest.approx(3.0)


def test_most_recent_fix_first_then_by_id() -> None:
    board = Board(started=NOW)
    board.add([pos("b", 1), pos("a", 1), pos("old", 0), pos("new", 9)], NOW)
    assert [s.device for s in board.rows()] == ["new", "a", "b", "old"]


def test_a_device_goes_stale_when_nothing_arrives_for_the_stale_time() -> None:
    board = Board(stale=60, started=NOW)
    board.add([pos("car-1", 0), pos("bus-1", 0)], NOW)
    board.add([pos("bus-1", 50)], NOW + 50)
    assert board.stale_count(NOW + 60) == 0
    assert board.stale_count(NOW + 61) == 1
    stale, live = {s.device: s for s in board.rows()}["car-1"], board.rows()[0]
    assert stale.stale(NOW + 61, 60) and not live.stale(NOW + 61, 60)
    screen = text(board, NOW + 61)
    assert "2 devices (1 live, 1 stale)" in screen
    drawn = styled(board, NOW + 61)
    assert "\x1b[2m" in row(drawn, "\x1b[2mcar-1"), "the stale row is dimmed"
    assert "\x1b[2m" not in row(drawn, "bus-1")


def test_a_replay_of_old_fixes_is_live_while_it_plays() -> None:
    """Staleness is about what arrives: a GPX replay's March fixes are not stale."""
    board = Board(stale=10, started=NOW)
    board.add([pos("walk", 0)], NOW + 86400 * 200)
    (state,) = board.rows()
    assert not state.stale(NOW + 86400 * 200 + 5, 10)
    assert format_age(state.age(NOW + 86400 * 200)) == "200d"


def test_devices_known_from_the_store_count_from_their_last_fix() -> None:
    board = Board(stale=120, started=NOW + 600)
    board.seed([pos("parked", 0), pos("moving", 590)], NOW + 600)
    assert board.total == 0
    assert [s.total for s in board.rows()] == [0, 0]
    assert [s.device for s in board.rows() if s.stale(NOW + 600, 120)] == ["parked"]
    board.add([pos("parked", 601)], NOW + 601)
    assert board.stale_count(NOW + 601) == 0


def test_the_header_has_totals_and_the_rate() -> None:
    board = Board(started=NOW)
    board.add([pos("a", 0), pos("b", 0)], NOW)
    board.add([pos("a", 1)], NOW + 1)
    screen = text(board, NOW + 1, source="ws://127.0.0.1:8765/subscribe")
    assert screen.startswith("2 devices (2 live, 0 stale) · 3 fixes · 3.0/s · 12:00:01 UTC\n")
    assert "ws://127.0.0.1:8765/subscribe  stale after 2m · q or Ctrl-C to quit" in screen
    empty = text(Board(started=NOW), NOW)
    assert empty.startswith("0 devices · 0 fixes · 0.0/s")
    assert "waiting for positions…" in empty


def test_rows_are_cut_to_the_height_with_a_count_of_the_rest() -> None:
    board = Board(started=NOW)
    board.add([pos(f"d{k:03}", k) for k in range(50)], NOW)
    screen = text(board, NOW + 60, height=20)
    lines = screen.rstrip("\n").splitlines()
    assert len(lines) <= 20
    assert lines[-1] == "… 35 more devices"
    shown = [line.split()[0] for line in lines if line.startswith("d0")]
    assert shown == [f"d{k:03}" for k in range(49, 34, -1)]  # the most recent 15
    assert "more" not in text(board, NOW + 60, height=60)


def test_on_80_columns_numbers_stay_whole_and_long_ids_give_way() -> None:
    board = Board(started=NOW)
    long_id = "a-very-long-device-identifier-01"
    board.add([pos(long_id, 0, lat=-45.123456, lon=-170.123456, speed=30.0, heading=300.0)], NOW)
    screen = text(board, NOW + 86400, columns=80, width=80)
    assert max(len(line) for line in screen.splitlines()) <= 80
    line = row(screen, "a-very-long…")
    assert line.split()[1:] == [
        "2025-11-25", "12:00", "1d", "-45.12346", "-170.12346", "108", "300°", "NW", "0", "1"
    ]  # fmt: skip


def test_a_snapshot_leaves_out_what_only_watching_measures() -> None:
    board = Board(started=NOW)
    board.seed([pos("a", 0, speed=1.0)], NOW + 5)
    screen = text(board, NOW + 5, live=False)
    assert "/min" not in screen and "total" not in screen and "fixes" not in screen
    assert re.search(r"^a\s+12:00:00\s+5s\s+52\.50000\s+13\.40000\s+4\s*$", screen, re.M), screen


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.4, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"),
     (86399, "23h59m"), (86400 * 3, "3d"), (-3, "in 3s")],
)  # fmt: skip
def test_ages(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown


def test_headings() -> None:
    assert format_heading(None) == ""
    assert format_heading(0) == "  0° N"
    assert format_heading(359) == "359° N"
    assert format_heading(135.2) == "135° SE"
    assert format_heading(359.7) == "  0° N"  # not "360° N"


def test_fix_times_of_another_day_show_the_date() -> None:
    board = Board(started=NOW)
    board.add([pos("a", 0)], NOW + 86400)
    assert "2025-11-25 12:00" in row(text(board, NOW + 86400), "a")


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({}, "--store: follow a relay (--url) or a store (--store)"),
        ({"store": "sqlite:///x.db", "refresh": 0}, "refresh: must be within 0.1..60"),
        ({"url": "ws://x", "store": "sqlite:///x.db"}, "not both"),
        ({"url": "http://127.0.0.1:8765"}, "--url: must start with ws:// or wss://"),
        ({"store": "sqlite:///x.db", "stale": 0}, "--stale: must be more than 0"),
        ({"url": "ws://127.0.0.1:1", "once": True}, "--once: prints what the store holds"),
    ],
)
def test_config_checks_itself(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidParameter, match=re.escape(says)):
        WatchConfig(**kwargs)  # type: ignore[arg-type]


def test_the_source_shown_carries_no_token() -> None:
    config = WatchConfig(url="wss://relay.example.com/subscribe?token=secret")
    assert config.source == "wss://relay.example.com/subscribe"


def test_the_live_view_needs_a_terminal(tmp_path: Path) -> None:
    console = Console(file=io.StringIO())
    with pytest.raises(NotATerminal, match="use --once"):
        watch(WatchConfig(store=f"sqlite:///{tmp_path / 'x.db'}"), console, threading.Event())


def test_a_store_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    with pytest.raises(StoreNotFound):
        watch(WatchConfig(store=f"sqlite:///{tmp_path / 'x.db'}"), console, threading.Event())
    assert not (tmp_path / "x.db").exists()
