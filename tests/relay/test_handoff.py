"""Hand-overs between sibling workers: the sequencer alone, the datagrams, and two relays
sharing one SQLite file in this process, wired as ``serve --workers 2`` wires its workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geotrack.relay.config import RelayConfig
from geotrack.relay.handoff import Delivery, Handoff, Sequencer, decode_handover, encode_handover
from geotrack.relay.server import Relay
from geotrack.relay.siblings import Siblings, share_write_lock
from geotrack.schema import Position
from geotrack.store.base import Change
from geotrack.store.sqlite import SQLiteStore
from tests.factories import T0_S
from tests.relay_helpers import arun, collect, fix, publisher, roundtrip, subscriber, within

# -- the sequencer, without I/O ---------------------------------------------------------------


def _encoded(seqs: range) -> list[bytes]:
    return [str(s).encode() for s in seqs]


def _change(seq: int) -> Change:
    return Change(f"sqlite:{seq}", Position(device=f"s{seq}", lat=0.0, lon=0.0, ts=T0_S), "x")


def _seqs(deliveries: list[Delivery]) -> list[int]:
    out: list[int] = []
    for d in deliveries:
        if d.encoded is not None:
            out += [int(e) for e in d.encoded]
        else:
            assert d.positions is not None
            out += [int(p.device[1:]) for p in d.positions]
    return out


def test_hand_overs_that_join_on_go_out_at_once_and_the_others_wait_for_the_gap() -> None:
    seq = Sequencer(after=10)
    assert _seqs(seq.offer(10, 13, _encoded(range(11, 14)))) == [11, 12, 13]
    assert _seqs(seq.offer(15, 17, _encoded(range(16, 18)))) == []  # 14-15 missing
    assert seq.gap
    assert _seqs(seq.offer(13, 15, _encoded(range(14, 16)))) == [14, 15, 16, 17]
    assert not seq.gap and seq.after == 17


def test_own_commits_are_moved_over_and_never_delivered() -> None:
    seq = Sequencer(after=0)
    seq.own(0, 5)
    assert _seqs(seq.offer(5, 7, _encoded(range(6, 8)))) == [6, 7]
    seq.own(7, 9)
    assert _seqs(seq.advance()) == [] and seq.after == 9


def test_the_feed_fills_a_gap_and_late_hand_overs_of_what_it_read_are_dropped() -> None:
    seq = Sequencer(after=0)
    seq.own(2, 3)
    assert _seqs(seq.offer(5, 6, _encoded(range(6, 7)))) == []  # 1-2 and 4-5 lost
    # The feed read from 0 to 6 (leaving out the own row 3).
    got = seq.read([_change(s) for s in (1, 2, 4, 5, 6)], through=6)
    assert _seqs(got) == [1, 2, 4, 5, 6]
    assert _seqs(seq.offer(0, 2, _encoded(range(1, 3)))) == []  # came late: dropped
    assert not seq.gap


def test_a_hand_over_the_feed_read_part_of_is_dropped_and_the_feed_reads_the_rest() -> None:
    seq = Sequencer(after=0)
    assert _seqs(seq.offer(2, 6, _encoded(range(3, 7)))) == []
    # A read that stopped inside it (a full batch): the rest is the feed's to read.
    assert _seqs(seq.read([_change(s) for s in range(1, 5)], through=4)) == [1, 2, 3, 4]
    assert seq.gap
    assert _seqs(seq.read([_change(5), _change(6)], through=6)) == [5, 6]
    assert not seq.gap


def test_a_read_from_before_the_sequencer_delivers_only_what_is_new() -> None:
    seq = Sequencer(after=0)
    seq.offer(0, 3, _encoded(range(1, 4)))
    # A read that started before the hand-over moved the sequencer on.
    assert _seqs(seq.read([_change(s) for s in range(1, 6)], through=5)) == [4, 5]


@settings(max_examples=300, deadline=None)
@given(
    commits=st.lists(
        st.tuples(st.sampled_from(["own", "sibling", "lost", "other"]), st.integers(1, 4)),
        min_size=1,
        max_size=30,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_row_not_its_own_is_delivered_once_and_in_order(
    commits: list[tuple[str, int]], seed: int
) -> None:
    """Commits by the worker itself, by a sibling (handed over, in any order and late, or
    lost) and by another writer, with the feed reading at random moments."""
    rng = random.Random(seed)
    start = rng.randrange(0, 50)
    seq = Sequencer(after=start)
    rows: list[tuple[int, str]] = []  # (seq, writer) in the store
    in_flight: list[tuple[int, int, list[bytes]]] = []
    delivered: list[int] = []
    feed_at = start  # where the feed would read from: at most the sequencer's seq

    def feed_read(whole: bool = False) -> None:
        nonlocal feed_at
        frm = min(feed_at, seq.after) if rng.random() < 0.3 else seq.after
        top = newest
        if not whole and rng.random() < 0.3 and top > frm:  # a full batch: stops early
            top = rng.randint(frm + 1, top)
        changes = [_change(s) for s, w in rows if frm < s <= top and w != "own"]
        delivered.extend(_seqs(seq.read(changes, through=top)))
        feed_at = top

    newest = start
    for writer, size in commits:
        # Some seqs of a commit may hold no row (spent on duplicates).
        after, newest = newest, newest + size + rng.choice([0, 0, 1])
        seqs = sorted(rng.sample(range(after + 1, newest + 1), size))
        rows += [(s, writer) for s in seqs]
        if writer == "own":
            seq.own(after, newest)
        elif writer == "sibling":
            in_flight.append((after, newest, [str(s).encode() for s in seqs]))
        rng.shuffle(in_flight)
        while in_flight and rng.random() < 0.6:
            delivered.extend(_seqs(seq.offer(*in_flight.pop())))
        if rng.random() < 0.2 or (seq.gap and rng.random() < 0.5):
            feed_read()
        if rng.random() < 0.3:
            delivered.extend(_seqs(seq.advance()))
    for handover in in_flight:
        delivered.extend(_seqs(seq.offer(*handover)))
    feed_read(whole=True)
    expected = [s for s, w in rows if w != "own"]
    assert delivered == expected
    assert seq.after == newest and not seq.gap


# -- datagrams --------------------------------------------------------------------------------


def test_a_commit_is_split_into_datagrams_of_adjoining_seq_ranges_under_the_limit() -> None:
    encoded = [b"x" * 100 for _ in range(25)]
    datagrams = encode_handover(40, 65, encoded, limit=1000)
    parts = [decode_handover(d) for d in datagrams]
    assert [(a, t) for a, t, _ in parts] == [(40, 49), (49, 58), (58, 65)]
    assert [e for _, _, batch in parts for e in batch] == encoded
    assert all(len(d) <= 1000 for d in datagrams)
    # Seqs with holes (spent on duplicates): the parts split at the rows' own seqs.
    seqs = [2 * i + 1 for i in range(25)]  # 1, 3, ..., 49
    parts = [decode_handover(d) for d in encode_handover(0, 50, encoded, seqs, limit=1000)]
    assert [(a, t) for a, t, _ in parts] == [(0, 17), (17, 35), (35, 50)]
    # A single position larger than the limit still goes, alone.
    assert [decode_handover(d)[:2] for d in encode_handover(0, 1, [b"y" * 5000], limit=1000)] == [
        (0, 1)
    ]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x93\x01\x01\x91\xc4\x01x", b"not msgpack at all", b"\x93\xff\x00\x90"],
    ids=["empty", "more-positions-than-seqs", "garbage", "negative-seq"],
)
def test_what_is_not_a_hand_over_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a hand-over"):
        decode_handover(data)


# -- two relays on one file, as two workers ---------------------------------------------------


@contextlib.asynccontextmanager
async def workers(tmp_path: Path) -> AsyncIterator[list[tuple[Relay, Handoff, Siblings]]]:
    """Two relays on one SQLite file, each with its siblings' end and its hand-overs."""
    db, shared = tmp_path / "store.db", tmp_path / "run"
    shared.mkdir()
    loop = asyncio.get_running_loop()
    out: list[tuple[Relay, Handoff, Siblings]] = []
    stores = [SQLiteStore(db), SQLiteStore(db)]
    locks = [share_write_lock(s, shared / "write.lock") for s in stores]
    try:
        for index, store in enumerate(stores):
            relay = Relay(store, RelayConfig(port=0, stats_interval=0))
            await relay.start()
            siblings = Siblings(shared, index, 2)
            handoff = Handoff(relay, store, siblings)
            handoff.attach(loop)
            out.append((relay, handoff, siblings))
        yield out
    finally:
        for relay, handoff, siblings in out:
            await relay.stop()
            handoff.detach()
            siblings.close(loop)
        for store in stores:
            store.close()
        for lock in locks:
            assert lock is not None
            lock.close()


def _keys(got: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(p["device"], p["ts"]) for p in got]


def test_each_worker_delivers_the_others_positions_once_from_its_hand_overs(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with workers(tmp_path) as ((a, handoff_a, _), (b, handoff_b, _)):
            subs = [await subscriber(a), await subscriber(b)]
            pubs = [await publisher(a), await publisher(b)]
            sent = []
            for i in range(100):
                f = fix(f"car-{i % 2}", i)
                sent.append((f["device"], f"{f['ts']}"))
                assert (await roundtrip(pubs[i % 2], f))["stored"] == 1
            for sub in subs:
                got = await collect(sub, 100)
                await asyncio.sleep(0.2)  # anything twice would show now
                with contextlib.suppress(TimeoutError):
                    got += json.loads(await asyncio.wait_for(sub.recv(), 0.2))
                assert len(got) == 100
                assert len(set(_keys(got))) == 100
            # The siblings' positions came as hand-overs.
            assert handoff_a.handed > 0 and handoff_b.handed > 0
            for ws in pubs + subs:
                await ws.close()

    arun(main())


def test_rows_another_writer_stores_between_hand_overs_are_read_from_the_file(
    tmp_path: Path,
) -> None:
    """``geotrack import`` into the live file: nobody hands those rows over."""

    async def main() -> None:
        async with workers(tmp_path) as ((a, _, _), (b, handoff_b, _)):
            sub = await subscriber(b)
            pub = await publisher(a)
            other = SQLiteStore(tmp_path / "store.db")
            try:
                for i in range(30):
                    assert (await roundtrip(pub, fix("car-1", i)))["stored"] == 1
                    if i % 3 == 0:
                        other.write([Position(device="import", lat=1.0, lon=2.0, ts=T0_S + i)])
            finally:
                other.close()
            got = await collect(sub, 40)
            with contextlib.suppress(TimeoutError):
                got += json.loads(await asyncio.wait_for(sub.recv(), 0.3))
            assert len(got) == 40 and len(set(_keys(got))) == 40
            assert sum(p["device"] == "import" for p in got) == 10
            assert handoff_b.read >= 10 and handoff_b.handed > 0
            await pub.close()
            await sub.close()

    arun(main())


def test_hand_overs_lost_on_the_way_are_read_from_the_file_instead(tmp_path: Path) -> None:
    """A sibling whose queue is full drops datagrams (its loop was busy): it still
    delivers every position once."""

    async def main() -> None:
        async with workers(tmp_path) as ((a, handoff_a, siblings_a), (b, handoff_b, _)):
            sub = await subscriber(b)
            await asyncio.sleep(0.1)
            # Commits through worker a's store while this loop (b's too) reads nothing:
            # b's datagram queue fills and the rest are dropped.
            for i in range(600):
                a.store.write([Position(device="car-1", lat=1.0, lon=2.0, ts=T0_S + i)], a.id)
            assert siblings_a.unsent > 0
            got = await collect(sub, 600, seconds=20)
            with contextlib.suppress(TimeoutError):
                got += json.loads(await asyncio.wait_for(sub.recv(), 0.3))
            assert len(got) == 600 and len(set(_keys(got))) == 600
            assert handoff_b.read > 0
            of_b = {f.name: f.samples for f in handoff_b.families()}
            assert ("", (("path", "read"),), handoff_b.read) in of_b[
                "geotrack_handover_positions_total"
            ]
            of_a = {f.name: f.samples for f in handoff_a.families()}
            assert of_a["geotrack_handover_unsent_total"] == [("", (), siblings_a.unsent)]
            await within(sub.close())

    arun(main())
