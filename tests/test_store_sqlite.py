"""What only the SQLite store does: its feed skipping the left-out origin's own commits.

A relay's follower leaves out the relay's own writes. When everything committed since its
last look was written through the same store object under that origin, the feed moves its
cursor past it without reading the rows; anything else — another store object on the same
file (another relay or process), or another origin — is read and delivered, in seq order.
"""

from __future__ import annotations

from pathlib import Path

from geotrack.store.sqlite import SQLiteStore, parse_cursor
from tests.test_store_contract import pos


def _positions(feed: object) -> list[tuple[str, str]]:
    from geotrack.store import ChangeFeed

    assert isinstance(feed, ChangeFeed)
    return [(c.position.device, c.origin or "") for c in feed.poll(0.05)]


def test_own_commits_are_passed_over_and_the_cursor_moves(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with SQLiteStore(db) as mine, SQLiteStore(db) as theirs:
        feed = mine.follow(exclude_origin="relay-a")
        try:
            mine.write([pos("a", i) for i in range(50)], origin="relay-a")
            mine.write([pos("a", i) for i in range(50, 60)], origin="relay-a")
            assert _positions(feed) == []
            assert parse_cursor(feed.cursor) == 60  # past the 60 rows, none of them read
            # A commit through another store object on the same file is read.
            theirs.write([pos("b", 0)], origin="relay-b")
            assert _positions(feed) == [("b", "relay-b")]
        finally:
            feed.close()


def test_rows_between_own_commits_are_never_passed_over(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with SQLiteStore(db) as mine, SQLiteStore(db) as theirs:
        feed = mine.follow(exclude_origin="relay-a")
        try:
            got: list[tuple[str, str]] = []
            for i in range(20):
                mine.write([pos("a", 2 * i), pos("a", 2 * i + 1)], origin="relay-a")
                if i % 3 == 0:
                    theirs.write([pos("b", i)], origin="relay-b")
                if i % 5 == 0:
                    # The same store object, another origin: not left out either.
                    mine.write([pos("c", i)], origin="relay-c")
                got += _positions(feed)
            got += _positions(feed)
            expected: list[tuple[str, str]] = []
            for i in range(20):  # the order they were committed in
                expected += [("b", "relay-b")] if i % 3 == 0 else []
                expected += [("c", "relay-c")] if i % 5 == 0 else []
            assert got == expected
        finally:
            feed.close()
