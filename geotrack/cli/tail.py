"""`geotrack tail`: follow the store."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer

from geotrack.cli._common import DeviceOption, StoreOption, app, err, errors, now_ms
from geotrack.errors import InvalidParameter
from geotrack.store import DEFAULT_STORE, open_store

__all__ = ["tail"]


@app.command()
def tail(
    store: StoreOption = DEFAULT_STORE,
    device: DeviceOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Replay from a cursor printed by an earlier tail, or from a time "
            "(2026-11-25T12:00:00Z, Unix seconds, or an age like 15m), then go live."
        ),
    ] = None,
    json: Annotated[
        bool, typer.Option("--json", help="One JSON position per line (NDJSON).")
    ] = False,
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            help="Follow geofence events (enter/exit, as /events sends them) instead of "
            "positions; --since then takes an events cursor or a store time.",
        ),
    ] = False,
    fence: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="With --events: only events of this fence (repeat for several).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Follow the store: print each position as it is stored.

    Works on whatever is written to the store, by any relay; the store must exist (a
    relay creates it). When stopped (Ctrl-C or SIGTERM) it prints the command that
    resumes where it stopped, with the same filters, so nothing is missed in between.

    Examples:

      `geotrack tail --device bus-12`

      `geotrack tail --json --since 1h | jq .speed`

      `geotrack tail --events --fence depot --since 1d`
    """
    from geotrack.tail import (
        follow,
        follow_events,
        format_event_json,
        format_event_line,
        format_json,
        format_line,
        parse_since,
    )

    out = sys.stdout

    def emit(change: Any) -> None:
        text = format_json(change.position) if json else format_line(change.position)
        out.write(text + "\n")
        out.flush()

    def emit_event(change: Any) -> None:
        text = format_event_json(change.event) if json else format_event_line(change.event)
        out.write(text + "\n")
        out.flush()

    with errors():
        # --since is checked before the store is opened: its error is the one to show.
        start = None if since is None else parse_since(since, store, now_ms())
        fences = fence or []
        if not events:
            if fences:
                raise InvalidParameter("--fence", "give --events too: positions have no fence")
            _follow(store, device or [], json, start, lambda db, **kw: follow(db, emit, **kw))
            return
        if any(not name for name in fences):
            raise InvalidParameter("--fence", "give a fence name")
        _follow(
            store,
            device or [],
            json,
            start,
            lambda db, **kw: follow_events(db, emit_event, fences=fences, **kw),
            fences=fences,
        )


def _follow(
    store: str,
    devices: list[str],
    json: bool,
    start: str | int | None,
    run: Callable[..., str],
    *,
    fences: list[str] | None = None,
) -> None:
    """Call ``run`` (a follow of positions, or with ``fences`` given, of events) until
    Ctrl-C or SIGTERM, then print the command that resumes."""
    from geotrack.tail import resume_command

    events = fences is not None
    with open_store(store, create=False) as db:

        def opened(_cursor: str) -> None:
            # Only once the feed is open: a bad cursor must print nothing but its error.
            if not json:
                what = "the events of " if events else ""
                err.print(f"following {what}{db.display_url} (Ctrl-C to stop)", highlight=False)

        # Ctrl-C and SIGTERM (systemd, kill) ask the loop to stop after the line being
        # printed, so the cursor is exactly past the last line out; a second one
        # interrupts at once (a reader that stopped reading can block a write).
        stop = threading.Event()

        def on_signal(_signum: int, _frame: object) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            cursor = run(
                db,
                since=start,
                devices=devices,
                on_open=opened,
                running=lambda: not stop.is_set(),
                poll=0.2,
            )
        except BrokenPipeError:
            # The reader went away (| head): not an error; keep Python from complaining.
            _silence_stdout()
            return
        # The store is named when the resumed command would not find it by itself.
        named = (
            None if store in (DEFAULT_STORE, os.environ.get("GEOTRACK_STORE")) else db.display_url
        )
        resume = resume_command(cursor, devices, json, named, events=events, fences=fences or ())
        err.print(f"resume with: {resume}", highlight=False, soft_wrap=True, markup=False)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
