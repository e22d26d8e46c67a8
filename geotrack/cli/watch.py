"""`geotrack watch`: the live devices table in a terminal."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from geotrack.cli._common import CafileOption, DeviceOption, StoreOption, TokenOption, app, errors
from geotrack.schema import parse_duration
from geotrack.store import DEFAULT_STORE

__all__ = ["watch"]


@app.command()
def watch(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            help="Follow this relay (ws://HOST:PORT or wss://…, with or without /subscribe) "
            "instead of the store.",
            show_default=False,
        ),
    ] = None,
    store: StoreOption = DEFAULT_STORE,
    device: DeviceOption = None,
    stale: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="Dim a device after this long without a fix (90s, 2m, 1h).",
        ),
    ] = "2m",
    token: TokenOption = None,
    cafile: CafileOption = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Print one table of each device's last fix from the store and exit "
            "(works in pipes and files).",
        ),
    ] = False,
) -> None:
    """Watch devices move: a live table, one row per device, in the terminal.

    Each row: the device, its last fix's time and age, latitude and longitude, speed,
    heading, fixes in the last minute and in all since watching; the most recent first.
    The header has the totals and the overall rate. A device with no fix for --stale
    (default 2m) is dimmed. Rows are cut to the terminal's height (`… N more devices`).

    Follows the store's change feed (--store; it must exist, nothing is created), showing
    each device's last fix from the start, or a relay (--url; reconnects, missing nothing).
    stdout must be a terminal: use --once for a table in a pipe, or `geotrack tail` for a
    stream. q or Ctrl-C quits (exit code 0).

    Examples:

      `geotrack watch`

      `geotrack watch --url ws://relay.example.com:8765 --device bus-12`

      `geotrack watch --store sqlite:///fleet.db --stale 30s`

      `geotrack watch --once > devices.txt`
    """
    from geotrack.watch import WatchConfig, watch

    with errors():
        # --store from GEOTRACK_STORE gives way to --url; both on the command line clash.
        given = getattr(ctx.get_parameter_source("store"), "name", None)
        if url is not None and given == "COMMANDLINE":
            from geotrack.errors import InvalidParameter

            raise InvalidParameter("--url", "follow a relay (--url) or a store (--store), not both")
        config = WatchConfig(
            url=url,
            store=None if url is not None else store,
            devices=tuple(device or ()),
            token=token,
            cafile=cafile,
            stale=parse_duration(stale, "--stale"),
            once=once,
        )
        # Ctrl-C before the handlers are in place quits quietly too.
        with contextlib.suppress(KeyboardInterrupt):
            watch(config)
