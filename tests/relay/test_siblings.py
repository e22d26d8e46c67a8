"""Hand-over datagrams and metrics shared by the workers of ``serve --workers``."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from pathlib import Path

from geotrack.relay.metrics import Family, exposition
from geotrack.relay.siblings import SharedWriteLock, Siblings, merged_families, write_restarts


def test_a_datagram_reaches_every_sibling_but_the_sender_whole(tmp_path: Path) -> None:
    workers = [Siblings(tmp_path, i, 3) for i in range(3)]
    payload = os.urandom(workers[1].datagram_limit)  # the largest one a commit is split to

    async def main() -> list[tuple[int, bytes]]:
        loop = asyncio.get_running_loop()
        got: list[tuple[int, bytes]] = []
        arrived = asyncio.Event()

        def receive(index: int, data: memoryview) -> None:
            got.append((index, bytes(data)))
            if len(got) == 2:
                arrived.set()

        for sibling in workers:
            sibling.listen(loop, functools.partial(receive, sibling.index))
        workers[1].send(payload)
        await asyncio.wait_for(arrived.wait(), 5)
        await asyncio.sleep(0.05)  # a datagram to the sender itself would show now
        for sibling in workers:
            sibling.close(loop)
        return got

    got = asyncio.run(main())
    assert sorted(index for index, _ in got) == [0, 2]
    assert all(data == payload for _, data in got)
    assert workers[1].unsent == 0


def test_a_datagram_to_a_sibling_not_there_is_dropped_and_counted(tmp_path: Path) -> None:
    sibling = Siblings(tmp_path, 0, 2)  # worker 1 is restarting: no socket yet
    sibling.send(b"x")
    assert sibling.unsent == 1
    sibling.close()


def test_metrics_are_every_workers_labelled_and_a_gone_worker_is_left_out(
    tmp_path: Path,
) -> None:
    def families(stored: int) -> list[Family]:
        family = Family("geotrack_stored_total", "counter", "Stored.")
        family.add(stored, transport="websocket")
        return [family]

    workers = [Siblings(tmp_path, i, 3) for i in range(3)]
    workers[1].save(families(5))
    workers[2].save(families(7))
    stale = time.time() - 60
    os.utime(tmp_path / "metrics-2.json", (stale, stale))  # worker 2 died a minute ago
    write_restarts(tmp_path, 1)
    text = exposition(workers[0].view(families(3)))
    assert text.count("# TYPE geotrack_stored_total counter") == 1
    assert 'geotrack_stored_total{worker="0",transport="websocket"} 3' in text
    assert 'geotrack_stored_total{worker="1",transport="websocket"} 5' in text
    assert 'worker="2"' not in text
    assert "geotrack_workers 3" in text
    assert "geotrack_worker_restarts_total 1" in text
    for sibling in workers:
        sibling.close()


def test_merging_keeps_the_order_families_first_appear_in() -> None:
    a, b = Family("a_total", "counter", "A."), Family("b", "gauge", "B.")
    a.add(1)
    b.add(2)
    merged = merged_families({0: [a, b], 1: [a]}, 2, 0)
    assert [f.name for f in merged] == [
        "a_total",
        "b",
        "geotrack_workers",
        "geotrack_worker_restarts_total",
    ]
    assert merged[0].samples == [("", (("worker", "0"),), 1), ("", (("worker", "1"),), 1)]


def test_the_shared_write_lock_lets_one_holder_in_at_a_time(tmp_path: Path) -> None:
    # Two locks on one file, as two workers hold them: flock excludes open files, not
    # processes, so threads show it as well.
    first = SharedWriteLock(threading.Lock(), tmp_path / "write.lock")
    second = SharedWriteLock(threading.Lock(), tmp_path / "write.lock")
    entered = threading.Event()

    def take() -> None:
        with second:
            entered.set()

    with first:
        taker = threading.Thread(target=take)
        taker.start()
        assert not entered.wait(0.2)  # held here: the other waits
    assert entered.wait(10)  # let go: the other gets it
    taker.join()
    with first:  # and lets it go again
        pass
    first.close()
    second.close()
