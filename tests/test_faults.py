"""Faults with real processes and signals: nothing acked is lost, nothing is stored twice.

Every test runs ``geotrack serve`` as a process on a SQLite file, a publisher (the
``geotrack publish`` command, or a script on the client API) as another, and hurts the
relay for real: kill -9, SIGTERM, a database locked by another process, writes the OS
refuses. The store must end up holding exactly what the publisher generated, each
position once, compared field by field, not just counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from geotrack.schema import Position, ms_to_ts, ts_to_ms
from geotrack.sources.simulate import Simulation
from tests.conftest import free_port
from tests.factories import stored
from tests.relay_helpers import Lines, relay_process

# The simulated stream every CLI test publishes: 10 cars reporting 10 times a second,
# replayed 20 times faster than real time, so 2000 positions a second for 3 s.
MOVERS, RATE, SPEED, COUNT, SEED = 10, 10.0, 20.0, 6000, 4242
SUMMARY = re.compile(r"(\d+) sent, (\d+) stored, (\d+) duplicates, (\d+) rejected")
# serve --workers: the workers' pids, and which worker a publisher connected to.
WORKERS = re.compile(r"\d+ workers \(pids ([\d, ]+)\) share port")
PUBLISHER_ON = re.compile(r"worker (\d+): publisher \S+ connected")


class Relays:
    """Relay processes on one port and one SQLite file, started again after each fault."""

    def __init__(
        self, stack: contextlib.ExitStack, db: Path, *, query: str = "", workers: int = 1
    ) -> None:
        self.stack = stack
        #: With more than 1, ``serve --workers``: kill9() kills the publisher's worker and
        #: start() after it waits for the supervisor to restart that worker.
        self.workers = workers
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.store_url = f"sqlite:///{db}{query}"
        self.logs: list[Lines] = []
        self.proc = self.start()

    def start(self) -> subprocess.Popen[str]:
        if self.workers > 1 and getattr(self, "proc", None) and self.proc.poll() is None:
            return self.proc  # the supervisor restarts a killed worker (see kill9)
        extra = ("--workers", str(self.workers)) if self.workers > 1 else ()
        proc = self.stack.enter_context(relay_process(self.store_url, self.port, *extra))
        assert proc.stdout is not None
        self.logs.append(Lines(proc.stdout))
        self.proc = proc
        return proc

    def kill9(self) -> None:
        if self.workers > 1:
            self.kill9_worker()
            return
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        self.logs[-1].join()

    @property
    def log(self) -> str:
        return "\n".join(log.text for log in self.logs)

    def kill9_worker(self) -> None:
        """kill -9 the worker holding the (last connected) publisher; wait for its restart."""
        log = self.logs[-1]
        lines = log.wait(lambda ls: any(WORKERS.search(x) for x in ls))
        pids = [int(p) for x in lines if (m := WORKERS.search(x)) for p in m[1].split(", ")]
        index = int([m for x in lines if (m := PUBLISHER_ON.search(x))][-1][1])
        restarted = re.compile(rf"worker {index} restarted \(pid (\d+)\)")
        before = [int(m[1]) for x in lines if (m := restarted.search(x))]
        os.kill(before[-1] if before else pids[index], signal.SIGKILL)
        log.wait(lambda ls: len([x for x in ls if restarted.search(x)]) > len(before))


@contextlib.contextmanager
def child(args: list[str], out: Path) -> Iterator[subprocess.Popen[str]]:
    """A process whose stdout and stderr go to files; killed on the way out if still running."""
    with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(args, stdout=stdout, stderr=err, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def cli_publish(url: str, count: int = COUNT, speed: float = SPEED) -> list[str]:
    return [
        *(sys.executable, "-m", "geotrack", "publish", "--url", url),
        *("--simulate", str(MOVERS), "--rate", str(RATE), "--seed", str(SEED)),
        *("--count", str(count), "--speed", str(speed)),
    ]


def finished(proc: subprocess.Popen[str], out: Path, timeout: float = 60) -> str:
    """Wait for a publisher; check it exited 0 and acked everything; its stderr."""
    code = proc.wait(timeout=timeout)
    err = out.with_suffix(".err").read_text()
    assert code == 0, err
    assert "Traceback" not in err
    return err


def stored_count(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        count: int = conn.execute("SELECT COUNT(*) FROM positions").fetchone()[0]
        return count


def wait_stored(db: Path, at_least: int, publisher: subprocess.Popen[str]) -> int:
    """Wait until the store holds ``at_least`` positions, while the publisher still runs."""
    deadline = time.monotonic() + 30
    while (n := stored_count(db)) < at_least:
        assert publisher.poll() is None, "the publisher finished before the fault"
        assert time.monotonic() < deadline, f"only {n} positions stored after 30 s"
        time.sleep(0.01)
    assert publisher.poll() is None, "the publisher finished before the fault"
    return n


def assert_exactly_the_simulation(positions: list[Position], count: int = COUNT) -> None:
    """``positions`` are those the CLI generated, each once, equal field by field."""
    keys = [p.key for p in positions]
    assert len(keys) == len(set(keys)) == count
    # The CLI starts the simulation at the current time: its first fix (mover 1, offset 0)
    # gives that start. Were it lost, the rest would not line up and the count would not match.
    first = min(positions, key=lambda p: p.time)
    sim = Simulation(
        movers=MOVERS, rate=RATE, seed=SEED, profile="car", start_ms=ts_to_ms(first.time)
    )
    expected = sorted((p for _, p in sim.positions(count=count)), key=lambda p: p.key)
    assert positions == expected


def summary(err: str) -> tuple[int, int, int, int]:
    m = SUMMARY.search(err)
    assert m is not None, err
    sent, stored_, duplicates, rejected = map(int, m.groups())
    return sent, stored_, duplicates, rejected


# -- kill -9 ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2], ids=["relay", "2-workers"])
def test_kill_9_twice_in_a_stream_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, workers: int
) -> None:
    # With 2 workers, each kill -9 hits the worker holding the publisher's connection.
    db = tmp_path / "geotrack.db"
    with contextlib.ExitStack() as stack:
        relays = Relays(stack, db, workers=workers)
        out = tmp_path / "publish"
        with child(cli_publish(relays.url), out) as pub:
            for at in (COUNT // 4, COUNT * 3 // 5):
                wait_stored(db, at, pub)
                relays.kill9()
                # Everything acked so far was fsynced: the crash keeps it.
                assert at <= stored_count(db) < COUNT
                relays.start()
            err = finished(pub, out)
        assert relays.proc.poll() is None  # the last relay is still serving
    assert err.count("reconnecting") == 2  # both kills cut a live connection
    sent, stored_, duplicates, rejected = summary(err)
    assert (sent, rejected) == (COUNT, 0)
    # Each frame is acked once; what a killed relay stored but never acked came back as
    # duplicates on the resend.
    assert stored_ + duplicates == COUNT
    assert_exactly_the_simulation(stored(db, sort=True))


# The client API's subscriber, as a user would run it: one ``device ts`` line per position.
CLIENT_SUBSCRIBER = """
import asyncio, sys
from geotrack.client import Backoff, subscribe

async def main() -> None:
    backoff = Backoff(base=0.05, cap=0.5, give_up_after=60)
    async for batch in subscribe(sys.argv[1], reconnect=True, backoff=backoff):
        sys.stdout.write("".join(f"{p.device} {p.time}\\n" for p in batch))
        sys.stdout.flush()

asyncio.run(asyncio.wait_for(main(), float(sys.argv[2])))
"""

# A bare WebSocket subscriber that asks for everything (``since=sqlite:0``) on every
# connection and marks each one with ``#open``: what the relay itself sends, replay and live,
# with no client-side dedupe to hide a duplicate at the seam.
RAW_SUBSCRIBER = """
import json, sys, time
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

url, deadline = sys.argv[1] + "/subscribe?since=sqlite:0", time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        ws = connect(url, open_timeout=2, max_size=None)
    # A reset in the middle of the handshake (ConnectionClosed) is a connection that landed
    # in the killed relay's backlog just before the kernel closed its socket: retry too.
    except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
        time.sleep(0.05)
        continue
    print("#open", flush=True)
    try:
        while True:
            message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            sys.stdout.write("".join(f"{p['device']} {p['ts']}\\n" for p in json.loads(message)))
            sys.stdout.flush()
    except (ConnectionClosed, TimeoutError):
        pass
    ws.close()
"""


def output(out: Path) -> list[str]:
    return out.with_suffix(".out").read_text().splitlines()


def connections(lines: list[str]) -> list[list[tuple[str, str]]]:
    """The keys a raw subscriber received, per connection."""
    conns: list[list[tuple[str, str]]] = []
    for line in lines:
        if line == "#open":
            conns.append([])
        elif line:
            device, ts = line.split(" ")
            conns[-1].append((device, ts))
    return conns


def wait_lines(out: Path, done: Callable[[list[str]], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done(output(out)):
        assert time.monotonic() < deadline, "\n".join(output(out)[-5:])
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_subscribers_across_a_kill_9_miss_nothing_and_get_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "geotrack.db"
    speed = 10.0  # 1000 positions a second for 6 s: the subscribers are back long before the end
    subscribed = re.compile(r"subscriber \S+ connected")
    with contextlib.ExitStack() as stack:
        relays = Relays(stack, db)
        api_out, raw_out, pub_out = tmp_path / "api", tmp_path / "raw", tmp_path / "publish"
        api = stack.enter_context(
            child([sys.executable, "-c", CLIENT_SUBSCRIBER, relays.url, "80"], api_out)
        )
        raw = stack.enter_context(
            child([sys.executable, "-c", RAW_SUBSCRIBER, relays.url, "80"], raw_out)
        )
        relays.logs[-1].wait(lambda ls: len([x for x in ls if subscribed.search(x)]) == 2)
        with child(cli_publish(relays.url, speed=speed), pub_out) as pub:
            wait_stored(db, COUNT // 4, pub)
            relays.kill9()
            relays.start()
            relays.logs[-1].wait(lambda ls: len([x for x in ls if subscribed.search(x)]) == 2)
            # Both came back while positions still flow: the seam between replay and live
            # is crossed for real.
            assert stored_count(db) < COUNT
            assert pub.poll() is None
            finished(pub, pub_out)
        assert_exactly_the_simulation(stored(db, sort=True))
        keys = {p.key for p in stored(db, sort=True)}
        wait_lines(api_out, lambda ls: len(ls) >= COUNT)
        wait_lines(
            raw_out, lambda ls: len(connections(ls)) == 2 and len(connections(ls)[-1]) >= COUNT
        )
        time.sleep(1)  # anything sent twice would arrive now
        for proc in (api, raw):
            assert proc.poll() is None  # still subscribed
            proc.kill()

    received = [tuple(line.split(" ")) for line in output(api_out)]
    assert len(received) == len(set(received)) == COUNT
    assert set(received) == keys

    first, second = connections(output(raw_out))
    assert 0 < len(first) < COUNT
    assert len(first) == len(set(first))  # live only, until the kill
    assert len(second) == len(set(second)) == COUNT  # replay, then live: no gap, no duplicate
    assert set(second) == keys


# -- store faults ----------------------------------------------------------------------------


Fault = Callable[[Path, subprocess.Popen[str]], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def database_locked(db: Path, relay: subprocess.Popen[str]) -> Iterator[None]:
    """Another process's transaction holds the write lock beyond the relay's busy timeout."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


@contextlib.contextmanager
def writes_refused(db: Path, relay: subprocess.Popen[str]) -> Iterator[None]:
    """The OS refuses the relay's file writes (EFBIG, as from a full quota or disk).

    The relay's file size limit drops to one byte and comes back: its log goes to a pipe,
    which the limit does not touch, so only the store's writes fail.
    """
    resource.prlimit(relay.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
    try:
        yield
    finally:
        resource.prlimit(relay.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("fault", "says", "workers"),
    [
        (database_locked, "database is locked", 1),
        (writes_refused, "disk I/O error", 1),
        # The lock holds up both workers' writers; prlimit would reach the supervisor only.
        (database_locked, "database is locked", 2),
    ],
    ids=["database-locked", "writes-refused", "database-locked-2-workers"],
)
def test_failed_writes_are_never_acked_and_the_resend_recovers(
    tmp_path: Path, fault: Fault, says: str, workers: int
) -> None:
    # A store path of non-ASCII letters, as many users' home directories have: the close
    # reason naming it must still fit a close frame.
    (tmp_path / "данные").mkdir()
    db = tmp_path / "данные" / "geotrack.db"
    with contextlib.ExitStack() as stack:
        relays = Relays(stack, db, query="?busy_timeout=200", workers=workers)
        out = tmp_path / "publish"
        with child(cli_publish(relays.url), out) as pub:
            wait_stored(db, COUNT // 5, pub)
            with fault(db, relays.proc):
                time.sleep(0.3)  # a commit already under way when the fault began ends
                during = stored_count(db)
                time.sleep(1.5)
                assert stored_count(db) == during  # the fault is real: nothing gets in
                assert pub.poll() is None
            err = finished(pub, out)
        # The relay reported the failure, kept running, and still takes positions.
        assert relays.proc.poll() is None
        log = relays.log
        assert re.search(r"store write failed, \d+ positions not acked: .*" + says, log), log
        assert re.search(r"publisher \S+ disconnected \(code 1011: store write failed", log), log
        with connect(f"{relays.url}/publish", open_timeout=5) as ws:
            ws.send(json.dumps({"device": "after", "lat": 1, "lon": 2, "ts": 1_764_072_000}))
            assert json.loads(ws.recv(timeout=10))["stored"] == 1
    assert "Traceback" not in log
    assert "closed the connection (code 1011: store write failed" in err
    sent, stored_, duplicates, rejected = summary(err)
    # Every position acked exactly once, none acked that is not stored: an ack for a failed
    # write would have kept its positions from being resent, and they would be missing.
    assert (sent, stored_ + duplicates, rejected) == (COUNT, COUNT, 0)
    assert_exactly_the_simulation([p for p in stored(db, sort=True) if p.device != "after"])


# -- SIGTERM ---------------------------------------------------------------------------------

# A publisher on the client API with a fixed set of positions (4 devices, one fix per device
# per second from T0): prints ``ack GENERATION START`` for every frame acked, where
# GENERATION counts the reconnects before it and START is the frame's first index.
SCRIPT_PUBLISHER = """
import asyncio, json, logging, sys
from geotrack.client import Backoff, Publisher
from geotrack.schema import Position, ms_to_ts

url, total, frame = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
logging.basicConfig(level=logging.WARNING, format="%(message)s")

def position(i: int) -> Position:
    return Position(device=f"dev-{i % 4}", lat=10 + i * 1e-5, lon=20.0, ts=ms_to_ts(T0 + i * 250))

T0 = 1_764_072_000_000

async def main() -> None:
    pub = Publisher(url, window=8, backoff=Backoff(base=0.05, cap=0.5, give_up_after=60))
    await pub.connect()
    for start in range(0, total, frame):
        future = await pub.send([position(i) for i in range(start, min(start + frame, total))])
        def acked(f, start=start):
            if not f.exception():
                print("ack", pub.reconnects, start, flush=True)
        future.add_done_callback(acked)
        await asyncio.sleep(0.01)
    await pub.flush()
    await pub.close()
    s = pub.stats
    print(json.dumps({"sent": s.sent, "acked": s.stored + s.duplicates, "rejected": s.rejected}))

asyncio.run(main())
"""


def script_position(i: int) -> Position:
    """The script publisher's position ``i``."""
    ts = ms_to_ts(1_764_072_000_000 + i * 250)
    return Position(device=f"dev-{i % 4}", lat=10 + i * 1e-5, lon=20.0, ts=ts)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2], ids=["relay", "2-workers"])
def test_sigterm_in_a_stream_exits_0_and_keeps_everything_it_acked(
    tmp_path: Path, workers: int
) -> None:
    db = tmp_path / "geotrack.db"
    total, frame = 6000, 20  # 300 frames, one every 10 ms: a stream of about 3 s
    with contextlib.ExitStack() as stack:
        relays = Relays(stack, db, workers=workers)
        out = tmp_path / "publish"
        args = [sys.executable, "-c", SCRIPT_PUBLISHER, relays.url, str(total), str(frame)]
        with child(args, out) as pub:
            wait_stored(db, total // 3, pub)
            relays.proc.send_signal(signal.SIGTERM)
            assert relays.proc.wait(timeout=30) == 0
            stopping = relays.logs[-1].join()
            # The relay is gone and nothing else writes: what it acked must be here now.
            at_exit = {p.key for p in stored(db, sort=True)}
            assert len(at_exit) < total
            assert pub.poll() is None
            relays.start()
            err = finished(pub, out)
    lines = output(out)
    assert json.loads(lines[-1]) == {"sent": total, "acked": total, "rejected": 0}
    acks = [line.split(" ") for line in lines[:-1]]
    assert sorted(int(start) for _, _, start in acks) == list(range(0, total, frame))
    # Frames the first relay acked before its SIGTERM were in the store when it exited.
    first = {int(start) for _, generation, start in acks if generation == "0"}
    assert first
    assert {script_position(i).key for s in first for i in range(s, s + frame)} <= at_exit
    assert "closed the connection (code 1001: relay shutting down)" in err
    assert re.search(r"stopped: \d+ stored", "\n".join(stopping))
    assert stored(db, sort=True) == sorted(map(script_position, range(total)), key=lambda p: p.key)
