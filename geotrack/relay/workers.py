"""``geotrack serve --workers N``: N relay processes on one port and one store, supervised.

The parent (:class:`Supervisor`, here; each worker's side is
:mod:`~geotrack.relay.worker_process`) binds nothing it serves from; it reserves the ports
(picking them when 0 is asked for), forks the workers, restarts one that dies and, on
SIGTERM or SIGINT, tells every worker to stop and waits for each to drain. Each worker is
a whole relay (:func:`geotrack.relay.runner.serve`) that binds the WebSocket port and the
HTTP port with ``SO_REUSEPORT``, so the kernel spreads new connections across workers,
and opens the store itself. What one worker stores reaches the others' subscribers
through the store's change feed, woken at once after each commit
(:mod:`~geotrack.relay.siblings`; MongoDB's change streams need no wake-up).

What runs once, in worker 0 only: the MQTT bridges (one broker session per client id),
retention, the fence engine and webhooks. Connection limits are the relay's: each worker
holds ``ceil(max_connections / N)``. docs/operations.md, "Workers", says all this for
operators.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geotrack.errors import InvalidParameter, RelayError
from geotrack.relay.access import bind_error
from geotrack.relay.config import RelayConfig
from geotrack.relay.siblings import write_restarts
from geotrack.relay.worker_process import WorkerSetup, run_worker

if TYPE_CHECKING:
    import asyncio


__all__ = ["MAX_WORKERS", "Supervisor", "parse_workers", "usable_cores"]

log = logging.getLogger("geotrack.relay")

#: The most workers ``--workers`` accepts.
MAX_WORKERS = 256
#: Seconds a worker has to start (open the store, bind) before it counts as failed.
START_TIMEOUT = 60.0
#: Seconds stopping workers have to drain before they are killed.
STOP_TIMEOUT = 60.0
#: A worker that dies sooner than this after its start is restarted after a growing delay.
STABLE_AFTER = 10.0

LoopFactory = Callable[[], "asyncio.AbstractEventLoop"] | None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13
    if counter is not None:
        count: int | None = counter()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    return max(1, count or 1)


def parse_workers(text: str) -> int:
    """``--workers``: a count, or ``auto`` for :func:`usable_cores`."""
    if text.strip().lower() == "auto":
        return min(MAX_WORKERS, usable_cores())
    try:
        count = int(text)
    except ValueError:
        raise InvalidParameter("--workers", f"expected a number or 'auto', got {text!r}") from None
    if not 1 <= count <= MAX_WORKERS:
        raise InvalidParameter("--workers", f"must be within 1..{MAX_WORKERS}, got {count}")
    return count


def check_supported() -> None:
    """RelayError unless this OS can share a port between processes and fork workers."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise RelayError(
            "--workers needs SO_REUSEPORT (Linux, the BSDs, macOS), which this system lacks; "
            "run one relay per port behind a load balancer instead (docs/operations.md)"
        )
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RelayError("--workers needs fork(), which this system lacks")


class Supervisor:
    """Runs ``count`` workers of one relay until SIGTERM/SIGINT; :meth:`run` gives the exit code.

    ``open_store`` opens the store in a worker (each its own connection); ``loop_factory``
    makes each worker's event loop (uvloop's where the CLI has it).
    """

    def __init__(
        self,
        open_store: Callable[[], Any],
        config: RelayConfig,
        count: int,
        loop_factory: LoopFactory = None,
    ) -> None:
        self.open_store = open_store
        self.config = config
        self.count = count
        self.loop_factory = loop_factory
        #: Workers that died and were started again.
        self.restarts = 0
        self._procs: dict[int, BaseProcess] = {}
        self._pipes: dict[int, Connection] = {}
        self._started_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}  # quick deaths in a row, for the backoff
        self._stopping = False

    def run(self) -> int:
        """Start the workers, supervise, drain them on a signal: 0 when all stopped cleanly.

        Raises RelayError when a worker cannot start the first time (a port in use, the
        store unreachable): the others are stopped then.
        """
        check_supported()
        reserved = self._reserve_ports()
        directory = Path(tempfile.mkdtemp(prefix="geotrack-workers-"))
        alive_r, alive_w = os.pipe()  # EOF in the workers when this process is gone
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        old_fd = -1
        try:
            self._directory, self._alive = directory, (alive_r, alive_w)
            # The supervisor's own descriptors, which a worker closes after the fork.
            self._inherited = [*reserved, wake_r, wake_w]
            old_fd = signal.set_wakeup_fd(wake_w.fileno())
            for sig in previous:
                signal.signal(sig, self._on_signal)
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._pass_sighup)
            for index in range(self.count):
                self._start(index)
            for index in range(self.count):
                error = self._wait_ready(index)
                if error is not None:
                    self._stop_all()
                    raise RelayError(f"worker {index} could not start: {error}")
            host, port = self.config.host, self.config.port
            log.info(
                "%d workers (pids %s) share port %d on %s",
                self.count,
                ", ".join(str(p.pid) for p in self._procs.values()),
                port,
                host,
            )
            self._supervise(wake_r)
            return 0 if self._stop_all() else 1
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in reserved:
                sock.close()
            for fd in (alive_r, alive_w):
                os.close(fd)
            wake_r.close()
            wake_w.close()
            shutil.rmtree(directory, ignore_errors=True)

    # -- ports -----------------------------------------------------------------------

    def _reserve_ports(self) -> list[socket.socket]:
        """Bind the ports here first: a port in use fails now, and port 0 is picked once.

        The reserving sockets never listen, so they take no connections; they keep the
        ports bound while workers come and go.
        """
        sockets = []
        try:
            ws = self._reserve(self.config.host, self.config.port, "the relay")
            sockets.append(ws)
            changes: dict[str, Any] = {"port": ws.getsockname()[1]}
            if self.config.http_port is not None:
                http = self._reserve(
                    self.config.http_address, self.config.http_port, "the HTTP listener"
                )
                sockets.append(http)
                changes["http_port"] = http.getsockname()[1]
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self.config = dataclasses.replace(self.config, **changes)
        return sockets

    @staticmethod
    def _reserve(host: str, port: int, what: str) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise RelayError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
        if port != 0:
            # Without SO_REUSEPORT first: one bound with it (another `serve --workers` of
            # this user) would otherwise be joined silently instead of refused.
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise bind_error(exc, host, port, what) from None
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise bind_error(exc, host, port, what) from None
        return sock

    # -- workers ---------------------------------------------------------------------

    def _start(self, index: int) -> None:
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        proc = context.Process(
            target=run_worker,
            args=(self._setup(index), send),
            name=f"geotrack-worker-{index}",
        )
        proc.start()
        send.close()
        self._procs[index] = proc
        self._pipes[index] = receive
        self._started_at[index] = time.monotonic()

    def _wait_ready(self, index: int) -> str | None:
        """None once worker ``index`` serves; else why it could not start."""
        pipe = self._pipes[index]
        if not pipe.poll(START_TIMEOUT):
            return f"not listening after {START_TIMEOUT:g} s"
        try:
            kind, detail = pipe.recv()
        except (EOFError, OSError):
            self._procs[index].join(5)
            return f"exited with code {self._procs[index].exitcode} while starting"
        return None if kind == "ready" else str(detail)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _pass_sighup(self, signum: int, frame: object) -> None:
        """SIGHUP: every worker rereads the fences file (with --fences; else ignored)."""
        if self.config.fences is None:
            return
        for proc in list(self._procs.values()):
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)

    def _supervise(self, wake: socket.socket) -> None:
        """Restart workers that die, until a signal says stop."""
        restart_at: dict[int, float] = {}
        while not self._stopping:
            timeout = None
            if restart_at:
                timeout = max(0.0, min(restart_at.values()) - time.monotonic())
            sentinels = {p.sentinel: i for i, p in self._procs.items() if i not in restart_at}
            ready = wait([*sentinels, *self._pipes.values(), wake], timeout)
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(64)
            for pipe_index, pipe in list(self._pipes.items()):
                if pipe in ready:
                    self._read_message(pipe_index, pipe)
            if self._stopping:
                return
            now = time.monotonic()
            for sentinel, index in sentinels.items():
                if sentinel in ready:
                    restart_at[index] = now + self._died(index)
            for index, when in list(restart_at.items()):
                if when <= now:
                    del restart_at[index]
                    self.restarts += 1
                    write_restarts(self._directory, self.restarts)
                    self._start(index)
                    log.info("worker %d restarted (pid %d)", index, self._procs[index].pid)

    def _read_message(self, index: int, pipe: Connection) -> None:
        try:
            kind, detail = pipe.recv()
        except (EOFError, OSError):
            del self._pipes[index]  # the worker is gone; its sentinel says so
            return
        if kind == "error":
            log.error("worker %d could not start: %s", index, detail)

    def _died(self, index: int) -> float:
        """Log a dead worker; the delay before it is started again."""
        proc = self._procs[index]
        proc.join()
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        lived = time.monotonic() - self._started_at[index]
        quick = self._failures.get(index, 0) + 1 if lived < STABLE_AFTER else 0
        self._failures[index] = quick
        delay = min(10.0, 0.1 * 2**quick) if quick else 0.0
        log.error(
            "worker %d (pid %s) died (%s); restarting it%s",
            index,
            proc.pid,
            how,
            f" in {delay:.1f} s" if delay else "",
        )
        return delay

    def _stop_all(self) -> bool:
        """SIGTERM every worker and wait for each to drain: whether all exited with 0."""
        for proc in self._procs.values():
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + STOP_TIMEOUT
        for index, proc in self._procs.items():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                log.error("worker %d did not stop within %g s; killing it", index, STOP_TIMEOUT)
                proc.kill()
                proc.join()
            if proc.exitcode != 0:
                clean = False
                log.error("worker %d stopped with exit code %s", index, proc.exitcode)
        for pipe in self._pipes.values():
            pipe.close()
        log.info("all %d workers stopped%s", self.count, "" if clean else " (not all cleanly)")
        return clean

    # -- what a worker gets ------------------------------------------------------------

    def _setup(self, index: int) -> WorkerSetup:
        return WorkerSetup(
            index,
            self.count,
            self.worker_config(index),
            self.open_store,
            self.loop_factory,
            self._directory,
            *self._alive,
            tuple(self._inherited),
        )

    def worker_config(self, index: int) -> RelayConfig:
        """Worker ``index``'s settings: the shared ports, its share of the connections."""
        once = index == 0
        changes: dict[str, Any] = {
            "reuse_port": True,
            "max_connections": math.ceil(self.config.max_connections / self.count),
        }
        if not once:
            changes.update(
                mqtt=(),
                mqtt_brokers=(),
                mqtt_json_filter=None,
                mqtt_retained=False,
                mqtt_client_id=None,
                mqtt_publish=None,
                mqtt_tls=None,
                retain=None,
                fence_evaluation=False,  # REST and SIGHUP still work on every worker
            )
            names = {f.name for f in dataclasses.fields(self.config)}
            if "webhooks" in names:
                changes.update(webhooks=(), webhook_state=None)
        return dataclasses.replace(self.config, **changes)
