"""One worker of ``geotrack serve --workers N``, in the process the supervisor forked.

:func:`run_worker` runs a whole relay (:func:`geotrack.relay.runner.serve`) on the
settings :class:`~geotrack.relay.workers.Supervisor` made for this worker, wired to its
siblings (:mod:`~geotrack.relay.siblings`): its commits are handed to them
(:mod:`~geotrack.relay.handoff`), its SQLite writes
queue with theirs, its /metrics shows theirs. It stops on SIGTERM/SIGINT, or when the
supervisor is gone (a pipe only the supervisor writes reads EOF), draining as a single
relay does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geotrack.errors import GeotrackError
from geotrack.relay.config import RelayConfig
from geotrack.relay.handoff import Handoff
from geotrack.relay.siblings import Siblings, share_write_lock
from geotrack.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from geotrack.relay.http import HttpListener
    from geotrack.relay.server import Relay

__all__ = ["WorkerSetup", "run_worker"]

log = logging.getLogger("geotrack.relay")


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a worker inherits from the supervisor at the fork."""

    index: int
    count: int
    #: This worker's settings (``Supervisor.worker_config``).
    config: RelayConfig
    #: Opens the store in the worker (each worker its own connection).
    open_store: Callable[[], Any]
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
    #: The run's shared directory (wake-up sockets, metrics, the write lock).
    directory: Path
    #: The pipe's ends: this one reads EOF once the supervisor is gone...
    alive: int
    #: ...while the supervisor holds this one, which the worker closes.
    alive_w: int
    #: The supervisor's other descriptors (reserved ports, its signal pipe), closed here.
    inherited: tuple[socket.socket, ...]


def run_worker(setup: WorkerSetup, pipe: Connection) -> None:
    """The body of a forked worker: one relay until SIGTERM/SIGINT or the supervisor's end.

    Sends ``("ready", None)`` on ``pipe`` once it serves, or ``("error", message)`` when it
    cannot start; exits with 0 after a clean stop.
    """
    from geotrack.relay.runner import serve

    alive_r = setup.alive
    os.close(setup.alive_w)
    for sock in setup.inherited:
        sock.close()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not the supervisor's; serve() handles it
    supervisor = os.getppid()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Prefix(f"worker {setup.index}: "))
    siblings = Siblings(setup.directory, setup.index, setup.count)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        orphaned = False

        def supervisor_gone() -> None:  # the pipe reads EOF: stop as on SIGTERM
            nonlocal orphaned
            orphaned = True
            loop.remove_reader(alive_r)
            stop.set()

        loop.add_reader(alive_r, supervisor_gone)
        store = await loop.run_in_executor(None, setup.open_store)
        shared_lock = share_write_lock(store, setup.directory / "write.lock")
        tasks: list[asyncio.Task[None]] = []
        handoff: Handoff | None = None

        def started(relay: Relay, listener: HttpListener | None) -> None:
            nonlocal handoff
            _forward_siblings_to_mqtt(relay)
            if isinstance(store, SQLiteStore):
                # Commits go to the siblings; MongoDB's change streams need no help.
                handoff = Handoff(relay, store, siblings)
                handoff.attach(loop)
            if listener is not None and listener.fences is not None:
                # A REST change of the fences file: the supervisor has every worker reload it.
                listener.fences.changed_hooks.append(lambda: _reload_all(supervisor))
            if listener is not None:
                listener.metrics_view = siblings.view
                if handoff is not None:
                    listener.more_families.append(handoff.families)
                tasks.append(loop.create_task(_save_metrics(siblings, listener)))
            pipe.send(("ready", None))

        try:
            await serve(store, setup.config, stop, started)
            # Drained: a stop signal arriving late (the supervisor passes SIGTERM on after
            # Ctrl-C reached the whole process group) must not turn a clean exit into -15.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
        finally:
            for task in tasks:
                task.cancel()
            if handoff is not None:
                handoff.detach()
            siblings.close(loop if handoff is not None else None)
            store.close()
            if shared_lock is not None:
                shared_lock.close()
            if orphaned:  # nobody else removes it; siblings hold what they still use open
                shutil.rmtree(setup.directory, ignore_errors=True)

    try:
        with asyncio.Runner(loop_factory=setup.loop_factory) as runner:
            runner.run(main())
    except GeotrackError as exc:
        with contextlib.suppress(OSError):
            pipe.send(("error", str(exc)))
        log.error("%s", exc)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(1) from None


def _forward_siblings_to_mqtt(relay: Relay) -> None:
    """``--mqtt-publish`` in worker 0: forward what the siblings stored too, not only its own.

    A bridge forwards what its relay stored; the workers are one relay, so worker 0's
    bridges (the only ones) also take what its follower reads: the siblings' positions
    (and, with other relays on the store, theirs: docs/operations.md, "Workers").
    """
    from geotrack.relay.mqtt import MqttBridge

    for hook in list(relay.stored_hooks):
        if isinstance(getattr(hook, "__self__", None), MqttBridge):
            relay.peer_hooks.append(hook)


def _reload_all(supervisor: int) -> None:
    """Send the supervisor SIGHUP, which it passes to every worker (while it is ours)."""
    if os.getppid() == supervisor:
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGHUP)


async def _save_metrics(siblings: Siblings, listener: HttpListener) -> None:
    while True:
        try:
            siblings.save(listener.families())
        except OSError as exc:
            log.warning("cannot share this worker's metrics: %s", exc)
        await asyncio.sleep(1.0)


class _Prefix(logging.Filter):
    """Puts the worker's name in front of every line it logs."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_worker_prefixed", False):
            record.msg = self.prefix + str(record.msg)
            record._worker_prefixed = True
        return True
