"""The relay's geofencing: the fence engine in a worker thread, the fences file, reloads.

:class:`Fencing` follows the store's change feed (every position stored, by this relay
or its peers, in store order); one worker thread runs the
:class:`~geotrack.fences.FenceEngine` on what it reads, writes the events it decides to
the store (where ``/events`` subscribers and other relays find them) and saves the
engine's changed states and the feed's cursor with them, in one transaction: so the event
loop never evaluates a fence, the acks never wait for it, and a relay killed (-9) before
its worker evaluated what it stored resumes after the restart where the saved states
left off (docs/fences.md, "Restarts").

The fences file is the one truth: SIGHUP rereads it (a file that does not load is logged
and the fences in use stay), and the REST API (``PUT``/``DELETE /api/fences/NAME``)
rereads it, changes one feature, writes it back atomically and applies it, so a hand
edit not yet reloaded is not lost by a REST change and a reload after a REST change
finds it in the file (docs/fences.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geotrack.errors import FenceError, GeotrackError, StoreError
from geotrack.fences import Fence, FenceEngine, fence_from_feature, load_fences
from geotrack.relay.metrics import Family
from geotrack.schema import Event, FenceState, Position
from geotrack.store import ChangeFeed, Store

if TYPE_CHECKING:
    from geotrack.relay.server import Relay

__all__ = ["Fencing", "fence_families"]

log = logging.getLogger("geotrack.relay")

#: Positions taken from the queue for one evaluation at most.
_MAX_BATCH = 50_000
#: Attempts to store a turn's events once the relay is stopping.
_TRIES_AT_SHUTDOWN = 6
#: Seconds between the starts of two evaluations at least.
_PACE = 0.1
#: Seconds between saves of changed states when no event carries them.
_SAVE_EVERY = 1.0
#: The name the evaluation's change-feed cursor is saved under (Store.saved_cursor).
CURSOR_NAME = "fences"
_Command = Callable[[], None]


class Fencing:
    """Fences and their engine for one relay; see the module docstring."""

    def __init__(
        self,
        store: Store,
        path: Path,
        fences: Sequence[Fence],
        dwell: float,
        origin: str,
        *,
        evaluate: bool = True,
    ) -> None:
        self.store = store
        self.path = path
        self.dwell = dwell
        self._origin = origin
        #: False: the fences are only served and changed (REST, SIGHUP), never evaluated
        #: (``serve --workers``: the workers other than 0).
        self.evaluate = evaluate
        #: Called on the event loop after a REST change was written to the file
        #: (``serve --workers``: have every worker reload it).
        self.changed_hooks: list[Callable[[], None]] = []
        self._fences: tuple[Fence, ...] = tuple(fences)
        self._engine = FenceEngine(fences, dwell)
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._feed: ChangeFeed | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._saved_at = 0.0
        self._evaluated_at = 0.0
        self._dirty = False  # states changed since the last save
        #: The change-feed cursor after the last position evaluated, and the one saved.
        self._cursor: str | None = None
        self._saved_cursor: str | None = None
        self._file_lock = asyncio.Lock()
        #: Positions evaluated, events decided, events the store took as new (another
        #: relay may have stored the same first), and failed store writes.
        self.evaluated = 0
        self.decided = 0
        self.stored = 0
        self.failures = 0

    @classmethod
    def from_file(cls, store: Store, path: Path, dwell: float, origin: str) -> Fencing:
        """Load the fences file (FenceError when it does not load)."""
        return cls(store, path, load_fences(path), dwell, origin)

    @classmethod
    async def attach(cls, relay: Relay) -> Fencing:
        """Start the fencing of a started relay from its config (``--fences``): every
        position stored (by it or its peers) is evaluated, from the store's change feed."""
        config = relay.config
        if config.fences is None:
            raise FenceError("--fences", "no fences file given")
        evaluate = config.fence_evaluation
        fencing = cls(
            relay.store,
            config.fences,
            config.fence_list,
            config.fence_dwell,
            relay.id,
            evaluate=evaluate,
        )
        if not evaluate:
            log.info("fences: %d from %s (worker 0 evaluates)", len(fencing.fences), config.fences)
            return fencing
        await fencing.start()
        relay.stored_hooks.append(fencing.submit)
        relay.peer_hooks.append(fencing.submit)
        log.info(
            "fences: %d from %s, dwell %gs; events on %s/events",
            len(fencing.fences),
            config.fences,
            config.fence_dwell,
            relay.url,
        )
        return fencing

    @property
    def fences(self) -> tuple[Fence, ...]:
        """The fences in use."""
        return self._fences

    async def start(self) -> None:
        """Load the saved states and cursor, follow the store from it, start the worker.

        The first start on a store evaluates the positions stored from then on; later
        ones resume after the last position whose evaluation was saved (with the states),
        so what a killed relay stored but had not evaluated is evaluated now.
        """
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._run, name="geotrack-fences", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        self._engine.load(self.store.fence_states())
        saved = self._saved_cursor = self.store.saved_cursor(CURSOR_NAME)
        feed = None
        if saved is not None:
            try:
                feed = self.store.follow(since=saved)
            except GeotrackError as exc:  # e.g. MongoDB's oplog no longer reaches it
                log.error("fences: cannot resume the evaluation (%s); evaluating from now", exc)
        if feed is None:
            feed = self.store.follow()
            with contextlib.suppress(StoreError):  # a change stream may not have one yet
                self._cursor = feed.cursor
                self.store.write_events([], self._origin, cursor=(CURSOR_NAME, self._cursor))
                self._saved_cursor = self._cursor
        if isinstance(getattr(feed, "interval", None), float):
            # A SQLite feed polls; the relay's hooks wake it (submit), so it need not look
            # 200 times a second while the store is idle.
            feed.interval = _PACE / 2  # type: ignore[attr-defined]
        self._feed = feed

    def submit(self, positions: list[Position]) -> None:
        """Newly stored positions: wake the worker (cheap; a stored hook on the event loop).

        The worker reads every stored position from the change feed, so this only ends
        its wait early.
        """
        wake = getattr(self._feed, "wake", None)
        if positions and wake is not None:
            wake()

    async def stop(self) -> None:
        """Evaluate what is stored (stop the relay first), then stop the worker."""
        self._stopping = True
        self.submit([])
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # -- changing the fences -----------------------------------------------------------

    def _apply(self, fences: Sequence[Fence]) -> None:
        """Use these fences from the next evaluation on (in the worker's order)."""
        self._fences = tuple(fences)
        engine = self._engine
        if self.evaluate:
            self._commands.put(lambda: engine.set_fences(fences))

    async def reload(self) -> bool:
        """Reread the fences file (SIGHUP); on an error log it and keep the fences in use."""
        async with self._file_lock:
            try:
                fences = await asyncio.to_thread(load_fences, self.path)
            except FenceError as exc:
                log.error("fences not reloaded, the %d in use stay: %s", len(self._fences), exc)
                return False
            self._apply(fences)
        log.info("fences reloaded from %s: %d fences", self.path, len(fences))
        return True

    async def put(self, name: str, feature: Any) -> bool:
        """Add or replace the fence ``name`` in the file and in use; True when it is new.

        FenceError when the feature is not a fence, or the file does not load now.
        """
        fence = fence_from_feature(feature, f"fence {name!r}", name=name)
        async with self._file_lock:
            fences = await asyncio.to_thread(load_fences, self.path)
            new = all(f.name != name for f in fences)
            fences = [fence if f.name == name else f for f in fences]
            if new:
                fences.append(fence)
            await asyncio.to_thread(_write, self.path, fences)
            self._apply(fences)
        log.info("fence %r %s through the REST API", name, "added" if new else "replaced")
        self._changed()
        return new

    async def delete(self, name: str) -> bool:
        """Remove the fence ``name`` from the file and from use; False when there is none."""
        async with self._file_lock:
            fences = await asyncio.to_thread(load_fences, self.path)
            kept = [f for f in fences if f.name != name]
            if len(kept) == len(fences):
                return False
            await asyncio.to_thread(_write, self.path, kept)
            self._apply(kept)
        log.info("fence %r deleted through the REST API", name)
        self._changed()
        return True

    def _changed(self) -> None:
        for hook in self.changed_hooks:
            hook()

    # -- the worker thread -------------------------------------------------------------

    def _run(self) -> None:
        assert self._feed is not None
        try:
            while True:
                try:
                    if not self._step(self._feed):
                        return
                except StoreError as exc:
                    self.failures += 1
                    log.error("fences: following the store failed: %s; retrying in 1 s", exc)
                    time.sleep(1.0)
                except Exception:  # a bug must not stop the evaluation of what follows
                    log.exception("the fence worker failed on an item; going on")
                    time.sleep(0.1)
        finally:
            self._feed.close()

    def _step(self, feed: ChangeFeed) -> bool:
        """Apply fence changes, evaluate what the feed has; False once stopped and drained."""
        stopping = self._stopping
        # Evaluations (and so the event writes, each a transaction and an fsync that the
        # relay's own writer waits behind) come at most every _PACE seconds: under load
        # the batches grow instead. An event reaches /events that much later at most.
        wait = self._evaluated_at + _PACE - time.monotonic()
        if wait > 0 and not stopping:
            time.sleep(wait)
        changes = feed.poll(0.0 if stopping else _PACE)
        while changes and len(changes) < _MAX_BATCH:
            more = feed.poll(0.0)
            if not more:
                break
            changes.extend(more)
        # Fence changes made before these positions were stored apply to them (and a
        # few made while they were read: a change takes effect from about then).
        while True:
            try:
                self._commands.get_nowait()()
            except queue.Empty:
                break
        if changes:
            self._evaluate([c.position for c in changes], changes[-1].cursor)
        if stopping and not changes:
            self._write([], self._engine.take_changed())  # what waited for the next second
            return False
        if self._dirty and time.monotonic() - self._saved_at >= _SAVE_EVERY:
            self._write([], self._engine.take_changed())
        return True

    def _evaluate(self, positions: list[Position], cursor: str) -> None:
        self._evaluated_at = time.monotonic()
        try:
            events = self._engine.evaluate(positions)
        except Exception:  # an engine bug must not stop the worker
            log.exception("evaluating %d positions against the fences failed", len(positions))
            events = []
        self._cursor = cursor
        self._dirty = True
        self.evaluated += len(positions)
        self.decided += len(events)
        # States and the cursor go with the events, in their transaction; without events,
        # at most once a second (a dwell started or cancelled, positions far from every
        # fence), so the writer is not held up for them.
        if events:
            self._write(events, self._engine.take_changed())

    def _write(self, events: list[Event], states: list[FenceState]) -> None:
        """Store events, states and the cursor, retrying while the store fails: for as
        long as it takes while the relay runs, a few times (about 6 s) once it is stopping."""
        cursor = self._cursor if self._cursor != self._saved_cursor else None
        self._saved_at = time.monotonic()
        self._dirty = False
        if not events and not states and cursor is None:
            return
        pause = 0.1
        tries_left = _TRIES_AT_SHUTDOWN
        while True:
            try:
                new = self.store.write_events(
                    events,
                    self._origin,
                    states=states,
                    cursor=None if cursor is None else (CURSOR_NAME, cursor),
                )
            except StoreError as exc:
                self.failures += 1
                if self._stopping:
                    tries_left -= 1
                    if not tries_left:
                        log.error("%d fence events not stored at shutdown: %s", len(events), exc)
                        return
                log.error("storing %d fence events failed, retrying: %s", len(events), exc)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if cursor is not None:
                self._saved_cursor = cursor
            self.stored += sum(new)
            for event, fresh in zip(events, new, strict=True):
                if fresh:
                    log.info(
                        "event %s: %s %s at %s", event.type, event.device, event.fence, event.ts
                    )
            return


def fence_families(fencing: Fencing) -> list[Family]:
    """What /metrics shows of the fences: how many, positions evaluated, events."""
    fences = Family("geotrack_fences", "gauge", "Fences in use (serve --fences).")
    fences.add(len(fencing.fences))
    evaluated = Family(
        "geotrack_fence_positions_total",
        "counter",
        "Stored positions (this relay's and its peers') evaluated against the fences.",
    )
    evaluated.add(fencing.evaluated)
    events = Family(
        "geotrack_fence_events_total",
        "counter",
        "Enter/exit events decided here: stored new, or already stored (by another relay).",
    )
    events.add(fencing.stored, result="stored")
    events.add(fencing.decided - fencing.stored, result="duplicate")
    failures = Family(
        "geotrack_fence_store_failures_total",
        "counter",
        "Failed writes of events and fence states (retried).",
    )
    failures.add(fencing.failures)
    return [fences, evaluated, events, failures]


def _write(path: Path, fences: Sequence[Fence]) -> None:
    """Write the fences as a FeatureCollection, atomically (a temporary file, renamed)."""
    # One feature a line: a diff of the file after a REST change shows that feature.
    document = (
        '{"type": "FeatureCollection", "features": [\n'
        + ",\n".join(f.source for f in fences)
        + "\n]}\n"
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as out:
            out.write(document)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise FenceError(str(path), f"cannot write: {exc.strerror or exc}") from None
