"""`geotrack tail`: follow the store."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

import typer

from geotrack.cli._common import DeviceOption, StoreOption, app, err, errors, now_ms, open_db
from geotrack.schema import parse_time
from geotrack.store import DEFAULT_STORE


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
) -> None:
    """Follow the store: print each position as it is stored.

    Works on whatever is written to the store, by any relay. When stopped (Ctrl-C) it
    prints the cursor to resume from, so nothing is missed in between.

    Examples:

      `geotrack tail --device bus-12`

      `geotrack tail --json --since 1h | jq .speed`
    """
    from geotrack.tail import follow, format_json, format_line

    fmt = format_json if json else format_line
    out = sys.stdout

    def emit(change: Any) -> None:
        out.write(fmt(change.position) + "\n")
        out.flush()

    with errors(), open_db(store) as db:
        start: str | int | None = None
        if since is not None:
            start = since if db.is_cursor(since) else parse_time(since, now_ms(), "--since")

        def opened(_cursor: str) -> None:
            # Only once the feed is open: a bad cursor must print nothing but its error.
            if not json:
                err.print(f"following {db.display_url} (Ctrl-C to stop)", highlight=False)

        # SIGTERM (systemd, kill) stops it like Ctrl-C: with the cursor printed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            cursor = follow(db, emit, since=start, devices=device or (), on_open=opened)
        except BrokenPipeError:
            # The reader went away (| head): not an error; keep Python from complaining.
            _silence_stdout()
            return
        err.print(f"resume with: geotrack tail --since {cursor}", highlight=False, soft_wrap=True)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
