"""`geotrack prune`: delete old positions from a store."""

from __future__ import annotations

import time
from collections.abc import Generator
from contextlib import nullcontext
from typing import Annotated

import typer

from geotrack._text import plural
from geotrack.cli._common import DeviceOption, StoreOption, app, err, errors, now_ms
from geotrack.errors import InvalidParameter
from geotrack.schema import ms_to_ts, parse_time
from geotrack.store import DEFAULT_STORE, Pruned, open_store

__all__ = ["prune"]


@app.command()
def prune(
    before: Annotated[
        str | None,
        typer.Option(
            metavar="AGE|TIME",
            help="Delete fixes older than this: an age like 90d or 12h (counted back from "
            "now), an RFC 3339 time (2026-09-01T00:00:00Z) or Unix seconds. By the fix's "
            "own time, not when it was stored.",
            show_default=False,
        ),
    ] = None,
    store: StoreOption = DEFAULT_STORE,
    device: DeviceOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", "-n", help="Only count what would go; delete nothing."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only the summary line, no table.")
    ] = False,
) -> None:
    """Delete stored positions (and geofence events) older than a time, in small batches.

    Prints how many positions of each device were deleted (with --dry-run: would be),
    then a total, with the geofence events. The deletes go in short batches, each
    committed on its own, so a relay writing to the same store keeps storing and acking
    meanwhile, and Ctrl-C stops after the current batch, keeping what was deleted.
    Followers resuming from a cursor (`geotrack tail --since CURSOR`) are not disturbed.
    A running relay can prune by itself, gentler on its own writes:
    `geotrack serve --retain 90d`. SQLite reuses the freed space for new positions; the
    file does not shrink (docs/storage.md, "Retention").

    Examples:

      `geotrack prune --before 90d --dry-run`

      `geotrack prune --before 2026-01-01T00:00:00Z --device bus-3 --store sqlite:///tracks.db`
    """
    with errors():
        if before is None:
            raise InvalidParameter("--before", "say which fixes to delete, e.g. --before 90d")
        now = now_ms()
        before_ms = parse_time(before, now, "--before")
        if before_ms > now:
            raise InvalidParameter(
                "--before", f"{ms_to_ts(before_ms)} is in the future: that would delete fixes "
                "being stored now"
            )  # fmt: skip
        devices = list(dict.fromkeys(device or ()))
        with open_store(store, create=False) as db:
            steps = db.prune(before_ms, devices, dry_run=dry_run)
            counts, events, interrupted = _run(steps, dry_run, quiet)
        _report(counts, events, before_ms, devices, dry_run, quiet, interrupted)
        if interrupted:
            raise typer.Exit(130)


def _run(
    steps: Generator[Pruned, None, None], dry_run: bool, quiet: bool
) -> tuple[dict[str, int], int, bool]:
    """Run the prune, with a progress line on a terminal.

    Returns the positions per device, the events, and whether Ctrl-C interrupted it.
    """
    counts: dict[str, int] = {}
    events = 0
    total = 0
    progress = not dry_run and not quiet and err.is_terminal
    shown = time.monotonic()
    try:
        with err.status("pruning...", spinner="line") if progress else nullcontext() as status:
            for step in steps:
                if step.events:
                    events += step.count
                    continue
                counts[step.device] = counts.get(step.device, 0) + step.count
                total += step.count
                if status is not None and time.monotonic() - shown > 0.2:
                    shown = time.monotonic()
                    status.update(f"pruning {step.device}: {total:,} positions deleted so far")
    except KeyboardInterrupt:
        steps.close()  # the batch in progress was rolled back or committed, as a whole
        return counts, events, True
    return counts, events, False


def _report(
    counts: dict[str, int],
    events: int,
    before_ms: int,
    devices: list[str],
    dry_run: bool,
    quiet: bool,
    interrupted: bool,
) -> None:
    total = sum(counts.values())
    cut = ms_to_ts(before_ms)
    if not quiet and counts:
        width = max(len(name) for name in counts)
        digits = max(len(f"{n:,}") for n in counts.values())
        for name in sorted(counts):
            typer.echo(f"{name:<{width}}  {counts[name]:>{digits},}")
    which = f" of {' or '.join(devices)}" if devices else ""
    if total == 0 and events == 0 and not interrupted:
        typer.echo(f"nothing to delete: no fixes{which} before {cut}")
        return
    verb = "would delete" if dry_run else "deleted"
    line = (
        f"{verb} {total:,} {'position' if total == 1 else 'positions'} of "
        f"{plural(len(counts), 'device')}"
        + (f" and {events:,} geofence {'event' if events == 1 else 'events'}" if events else "")
        + f" with fixes before {cut}"
    )
    if interrupted:
        err.print(f"interrupted: {line}; the rest is still stored", highlight=False)
    else:
        typer.echo(line)
