"""What every command shares: the app, the error edge, store and device options, logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console

from geotrack import __version__
from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.store import Store, open_store

app = typer.Typer(
    name="geotrack",
    help=(
        "Realtime position ingestion and replay over WebSocket.\n\n"
        "Devices (or `geotrack publish`) stream positions to a relay (`geotrack serve`), "
        "which stores them and pushes them at once to every subscriber; stored tracks can "
        "be followed live (`geotrack tail`) and exported (`geotrack export`).\n\n"
        "Quick start, in three terminals:\n\n"
        "  geotrack serve\n\n"
        "  geotrack tail\n\n"
        "  geotrack publish --gpx samples/walk.gpx --speed 50"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

err = Console(stderr=True)
_N = TypeVar("_N", int, float)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="GEOTRACK_STORE",
        help="Where positions live: sqlite:///FILE.db (embedded, the default) or mongodb://...",
        show_default=True,
    ),
]
DeviceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--device", "-d", help="Only this device (repeat for several).", show_default=False
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line and exit."""
    err.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn geotrack's own errors into one line on stderr and exit code 1."""
    try:
        yield
    except GeotrackError as exc:
        fail(str(exc))


def open_db(url: str) -> Store:
    return open_store(url)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geotrack {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Realtime position ingestion and replay over WebSocket."""


def configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    # Plain lines, one per event: relay logs end up in files and journald, where wrapped
    # or colored output gets in the way of grep.
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(message)s",
        force=True,
    )
    # websockets logs every failed handshake (a port scan, a bad path) at error level;
    # we log connections ourselves.
    # Never DEBUG: websockets then logs request lines, and those may carry ?token=.
    logging.getLogger("websockets").setLevel(logging.INFO if verbose else logging.CRITICAL)


def event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def within(name: str, value: _N, low: _N, high: _N) -> _N:
    if not low <= value <= high:
        raise InvalidParameter(name, f"must be within {low}..{high}, got {value}")
    return value


def now_ms() -> int:
    return time.time_ns() // 1_000_000
