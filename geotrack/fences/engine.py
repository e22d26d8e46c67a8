"""The fence engine: stored positions in, ``enter``/``exit`` events out (sans-I/O).

Per device and fence it keeps whether the device is inside and, while it is seen on the
other side without the dwell having passed, since when. The rules (docs/fences.md):

- Fixes are taken in the device's time order: a batch is sorted by (device, ts), and a
  fix older than the latest one already evaluated for its device (a late fix) decides
  nothing and changes no state.
- A fix is INSIDE, OUTSIDE or UNSURE (its accuracy circle crosses the edge). UNSURE
  changes nothing: GPS jitter at the edge, the flapping other trackers report, is what it
  filters out.
- ``dwell`` seconds: the device must be seen on the other side continuously (by device
  time, from the first such fix to a later one) for that long before the event. A fix
  back on the current side cancels the wait. With 0 the first fix decides.
- An event carries the deciding fix's ts, lat and lon, so two relays that evaluate the
  same fixes decide the same (device, fence, ts, type), which the store keeps once.

The engine holds no lock and does no I/O: the relay runs it in one worker thread, saves
:meth:`FenceEngine.take_changed` to the store and loads it back at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any

import numpy as np

from geotrack.fences.index import INSIDE, OUTSIDE, UNSURE, FenceSet
from geotrack.fences.loading import Fence
from geotrack.schema import Event, FenceState, Position, ms_to_ts, ts_to_ms

__all__ = ["FenceEngine"]

_BY_DEVICE_TIME = attrgetter("device", "ts")
#: Fixes per vectorized step (a few thousand: per fix, larger arrays measured slower).
_CHUNK = 2000


class _State:
    """One (device, fence) state that is not the default (outside, nothing pending)."""

    __slots__ = ("inside", "pending_ms")

    def __init__(self, inside: bool = False, pending_ms: int | None = None) -> None:
        self.inside = inside
        self.pending_ms = pending_ms


class FenceEngine:
    """Evaluates batches of stored positions against a set of fences."""

    def __init__(
        self, fences: Sequence[Fence] = (), dwell: float = 0.0, states: Iterable[FenceState] = ()
    ) -> None:
        if dwell < 0:
            raise ValueError("dwell must be >= 0 seconds")
        self.dwell_ms = round(dwell * 1000)
        self.fences = FenceSet(fences)
        # device -> fence name -> state; only states other than the default are held, so
        # a device far from every fence costs nothing but its latest ts.
        self._states: dict[str, dict[str, _State]] = {}
        self._last: dict[str, str] = {}  # device -> ts of the latest fix evaluated
        self._changed: set[tuple[str, str]] = set()
        # device -> the fence/side codes of its last fix, when no dwell was under way.
        self._seen: dict[str, list[int]] = {}
        self._names = [f.name for f in self.fences.fences]
        self.load(states)

    def load(self, states: Iterable[FenceState]) -> None:
        """Take saved states (from the store, at start) for fences that exist."""
        for state in states:
            if state.last_ms is not None:
                last = ms_to_ts(state.last_ms)
                if last > self._last.get(state.device, ""):
                    self._last[state.device] = last
            if state.fence in self.fences.by_name and (
                state.inside or state.pending_ms is not None
            ):
                self._states.setdefault(state.device, {})[state.fence] = _State(
                    state.inside, state.pending_ms
                )

    def set_fences(self, fences: Sequence[Fence]) -> None:
        """Replace the fences (a reload). States of fences kept by name stay; the states
        of fences that are gone are forgotten (reported by :meth:`take_changed`), with no
        event."""
        self.fences = FenceSet(fences)
        self._names = [f.name for f in self.fences.fences]
        self._seen.clear()  # fence indexes changed meaning
        names = self.fences.by_name
        for device, states in self._states.items():
            for name in [n for n in states if n not in names]:
                del states[name]
                self._changed.add((device, name))

    def state(self, device: str, fence: str) -> FenceState:
        """The current state of one device and fence."""
        held = self._states.get(device, {}).get(fence)
        last = self._last.get(device)
        return FenceState(
            device,
            fence,
            held.inside if held else False,
            held.pending_ms if held else None,
            ts_to_ms(last) if last else None,
        )

    def take_changed(self) -> list[FenceState]:
        """The states changed since the last call, to save; resets the list."""
        changed = [self.state(device, fence) for device, fence in sorted(self._changed)]
        self._changed.clear()
        return changed

    def evaluate(self, positions: Sequence[Position]) -> list[Event]:
        """Evaluate newly stored positions; return the events they decide, in order."""
        if not positions:
            return []
        last = self._last
        if not self.fences.fences and not self._states:
            for p in positions:
                if p.time > last.get(p.device, ""):
                    last[p.device] = p.time
            return []
        ordered = sorted(positions, key=_BY_DEVICE_TIME)
        events: list[Event] = []
        # In chunks: the vectorized steps cost more per fix on very large arrays.
        for start in range(0, len(ordered), _CHUNK):
            self._evaluate(ordered[start : start + _CHUNK], events)
        return events

    def _evaluate(self, batch: list[Position], events: list[Event]) -> None:
        """Evaluate fixes sorted by device and time, appending the events they decide."""
        last = self._last
        fixes, fence_indexes, sides = self.fences.sides(
            [p.lon for p in batch], [p.lat for p in batch], [p.acc or 0.0 for p in batch]
        )
        # Where each fix's pairs begin (they come ordered by fix), and per pair a code of
        # fence and side: a device whose fix has the same codes as its last one, with no
        # dwell under way, cannot change state (the usual case: parked, or far from all).
        edges = np.searchsorted(fixes, np.arange(len(batch) + 1))
        bounds = edges.tolist()
        codes = (fence_indexes * 2 + (sides == UNSURE)).tolist()
        fence_list = fence_indexes.tolist()
        side_list = sides.tolist()
        names = self._names
        seen = self._seen
        states = self._states
        step = self._step
        # Only devices near a fence in this batch, or inside or waiting on one already,
        # can change state; the fixes of every other device only move its latest ts.
        near = np.flatnonzero(edges[1:] > edges[:-1]).tolist()
        devices = {batch[i].device for i in near}
        devices.update(d for d in states if d not in devices)
        work = [i for i, p in enumerate(batch) if p.device in devices] if devices else []
        # Sorted, so each device's newest fix comes last (ts is canonical text by now).
        newest: dict[str, Any] = {p.device: p.ts for p in batch}
        for i in work:
            p = batch[i]
            device = p.device
            ts: str = p.ts  # type: ignore[assignment]  # canonical text once constructed
            if ts <= last.get(device, ""):
                continue  # late (or the same time): decides nothing
            last[device] = ts
            start, end = bounds[i], bounds[i + 1]
            held = states.get(device)
            if held is None:
                seen.pop(device, None)
                # Only a fence it is clearly inside can change anything.
                for m in range(start, end):
                    if side_list[m] == INSIDE:
                        step(p, names[fence_list[m]], True, events)
                continue
            signature = codes[start:end]
            if seen.get(device) == signature:
                continue
            # Per fence it is INSIDE or UNSURE of (every other one: OUTSIDE).
            found = {names[fence_list[m]]: side_list[m] for m in range(start, end)}
            for name, state in list(held.items()):
                side = found.get(name, OUTSIDE)
                if side == UNSURE:
                    continue
                inside = side == INSIDE
                if inside != state.inside or state.pending_ms is not None:
                    step(p, name, inside, events)
            for name, side in found.items():
                if side == INSIDE and name not in held:
                    step(p, name, True, events)
            now = states.get(device)
            if now is not None and all(s.pending_ms is None for s in now.values()):
                seen[device] = signature
            else:
                seen.pop(device, None)
        for name, text in newest.items():
            if text > last.get(name, ""):
                last[name] = text

    def _step(self, p: Position, name: str, inside: bool, events: list[Event]) -> None:
        device = p.device
        states = self._states.get(device)
        state = states.get(name) if states else None
        if state is None:
            if not inside:
                return  # outside and nothing pending: the default, unchanged
            state = _State()
        if inside == state.inside:
            if state.pending_ms is not None:
                state.pending_ms = None  # back on its side before the dwell passed
                self._changed.add((device, name))
                self._keep(device, name, state)
            return
        ms = ts_to_ms(p.time)
        if state.pending_ms is None:
            state.pending_ms = ms
        if ms - state.pending_ms >= self.dwell_ms:
            state.inside = inside
            state.pending_ms = None
            events.append(Event("enter" if inside else "exit", device, name, p.time, p.lat, p.lon))
        self._changed.add((device, name))
        self._keep(device, name, state)

    def _keep(self, device: str, name: str, state: _State) -> None:
        """Hold a state unless it is the default, which is dropped."""
        if state.inside or state.pending_ms is not None:
            self._states.setdefault(device, {})[name] = state
        else:
            states = self._states.get(device)
            if states is not None:
                states.pop(name, None)
                if not states:
                    del self._states[device]
