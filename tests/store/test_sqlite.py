"""What only the SQLite store does: opening without creating, its ping, and its feed.

Opening without creating is what commands that only read do; ping is the health check.

A relay's follower leaves out the relay's own writes. When everything committed since its
last look was written through the same store object under that origin, the feed moves its
cursor past it without reading the rows; anything else — another store object on the same
file (another relay or process), or another origin — is read and delivered, in seq order.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from geotrack.errors import StoreError, StoreNotFound
from geotrack.store import Change, open_store
from geotrack.store.sqlite import SQLiteStore, parse_cursor
from tests.factories import pos


def test_a_missing_file_is_no_store_and_is_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    with pytest.raises(StoreNotFound) as caught:
        open_store(url, create=False)
    assert caught.value.where == str(tmp_path / "typo.db")
    assert caught.value.url == url
    assert list(tmp_path.iterdir()) == []


def test_a_relative_path_is_named_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreNotFound, match=f"^no store at {tmp_path}/typo.db "):
        open_store("sqlite:///typo.db", create=False)


def test_an_empty_file_is_no_store_and_stays_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    with pytest.raises(StoreNotFound, match="nothing has been stored there yet"):
        open_store(f"sqlite:///{tmp_path / 'empty.db'}", create=False)
    assert [p.name for p in tmp_path.iterdir()] == ["empty.db"]
    assert (tmp_path / "empty.db").stat().st_size == 0


def test_another_sqlite_database_is_named_as_such(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreNotFound, match="a SQLite database without geotrack's positions"):
        open_store(f"sqlite:///{tmp_path / 'other.db'}", create=False)
    with sqlite3.connect(tmp_path / "other.db") as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert tables == ["t"]  # untouched


def test_an_existing_store_opens_empty_or_not_and_can_be_followed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url) as writer, open_store(url, create=False) as reader:
        assert list(reader.query()) == []
        with reader.follow() as feed:
            writer.write([pos(i=0)])
            assert [c.position for c in feed.poll(5)] == [pos(i=0)]


def test_readers_never_create_the_file(tmp_path: Path) -> None:
    # A store whose file is deleted under it: a query opens a new connection, which must
    # fail instead of creating an empty file with that name.
    db = tmp_path / "store.db"
    with open_store(f"sqlite:///{db}") as store:
        store.write([pos(i=0)])
        for name in ("store.db", "store.db-wal", "store.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        with pytest.raises(StoreError):
            list(store.query())
        assert not db.exists()


def test_ping_fails_once_the_file_is_deleted(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with open_store(f"sqlite:///{db}") as store:
        store.ping()
        db.unlink()
        with pytest.raises(StoreError, match="was the file deleted or moved"):
            store.ping()


def test_ping_fails_once_another_file_replaces_it(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with open_store(f"sqlite:///{db}") as store:
        store.ping()
        open_store(f"sqlite:///{tmp_path / 'other.db'}").close()
        os.replace(tmp_path / "other.db", db)
        with pytest.raises(StoreError, match="another file has replaced"):
            store.ping()


def test_ping_fails_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with open_store(f"sqlite:///{db}?busy_timeout=50") as store:
        store.ping()
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="database is locked"):
                store.ping()
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        store.ping()


def test_a_write_tries_the_lock_again_until_another_process_lets_it_go(tmp_path: Path) -> None:
    # The writer polls the lock (a try every millisecond) instead of sleeping in SQLite's
    # busy handler, whose sleeps grow to 100 ms: each try is a "BEGIN IMMEDIATE" traced on
    # the store's writer connection, where the busy handler's retries would trace once.
    db = tmp_path / "store.db"
    with open_store(f"sqlite:///{db}") as store:
        assert isinstance(store, SQLiteStore)
        tries: list[str] = []
        store._writer.set_trace_callback(
            lambda sql: tries.append(sql) if sql == "BEGIN IMMEDIATE" else None
        )
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            locker.execute("INSERT INTO geotrack_meta VALUES ('locker', 'held')")
            result: list[list[bool]] = []
            thread = threading.Thread(target=lambda: result.append(store.write([pos("a", 1)])))
            thread.start()
            for _ in range(1000):  # up to ~10 s on a loaded machine
                if len(tries) >= 5:
                    break
                time.sleep(0.01)
            assert len(tries) >= 5 and thread.is_alive() and not result
            locker.execute("COMMIT")
        finally:
            locker.close()
        thread.join(10)
        assert result == [[True]]
        assert [p.device for p in store.query()] == ["a"]


def test_a_write_gives_up_at_the_busy_timeout_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with open_store(f"sqlite:///{db}?busy_timeout=50") as store:
        store.write([pos("a", 1)])
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match=r"write to .* failed: database is locked"):
                store.write([pos("a", 2)])
            locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert store.write([pos("a", 2), pos("a", 3)]) == [True, True]
        assert [p.ts_ms for p in store.query()] == [pos("a", i).ts_ms for i in (1, 2, 3)]


# -- the feed passes over the left-out origin's own commits ---------------------------


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


def test_a_follower_alone_backs_off_and_a_peer_brings_it_back(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with SQLiteStore(db) as mine, SQLiteStore(db) as theirs:
        feed = mine.follow(exclude_origin="relay-a")
        feed.idle_after = 0.0
        try:
            assert feed.next_wait == feed.interval
            for i in range(8):  # only this relay writes: each empty look waits longer
                mine.write([pos("a", i)], origin="relay-a")
                assert feed.poll(0.02) == []
            assert feed.next_wait == feed.idle_interval
            theirs.write([pos("b", 0)], origin="relay-b")
            assert _positions(feed) == [("b", "relay-b")]
            assert feed.next_wait == feed.interval  # a peer streams: followed every 5 ms
        finally:
            feed.close()


def test_a_tail_feed_does_not_back_off(tmp_path: Path) -> None:
    # Only a relay's follower (its own writes left out) backs off; `tail` keeps 5 ms.
    db = tmp_path / "db"
    with SQLiteStore(db) as store:
        feed = store.follow()
        feed.idle_after = 0.0
        try:
            for _ in range(4):
                assert feed.poll(0.02) == []
            assert feed.next_wait == feed.interval
        finally:
            feed.close()


def test_wake_ends_the_wait_of_a_backed_off_follower(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with SQLiteStore(db) as mine, SQLiteStore(db) as theirs:
        feed = mine.follow(exclude_origin="relay-a")
        # Waits so long that only wake() can end one within this test's bounds.
        feed.interval = feed.idle_interval = 600.0
        got: list[list[Change]] = []
        try:
            thread = threading.Thread(target=lambda: got.append(feed.poll(1200.0)))
            thread.start()
            time.sleep(0.2)  # most likely waiting by now; if not, its first look sees b
            theirs.write([pos("b", 0)], origin="relay-b")
            for _ in range(200):  # a wake-up before the poll began waiting is kept
                feed.wake()
                thread.join(0.05)
                if not thread.is_alive():
                    break
            assert not thread.is_alive()
            assert [c.position.device for c in got[0]] == ["b"]
        finally:
            feed.close()


def test_commit_hooks_get_each_commits_seqs_and_new_positions(tmp_path: Path) -> None:
    """What serve --workers hands its siblings: the seqs match what a feed reads."""
    db = tmp_path / "db"
    with SQLiteStore(db) as store, SQLiteStore(db) as reader:
        calls: list[tuple[str | None, int, int, list[str], list[int] | None]] = []
        store.commit_hooks.append(
            lambda origin, after, top, stored, seqs: calls.append(
                (origin, after, top, [p.time for p in stored], seqs)
            )
        )
        feed = reader.follow()
        try:
            store.write([pos("a", 0), pos("a", 1)], origin="w")
            store.write([pos("a", 1), pos("a", 2), pos("a", 2)], origin="w")  # 2 duplicates
            store.write([pos("a", 0)], origin="w")  # nothing new: no call (a seq spent)
            store.write([pos("a", 3)], origin="w")  # so this row is 7, not 5
            changes = feed.poll(1.0)
        finally:
            feed.close()
    # AUTOINCREMENT spent seq 3 on the repeat of a/1: the second commit's row is 4.
    assert [(o, a, t, s) for o, a, t, _, s in calls] == [
        ("w", 0, 2, None),
        ("w", 2, 4, [4]),
        ("w", 4, 7, [7]),
    ]
    by_seq = {parse_cursor(c.cursor): c.position.time for c in changes}
    for _, after, top, times, seqs in calls:
        assert [by_seq[s] for s in seqs or range(after + 1, top + 1)] == times
        assert all(after < s <= top for s in by_seq if by_seq[s] in times)


def test_a_failing_commit_hook_is_logged_and_the_write_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    with SQLiteStore(tmp_path / "db") as store:
        store.commit_hooks.append(broken)
        assert store.write([pos("a", 0)]) == [True]
        assert [p.device for p in store.query()] == ["a"]
    assert "a commit hook" in caplog.text and "boom" in caplog.text


def test_a_feed_with_a_floor_reads_only_past_it_and_fresh_rows_a_look_later(
    tmp_path: Path,
) -> None:
    """serve --workers: the floor is what siblings handed over; rows committed since the
    last look are left to the hand-over in flight unless the feed was woken for them."""
    db = tmp_path / "db"
    with SQLiteStore(db) as mine, SQLiteStore(db) as theirs:
        floor = 0
        feed = mine.follow(exclude_origin="me")
        feed.floor = lambda: floor
        try:
            theirs.write([pos("b", i) for i in range(3)], origin="them")  # seqs 1-3
            floor = 2  # 1 and 2 were handed over
            assert feed.poll(0.0) == []  # committed since the last look: left for now
            assert [parse_cursor(c.cursor) for c in feed.poll(0.0)] == [3]  # still missing
            theirs.write([pos("b", 3)], origin="them")  # seq 4
            feed.wake()  # a gap: read it now
            assert [parse_cursor(c.cursor) for c in feed.poll(0.0)] == [4]
            theirs.write([pos("b", 4)], origin="them")  # seq 5, handed over
            floor = 5
            assert feed.poll(0.0) == [] and feed.poll(0.0) == []
            assert feed.cursor == "sqlite:5"
        finally:
            feed.close()


def test_a_prune_lets_writers_of_another_connection_in_between_its_batches(
    tmp_path: Path,
) -> None:
    # Each batch is its own short transaction, committed before it is reported: a writer
    # on another connection (another relay process) commits while the prune is under
    # way, not after it (with one long transaction its write would time out).
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url) as pruner, open_store(url + "?busy_timeout=500") as writer:
        pruner.write([pos("old", i) for i in range(5000)])
        assert isinstance(pruner, SQLiteStore)
        pruner.prune_batch = 100
        pruner.prune_hold = 0.0001  # keeps the batches small
        pruner.prune_pause = 1.0
        steps = pruner.prune(pos("old", 10_000).ts_ms)
        batches_before_write: list[int] = []
        done = deleted = 0
        for step in steps:
            done += 1
            deleted += step.count
            if done % 5 == 0 and len(batches_before_write) < 3:
                writer.write([pos("new", 20_000 + len(batches_before_write))])
                batches_before_write.append(done)
        assert len(batches_before_write) == 3 and done > 15  # writes landed mid-prune
        assert deleted == 5000
        assert [p.device for p in writer.query()] == ["new", "new", "new"]
